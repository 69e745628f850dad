"""The A1111 `parameters` PNG chunk: written as the web UI writes it, read from ours or A1111's."""

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
        "Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: tiny-ldm"
    )


@pytest.mark.parametrize("change", [
    {},
    {"negative_prompt": ""},
    {"prompt": ""},
    {"prompt": "", "negative_prompt": ""},
    {"prompt": "line one,\nline two: (x:1.2)", "negative_prompt": "bad\nworse"},
    {"guidance": 7.25, "sampler": "dpmpp_2m_karras", "seed": 2**32 - 1},
    {"model": "my model, v2: final", "prompt": "红色的圆, 在左边"},
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


def test_reads_a1111_with_extra_keys_and_quoted_values():
    s = GenerationSettings.from_text(A1111_TEXT)
    assert s.prompt == "masterpiece, best quality, 1girl, (smile:1.2)"
    assert s.negative_prompt == "(worst quality:2),(low quality:2),(normal quality:2),lowres,watermark,"
    assert (s.steps, s.sampler, s.guidance, s.seed) == (30, "dpmpp_2m_karras", 7.5, 3356823913)
    assert (s.width, s.height, s.model) == (512, 768, "majicmixRealistic_v7")
    assert s.extra == {"Model hash": "7c819b6d13", "Clip skip": "2",
                       "Lora hashes": "add_detail: 7c6bad76eb54, film: 0f58cbd6c2f6",
                       "TI hashes": "easynegative: c74b4e810b03", "Version": "v1.10.1"}
    again = GenerationSettings.from_text(s.to_text())  # extra fields survive a round trip
    assert again == s


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
    with pytest.raises(ValueError, match=r"'Steps' has the value 'many', not a int"):
        GenerationSettings.from_text("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1")


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


def test_save_image_wants_png(tmp_path):
    with pytest.raises(ValueError, match=r"out\.jpg: images are saved as \.png"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "out.jpg")
    assert not list(tmp_path.iterdir())
