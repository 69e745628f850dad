"""The classroom kit: student copies without the solutions, and grading of what comes back.

Every chapter's exercise is two cells, marked as nbgrader (0.9) marks them, so nbgrader itself
can process the notebooks:

- the **solution cell** (metadata `nbgrader.solution`, id `chN_name`): `def my_…(…):` with the
  teacher's answer between `### BEGIN SOLUTION` and `### END SOLUTION`;
- the **check cell** (`nbgrader.grade`, locked, 1 point, id `chN_name_check`): `verdict =
  check_…(my_…)`, then further tests between `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`.

`student_copy` runs nbgrader's own preprocessors (`ClearSolutions`, `ClearHiddenTests`,
`LockCells`) and nbconvert's `ClearOutputPreprocessor`: the answer becomes
`raise NotImplementedError()`, which the checker reports as "your turn" on stderr, one line in
the chapter's language, so a student copy still runs top to bottom.

`grade` does what nbgrader's autograde does for these notebooks, without its course database:
for each submitted notebook one fresh kernel runs the chapter's first code cell (its imports),
then for each exercise the *student's* solution cell (found by its nbgrader id, else by its
`def my_…(`, wherever it was moved) and the *teacher's* check cell (hidden tests included, as
nbgrader restores locked cells). Nothing else of the chapter runs — no widgets, no training — and
the whole notebook has a time limit. Points follow nbgrader's rule (`nbgrader.utils.
determine_grade`: an error or stderr output in the check cell scores 0).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nbformat

from .paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TIMEOUT = 300  # s, for one submitted notebook: kernel start, the chapter's imports and its exercises
STATUSES = ("passed", "failed", "not attempted", "missing", "error", "timed out", "crashed")
_LANGUAGE = re.compile(r"""set_language\(\s*["'](\w+)["']\s*\)""")
_DEF = re.compile(r"^def (my_\w+)\(", re.M)


@dataclass(frozen=True)
class Exercise:
    """One chapter's exercise, as the teacher's notebook holds it."""

    notebook: str  # the chapter's file name, e.g. "01_forward_noising.ipynb"
    grade_id: str  # the solution cell's nbgrader id, e.g. "ch1_q_sample"; the check cell's adds "_check"
    function: str  # the name the student defines, e.g. "my_q_sample"
    points: float
    setup: str  # the chapter's first code cell (its imports)
    solution: str  # the teacher's solution cell
    test: str  # the teacher's check cell, hidden tests included


@dataclass
class Row:
    """One line of grades.csv: one student, one exercise."""

    student: str
    notebook: str
    exercise: str
    points: float
    max_points: float
    status: str  # one of STATUSES
    message: str


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def chapter_exercises(path: Path) -> list[Exercise]:
    """The exercises of one teacher's notebook: each solution cell with the check cell after it."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    checks = {_nbgrader(c).get("grade_id"): c for c in code if _nbgrader(c).get("grade")}
    found = []
    for cell in code:
        meta = _nbgrader(cell)
        if not meta.get("solution"):
            continue
        test = checks.get(f"{meta['grade_id']}_check")
        function = _DEF.search(cell.source)
        if test is None or function is None:
            raise ValueError(f"{path.name}: solution cell {meta['grade_id']!r} needs a `def my_…(` and a "
                             f"check cell with grade_id {meta['grade_id'] + '_check'!r}")
        found.append(Exercise(path.name, meta["grade_id"], function.group(1),
                              float(_nbgrader(test)["points"]), code[0].source, cell.source, test.source))
    return found


def exercises(notebook_dir: Path = NOTEBOOK_DIR) -> list[Exercise]:
    """Every chapter's exercises, in chapter order."""
    return [e for path in sorted(Path(notebook_dir).glob("*.ipynb")) for e in chapter_exercises(path)]


# ----------------------------------------------------------------------------- student copies


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook as a student gets it: solutions and hidden tests removed by nbgrader's own
    preprocessors, the check cells locked, no outputs."""
    from nbconvert.preprocessors import ClearOutputPreprocessor
    from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions, LockCells

    nb = nbformat.from_dict(nb)  # a copy: the teacher's stays as it is
    resources: dict = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), LockCells(), ClearOutputPreprocessor()):
        nb, resources = preprocessor.preprocess(nb, resources)
    return nb


def write_student_copies(out: Path, notebook_dir: Path = NOTEBOOK_DIR, *, overwrite: bool = False) -> list[Path]:
    """Every chapter (and the Chinese edition's, under zh/) without solutions, into `out`."""
    out, notebook_dir = Path(out), Path(notebook_dir)
    sources = sorted(notebook_dir.glob("*.ipynb")) + sorted(notebook_dir.glob("zh/*.ipynb"))
    if not sources:
        raise ValueError(f"no notebooks in {notebook_dir}")
    targets = [out / p.relative_to(notebook_dir) for p in sources]
    taken = [str(t) for t in targets if t.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists ({len(taken)} of the copies do); pass --overwrite to replace them")
    copies = [student_copy(nbformat.read(p, as_version=4)) for p in sources]  # all made before any is written
    for nb, target in zip(copies, targets, strict=True):
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".ipynb.partial")
        nbformat.write(nb, partial)
        partial.replace(target)
    return targets


# ----------------------------------------------------------------------------- grading


def submissions(folder: Path) -> list[tuple[str, Path]]:
    """(student, notebook) for every notebook under `folder`/<student>/ (any depth below it, as
    nbgrader's submitted/<student>/<assignment>/ too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"submissions folder {folder} does not exist (expected SUBMISSIONS/<student>/*.ipynb)")
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts):  # .ipynb_checkpoints and the like
            continue
        if len(parts) < 2:
            raise ValueError(f"{path}: put each student's notebooks in a folder named after the student "
                             f"(SUBMISSIONS/<student>/{path.name})")
        found.append((parts[0], path))
    return found


def _find_solution(cells: list, exercise: Exercise):
    """The student's solution cell: by its nbgrader id, else by its `def my_…(`; None if gone."""
    code = [c for c in cells if c.get("cell_type") == "code"]
    by_id = [c for c in code if _nbgrader(c).get("grade_id") == exercise.grade_id]
    by_def = [c for c in code if re.search(rf"^def {exercise.function}\(", c.get("source", ""), re.M)]
    for candidates in (by_id, by_def):
        if candidates:
            return candidates[-1]  # the last one, as a kernel run top to bottom would define it
    return None


def _stub(exercise: Exercise) -> str:
    cell = nbformat.v4.new_code_cell(exercise.solution, metadata={"nbgrader": {
        "solution": True, "grade": False, "grade_id": exercise.grade_id, "locked": False, "schema_version": 3}})
    return student_copy(nbformat.v4.new_notebook(cells=[cell])).cells[0].source


def _same_code(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def _text(outputs: list, *, errors: bool = True, stream: str = "stderr") -> str:
    parts = [o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == stream]
    if errors:
        parts += [f"{o.get('ename')}: {o.get('evalue')}" for o in outputs if o.get("output_type") == "error"]
    return " ".join(" ".join(parts).split())


def _kernel_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"  # figures a solution might draw never wait for a window
    return env


def grade_notebook(student: str, path: Path, chapter: list[Exercise], *, timeout: float = TIMEOUT) -> list[Row]:
    """One row per exercise of `chapter` for one submitted notebook (see the module docstring)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from jupyter_core.utils import run_sync
    from nbgrader.utils import determine_grade

    def row(exercise, points, status, message):
        return Row(student, path.name, exercise.grade_id, points, exercise.points, status, message)

    try:
        submitted = nbformat.read(path, as_version=4)
    except Exception as e:  # not a notebook at all: the student's file, reported, not raised
        return [row(x, 0.0, "error", f"could not read the notebook: {type(e).__name__}: {e}") for x in chapter]

    cells, rows, planned = [], {}, []
    language = next((m.group(1) for c in submitted.cells if c.get("cell_type") == "code"
                     for m in [_LANGUAGE.search(c.get("source", ""))] if m), None)
    if language:
        cells.append(nbformat.v4.new_code_cell(f"from tutorial_ldm.language import set_language\n"
                                               f"set_language({language!r})"))
    cells.append(nbformat.v4.new_code_cell(chapter[0].setup))
    for exercise in chapter:
        solution = _find_solution(submitted.cells, exercise)
        if solution is None:
            rows[exercise.grade_id] = row(exercise, 0.0, "missing", f"no cell defines {exercise.function}")
            continue
        if _same_code(solution.source, _stub(exercise)):
            rows[exercise.grade_id] = row(exercise, 0.0, "not attempted", "the exercise cell is as handed out")
            continue
        sol = nbformat.v4.new_code_cell(solution.source)
        test = nbformat.v4.new_code_cell(exercise.test, metadata={"nbgrader": {
            "grade": True, "solution": False, "points": exercise.points,
            "grade_id": f"{exercise.grade_id}_check", "locked": True, "schema_version": 3}})
        planned.append((exercise, len(cells), len(cells) + 1))
        cells += [sol, test]

    if planned:
        nb = nbformat.v4.new_notebook(cells=cells, metadata=submitted.get("metadata", {}))
        deadline = time.monotonic() + timeout
        # the async manager: with a blocking one, a kernel that dies mid-cell stalls nbclient's loop
        km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
        client = NotebookClient(nb, km=km, timeout=int(timeout), startup_timeout=int(min(timeout, 120)),
                                allow_errors=True, resources={"metadata": {"path": str(path.parent)}},
                                timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
        finished = set()  # the cells whose reply came back; a cell cut off by the time limit is not one
        client.on_cell_executed = lambda cell, cell_index, execute_reply: finished.add(cell_index)
        stopped = None
        try:
            # the kernel's own console chatter (its TCP notice) stays out of the teacher's terminal
            client.execute(env=_kernel_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except CellTimeoutError:
            stopped = ("timed out", f"the notebook ran past its limit of {timeout:g} s")
        except DeadKernelError:
            stopped = ("crashed", "the kernel died (the code ended the Python process, or ran out of memory)")
        except RuntimeError as e:  # the kernel did not start in time
            stopped = ("timed out", f"the kernel did not start: {e}")
        finally:  # nbclient leaves a kernel it was handed running
            if km.has_kernel:
                run_sync(km.shutdown_kernel)(now=True)
        for exercise, i_sol, i_test in planned:
            sol, test = nb.cells[i_sol], nb.cells[i_test]
            if i_test not in finished:
                rows[exercise.grade_id] = row(exercise, 0.0, *stopped)
                continue
            points, _ = determine_grade(test)
            if points:
                rows[exercise.grade_id] = row(exercise, float(points), "passed",
                                              _text(test.outputs, stream="stdout") or "correct")
            elif any(o.get("output_type") == "error" for o in sol.outputs) and not _text(test.outputs, errors=False):
                rows[exercise.grade_id] = row(exercise, 0.0, "error",
                                              "the exercise cell raised " + _text(sol.outputs))
            else:
                rows[exercise.grade_id] = row(exercise, 0.0, "failed", _text(test.outputs) or "the check failed")
    return [rows[x.grade_id] for x in chapter]


def grade(folder: Path, out: Path, *, notebook_dir: Path = NOTEBOOK_DIR, timeout: float = TIMEOUT,
          progress: bool = True) -> list[Row]:
    """Grade every notebook under `folder`/<student>/; write `out` (CSV, one row per student and
    exercise) and return the rows. A notebook is matched to its chapter by its exercises' nbgrader
    ids, else by its file name (a Chinese copy of a chapter is graded like the English one)."""
    from tqdm.auto import tqdm

    if timeout <= 0:
        raise ValueError(f"timeout {timeout!r}: give the seconds one notebook may take, e.g. {TIMEOUT}")
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: grades are written as .csv")
    chapters: dict[str, list[Exercise]] = {}
    for exercise in exercises(notebook_dir):
        chapters.setdefault(exercise.notebook, []).append(exercise)
    by_id = {x.grade_id: name for name, chapter in chapters.items() for x in chapter}
    rows = []
    for student, path in tqdm(submissions(folder), desc="grading", unit="notebook", disable=not progress):
        chapter = _chapter_of(path, chapters, by_id)
        if chapter is not None:
            rows += grade_notebook(student, path, chapters[chapter], timeout=timeout)
    write_csv(rows, out)
    return rows


def _chapter_of(path: Path, chapters: dict, by_id: dict) -> str | None:
    try:
        ids = {_nbgrader(c).get("grade_id") for c in nbformat.read(path, as_version=4).cells}
    except Exception:  # unreadable: graded by its name, and reported as unreadable there
        ids = set()
    return next((by_id[i] for i in ids if i in by_id), path.name if path.name in chapters else None)


def write_csv(rows: Iterable[Row], out: Path) -> Path:
    """grades.csv, written whole or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".csv.partial")
    with open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[f.name for f in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    partial.replace(out)
    return out
