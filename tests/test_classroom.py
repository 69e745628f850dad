"""The classroom kit: nbgrader's form in every chapter, student copies, and grading.

The grading tests grade chapter 1 only (the cheapest set-up cell): one student solved it, one made
the classic slip, one handed it in empty, one wrote a loop that never ends, one crashed the
kernel, one moved the cells around; the CSV must say so, row by row.
"""

import csv
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.preprocessors import CheckCellMetadata, DeduplicateIds

from tutorial_ldm import classroom
from tutorial_ldm.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_notebooks import execute_notebook, kernel_env, stderr_of  # noqa: E402

CHAPTERS = sorted((ROOT / "notebooks").glob("0[1-8]_*.ipynb"))
CH1 = ROOT / "notebooks" / "01_forward_noising.ipynb"


def test_every_chapter_has_one_exercise_in_nbgrader_form():
    found = classroom.exercises()
    assert [e.notebook for e in found] == [p.name for p in CHAPTERS]
    for path in CHAPTERS:
        nb = nbformat.read(path, as_version=4)
        CheckCellMetadata().preprocess(nb, {})  # nbgrader's own check of the cell metadata
        DeduplicateIds().preprocess(nb, {})
        (exercise,) = classroom.chapter_exercises(path)
        assert re.fullmatch(rf"ch{path.name[1]}_\w+", exercise.grade_id)
        assert "### BEGIN SOLUTION" in exercise.solution and "### END SOLUTION" in exercise.solution
        assert re.match(r"(from \S+ import \w+\n\n)?verdict = check_\w+\(my_\w+\)\n### BEGIN HIDDEN TESTS\n",
                        exercise.test), exercise.test  # the same form in every chapter
        assert exercise.test.rstrip().endswith("### END HIDDEN TESTS")
        cells = nb.cells
        k = next(i for i, c in enumerate(cells) if c.metadata.get("nbgrader", {}).get("solution"))
        assert cells[k + 1].metadata["nbgrader"] == {"grade": True, "grade_id": f"{exercise.grade_id}_check",
                                                     "locked": True, "points": 1, "schema_version": 3,
                                                     "solution": False}
        # nothing after the exercise needs the student's answer: a student copy runs on without it
        later = "\n".join(c.source for c in cells[k + 2:] if c.cell_type == "code")
        assert exercise.function not in later


def test_student_copies_have_no_solutions_and_lock_the_checks(tmp_path, capsys):
    assert main(["classroom", "student-copies", str(tmp_path / "copies")]) == 0
    written = capsys.readouterr().out.split()
    chapters = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    twins = sorted(p.name for p in (ROOT / "notebooks" / "zh").glob("*.ipynb"))
    assert chapters and twins == chapters  # the Chinese edition is handed out too, as OUT/zh/
    assert [Path(p).relative_to(tmp_path / "copies").as_posix() for p in written] == \
        chapters + [f"zh/{name}" for name in twins]
    for exercise in classroom.exercises():
        nb = nbformat.read(tmp_path / "copies" / exercise.notebook, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        solution_lines = exercise.solution.split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
        answer = [x.strip() for x in solution_lines.split("\n") if x.strip()]
        assert answer[-1].startswith("return") and answer[-1] not in text  # (a slip may share other lines)
        (sol,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert sol.source.endswith("    # YOUR CODE HERE\n    raise NotImplementedError()")
        (check,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert check.metadata["editable"] is False and check.metadata["deletable"] is False
        assert check.source == exercise.test.split("### BEGIN HIDDEN TESTS")[0].rstrip("\n")
    # the teacher's notebooks are untouched, and a second run refuses to overwrite
    assert "### BEGIN SOLUTION" in CH1.read_text()
    assert main(["classroom", "student-copies", str(tmp_path / "copies")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["classroom", "student-copies", str(tmp_path / "copies"), "--overwrite"]) == 0


EXERCISE_PRELUDE = """\
import math
import torch
from tutorial_ldm import finetune as ft
from tutorial_ldm.autoencoder import kl_divergence
from tutorial_ldm.attention import attention
from tutorial_ldm.exercises import *
from tutorial_ldm.language import set_language
from tutorial_ldm.noise_schedule import NoiseSchedule, q_sample
from tutorial_ldm.unet import timestep_embedding
"""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("language, your_turn", [("en", "your turn"), ("zh", "轮到你了")])
def test_a_student_copy_exercise_says_your_turn_and_the_chapter_goes_on(tmp_path, language, your_turn):
    """Every chapter's exercise cells as handed out, and all the code cells after them, in one
    kernel: each check cell writes one line on stderr, 'your turn', in the chapter's language;
    no cell raises (the chapters' own set-up cells are covered by tests/test_notebooks.py)."""
    cells = [nbformat.v4.new_code_cell(EXERCISE_PRELUDE + f"set_language({language!r})")]
    checks = []
    for exercise in classroom.exercises():
        copy = classroom.student_copy(nbformat.read(ROOT / "notebooks" / exercise.notebook, as_version=4))
        k = next(i for i, c in enumerate(copy.cells) if c.metadata.get("nbgrader", {}).get("solution"))
        checker = re.search(r"check_\w+", exercise.test).group(0)
        end = max(i for i, c in enumerate(copy.cells) if c.cell_type == "code" and checker in c.source)
        checks.append(len(cells) + 1)
        cells += [nbformat.v4.new_code_cell(c.source) for c in copy.cells[k:end + 1]
                  if c.cell_type == "code"]  # the answer as handed out, its check, the slip, the reference
    path = tmp_path / "exercises.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    nb = execute_notebook(path, cwd=tmp_path)
    errors = stderr_of(nb)
    assert len(errors) == len(checks) == 8, "\n".join(errors)
    for i in checks:
        (line,) = [o.text for o in nb.cells[i].outputs if o.get("name") == "stderr"]
        assert line.startswith("❌ ") and your_turn in line and line.count("\n") == 1, line


def _submission(folder: Path, student: str, solution_body: str | None, *, shuffle: bool = False) -> Path:
    """Chapter 1's student copy with the exercise answered by `solution_body` (None: as handed out)."""
    nb = classroom.student_copy(nbformat.read(CH1, as_version=4))
    (sol,) = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    if solution_body is not None:
        sol.source = "def my_q_sample(x0, t, noise, alphas_cumprod):\n" + solution_body
    if shuffle:  # cells reordered, and the exercise's nbgrader metadata lost in a copy-paste
        sol.metadata = {}
        nb.cells = nb.cells[::-1]
    path = folder / student / CH1.name
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


RIGHT = """    a = alphas_cumprod[t].reshape(-1, *[1] * (x0.dim() - 1))
    return a.sqrt() * x0 + (1 - a).sqrt() * noise
"""
SLIP = """    a = alphas_cumprod[t].reshape(-1, *[1] * (x0.dim() - 1))
    return a * x0 + (1 - a) * noise
"""
HANGS = """    while True:
        pass
"""
CRASHES = """    import os
    os._exit(1)
"""


@pytest.mark.timeout(600)
def test_grading_gives_one_row_per_student_with_what_went_wrong(tmp_path):
    subs = tmp_path / "submitted"
    _submission(subs, "ada", RIGHT)
    _submission(subs, "ben", SLIP)
    _submission(subs, "cai", None)
    _submission(subs, "dan", HANGS)
    _submission(subs, "eve", CRASHES)
    _submission(subs, "fay", RIGHT, shuffle=True)
    (subs / "gus").mkdir()
    (subs / "gus" / CH1.name).write_text("{ not a notebook")
    (subs / "hal").mkdir()
    (subs / "hal" / "notes.ipynb").write_text("{}")  # no chapter of the course: hal handed in nothing
    out = tmp_path / "grades.csv"
    done = subprocess.run([sys.executable, "-m", "tutorial_ldm", "classroom", "grade", str(subs), "--out", str(out),
                           "--timeout", "40", "--jobs", "2", "--notebooks", str(ROOT / "notebooks")],
                          capture_output=True, text=True, env=kernel_env(), cwd=tmp_path, timeout=540)
    assert done.returncode == 0, done.stderr
    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["ada", "ben", "cai", "dan", "eve", "fay", "gus", "hal"]
    assert all(r["exercise"] == "ch1_q_sample" and r["max_points"] == "1.0" for r in rows.values())
    summary = {s: (r["points"], r["status"]) for s, r in rows.items()}
    assert summary == {"ada": ("1.0", "passed"), "ben": ("0.0", "failed"), "cai": ("0.0", "not attempted"),
                       "dan": ("0.0", "timed out"), "eve": ("0.0", "crashed"), "fay": ("1.0", "passed"),
                       "gus": ("0.0", "error"), "hal": ("0.0", "missing")}
    assert "✅ q_sample" in rows["ada"]["message"]
    assert "Hint: the coefficients are √ᾱ_t and √(1-ᾱ_t)" in rows["ben"]["message"]
    assert "40 s" in rows["dan"]["message"]
    assert "could not read" in rows["gus"]["message"]


@pytest.mark.timeout(300)
def test_grading_keeps_a_chinese_submission_in_chinese_and_reports_broken_and_deleted_cells(tmp_path):
    subs = tmp_path / "submitted"
    path = _submission(subs, "lin", SLIP)
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell('from tutorial_ldm import set_language\nset_language("zh")'))
    nbformat.write(nb, path)
    _submission(subs, "max", "    return x0 +\n")  # a syntax error
    deleted = _submission(subs, "nia", RIGHT)
    nb = nbformat.read(deleted, as_version=4)
    nb.cells = [c for c in nb.cells if "def my_q_sample" not in c.source]
    nbformat.write(nb, deleted)
    rows = {r.student: r for r in classroom.grade(subs, tmp_path / "g.csv", timeout=60, progress=False)}
    assert rows["lin"].status == "failed" and "提示：系数是 √ᾱ_t 和 √(1-ᾱ_t)" in rows["lin"].message
    assert rows["max"].status == "error" and "SyntaxError" in rows["max"].message
    assert rows["nia"].status == "missing" and "my_q_sample" in rows["nia"].message


def test_grading_refuses_bad_input_in_one_line(tmp_path, capsys):
    loose = tmp_path / "loose"
    loose.mkdir()
    nbformat.write(nbformat.read(CH1, as_version=4), loose / CH1.name)
    def cli(argv):
        try:
            return main(argv)
        except SystemExit as e:  # argparse's own refusals
            return e.code

    for argv, words in [
        (["classroom", "grade", str(tmp_path / "nowhere")], "does not exist"),
        (["classroom", "grade", str(loose)], "folder named after the student"),
        (["classroom", "grade", str(loose), "--out", str(tmp_path / "g.xlsx")], ".csv"),
        (["classroom", "grade", str(loose), "--timeout", "0"], "timeout 0"),
        (["classroom", "grade", str(loose), "--jobs", "0"], "jobs 0"),
        (["classroom", "mark", str(loose)], "invalid choice"),
    ]:
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "g.xlsx").exists() and not list(tmp_path.glob("*.csv"))

