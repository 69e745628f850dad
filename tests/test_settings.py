"""The one settings model: every bad field is a SettingsError naming it, and the defaults that
generate(), the command line and the studio use are one set, per model."""

import json
import math
import shutil
from dataclasses import replace

import pytest
from tiny_sd import shipped_pipe, tiny_sd_files
from toy_models import toy_pipeline

import tutorial_ldm
from tutorial_ldm import parameters, settings
from tutorial_ldm.__main__ import build_parser
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.settings import (MODEL_DEFAULTS_FILE, GenerationSettings, SettingsError, defaults_for,
                                   validate)

GOOD = GenerationSettings(prompt="a red circle", steps=10, sampler="euler_a", guidance=5.0, seed=1,
                          width=64, height=64)


@pytest.mark.parametrize("field, value, allowed", [
    ("prompt", None, "a string"),
    ("prompt", 3, "a string"),
    ("negative_prompt", b"bytes", "a string"),
    ("steps", 0, "an integer from 1 to 1000"),
    ("steps", 1001, "an integer from 1 to 1000"),
    ("steps", 2.0, "an integer from 1 to 1000"),
    ("steps", True, "an integer from 1 to 1000"),
    ("steps", "10", "an integer from 1 to 1000"),
    ("guidance", -0.5, "a finite number ≥ 0"),
    ("guidance", math.nan, "a finite number ≥ 0"),
    ("guidance", math.inf, "a finite number ≥ 0"),
    ("guidance", "7", "a finite number ≥ 0"),
    ("guidance", None, "a finite number ≥ 0"),
    ("seed", -2, "-1 (random) or an integer from 0 to 4294967295"),
    ("seed", 2**32, "-1 (random) or an integer from 0 to 4294967295"),
    ("seed", 1.5, "-1 (random) or an integer"),
    ("sampler", "DPM++ SDE", "one of ddpm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras"),
    ("sampler", None, "one of ddpm"),
    ("width", 63, "a positive multiple of 4"),
    ("width", 0, "a positive multiple of 4"),
    ("width", 64.0, "a positive multiple of 4"),
    ("height", -4, "a positive multiple of 4"),
    ("height", "64", "a positive multiple of 4"),
])
def test_every_bad_field_is_named(field, value, allowed):
    with pytest.raises(SettingsError) as error:
        validate(replace(GOOD, **{field: value}), shipped_pipe())
    e = error.value
    assert isinstance(e, ValueError)
    assert (e.field, e.value) == (field, value) and e.allowed.startswith(allowed)
    assert str(e).startswith(f"{field}={value!r} must be {allowed}") and "\n" not in str(e)


def test_batch_size_and_the_last_seed():
    pipe = shipped_pipe()
    for bad in (0, -1, 2.0, None):
        with pytest.raises(SettingsError, match=rf"batch_size={bad!r} must be an integer ≥ 1") as error:
            validate(GOOD, pipe, batch_size=bad)
        assert error.value.field == "batch_size"
    with pytest.raises(SettingsError) as error:
        validate(replace(GOOD, seed=2**32 - 2), pipe, batch_size=3)
    assert error.value.field == "seed" and error.value.limits["max"] == 2**32 - 3
    assert validate(replace(GOOD, seed=2**32 - 3), pipe, batch_size=3).seed == 2**32 - 3


def test_size_far_beyond_the_native_one_is_refused_with_numbers():
    pipe = shipped_pipe()
    assert validate(replace(GOOD, width=256, height=256), pipe).width == 256  # the studio's cap: allowed
    with pytest.raises(SettingsError) as error:
        validate(replace(GOOD, width=512, height=512), pipe)
    e = error.value
    assert e.field == "size" and e.value == "512x512" and e.limits == {"max_ratio": 16, "native": (64, 64)}
    assert "64× the native pixels" in str(e) and "4.1e+03× the attention work" in str(e)


def test_validate_normalises_a_copy():
    pipe = shipped_pipe()
    given = replace(GOOD, sampler="DPM++ 2M Karras", width=None, height=None, prompt="a\r\nb\rc")
    checked = validate(given, pipe)
    assert (checked.sampler, checked.width, checked.height, checked.model) == ("dpmpp_2m_karras", 64, 64, "tiny-ldm")
    assert checked.prompt == "a\nb\nc"
    assert given.sampler == "DPM++ 2M Karras" and given.width is None  # the caller's object is untouched
    assert validate(checked, pipe) == checked


def test_the_shipped_model_recommends_its_cfg_in_its_folder():
    recommended = json.loads((SHIPPED_MODEL / MODEL_DEFAULTS_FILE).read_text())
    d = defaults_for(shipped_pipe())
    assert d.guidance == recommended["guidance"] == 2.0 and "bench/guidance_sweep.py" in recommended["why"]
    assert (d.steps, d.sampler, d.seed, d.width, d.height, d.model) == (25, "euler_a", -1, 64, 64, "tiny-ldm")


def test_other_models_get_a1111s_defaults_at_their_native_size():
    sd = tiny_sd_files().pipe  # SD's architecture at toy width
    d = defaults_for(sd)
    assert (d.guidance, d.steps, d.sampler) == (7.0, 25, "euler_a") == (
        GenerationSettings.guidance, GenerationSettings.steps, GenerationSettings.sampler)
    assert (d.width, d.height) == (64, 64)
    assert defaults_for(toy_pipeline()).guidance == 7.0


def test_a_copied_model_folder_keeps_its_recommendation(tmp_path):
    folder = tmp_path / "my-tiny"
    shutil.copytree(SHIPPED_MODEL, folder)
    (folder / MODEL_DEFAULTS_FILE).write_text(json.dumps({"guidance": 3.5, "steps": 12, "why": "mine"}))
    pipe = load_pipeline(folder, device="cpu")
    d = defaults_for(pipe)
    assert (d.guidance, d.steps, d.model) == (3.5, 12, "my-tiny")
    (folder / MODEL_DEFAULTS_FILE).write_text(json.dumps({"guidance": -1}))
    with pytest.raises(SettingsError, match=r"guidance=-1 must be a finite number"):
        defaults_for(pipe)


def test_cli_options_default_to_none_so_the_model_decides():
    args = build_parser().parse_args(["generate", "a red circle"])
    assert (args.steps, args.cfg, args.sampler, args.width, args.height) == (None,) * 5


def test_old_names_keep_working():
    from tutorial_ldm.generation import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_SEED

    assert parameters.GenerationSettings is tutorial_ldm.GenerationSettings is GenerationSettings
    assert tutorial_ldm.SettingsError is SettingsError and tutorial_ldm.defaults_for is settings.defaults_for
    assert (DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, MAX_SEED) == (25, 7.0, "euler_a", 2**32 - 1)
