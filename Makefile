# The course's two commands:
#   make lab    JupyterLab on notebooks/   (make lab ARGS="--no-browser --port=8890")
#   make test   the whole test suite       (make test ARGS="-k noise -x")
# Both first set up .venv in this folder: once, and again when pyproject.toml changes.
# Nothing is installed or registered outside this folder.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# torch goes in first, at the version pyproject.toml pins: left to the resolver, pip may pull
# a multi-GB CUDA build. TORCH_PIP_ARGS can point pip at another wheel index (e.g. CPU-only).
TORCH := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
TORCH_PIP_ARGS ?=
ARGS ?=

.PHONY: setup lab test clean

# The Jupyter kernel is installed into .venv (--sys-prefix); `make lab` puts it ahead of any
# user-wide "python3" kernel, so the notebooks always run with this folder's packages.
setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "tutorial-ldm needs Python 3.11 or newer; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)."; \
	  echo "Run e.g.: make $(MAKECMDGOALS) PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tutorial-ldm)"
	touch $@

# Jupyter refuses to start as root unless told; as root you are in a container or CI anyway.
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	JUPYTER_PATH="$(CURDIR)/$(VENV)/share/jupyter" \
	  $(BIN)/jupyter lab --ServerApp.root_dir=notebooks $(AS_ROOT) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV)
