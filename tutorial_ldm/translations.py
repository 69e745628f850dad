"""The Chinese edition stays in step with the English one by construction.

notebooks/zh/NN_name.ipynb is the twin of notebooks/NN_name.ipynb: the same cells, paired by cell
id and in the same order. Code cells are the English ones (source and metadata, copied by `sync`);
markdown cells hold the Chinese text. One extra cell, `set-language`, just before the first code
cell, switches figures, messages and hints to Chinese (`tutorial_ldm.language`).

    python -m tutorial_ldm.translations sync [05 06 …]    rebuild the zh twins from the English chapters
    python -m tutorial_ldm.translations check [05 …]      list what is out of step (exit 1 if anything)
    python -m tutorial_ldm.translations stamp 05 c12 c13  the Chinese of these cells matches their English now

`sync` never touches Chinese text: a new English cell arrives in English (untranslated, which
`check` reports), a removed one goes, code cells are replaced by the English ones. Each Chinese
markdown cell records in `metadata["translated_from"]` a hash of the English it translates, so
an English edit shows up as a stale translation until the Chinese is updated and stamped.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

from .paths import REPO_ROOT

ENGLISH_DIR = REPO_ROOT / "notebooks"
LANGUAGE_DIRS = {"zh": ENGLISH_DIR / "zh"}
SET_LANGUAGE_ID = "set-language"
SET_LANGUAGE_SOURCE = 'from tutorial_ldm.language import set_language; set_language("{lang}")'
STAMP = "translated_from"

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_ENGLISH_WORD = re.compile(r"[A-Za-z]{3,}")
# what is not prose: fenced and inline code, $math$, HTML tags, link targets, bare URLs
_NOT_PROSE = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|<[^>]*>|\]\([^)]*\)|https?://\S+", re.S)


def source_of(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _with_source(cell: dict, text: str) -> dict:
    cell["source"] = text.splitlines(keepends=True)
    return cell


def fingerprint(text: str) -> str:
    """The first 12 hex digits of the text's sha256: which English a translation was made from."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def english_words(text: str) -> tuple[int, int]:
    """(CJK characters, English words of 3+ letters) in the prose of a markdown cell."""
    prose = _NOT_PROSE.sub(" ", text)
    return len(_CJK.findall(prose)), len(_ENGLISH_WORD.findall(prose))


def is_translated(text: str) -> bool:
    """Chinese prose: some Chinese, and fewer English words than Chinese characters (English
    terms at first use are fine). A cell with no words at all (a formula) counts as translated."""
    cjk, words = english_words(text)
    return words == 0 or (cjk > 0 and words <= cjk)


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write(path: Path, nb: dict) -> None:
    """As nbformat writes it (sorted keys, one-space indent, real characters), so diffs stay small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def set_language_cell(lang: str) -> dict:
    cell = {"cell_type": "code", "execution_count": None, "id": SET_LANGUAGE_ID,
            "metadata": {}, "outputs": []}
    return _with_source(cell, SET_LANGUAGE_SOURCE.format(lang=lang))


def _check_ids(nb: dict, path: Path) -> None:
    ids = [c.get("id") for c in nb["cells"]]
    if None in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{path}: every cell needs its own id (nbformat 4.5); ids are {ids}")


def twin(english: dict, translated: dict | None, lang: str) -> dict:
    """The translated notebook rebuilt on the English one: English code cells, the translated
    markdown (by cell id) where there is one, the English markdown where there is none yet."""
    old = {c["id"]: c for c in (translated or {"cells": []})["cells"]}
    cells, first_code = [], True
    for cell in english["cells"]:
        if cell["cell_type"] == "code" and first_code:
            cells.append(set_language_cell(lang))
            first_code = False
        new = copy.deepcopy(cell)
        if cell["cell_type"] == "code":
            new["outputs"], new["execution_count"] = [], None
        elif cell["id"] in old and old[cell["id"]]["cell_type"] == cell["cell_type"]:
            mine = old[cell["id"]]
            _with_source(new, source_of(mine))
            stamp = mine.get("metadata", {}).get(STAMP)
            if stamp is None and is_translated(source_of(mine)):
                stamp = fingerprint(source_of(cell))  # translated just now: record from what
            if stamp is not None:
                new["metadata"][STAMP] = stamp
        cells.append(new)
    return {"cells": cells, "metadata": copy.deepcopy(english.get("metadata", {})),
            "nbformat": english["nbformat"], "nbformat_minor": english["nbformat_minor"]}


def problems(english: dict, translated: dict, lang: str = "zh") -> list[str]:
    """Everything in which `translated` is out of step with `english`, one sentence each."""
    expected = twin(english, translated, lang)
    found = []
    ids = [(c["id"], c["cell_type"]) for c in translated["cells"]]
    want = [(c["id"], c["cell_type"]) for c in expected["cells"]]
    if ids != want:
        found.append(f"cells differ from the English chapter's: have {ids}, want {want}")
    by_id = {c["id"]: c for c in translated["cells"]}
    english_by_id = {c["id"]: c for c in english["cells"]}
    for cell in expected["cells"]:
        mine = by_id.get(cell["id"])
        if mine is None or mine["cell_type"] != cell["cell_type"]:
            continue
        if cell["cell_type"] == "code" and (source_of(mine) != source_of(cell)
                                            or mine.get("metadata", {}) != cell["metadata"]):
            found.append(f"code cell {cell['id']} is not the English one")
        if cell["cell_type"] == "markdown":
            text = source_of(mine)
            if not is_translated(text):
                found.append(f"markdown cell {cell['id']} is still English: {text[:60]!r}")
            elif mine.get("metadata", {}).get(STAMP) != fingerprint(source_of(english_by_id[cell["id"]])):
                found.append(f"markdown cell {cell['id']}: its English changed since it was translated "
                             f"(or it was never stamped); update it, then `stamp` it")
    return found


def chapters(selected: list[str] | None = None) -> list[Path]:
    """The English chapters, all or those whose file name starts with one of `selected` ("05")."""
    paths = sorted(ENGLISH_DIR.glob("*.ipynb"))
    if not selected:
        return paths
    chosen = [p for p in paths if any(p.name.startswith(s) for s in selected)]
    unknown = [s for s in selected if not any(p.name.startswith(s) for p in paths)]
    if unknown:
        raise ValueError(f"no chapter {', '.join(unknown)}; chapters: {', '.join(p.name[:2] for p in paths)}")
    return chosen


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def twin_path(english_path: Path, lang: str = "zh") -> Path:
    return LANGUAGE_DIRS[lang] / english_path.name


def sync(selected: list[str] | None = None, lang: str = "zh") -> list[Path]:
    """Rebuild the `lang` twins of the chosen chapters; returns the files that changed."""
    changed = []
    for path in chapters(selected):
        english = read(path)
        _check_ids(english, path)
        target = twin_path(path, lang)
        translated = read(target) if target.exists() else None
        nb = twin(english, translated, lang)
        if nb != translated:
            write(target, nb)
            changed.append(target)
    return changed


def stamp(chapter: str, cell_ids: list[str], lang: str = "zh") -> None:
    """Record that the translations of `cell_ids` match their English cells as they are now."""
    (path,) = chapters([chapter])
    english = {c["id"]: c for c in read(path)["cells"]}
    target = twin_path(path, lang)
    nb = read(target)
    cells = {c["id"]: c for c in nb["cells"] if c["cell_type"] == "markdown"}
    unknown = [i for i in cell_ids if i not in cells or i not in english]
    if unknown:
        raise ValueError(f"{target.name}: no markdown cell {', '.join(unknown)}; markdown cells: {', '.join(cells)}")
    for i in cell_ids:
        cells[i]["metadata"][STAMP] = fingerprint(source_of(english[i]))
    write(target, nb)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tutorial_ldm.translations", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sync", "check"):
        sub.add_parser(name).add_argument("chapters", nargs="*", help="e.g. 05 (default: every chapter)")
    p = sub.add_parser("stamp")
    p.add_argument("chapter")
    p.add_argument("cells", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            for path in sync(args.chapters):
                print(f"updated {_shown(path)}")
            return 0
        if args.command == "stamp":
            stamp(args.chapter, args.cells)
            return 0
        bad = 0
        for path in chapters(args.chapters):
            target = twin_path(path)
            found = problems(read(path), read(target)) if target.exists() else ["missing; run sync"]
            for line in found:
                print(f"{_shown(target)}: {line}")
            bad += len(found)
        return 1 if bad else 0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
