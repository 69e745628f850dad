"""The studio, driven like a student: set values, click Generate, look at what it shows."""

import re
import shutil
import string
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import shipped_pipe, tiny_sd_files

import tutorial_ldm.widgets as widgets
from tutorial_ldm.generation import generate, native_size
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters
from tutorial_ldm.widgets import STRINGS, studio

CJK = re.compile(r"[\u4e00-\u9fff]")
STEPS = 4  # enough to exercise every part; the pictures themselves are not judged here


@pytest.fixture
def app(tmp_path):
    """A studio on the shipped model with an empty models folder and a temporary save folder."""
    app = studio(shipped_pipe(), models_dir=tmp_path / "models")
    app.save_dir = tmp_path / "outputs"
    app.steps.value = STEPS
    return app


def click(app):
    app.generate_button.click()
    return app.wait(timeout=120)


def is_error(app):
    return "color:#c62828" in app.status.value


def test_public_attributes_and_defaults(app):
    for name in ("model", "prompt", "negative_prompt", "sampler", "steps", "cfg", "seed", "width",
                 "height", "batch_size", "generate_button", "status", "last_images"):
        assert hasattr(app, name), name
    pipe = shipped_pipe()
    assert app.pipe is pipe and app.last_images == []
    assert (app.width.value, app.height.value) == native_size(pipe) == (64, 64)
    assert app.width.step == 4 and app.seed.value == -1
    assert app.cfg.value == widgets.SHIPPED_CFG == 5  # the tiny model's own guidance
    assert app.model.value == "given" and len(app.model.options) == 1  # the shipped one, not twice
    assert "Euler a" in app.sampler.options[0] or ("Euler a", "euler_a") in app.sampler.options
    assert not is_error(app) and "Ready" in app.status.value


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
    assert [read_parameters(im).seed for im in images] == [42, 43]  # image k uses seed + k
    assert app.last_seed == 42 and "seed 42–43" in app.status.value and not is_error(app)
    assert progress[-STEPS:] == list(range(1, STEPS + 1)) and app.progress.max == STEPS
    # the grid: one cell per image, each with its own settings text
    assert len(app.gallery.children) == 2
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


def test_slider_rounding_from_the_browser_does_not_reach_the_settings(app):
    app.cfg.value = 5.000000000000001  # what JupyterLab's slider sent for 5 in a real session
    images = click(app)
    assert "CFG scale: 5," in images[0].info["parameters"]


def test_random_seed_is_shown_and_can_be_reused(app):
    first = click(app)
    seed = app.last_seed
    assert 0 <= seed < 2**32 and f"seed {seed}" in app.status.value
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

    monkeypatch.setattr(widgets, "generate", slow_generate)
    app.generate_button.click()
    assert started.wait(60)
    assert app.busy and app.generate_button.disabled and app.model.disabled
    assert not app.stop_button.disabled
    app.generate_button.click()  # ignored: one run at a time
    app.model.value = str(other)  # refused: the model cannot change under a running generation
    assert app.model.value == "given"
    app.stop_button.click()
    proceed.set()
    app.wait(timeout=60)
    assert len(calls) == 1 and app.pipe is shipped_pipe()
    assert "Stopped after 1 of 4 steps" in app.status.value and app.last_images == []
    assert not app.generate_button.disabled and app.stop_button.disabled
    monkeypatch.undo()
    assert len(click(app)) == 1  # and the next run goes through


def test_live_preview_every_few_steps(app):
    app.steps.value = 6
    app.preview_every = 2
    app.batch_size.value = 2
    previews = []
    app.preview.observe(lambda change: previews.append(change["new"]), names="value")
    click(app)
    assert len(previews) == 2  # after steps 2 and 4; at step 6 the real image is shown instead
    import io

    for png in previews:
        strip = Image.open(io.BytesIO(png))
        assert strip.mode == "RGB" and strip.width == 2 * strip.height >= 2 * 16  # two 16×16 latents, enlarged
    assert app.preview.layout.display == "none"  # hidden once the results are there


def test_a_failing_preview_does_not_stop_the_images(app, monkeypatch):
    def broken(vae):
        raise FloatingPointError("NaN in the fit")

    monkeypatch.setattr(widgets, "latent_rgb_for", broken)
    app.preview_every = 1
    images = click(app)
    assert len(images) == 1 and not is_error(app)
    assert "No live preview: FloatingPointError: NaN in the fit" in app.status.value


@pytest.mark.parametrize(
    "widget, bad, good, words",
    [
        ("width", 63, 64, ["Width 63", "multiple of 4", "64"]),
        ("height", 30, 32, ["Height 30", "multiple of 4", "32"]),
        ("seed", 2**32, 7, ["Seed 4294967296", "-1", "4294967295"]),
        ("prompt", "a (red:1.2.3) circle", "a (red:1.2) circle", ["prompt", "1.2.3"]),
        ("negative_prompt", "(blue:1..5)", "(blue:1.5)", ["negative prompt", "1..5"]),
    ],
)
def test_a_bad_value_shows_a_message_and_the_next_valid_click_works(app, widget, bad, good, words):
    getattr(app, widget).value = bad
    app.generate_button.click()
    assert not app.busy and app.wait() == []
    assert is_error(app)
    for word in words:
        assert word in app.status.value
    getattr(app, widget).value = good
    images = click(app)
    assert len(images) == 1 and not is_error(app)
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

    monkeypatch.setattr(widgets, "generate", failing)
    assert click(app) == []
    assert is_error(app)
    for word in words:
        assert word in app.status.value
    assert not app.generate_button.disabled and not app.busy
    monkeypatch.undo()
    assert len(click(app)) == 1 and not is_error(app)


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
    assert is_error(app) and "Could not load broken.safetensors" in app.status.value
    assert "Still using tiny-ldm" in app.status.value
    assert app.model.value == "given" and app.pipe is shipped_pipe()  # back to the working model

    (folder / "gone.safetensors").unlink()
    app.model.value = str(folder / "gone.safetensors")
    app.wait(timeout=120)
    assert is_error(app) and "missing" in app.status.value and app.model.value == "given"
    assert len(click(app)) == 1  # still usable

    app.model.value = str(folder / "tiny-sd")
    app.wait(timeout=300)
    assert not is_error(app) and "Loaded tiny-sd" in app.status.value
    size = native_size(app.pipe)
    assert (app.width.value, app.height.value) == size and app.width.step == 8  # SD's VAE factor
    assert app.cfg.value == 7  # A1111's default for SD checkpoints
    images = click(app)
    assert images[0].size == size and "Model: tiny-sd" in images[0].info["parameters"]


def test_any_pipeline_from_load_pipeline():
    pipe = load_pipeline(tiny_sd_files().folder, device="cpu")  # SD-1.5 architecture, tiny
    app = studio(pipe)
    assert app.model.options[0] == ("diffusers", "given") and app.width.step == 8
    app.steps.value, app.seed.value, app.batch_size.value = 2, 5, 3
    images = click(app)
    assert len(images) == 3 and images[0].size == native_size(pipe)
    assert [read_parameters(im).seed for im in images] == [5, 6, 7]


def test_default_is_the_shipped_model():
    app = studio()
    assert app.model.value == "shipped" and app.model.options[0][0] == "tiny-ldm (shipped)"
    assert app.pipe is not None and (app.width.value, app.height.value) == (64, 64)


def test_save_writes_pngs_that_carry_their_settings(app):
    assert app.save() == [] and "Generate first" in app.status.value
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
    assert "Saved 2 image(s)" in app.status.value
    again = app.save()  # numbering goes on, nothing is overwritten
    assert [p.name for p in again] == ["00002-1234.png", "00003-1235.png"]


def test_parsed_weights_on_request(app):
    assert app.weights.layout.display == "none"
    app.negative_prompt.value = "(worst quality:2), lowres"
    app.weights_button.value = True
    shown = app.weights.value
    assert "worst quality" in shown and "<td>2</td>" in shown and app.weights.layout.display is None
    app.prompt.value = "a ((red)) circle"
    assert "1.21" in app.weights.value  # updated as the student types


def test_chinese_labels_and_messages():
    app = studio(shipped_pipe(), lang="zh")
    zh = STRINGS["zh"]
    labelled = {"model": "model", "prompt": "prompt", "negative_prompt": "negative_prompt",
                "sampler": "sampler", "steps": "steps", "cfg": "cfg", "seed": "seed", "width": "width",
                "height": "height", "batch_size": "batch_size", "generate_button": "generate",
                "save_button": "save", "stop_button": "stop", "weights_button": "show_weights"}
    for attribute, key in labelled.items():
        label = getattr(app, attribute).description
        assert label == zh[key] and CJK.search(label), (attribute, label)
    assert CJK.search(app.status.value)  # "就绪…"
    app.width.value = 63
    app.generate_button.click()
    assert is_error(app) and "宽度 63" in app.status.value and "错误" in app.status.value


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
