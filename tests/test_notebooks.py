"""Every notebook runs top to bottom in a fresh kernel, offline, on the CPU.

Each `notebooks/*.ipynb` and its Chinese twin `notebooks/zh/*.ipynb` is picked up automatically
(test ids `05_sampling.ipynb`, `zh/05_sampling.ipynb`; one: `-k "zh/05"`), and runs in its own folder. The kernel imports `tutorial_ldm` from this
checkout (the repo root leads its PYTHONPATH, installed or not), draws with the non-interactive
Agg backend, and runs under the same offline guard as the tests (offline_site/sitecustomize.py).
"""

import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb")) + sorted(NOTEBOOK_DIR.glob("zh/*.ipynb"))
IDS = [str(p.relative_to(NOTEBOOK_DIR)) for p in NOTEBOOKS]
OFFLINE_SITE = Path(__file__).resolve().parent / "offline_site"

NOTEBOOK_TIMEOUT = 1200  # s, the whole notebook (pytest-timeout); chapter 3 trains for ~4 CPU minutes (11 min on a loaded 2-core machine)
CELL_TIMEOUT = 900  # s, any one cell (nbclient): the live training is one cell
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(OFFLINE_SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["MPLBACKEND"] = "Agg"
    return env


def execute_notebook(path: Path, cwd: Path = NOTEBOOK_DIR) -> nbformat.NotebookNode:
    """Run `path` top to bottom in a fresh kernel; a cell error fails the calling test."""
    nb = nbformat.read(path, as_version=4)
    # The kernel of *this* interpreter, whatever kernels are installed for the user.
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT,
        startup_timeout=120,
        resources={"metadata": {"path": str(cwd)}},
        coalesce_streams=True,  # one block per stream, as JupyterLab shows it (a write may arrive in parts)
    )
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{ANSI.sub('', str(e))}", pytrace=False)
    return nb


def stderr_of(nb: nbformat.NotebookNode) -> list[str]:
    """What the cells wrote to stderr: warnings and notices a student would see in red."""
    return [f"cell {i}: {ANSI.sub('', o.text).strip()[:300]}" for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" for o in cell.outputs
            if o.output_type == "stream" and o.name == "stderr"]


@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path):
    nb = execute_notebook(path, cwd=path.parent)
    assert stderr_of(nb) == [], f"{path.name} writes to stderr"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean_and_loads_through_the_package(path):
    """No saved outputs (they go stale), and the shipped model through `load_pipeline` or
    `SHIPPED_MODEL` — not a relative path, and not around load_pipeline's notice filter."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    source = "\n".join(c.source for c in code)
    assert "assets/tiny-ldm" not in source and '"tiny-ldm"' not in source
    assert "StableDiffusionPipeline.from_pretrained" not in source


def test_stderr_is_reported(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print('notice', file=sys.stderr)")]
    path = tmp_path / "noisy.ipynb"
    nbformat.write(nb, path)
    assert stderr_of(execute_notebook(path, cwd=tmp_path)) == ["cell 0: notice"]


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.timeout(NOTEBOOK_TIMEOUT)
def test_harness_kernel_environment_and_failure_report(tmp_path):
    """The kernel sees this checkout, Agg and the offline guard; a failing cell fails the test
    with its traceback, and a connection off the machine is such a failure."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import os, sys, matplotlib, tutorial_ldm\n"
            f"assert os.path.dirname(os.path.dirname(tutorial_ldm.__file__)) == {str(ROOT)!r}\n"
            f"assert os.getcwd() == {str(tmp_path)!r}\n"
            f"assert sys.executable == {sys.executable!r}\n"
            "assert matplotlib.get_backend().lower() == 'agg'\n"
            "assert os.environ['HF_HUB_OFFLINE'] == '1'"
        ),
        nbformat.v4.new_code_cell(
            "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=5)"
        ),
        nbformat.v4.new_code_cell("never_reached = True"),
    ]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(pytest.fail.Exception) as failure:
        execute_notebook(path, cwd=tmp_path)
    message = str(failure.value)
    assert "probe.ipynb: a cell failed" in message
    assert "NetworkAccessError" in message and "93.184.216.34" in message
    assert "socket.create_connection" in message  # the failing cell's source is shown
    assert "\x1b[" not in message
