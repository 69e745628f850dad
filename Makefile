# The course's two commands:
#   make lab    JupyterLab on notebooks/   (make lab ARGS="--no-browser --port=8890")
#               make lab LAB_LANG=zh: the Chinese edition, notebooks/zh/, with JupyterLab in Chinese
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
# The suite runs on this many worker processes (pytest-xdist; the chapters are the long tests and
# each kernel uses one or two threads): 2 halves CI's wall time on a 2-core machine. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
ARGS ?=
# LAB_LANG (not LANG, the locale's variable): "en", or "zh" for notebooks/zh/, JupyterLab's menus
# in Chinese (the language pack of pyproject's "zh" extra, chosen by an overrides.json that only
# this command reads) and TUTORIAL_LDM_LANG=zh for the kernels (figures, messages, the studio).
LAB_LANG ?= en
ZH_SETTINGS ?= $(VENV)/share/jupyter/lab/settings-zh
ifeq ($(LAB_LANG),zh)
LAB_NEEDS := $(ZH_SETTINGS)/overrides.json
LAB_ENV := TUTORIAL_LDM_LANG=zh
LAB_FLAGS := --ServerApp.root_dir=notebooks/zh --LabApp.app_settings_dir="$(abspath $(ZH_SETTINGS))"
else ifeq ($(LAB_LANG),en)
LAB_NEEDS :=
LAB_ENV :=
LAB_FLAGS := --ServerApp.root_dir=notebooks
else
$(error LAB_LANG=$(LAB_LANG) is not available; allowed: en, zh)
endif

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
	$(BIN)/python -m pip install -e ".[dev,zh]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (tutorial-ldm)"
	touch $@

# Jupyter refuses to start as root unless told; as root you are in a container or CI anyway.
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP) $(LAB_NEEDS)
	JUPYTER_PATH="$(CURDIR)/$(VENV)/share/jupyter" $(LAB_ENV) \
	  $(BIN)/jupyter lab $(LAB_FLAGS) $(AS_ROOT) $(ARGS)

# JupyterLab's settings for the Chinese lab: its menus in Simplified Chinese
$(ZH_SETTINGS)/overrides.json:
	mkdir -p $(@D)
	echo '{"@jupyterlab/translation-extension:plugin": {"locale": "zh_CN"}}' > $@

test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal) $(ARGS)

clean:
	rm -rf $(VENV)
