"""Every relative link a reader can click resolves: in the notebooks' markdown cells, README.md,
docs/*.md and bench/README.md — the file, and the #anchor (a heading of that file) where it has one.

Anchors follow GitHub's and JupyterLab's rule for headings: lower-case, punctuation dropped
(letters of any script kept), spaces to hyphens.
"""

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("notebooks/zh/*.ipynb"), ROOT / "README.md",
                    *ROOT.glob("docs/*.md"), ROOT / "bench" / "README.md"])
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|<img[^>]*\ssrc=\"([^\"]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(CODE.sub("", markdown_of(path)))}


def relative_links(path: Path) -> list[str]:
    found = [a or b for a, b in LINK.findall(CODE.sub("", markdown_of(path)))]
    return [link for link in found if not re.match(r"[a-z][a-z0-9+.-]*:", link)]  # http:, mailto:, …


def test_the_documents_exist_and_link():
    assert all(p.is_file() for p in DOCUMENTS)
    assert sum(len(relative_links(p)) for p in DOCUMENTS) >= 10


def test_anchor_rule():
    assert anchor("## 中文简介".lstrip("# ")) == "中文简介"
    assert anchor("5. Seeds and determinism") == "5-seeds-and-determinism"
    assert anchor("One jump or a thousand steps: the `same` distribution") == (
        "one-jump-or-a-thousand-steps-the-same-distribution")


def test_the_checker_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](missing.md) [bad](#nowhere) `[code](x.md)`\n")
    assert relative_links(page) == ["#top", "missing.md", "#nowhere"]
    assert broken(page) == ["missing.md (no such file)", "#nowhere (no heading with that anchor)"]


def broken(path: Path) -> list[str]:
    problems = []
    for link in relative_links(path):
        target, _, fragment = unquote(link).partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            problems.append(f"{link} (no such file)")
        elif fragment and file.suffix in (".md", ".ipynb") and fragment not in anchors(file):
            problems.append(f"{link} (no heading with that anchor)")
    return problems


@pytest.mark.parametrize("path", DOCUMENTS, ids=[str(p.relative_to(ROOT)) for p in DOCUMENTS])
def test_every_relative_link_resolves(path):
    assert broken(path) == [], f"{path.relative_to(ROOT)} has broken links"
