"""The two ways to set up agree, `make` installs torch first, and notebooks carry no outputs."""

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements: list[str], where: str) -> dict[str, str]:
    found = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"{where}: {requirement!r} is not pinned as name==version"
        found[canonical(match[1])] = match[2]
    return found


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pins() -> dict[str, str]:
    project = pyproject()["project"]
    extras = project["optional-dependencies"]  # dev, and zh (JupyterLab's Chinese language pack)
    requirements = project["dependencies"] + [r for group in extras.values() for r in group]
    return pins(requirements, "pyproject.toml")


def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_pip_section() -> list[str]:
    sections = [
        d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d
    ]
    assert len(sections) == 1, "environment.yml needs exactly one pip: section"
    return sections[0]


def pin_differences(project_pins: dict, env_pins: dict) -> dict:
    """name -> (pyproject's version, environment.yml's version) wherever they differ."""
    return {
        name: (project_pins.get(name, "missing"), env_pins.get(name, "missing"))
        for name in sorted(project_pins.keys() | env_pins.keys())
        if project_pins.get(name) != env_pins.get(name)
    }


def test_environment_yml_pins_the_same_versions_as_pyproject():
    env = environment_pip_section()
    env_pins = pins([r for r in env if r != "-e ."], "environment.yml")
    differences = pin_differences(pyproject_pins(), env_pins)
    assert not differences, f"pyproject.toml vs environment.yml disagree: {differences}"
    assert "-e ." in env, "environment.yml must install the package itself (pip: -e .)"


def test_environment_yml_python_and_name():
    env = environment()
    assert env["name"] == "tutorial-ldm"
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"], python
    assert pyproject()["project"]["requires-python"] == ">=3.11"


def test_a_mismatch_would_be_caught():
    """The comparison is not vacuous: a changed, a missing and an unpinned entry all show."""
    real = pyproject_pins()
    assert real["torch"] == "2.13.0" and len(real) >= 15
    changed = {**real, "torch": "2.12.0"}
    del changed["numpy"]
    assert pin_differences(real, changed) == {
        "numpy": (real["numpy"], "missing"),
        "torch": ("2.13.0", "2.12.0"),
    }
    assert canonical("scikit_image") == canonical("Scikit-Image") == "scikit-image"
    with pytest.raises(AssertionError, match="not pinned"):
        pins(["numpy>=2"], "somewhere")


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_installs_pinned_torch_first_and_registers_nothing_globally():
    plan = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    torch_pin = f"torch=={pyproject_pins()['torch']}"
    assert re.search(rf'pip install .*"{re.escape(torch_pin)}"', plan), plan
    assert plan.index(torch_pin) < plan.index('pip install -e ".[dev,zh]"')
    assert "--user" not in plan and "--sys-prefix" in plan


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or execution counts; "
        "clear them (Edit → Clear Outputs of All Cells) before committing"
    )
    assert "widgets" not in nb.metadata, (
        f"{path.name}: saved widget state; clear it before committing"
    )
