"""The studio, driven like a student: set values, click Generate, look at what it shows.

Every run is the shipped tiny model at 64×64 with a few steps, so the whole file stays quick.
"""

import json
import html
import io
import os
import re
import shutil
import string
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from studio_driver import click, status
from tiny_sd import shipped_pipe, tiny_sd_files

import tutorial_ldm
import tutorial_ldm.studio.app as studio_app
from tutorial_ldm.autoencoder import native_size
from tutorial_ldm.generation import generate
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters, save_image
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.settings import GenerationSettings, defaults_for
from tutorial_ldm.studio import STRINGS, studio
from tutorial_ldm.studio.job import Job
from tutorial_ldm.studio.render import PIXELATED, STALE

REPO = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u4e00-\u9fff]")
STEPS = 4  # enough to exercise every part; the pictures themselves are not judged here


@pytest.fixture
def app(tmp_path):
    """A studio on the shipped model with an empty models folder and a temporary save folder."""
    app = studio(shipped_pipe(), models_dir=tmp_path / "models")
    app.save_dir = tmp_path / "outputs"
    app.steps.value = STEPS
    return app


def is_error(app):
    return "color:#c62828" in status(app)


def is_warning(app):
    return "⚠️" in status(app)


def test_public_attributes_and_defaults(app):
    for name in ("model", "prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "width",
                 "height", "batch_size", "batch_count", "generate_button", "stop_button", "save_button",
                 "png_info", "language_button", "status", "progress", "preview", "gallery", "last_images"):
        assert hasattr(app, name), name
    pipe = shipped_pipe()
    assert app.pipe is pipe and app.last_images == [] and app.language == app.lang == "en"
    assert (app.width.value, app.height.value) == native_size(pipe) == (64, 64)
    assert app.width_slider.step == 4 and app.width_slider.max == 256 and app.seed.value == -1
    defaults = defaults_for(pipe)  # the one home of defaults: the studio shows the same
    assert (app.cfg.value, app.sampler.value) == (defaults.guidance, defaults.sampler)
    assert app.steps.value == app.steps_slider.value == STEPS  # the fixture's, typed into the box
    recommended = json.loads((SHIPPED_MODEL / "generation_defaults.json").read_text())["guidance"]
    assert app.cfg.value == recommended != GenerationSettings().guidance  # the tiny model's own, not SD's
    assert app.model.value == "given" and len(app.model.options) == 1  # the shipped one, not twice
    assert ("Euler a", "euler_a") in app.sampler.options
    assert not is_error(app) and "Ready" in status(app)


def test_the_old_addresses_still_work():
    import tutorial_ldm.widgets as widgets

    assert widgets.studio is studio and widgets.STRINGS is STRINGS
    app = tutorial_ldm.studio(shipped_pipe())  # the package answers a call
    assert isinstance(app, widgets.Studio) and app.pipe is shipped_pipe()


def test_generate_shows_the_images_the_seed_and_their_settings(app):
    app.prompt.value = "a blue square at the top"
    app.negative_prompt.value = "(red:1.2)"
    app.sampler.value = "dpmpp_2m"
    app.cfg.value = 4.0
    app.seed.value = 42
    app.batch_size.value = 2
    progress = []
    app.progress.observe(lambda change: progress.append(change["new"]), names="value")

    images = click(app)

    assert images is app.last_images and len(images) == 2
    assert all(isinstance(im, Image.Image) and im.size == (64, 64) for im in images)
    assert [s.seed for s in app.last_settings] == [42, 43]  # image k uses seed + k
    assert app.last_seed == 42 and "seed 42–43" in status(app) and not is_error(app)
    assert progress[-STEPS:] == list(range(1, STEPS + 1)) and app.progress.max == STEPS
    # the grid: one cell per image, shown 3× with sharp pixels, each with its own settings text
    assert len(app.gallery.children) == 2
    pictures = [cell.children[0] for cell in app.gallery.children]
    assert all(p.width == p.height == "192" and PIXELATED in p._dom_classes for p in pictures)
    captions = [cell.children[1].value for cell in app.gallery.children]
    assert "Seed: 42" in captions[0] and "Seed: 43" in captions[1]
    assert "Sampler: DPM++ 2M" in captions[0] and "CFG scale: 4" in captions[0]
    # the studio passed exactly these settings: generate() itself gives the same pixels
    reference = generate(shipped_pipe(), "a blue square at the top", "(red:1.2)", steps=STEPS,
                         guidance=4.0, seed=42, sampler="dpmpp_2m", batch_size=2, progress=False)
    for ours, theirs in zip(images, reference):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
        assert ours.info["parameters"] == theirs.info["parameters"]
    assert not app.generate_button.disabled and not app.save_button.disabled


def test_batch_count_runs_batches_one_after_another(app):
    app.seed.value, app.batch_size.value, app.batch_count.value = 10, 2, 2
    app.preview_every = 2
    progress, captions = [], []
    app.progress.observe(lambda change: progress.append(change["new"]), names="value")
    app.preview.observe(lambda _: captions.append(html.unescape(app.preview_caption.value)), names="value")
    images = click(app)
    assert [re.sub("<[^>]+>", "", c) for c in captions] == ["batch 1/2, step 2/4", "batch 2/2, step 2/4"]
    assert len(images) == 4 and [s.seed for s in app.last_settings] == [10, 11, 12, 13]
    assert app.progress.max == 2 * STEPS and progress[-2 * STEPS:] == list(range(1, 2 * STEPS + 1))
    assert "4 image(s)" in status(app) and "seed 10–13" in status(app)
    second = generate(shipped_pipe(), app.prompt.value, steps=STEPS, seed=12, batch_size=2,
                      progress=False)  # the second batch is generate's batch at seed 12
    for ours, theirs in zip(images[2:], second):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_slider_rounding_from_the_browser_does_not_reach_the_settings(app):
    app.cfg_slider.value = 5.000000000000001  # what JupyterLab's slider sent for 5 in a real session
    assert app.cfg.value == 5.0
    images = click(app)
    assert "CFG scale: 5," in images[0].info["parameters"]


def test_sliders_and_boxes_follow_each_other(app):
    app.width_slider.value = 128
    assert app.width.value == 128
    app.width.value = "96"  # typed into the box: a number the slider can take
    assert app.width.value == 96 and app.width_slider.value == 96
    app.width.value = "65"  # one it cannot take: the box keeps it, the slider stays
    assert app.width.value == 65 and app.width_slider.value == 96


def test_random_seed_is_shown_and_can_be_reused(app):
    first = click(app)
    seed = app.last_seed
    assert 0 <= seed < 2**32 and f"seed {seed}" in status(app)
    app.reuse_seed_button.click()
    assert app.seed.value == seed
    again = click(app)
    assert np.array_equal(np.asarray(first[0]), np.asarray(again[0]))
    app.random_seed_button.click()
    assert app.seed.value == -1


def test_a_click_during_a_run_starts_nothing_and_stop_interrupts(app, monkeypatch, tmp_path):
    started, proceed, calls = threading.Event(), threading.Event(), []
    other = tmp_path / "models" / "tiny-sd"
    shutil.copytree(tiny_sd_files().folder, other)
    app.refresh_button.click()

    def slow_generate(pipe, *args, callback, **kwargs):
        calls.append(kwargs)

        def hold(i, total, x, denoised):
            started.set()
            assert proceed.wait(60)
            callback(i, total, x, denoised)

        return generate(pipe, *args, callback=hold, **kwargs)

    monkeypatch.setattr(studio_app, "generate", slow_generate)
    app.generate_button.click()
    assert started.wait(60)
    assert app.busy and app.generate_button.disabled and app.model.disabled and app.png_info.disabled
    assert not app.stop_button.disabled
    app.generate_button.click()  # ignored: one run at a time
    app.model.value = str(other)  # refused: the model cannot change under a running generation
    assert app.model.value == "given"
    app.stop_button.click()
    proceed.set()
    app.wait(timeout=60)
    assert len(calls) == 1 and app.pipe is shipped_pipe()
    assert "Stopped after 1 of 4 steps" in status(app) and app.last_images == []
    assert not app.generate_button.disabled and app.stop_button.disabled and not app.busy
    monkeypatch.undo()
    assert len(click(app)) == 1  # and the next run goes through


def test_live_preview_takes_the_first_images_place_and_old_images_look_stale(app):
    app.batch_size.value = 2
    click(app)  # the previous run, on screen when the next one starts
    app.steps.value, app.preview_every = 6, 2
    seen = []

    def look(change):
        cells = app.gallery.children
        seen.append(dict(
            png=Image.open(io.BytesIO(change["new"])), size=(app.preview.width, app.preview.height),
            first=cells[0].children[0] is app.preview, caption=cells[0].children[1].value,
            others_stale=[STALE in cell.children[0]._dom_classes and "Previous run" in cell.children[1].value
                          for cell in cells[1:]],
        ))

    app.preview.observe(look, names="value")
    click(app)
    assert len(seen) == 2  # after steps 2 and 4; at step 6 the real image is shown instead
    for shown, step in zip(seen, (2, 4)):
        assert shown["png"].size == (16, 16)  # the first image's latents, one pixel per cell …
        assert shown["size"] == ("192", "192") and PIXELATED in app.preview._dom_classes  # … at the image's size
        assert shown["first"] and f"step {step}/6" in shown["caption"]
        assert shown["others_stale"] == [True]
    cells = app.gallery.children  # the new images, none stale
    assert len(cells) == 2 and all(cell.children[0] is not app.preview for cell in cells)
    assert not any(STALE in cell.children[0]._dom_classes for cell in cells)


def test_a_failing_preview_does_not_stop_the_images(app, monkeypatch):
    def broken(vae):
        raise FloatingPointError("NaN in the fit")

    monkeypatch.setattr(studio_app, "latent_rgb_for", broken)
    app.preview_every = 1
    images = click(app)
    assert len(images) == 1 and not is_error(app)
    assert "No live preview: FloatingPointError: NaN in the fit" in status(app)


@pytest.mark.parametrize(
    "widget, bad, good, words",
    [
        ("width", 65, 64, ["Width 65", "multiple of 4", "For example 64"]),
        ("width", "1000", 64, ["Width 1000", "from 4 to 256", "For example 256"]),
        ("height", 30, 32, ["Height 30", "multiple of 4", "32"]),
        ("seed", 2**32, 7, ["Seed 4294967296", "-1", "4294967295"]),
        ("seed", "abc", 7, ['Seed "abc"', "-1", "4294967295"]),
        ("steps", 0, 3, ["Steps 0", "from 1 to 1000"]),
        ("steps", "ten", 3, ['Steps "ten"', "integer"]),
        ("cfg", "high", 4.5, ['CFG scale "high"', "number"]),
        ("batch_size", 9, 2, ["Batch size 9", "from 1 to 8"]),
        ("batch_count", 0, 1, ["Batch count 0", "from 1 to 100"]),
        ("prompt", "a (red:1.2.3) circle", "a (red:1.2) circle", ["prompt", "1.2.3"]),
        ("negative_prompt", "(blue:1..5)", "(blue:1.5)", ["negative prompt", "1..5"]),
    ],
)
def test_a_value_the_widgets_cannot_take_is_reported_not_changed(app, widget, bad, good, words):
    getattr(app, widget).value = bad
    assert getattr(app, widget).value == bad or str(getattr(app, widget).value) == bad  # kept as typed
    app.generate_button.click()
    assert not app.busy and app.wait() == []
    assert is_error(app)
    for word in words:
        assert word in status(app), (word, app.status.value)
    getattr(app, widget).value = good
    images = click(app)
    assert images and not is_error(app)
    assert images[0].size == (app.width.value, app.height.value)


@pytest.mark.parametrize(
    "error, words",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), ["Out of memory", "low_vram"]),
        (FloatingPointError("NaN latents"), ["NaN", "float32"]),
        (RuntimeError("something deep inside"), ["unexpected", "RuntimeError", "something deep inside"]),
    ],
)
def test_errors_during_generation_are_explained_and_the_app_stays_usable(app, monkeypatch, error, words):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(studio_app, "generate", failing)
    assert click(app) == []
    assert is_error(app)
    for word in words:
        assert word in status(app)
    assert not app.generate_button.disabled and not app.busy
    monkeypatch.undo()
    assert len(click(app)) == 1 and not is_error(app)


def test_unknown_words_and_a_foreign_size_are_warnings_not_errors(app):
    app.prompt.value = "一个红色的圆形在左边"  # the tiny model's tokenizer knows only English words
    images = click(app)
    assert len(images) == 1 and not is_error(app) and is_warning(app)
    assert "does not know these words" in status(app) and "一个红色的圆形在左边" in status(app)
    app.prompt.value = "a (red:1.2) circle, on the left"
    click(app)
    assert not is_warning(app)  # every word known; weights syntax and punctuation are no words
    app.width.value = 128
    images = click(app)
    assert images[0].size == (128, 64) and is_warning(app) and not is_error(app)
    assert "128×64 is not the size this model was trained at, 64×64" in status(app)


def test_models_folder_broken_and_missing_checkpoints_then_a_real_one(app, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "broken.safetensors").write_text("this is not a checkpoint")
    (folder / "gone.safetensors").write_text("deleted before it is chosen")
    shutil.copytree(tiny_sd_files().folder, folder / "tiny-sd")
    app.refresh_button.click()
    labels = [label for label, _ in app.model.options]
    assert labels == ["tiny-ldm", "broken.safetensors", "gone.safetensors", "tiny-sd"]

    app.model.value = str(folder / "broken.safetensors")
    app.wait(timeout=120)
    assert is_error(app) and "Could not load broken.safetensors" in status(app)
    assert "not a usable checkpoint" in status(app) and "settings" not in status(app)
    assert "Still using tiny-ldm" in status(app)
    assert app.model.value == "given" and app.pipe is shipped_pipe()  # back to the working model

    (folder / "gone.safetensors").unlink()
    app.model.value = str(folder / "gone.safetensors")
    app.wait(timeout=120)
    assert is_error(app) and "missing" in status(app) and app.model.value == "given"
    assert len(click(app)) == 1  # still usable

    app.model.value = str(folder / "tiny-sd")
    app.wait(timeout=300)
    assert not is_error(app) and "Loaded tiny-sd" in status(app)
    size = native_size(app.pipe)
    assert (app.width.value, app.height.value) == size and app.width_slider.step == 8  # SD's VAE factor
    assert app.cfg.value == defaults_for(app.pipe).guidance == 7  # A1111's default for SD checkpoints
    app.steps.value = 2
    images = click(app)
    assert images[0].size == size and "Model: tiny-sd" in images[0].info["parameters"]


def test_an_unreadable_subfolder_is_skipped_and_said(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    (folder / "locked").mkdir(parents=True)
    shutil.copytree(tiny_sd_files().folder, folder / "tiny-sd")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":  # what a chmod 000 folder does to a normal user
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    app = studio(shipped_pipe(), models_dir=folder)  # opens, lists the rest, and says what it skipped
    assert [label for label, _ in app.model.options] == ["tiny-ldm", "tiny-sd"]
    assert "Ready" in status(app) and is_warning(app)
    assert "locked (Permission denied)" in status(app)
    app._say("nothing_to_save")  # something else in the status, then 🔄 finds the folder still locked
    app.refresh_button.click()
    assert is_warning(app) and "locked (Permission denied)" in status(app) and "Ready" not in status(app)


def test_any_pipeline_from_load_pipeline():
    pipe = load_pipeline(tiny_sd_files().folder, device="cpu")  # SD-1.5 architecture, tiny
    app = studio(pipe)
    assert app.model.options[0] == ("diffusers", "given") and app.width_slider.step == 8
    app.steps.value, app.seed.value, app.batch_size.value = 2, 5, 3
    images = click(app)
    assert len(images) == 3 and images[0].size == native_size(pipe)
    assert [read_parameters(im).seed for im in images] == [5, 6, 7]
    assert not is_warning(app)  # CLIP's byte-level BPE has no unknown words


def test_something_that_is_not_a_pipeline_is_refused_clearly():
    with pytest.raises(TypeError, match=r"load_pipeline\(\).*unet.*got str 'notapipe'"):
        studio("notapipe")


def test_default_is_the_shipped_model():
    app = studio()
    assert app.model.value == "shipped" and app.model.options[0][0] == "tiny-ldm (shipped)"
    assert app.pipe is not None and (app.width.value, app.height.value) == (64, 64)
    assert app.steps.value == defaults_for(app.pipe).steps


def test_save_writes_pngs_that_carry_their_settings_and_never_overwrites(app):
    assert app.save() == [] and "Generate first" in status(app)
    app.seed.value = 1234
    app.batch_size.value = 2
    images = click(app)
    app.save_button.click()
    saved = sorted(app.save_dir.iterdir())
    assert [p.name for p in saved] == ["00000-1234.png", "00001-1235.png"]
    for path, image in zip(saved, images):
        with Image.open(path) as png:
            assert png.info["parameters"] == image.info["parameters"]
            assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(image))
        assert read_parameters(path).seed == read_parameters(image).seed
    assert "Saved 2 image(s)" in status(app)
    again = app.save()  # numbering goes on, nothing is overwritten
    assert [p.name for p in again] == ["00002-1234.png", "00003-1235.png"]
    (app.save_dir / "99999-1.png").write_bytes(b"a student's earlier image")
    assert [p.name for p in app.save()] == ["100000-1234.png", "100001-1235.png"]  # on past 99,999
    assert [p.name for p in app.save()] == ["100002-1234.png", "100003-1235.png"]
    assert (app.save_dir / "99999-1.png").read_bytes() == b"a student's earlier image"
    assert app.save(app.save_dir / "99999-1.png") == []  # a file where the folder should be
    assert is_error(app) and "Could not save the images" in status(app)


def test_png_info_fills_the_controls_and_makes_the_same_image(app, tmp_path):
    made = generate(shipped_pipe(), "a green triangle at the top", "small", steps=3, guidance=4.5, seed=77,
                    sampler="ddim", width=64, height=96, progress=False)[0]
    path = save_image(made, tmp_path / "00000-77.png")

    app.png_info.value = ({"name": path.name, "type": "image/png", "size": path.stat().st_size,
                           "content": memoryview(path.read_bytes()),
                           "last_modified": datetime.now(timezone.utc)},)  # an upload
    assert (app.prompt.value, app.negative_prompt.value) == ("a green triangle at the top", "small")
    assert (app.steps.value, app.cfg.value, app.seed.value, app.sampler.value) == (3, 4.5, 77, "ddim")
    assert (app.width.value, app.height.value) == (64, 96)
    assert "Settings of 00000-77.png are in the controls" in status(app) and not is_error(app)
    images = click(app)
    assert np.array_equal(np.asarray(images[0]), np.asarray(made))  # the same image again

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert app.load_png(plain) is None
    assert is_error(app) and "plain.png has no settings to read" in status(app)
    assert app.load_png(b"not a png at all", name="junk.png") is None and "junk.png" in status(app)


def test_parsed_weights_on_request(app):
    assert app.weights.layout.display == "none"
    app.negative_prompt.value = "(worst quality:2), lowres"
    app.weights_button.value = True
    shown = app.weights.value
    assert "worst quality" in shown and "<td>2</td>" in shown and app.weights.layout.display is None
    app.prompt.value = "a ((red)) circle"
    assert "1.21" in app.weights.value  # updated as the student types


LABELLED = {"model": "model", "prompt": "prompt", "negative_prompt": "negative_prompt", "sampler": "sampler",
            "steps": "steps", "cfg": "cfg", "seed": "seed", "width": "width", "height": "height",
            "batch_size": "batch_size", "batch_count": "batch_count", "generate_button": "generate",
            "save_button": "save", "stop_button": "stop", "weights_button": "show_weights",
            "png_info": "png_info", "language_button": "language"}


def test_chinese_labels_and_messages():
    app = studio(shipped_pipe(), lang="zh")
    zh = STRINGS["zh"]
    for attribute, key in LABELLED.items():
        label = getattr(app, attribute).description
        assert label == zh[key] and CJK.search(label), (attribute, label)
    assert CJK.search(app.status.value)  # "就绪…"
    app.width.value = 63
    app.generate_button.click()
    assert is_error(app) and "错误：宽度 63 不可用：请使用 4 的正整数倍。例如 64。" in status(app)


def test_the_language_switch_relabels_everything_and_says_the_status_again(app):
    app.seed.value = "abc"
    app.generate_button.click()
    assert 'Seed "abc" is not allowed' in status(app)
    app.language_button.value = "zh"  # the student clicks 中文
    assert app.language == "zh" and app.generate_button.description == "生成"
    assert "种子 “abc” 不可用：请用 -1 表示随机" in status(app)
    assert app.model.options[0][0] == "tiny-ldm（内置）" or app.model.options[0][1] == "given"
    app.language = "en"  # and back, from code
    assert app.language_button.value == "en" and app.generate_button.description == "Generate"
    assert 'Seed "abc" is not allowed' in status(app)
    with pytest.raises(ValueError, match=r"language 'fr'.*en, zh"):
        app.language = "fr"


def test_the_chinese_example_prompt_is_chinese_only_for_a_model_that_reads_chinese():
    from toy_models import TOY, toy_pipeline

    from tutorial_ldm.tiny_model import build_tokenizer, speaks_chinese

    english = studio(shipped_pipe(), lang="zh")  # the shipped model knows English words only
    assert "例如 a red circle on the left（这个模型只懂英文）。" in english.prompt.placeholder
    english.language = "en"
    assert english.prompt.placeholder.startswith("What to draw, e.g. a red circle on the left.")

    bilingual = toy_pipeline()
    bilingual.tokenizer = build_tokenizer(replace(TOY, languages=("en", "zh")))
    assert speaks_chinese(bilingual.tokenizer) and not speaks_chinese(shipped_pipe().tokenizer)
    app = studio(bilingual, lang="zh")
    assert app.prompt.placeholder.startswith("要画什么，例如 左边有一个红色的圆形。")
    example = re.search(r"例如 (.*?)。", app.prompt.placeholder)[1]
    assert bilingual.tokenizer.unk_token_id not in bilingual.tokenizer(example).input_ids


def test_unknown_language_is_refused():
    with pytest.raises(ValueError, match=r"lang='fr'.*en, zh"):
        studio(shipped_pipe(), lang="fr")


def test_string_tables_have_the_same_keys_and_placeholders():
    def fields(text):
        return {name for _, name, _, _ in string.Formatter().parse(text) if name}

    en, zh = STRINGS["en"], STRINGS["zh"]
    assert en.keys() == zh.keys()
    for key in en:
        assert fields(en[key]) == fields(zh[key]), key


def test_chinese_strings_use_chinese_punctuation():
    code = re.compile(r"\(词:1\.3\)|\(worst quality:2\), lowres|load_pipeline\(\.\.\., dtype='float32'\)"
                      r"|low_vram=True|assets/tiny-ldm/README\.md|\{[^}]*\}|\(CFG\)|-1|\.\.\.")
    for key, text in STRINGS["zh"].items():
        if not CJK.search(text):
            continue
        assert not re.search(r"[:,;!?()]|\.(?!\d)", code.sub("", text)), (key, text)


def test_a_script_that_clicks_generate_and_exits_returns_0(tmp_path):
    """Before: "terminate called without an active exception" and exit status 134 (an abort)."""
    script = tmp_path / "click_and_exit.py"
    script.write_text(textwrap.dedent("""
        import time
        from tutorial_ldm.studio import studio

        app = studio()
        app.steps.value = 150
        app.generate_button.click()
        deadline = time.monotonic() + 60
        while app.progress.value < 2 and time.monotonic() < deadline:  # inside the sampler
            time.sleep(0.01)
        print("exiting at step", app.progress.value)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exiting at step 2" in result.stdout or "exiting at step 3" in result.stdout
    assert "terminate called" not in result.stderr


def test_job_runs_one_thing_at_a_time():
    gate, ran, states = threading.Event(), [], []
    job = Job(on_busy=states.append)

    def work(name):
        assert gate.wait(30)
        ran.append((name, job.stopping))

    assert job.start(work, "first") and job.busy
    assert not job.start(work, "second")  # refused while the first runs
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.05)
    job.stop()
    gate.set()
    job.wait(timeout=30)
    assert not job.busy and ran == [("first", True)] and states == [True, False]
    assert job.start(work, "third")
    job.wait(timeout=30)
    assert ran[-1] == ("third", False)  # a new run starts unstopped


def test_render_escapes_what_the_student_typed():
    from tutorial_ldm.studio import render

    t = STRINGS["en"]
    shown = render.status("<b>x</b>", t, kind="error", detail="<script>", warnings=("a < b",))
    assert "<b>x</b>" not in shown and "&lt;b&gt;x&lt;/b&gt;" in shown and "&lt;script&gt;" in shown
    assert "❌ Error: " in shown and "⚠️ a &lt; b" in shown
    caption = render.caption("Settings", 'a <img src=x onerror="alert(1)">', stale="old")
    assert "<img" not in caption and "old" in caption
    assert render.display_size(64, 64) == (192, 192) and render.display_size(256, 64) == (256, 64)
    assert render.display_size(512, 512) == (512, 512)  # big images are not enlarged


def test_vae_choice_clip_skip_and_an_sdxl_checkpoint(tmp_path, monkeypatch):
    """Issue 11: the VAE list (Automatic / None / models/VAE's files) reloads the checkpoint with
    the choice; Clip skip reaches the settings; an SDXL file is listed, loads at 1024², generates;
    the PNG text records the VAE, its hash and the clip skip."""
    from tiny_sd import a_vae_file, tiny_single_file

    from tutorial_ldm.loading import VAE_DIR_ENV

    monkeypatch.setenv(VAE_DIR_ENV, str(tmp_path / "VAE"))
    monkeypatch.setenv("TUTORIAL_LDM_CACHE", str(tmp_path / "cache"))
    models, vae = tmp_path / "models", tmp_path / "VAE" / "my-vae.safetensors"
    models.mkdir()
    vae.parent.mkdir()
    shutil.copy(tiny_single_file("sd1").file, models / "sd1.safetensors")
    shutil.copy(tiny_single_file("sdxl").file, models / "xl.safetensors")
    a_vae_file(vae)
    app = studio(models_dir=models)
    assert [v for _, v in app.vae.options] == ["Automatic", "None", str(vae)] and app.vae.value == "Automatic"
    app.model.value = str(models / "sd1.safetensors")
    app.wait(timeout=120)
    app.vae.value = str(vae)
    app.wait(timeout=120)
    assert app.pipe.model_info.vae_name == "my-vae.safetensors" and not is_error(app)
    app.steps.value, app.clip_skip.value, app.seed.value = 1, 2, 5
    s = read_parameters(click(app)[0])
    assert (s.model, s.vae, s.clip_skip) == ("sd1", "my-vae.safetensors", 2) and len(s.vae_hash) == 10
    app.clip_skip.value = 3  # the tiny text encoder has 2 layers
    app.generate_button.click()
    assert is_error(app) and "Clip skip" in status(app)

    app.vae.value, app.clip_skip.value = "Automatic", 1
    app.wait(timeout=120)
    app.model.value = str(models / "xl.safetensors")
    app.wait(timeout=120)
    assert type(app.pipe).__name__ == "StableDiffusionXLPipeline"
    assert (app.width.value, app.height.value) == (1024, 1024)
    app.width.value = app.height.value = 64
    s = read_parameters(click(app)[0])
    assert (s.model, s.vae, s.width) == ("xl", "", 64) and not is_error(app)
