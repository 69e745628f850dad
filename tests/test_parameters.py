"""The A1111 `parameters` PNG chunk: written as the web UI writes it, read from ours or A1111's."""

import os
import stat

import pytest
from PIL import Image

from tutorial_ldm.parameters import GenerationSettings, read_parameters, save_image

OURS = GenerationSettings(prompt="a red circle on the left", negative_prompt="(worst quality:2), lowres",
                          steps=25, sampler="euler_a", guidance=7.0, seed=1234, width=512, height=512,
                          model="tiny-ldm")


def test_written_in_a1111_format():
    assert OURS.to_text() == (
        "a red circle on the left\n"
        "Negative prompt: (worst quality:2), lowres\n"
        "Steps: 25, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1234, Size: 512x512, "
        "Model: tiny-ldm, Version: tutorial-ldm 0.1.0"
    )


def test_every_field_in_a1111s_order_and_clip_skip_1_left_out():
    full = GenerationSettings(prompt="p", steps=20, sampler="dpmpp_2m_karras", guidance=7.0, seed=1,
                              width=512, height=768, model="majicmixRealistic_v7", model_hash="7c819b6d13",
                              vae="vae-ft-mse-840000-ema-pruned.safetensors", vae_hash="735e4c3a44", clip_skip=2)
    assert full.to_text().splitlines()[-1] == (
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, "
        "Model hash: 7c819b6d13, Model: majicmixRealistic_v7, VAE hash: 735e4c3a44, "
        "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Clip skip: 2, Version: tutorial-ldm 0.1.0")
    assert "Clip skip" not in GenerationSettings(**{**full.__dict__, "clip_skip": 1}).to_text()


@pytest.mark.parametrize("change", [
    {},
    {"negative_prompt": ""},
    {"prompt": ""},
    {"prompt": "", "negative_prompt": ""},
    {"prompt": "line one,\nline two: (x:1.2)", "negative_prompt": "bad\nworse"},
    {"guidance": 7.25, "sampler": "dpmpp_2m_karras", "seed": 2**32 - 1},
    {"model": "my model, v2: final", "prompt": "红色的圆, 在左边"},
    {"clip_skip": 2, "model_hash": "7c819b6d13", "vae": "kl-f8-anime2.ckpt", "vae_hash": "df3c506e51"},
])
def test_round_trip(change):
    settings = GenerationSettings(**{**OURS.__dict__, **change})
    assert GenerationSettings.from_text(settings.to_text()) == settings


A1111_TEXT = """masterpiece, best quality, 1girl, (smile:1.2)
Negative prompt: (worst quality:2),(low quality:2),(normal quality:2),lowres,watermark,
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 3356823913, Size: 512x768, \
Model hash: 7c819b6d13, Model: majicmixRealistic_v7, Clip skip: 2, \
Lora hashes: "add_detail: 7c6bad76eb54, film: 0f58cbd6c2f6", TI hashes: "easynegative: c74b4e810b03", \
Version: v1.10.1"""

# as A1111 1.10 writes them: hires fix, a VAE file, ADetailer's fields, an emphasis setting
A1111_HIRES = """photo of a cat on a sofa, <lora:add_detail:0.6>
Negative prompt: EasyNegative, (worst quality, low quality:1.4)
Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 1234567890, Size: 768x512, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, \
VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.45, Clip skip: 2, \
ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, Hires upscale: 2, Hires steps: 15, \
Hires upscaler: 4x-UltraSharp, Lora hashes: "add_detail: 7c6bad76eb54", Emphasis: Original, Version: v1.10.1"""

# A1111 1.6: the schedule inside the sampler's name, ENSD, no Schedule type
A1111_OLD = """a castle on a hill, sunset
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: e6bb9ea85b, \
Model: anything-v3-fp16-pruned, Clip skip: 2, ENSD: 31337, Version: v1.6.0"""


def test_reads_a1111_with_extra_keys_and_quoted_values():
    s = GenerationSettings.from_text(A1111_TEXT)
    assert s.prompt == "masterpiece, best quality, 1girl, (smile:1.2)"
    assert s.negative_prompt == "(worst quality:2),(low quality:2),(normal quality:2),lowres,watermark,"
    assert (s.steps, s.sampler, s.guidance, s.seed) == (30, "dpmpp_2m_karras", 7.5, 3356823913)
    assert (s.width, s.height, s.model, s.model_hash, s.clip_skip) == (
        512, 768, "majicmixRealistic_v7", "7c819b6d13", 2)
    assert s.extra == {"Lora hashes": "add_detail: 7c6bad76eb54, film: 0f58cbd6c2f6",
                       "TI hashes": "easynegative: c74b4e810b03", "Version": "v1.10.1"}
    again = GenerationSettings.from_text(s.to_text())  # extra fields survive a round trip
    assert again == s


@pytest.mark.parametrize("text", [A1111_TEXT, A1111_HIRES])
def test_a1111_text_is_written_back_as_it_was(text):
    """Fields we do not use stay where A1111 put them; the text comes back character for character."""
    assert GenerationSettings.from_text(text).to_text() == text


def test_hires_fields_are_kept_and_ours_are_read():
    s = GenerationSettings.from_text(A1111_HIRES)
    assert (s.sampler, s.vae, s.vae_hash, s.clip_skip, s.width, s.height) == (
        "euler_a", "vae-ft-mse-840000-ema-pruned.safetensors", "735e4c3a44", 2, 768, 512)
    assert list(s.extra) == ["Denoising strength", "ADetailer model", "ADetailer confidence", "Hires upscale",
                             "Hires steps", "Hires upscaler", "Lora hashes", "Emphasis", "Version"]


def test_old_a1111_text_is_written_in_the_newer_pair():
    s = GenerationSettings.from_text(A1111_OLD)
    assert (s.sampler, s.clip_skip, s.model_hash, s.extra) == (
        "dpmpp_2m_karras", 2, "e6bb9ea85b", {"ENSD": "31337", "Version": "v1.6.0"})
    assert s.to_text() == A1111_OLD.replace("DPM++ 2M Karras,", "DPM++ 2M, Schedule type: Karras,")
    assert GenerationSettings.from_text(s.to_text()) == s


def test_a_schedule_we_do_not_have_is_not_silently_dropped():
    s = GenerationSettings.from_text("a cat\nSteps: 20, Sampler: Euler, Schedule type: Exponential, "
                                     "CFG scale: 7, Seed: 1")
    assert s.sampler == "Euler Exponential" and "Schedule type" not in s.extra


@pytest.mark.parametrize("line, sampler", [
    ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1", "euler_a"),
    ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1", "dpmpp_2m_karras"),  # A1111 < 1.9
    ("Steps: 20, Sampler: DDIM, Schedule type: Automatic, CFG scale: 7, Seed: 1", "ddim"),
    ("Steps: 20, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1", "DPM++ SDE"),  # not ours: kept
])
def test_sampler_names_from_a1111(line, sampler):
    assert GenerationSettings.from_text("a cat\n" + line).sampler == sampler


def test_text_without_a_settings_line_is_all_prompt():
    s = GenerationSettings.from_text("just a prompt, with: a colon")
    assert s.prompt == "just a prompt, with: a colon" and s.steps == GenerationSettings().steps


def test_bad_number_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'Steps' has the value 'many'; expected an integer"):
        GenerationSettings.from_text("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1")


@pytest.mark.parametrize("size", ["512", "", "512x", "x512", "512×512"])
def test_bad_size_names_the_expected_form(size):
    """Was: "has the value '', not a int" for `Size: 512`."""
    with pytest.raises(ValueError, match=rf"'Size' has the value '{size}'; expected WIDTHxHEIGHT, e\.g\. 512x512"):
        GenerationSettings.from_text(f"x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: {size}")


@pytest.mark.parametrize("prompt, negative", [
    ("Negative prompt: blue", ""),  # was read back as an empty prompt with negative "blue"
    ("Negative prompt: blue", "red"),
    ("a circle\nNegative prompt: blue", "red\nNegative prompt: green"),
    ("\\Negative prompt: one backslash", "\\\\Negative prompt: two"),
    ("\\(literal brackets\\)", "Negative prompt:"),  # A1111's escapes are left alone
])
def test_prompts_that_look_like_the_negative_marker_round_trip(prompt, negative):
    settings = GenerationSettings(**{**OURS.__dict__, "prompt": prompt, "negative_prompt": negative})
    assert GenerationSettings.from_text(settings.to_text()) == settings


def test_escaped_marker_is_written_with_one_more_backslash():
    text = GenerationSettings(prompt="Negative prompt: x", steps=2, seed=1).to_text()
    assert text.splitlines()[0] == "\\Negative prompt: x"
    assert GenerationSettings.from_text("\\(a\\)\nSteps: 2, Sampler: Euler, CFG scale: 7").prompt == "\\(a\\)"


def test_windows_line_endings_leave_no_stray_carriage_return():
    windows = OURS.to_text().replace("\n", "\r\n") + "\r\n"
    assert GenerationSettings.from_text(windows) == OURS
    two_lines = GenerationSettings(**{**OURS.__dict__, "prompt": "line one\r\nline two\r", "negative_prompt": "a\rb"})
    back = GenerationSettings.from_text(two_lines.to_text())
    assert (back.prompt, back.negative_prompt) == ("line one\nline two\n", "a\nb")
    assert "\r" not in two_lines.to_text()


def test_png_chunk_written_and_read_back(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    image.info["parameters"] = OURS.to_text()
    path = save_image(image, tmp_path / "sub" / "out.png")
    assert read_parameters(path) == OURS
    with Image.open(path) as png:
        assert png.text["parameters"] == OURS.to_text()
        assert read_parameters(png) == OURS


def test_read_parameters_errors(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    with pytest.raises(ValueError, match=r"plain\.png has no 'parameters' text chunk"):
        read_parameters(plain)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_parameters(tmp_path / "missing.png")


def test_save_image_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous image")
    image = Image.new("RGB", (8, 8))

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(image, target)
    assert target.read_bytes() == b"previous image"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left


def test_save_image_writes_normal_permissions(tmp_path):
    """Was 0600 (mkstemp's), even when replacing a 0644 file; now what `open` would give."""
    old_umask = os.umask(0o022)
    try:
        fresh = save_image(Image.new("RGB", (4, 4)), tmp_path / "fresh.png")
        replaced = tmp_path / "replaced.png"
        replaced.write_bytes(b"old")
        replaced.chmod(0o644)
        save_image(Image.new("RGB", (4, 4)), replaced)
        os.umask(0o077)
        private = save_image(Image.new("RGB", (4, 4)), tmp_path / "private.png")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert stat.S_IMODE(replaced.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600  # the umask is respected


def test_save_image_without_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous image")
    with pytest.raises(FileExistsError, match=r"out\.png exists"):
        save_image(Image.new("RGB", (4, 4)), target, overwrite=False)
    assert target.read_bytes() == b"previous image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert read_parameters(save_image(Image.open(save_image(_with_text(), tmp_path / "new.png")),
                                      tmp_path / "other.png", overwrite=False)) == OURS


def _with_text():
    image = Image.new("RGB", (4, 4))
    image.info["parameters"] = OURS.to_text()
    return image


def test_save_image_wants_png(tmp_path):
    with pytest.raises(ValueError, match=r"out\.jpg: images are saved as \.png"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "out.jpg")
    assert not list(tmp_path.iterdir())
