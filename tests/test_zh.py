"""The Chinese edition: every chapter has a twin in notebooks/zh/ with the English code cells and
Chinese narrative, kept in step by `python -m tutorial_ldm.translations sync`; Chinese figures
draw with a real CJK font (no boxes); the studio opens in the chapter's language."""

import copy
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import pytest

from tutorial_ldm import language, translations
from tutorial_ldm.fonts import CJK_FAMILIES, cjk_font, use_cjk_font
from tutorial_ldm.translations import (ENGLISH_DIR, SET_LANGUAGE_ID, STAMP, chapters, fingerprint,
                                       is_translated, problems, read, twin, twin_path)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ENGLISH = chapters()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def english_language(monkeypatch):
    """Each test starts (and leaves the module) in the default language."""
    monkeypatch.delenv(language.ENV_VAR, raising=False)
    monkeypatch.setattr(language, "_current", None)


def test_every_english_chapter_has_a_chinese_twin():
    assert ENGLISH
    missing = [p.name for p in ENGLISH if not twin_path(p).is_file()]
    assert missing == [], f"no Chinese twin; run `python -m tutorial_ldm.translations sync`: {missing}"
    extra = sorted({p.name for p in (ENGLISH_DIR / "zh").glob("*.ipynb")} - {p.name for p in ENGLISH})
    assert extra == [], f"Chinese chapters without an English one: {extra}"


@pytest.mark.parametrize("path", ENGLISH, ids=[p.name for p in ENGLISH])
def test_chinese_twin_is_in_step(path):
    """Same cells in the same order, the English code cells (source and metadata) plus the one
    set-language cell, every markdown cell in Chinese and translated from the English as it is now."""
    found = problems(read(path), read(twin_path(path)))
    assert found == [], "\n".join([f"notebooks/zh/{path.name}:", *found,
                                   "fix: python -m tutorial_ldm.translations sync / check"])


@pytest.mark.parametrize("path", ENGLISH, ids=[p.name for p in ENGLISH])
def test_only_the_first_code_cell_differs_and_it_sets_the_language(path):
    english = [c for c in read(path)["cells"] if c["cell_type"] == "code"]
    chinese = [c for c in read(twin_path(path))["cells"] if c["cell_type"] == "code"]
    assert chinese[0]["id"] == SET_LANGUAGE_ID
    assert translations.source_of(chinese[0]) == 'from tutorial_ldm.language import set_language; set_language("zh")'
    assert [translations.source_of(c) for c in chinese[1:]] == [translations.source_of(c) for c in english]


def _notebook(*cells):
    return {"cells": [{"cell_type": kind, "id": cid, "metadata": {}, "source": text,
                       **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                      for kind, cid, text in cells],
            "metadata": {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}


ENGLISH_NB = _notebook(("markdown", "m0", "# Chapter 9 — Noise\n\nWe add noise to an image."),
                       ("code", "c0", "x = 1"),
                       ("markdown", "m1", "The image is gone."))


def test_sync_builds_a_twin_that_check_reports_untranslated():
    nb = twin(ENGLISH_NB, None, "zh")
    assert [c["id"] for c in nb["cells"]] == ["m0", SET_LANGUAGE_ID, "c0", "m1"]
    found = problems(ENGLISH_NB, nb)
    assert len(found) == 2 and all("still English" in f for f in found)


def test_sync_keeps_chinese_takes_new_english_cells_and_english_code():
    zh = twin(ENGLISH_NB, None, "zh")
    zh["cells"][0]["source"] = ["# 第 9 章 — 噪声\n\n我们给图像加噪声。"]
    zh["cells"][3]["source"] = ["图像不见了。"]
    zh = twin(ENGLISH_NB, zh, "zh")  # the translator runs sync: the translations are stamped
    assert problems(ENGLISH_NB, zh) == []
    assert zh["cells"][0]["metadata"][STAMP] == fingerprint(ENGLISH_NB["cells"][0]["source"])

    english = copy.deepcopy(ENGLISH_NB)
    english["cells"][1]["source"] = "x = 2"  # a fix in the English code …
    english["cells"].insert(2, _notebook(("markdown", "m2", "A new exercise."))["cells"][0])
    english["cells"][3]["source"] = "The image is gone, mostly."  # … an English edit
    synced = twin(english, zh, "zh")
    assert [c["id"] for c in synced["cells"]] == ["m0", SET_LANGUAGE_ID, "c0", "m2", "m1"]
    assert translations.source_of(synced["cells"][2]) == "x = 2"
    assert translations.source_of(synced["cells"][0]).startswith("# 第 9 章")
    found = problems(english, synced)
    assert [f.split(" is ")[0].split(":")[0] for f in found] == ["markdown cell m2", "markdown cell m1"]
    assert "still English" in found[0] and "English changed" in found[1]


def test_check_catches_edited_code_and_moved_cells():
    zh = twin(ENGLISH_NB, None, "zh")
    zh["cells"][2]["source"] = "x = 1  # 中文注释"
    assert any("code cell c0 is not the English one" in f for f in problems(ENGLISH_NB, zh))
    zh = twin(ENGLISH_NB, None, "zh")
    zh["cells"][0], zh["cells"][3] = zh["cells"][3], zh["cells"][0]
    assert any("cells differ" in f for f in problems(ENGLISH_NB, zh))


@pytest.mark.parametrize("text, chinese", [
    ("A latent diffusion model makes an image.", False),
    ("潜在扩散模型（latent diffusion model）逐步去除噪声。", True),
    ("$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0$", True),  # a formula has no words to translate
    ("The `q_sample` function 加噪声 to the image and returns the result of the sampling.", False),
])
def test_what_counts_as_translated(text, chinese):
    assert is_translated(text) is chinese


def test_sync_on_the_repository_changes_nothing():
    """The committed twins are what sync makes of the committed English chapters."""
    for path in ENGLISH:
        if twin_path(path).is_file():  # a missing twin is test_every_english_chapter_has_a_chinese_twin's
            assert twin(read(path), read(twin_path(path)), "zh") == read(twin_path(path)), path.name


def test_the_command_line_reports_and_exits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(translations, "ENGLISH_DIR", tmp_path)
    monkeypatch.setattr(translations, "LANGUAGE_DIRS", {"zh": tmp_path / "zh"})
    (tmp_path / "09_noise.ipynb").write_text(json.dumps(ENGLISH_NB))
    assert translations.main(["sync"]) == 0
    assert (tmp_path / "zh" / "09_noise.ipynb").is_file()
    assert translations.main(["check", "09"]) == 1
    assert "m0 is still English" in capsys.readouterr().out
    assert translations.main(["check", "10"]) == 2
    assert "no chapter 10; chapters: 09" in capsys.readouterr().err


# --- the font --------------------------------------------------------------------------------

def _render(title: str) -> None:
    """Draw a figure with `title` to PNG; a missing glyph is an error, not a warning."""
    fig, ax = plt.subplots()
    try:
        ax.set_title(title)
        ax.set(xlabel="时间步 t", ylabel="信噪比 SNR")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=r"Glyph .* missing from font")
            fig.savefig(io.BytesIO(), format="png")
    finally:
        plt.close(fig)


def test_a_cjk_font_is_found():
    family = cjk_font()
    assert family in CJK_FAMILIES, ("no Chinese font for the figures; Debian/Ubuntu: "
                                    "sudo apt-get install fonts-noto-cjk")


def test_a_chinese_title_renders_without_missing_glyphs(english_language):
    saved = matplotlib.rcParams.copy()
    try:
        matplotlib.rcParams.update({"font.family": ["sans-serif"], "font.sans-serif": ["DejaVu Sans"]})
        # the check can fail: DejaVu Sans alone draws boxes
        with pytest.raises(UserWarning, match="missing from font"):
            _render("前向加噪：图像逐渐消失")
        language.set_language("zh")
        assert matplotlib.rcParams["font.family"] == ["sans-serif", cjk_font()]  # Latin as in English
        _render("前向加噪：图像逐渐消失，α 与 β −1")
    finally:
        matplotlib.rcParams.update(saved)


def test_no_cjk_font_is_a_warning_that_says_what_to_install(monkeypatch):
    monkeypatch.setattr("tutorial_ldm.fonts.cjk_font", lambda: None)
    with pytest.warns(UserWarning, match="fonts-noto-cjk"):
        assert use_cjk_font() is None


# --- the studio --------------------------------------------------------------------------------

def test_the_studio_opens_in_the_chapters_language(english_language):
    from tests.tiny_sd import shipped_pipe
    from tutorial_ldm.studio import studio

    assert studio(shipped_pipe()).language == "en"
    language.set_language("zh")
    app = studio(shipped_pipe())
    assert app.language == "zh" and app.generate_button.description == "生成"
    assert studio(shipped_pipe(), lang="en").language == "en"  # an explicit choice wins


# --- JupyterLab in Chinese ------------------------------------------------------------------

TRANSLATION_PLUGIN = "@jupyterlab/translation-extension:plugin"


def _lab_locale(app_settings_dir: Path, user_settings_dir: Path) -> str:
    """The locale JupyterLab's translation plugin starts with, read the way the server reads it."""
    from jupyterlab_server.settings_utils import get_settings

    schemas = Path(sys.prefix) / "share" / "jupyter" / "lab" / "schemas"
    found, _ = get_settings(str(app_settings_dir), str(schemas), str(user_settings_dir),
                            schema_name=TRANSLATION_PLUGIN)
    return found["schema"]["properties"]["locale"]["default"]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_lab_in_chinese_opens_notebooks_zh_with_jupyterlab_in_chinese(tmp_path):
    settings = tmp_path / "settings-zh"
    make = ["make", "LAB_LANG=zh", f"ZH_SETTINGS={settings}"]
    plan = subprocess.run([*make, "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "TUTORIAL_LDM_LANG=zh" in plan and "--ServerApp.root_dir=notebooks/zh" in plan
    assert f'--LabApp.app_settings_dir="{settings}"' in plan
    english = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--ServerApp.root_dir=notebooks " in english and "TUTORIAL_LDM_LANG" not in english

    assert _lab_locale(tmp_path / "none", tmp_path / "user") == "default"  # English, as JupyterLab ships
    subprocess.run([*make, str(settings / "overrides.json")], cwd=ROOT, capture_output=True, check=True)
    assert _lab_locale(settings, tmp_path / "user") == "zh_CN"

    from jupyterlab_server.translation_utils import get_language_pack, get_language_packs

    assert "zh_CN" in get_language_packs()[0], "pip install -e '.[zh]' (the language pack)"
    assert get_language_pack("zh_CN")[0], "the zh_CN language pack has no translations"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_lab_refuses_a_language_it_does_not_have():
    run = subprocess.run(["make", "-n", "lab", "LAB_LANG=fr"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode != 0 and "LAB_LANG=fr is not available; allowed: en, zh" in run.stderr
