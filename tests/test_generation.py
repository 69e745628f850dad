"""generate(): seeds, batches, sizes, PNG settings, the NaN guard, and every bad input."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from tiny_sd import nan_in_half_precision_decode, shipped_pipe, tiny_sd_files

from tutorial_ldm.generation import decode, generate, generate_many, initial_noise, native_size, vae_factor
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters, save_image
from tutorial_ldm.prompts import encode_prompts
from tutorial_ldm.samplers import SAMPLERS, to_diffusers
from tutorial_ldm.settings import GenerationSettings, SettingsError, defaults_for

PROMPT, NEGATIVE = "a red circle on the left", "(blue:1.3) background"
FAST = dict(steps=2, guidance=5.0, progress=False)


def pixels(image):
    return np.asarray(image).astype(int)


def test_images_with_their_settings():
    pipe = shipped_pipe()
    images = generate(pipe, PROMPT, NEGATIVE, seed=42, batch_size=2, sampler="Euler a", **FAST)
    assert [im.size for im in images] == [native_size(pipe)] * 2 == [(64, 64)] * 2
    for k, image in enumerate(images):
        s = read_parameters(image)
        assert (s.prompt, s.negative_prompt, s.steps, s.sampler) == (PROMPT, NEGATIVE, 2, "euler_a")
        assert (s.guidance, s.seed, s.width, s.height, s.model) == (5.0, 42 + k, 64, 64, "tiny-ldm")
    assert images[0].info["parameters"].splitlines()[-1] == (
        "Steps: 2, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 42, Size: 64x64, "
        "Model: tiny-ldm, Version: tutorial-ldm 0.1.0")


def test_same_seed_same_image_and_image_k_uses_seed_plus_k():
    pipe = shipped_pipe()
    first = generate(pipe, PROMPT, NEGATIVE, seed=7, **FAST)[0]
    assert np.array_equal(pixels(first), pixels(generate(pipe, PROMPT, NEGATIVE, seed=7, **FAST)[0]))
    second = generate(pipe, PROMPT, NEGATIVE, seed=8, **FAST)[0]
    assert np.abs(pixels(first) - pixels(second)).mean() > 1  # a different seed differs


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_image_k_of_a_batch_is_exactly_the_image_at_seed_plus_k(sampler, tmp_path):
    """Issue 14 item 9: was 1–2 levels off for 3 of 4 images. Every saved PNG of a batch now
    regenerates pixel for pixel from its own settings, for every sampler."""
    pipe = shipped_pipe()
    batch = generate(pipe, PROMPT, NEGATIVE, seed=42, batch_size=4, sampler=sampler, **FAST)
    for k, image in enumerate(batch):
        settings = read_parameters(save_image(image, tmp_path / f"{k}.png"))
        assert settings.seed == 42 + k
        again = generate(pipe, **settings.generate_kwargs(), progress=False)[0]
        assert np.array_equal(pixels(image), pixels(again)), f"image {k}"


def test_random_seed_is_reported_and_reproduces_the_image(tmp_path):
    pipe = shipped_pipe()
    image = generate(pipe, PROMPT, NEGATIVE, seed=-1, sampler="ddim", **FAST)[0]
    settings = read_parameters(save_image(image, tmp_path / "random.png"))
    assert 0 <= settings.seed < 2**32
    again = generate(pipe, **settings.generate_kwargs(), progress=False)[0]
    assert np.array_equal(pixels(image), pixels(again))
    assert again.info["parameters"] == image.info["parameters"]


@pytest.mark.parametrize("sampler", ["euler_a", "dpmpp_2m_karras"])
def test_same_pixels_as_the_stock_diffusers_pipeline(sampler):
    """Our noise, seeds, guidance and decoding reproduce diffusers' pipeline given our embeddings."""
    from diffusers import StableDiffusionPipeline

    pipe = shipped_pipe()
    ours = generate(pipe, PROMPT, NEGATIVE, seed=3, batch_size=2, sampler=sampler, **FAST)
    cond, uncond = encode_prompts(pipe, PROMPT, NEGATIVE)
    stock = StableDiffusionPipeline(**{**pipe.components, "scheduler": to_diffusers(sampler, pipe.scheduler.config)},
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    theirs = stock(prompt_embeds=cond.expand(2, -1, -1), negative_prompt_embeds=uncond.expand(2, -1, -1),
                   num_inference_steps=2, guidance_scale=5.0, height=64, width=64,
                   generator=[torch.Generator().manual_seed(3 + k) for k in range(2)]).images
    for a, b in zip(ours, theirs):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_clip_skip_is_diffusers_clip_skip_minus_one_through_generate():
    """A1111's Clip skip 2 (penultimate layer + final layer norm) is diffusers' clip_skip=1."""
    from diffusers import StableDiffusionPipeline

    pipe = tiny_sd_files().pipe
    ours = generate(pipe, PROMPT, NEGATIVE, seed=3, sampler="ddim", clip_skip=2, **FAST)
    assert ours.settings[0].clip_skip == 2 and "Clip skip: 2" in ours[0].info["parameters"]
    text_encoder = copy.deepcopy(pipe.text_encoder)
    # diffusers 0.42.1 reaches the final layer norm as text_encoder.text_model.final_layer_norm, the
    # layout before transformers 5.6 flattened CLIPTextModel (as in test_prompts.py)
    object.__setattr__(text_encoder, "text_model", text_encoder)
    stock = StableDiffusionPipeline(**{**pipe.components, "text_encoder": text_encoder,
                                       "scheduler": to_diffusers("ddim", pipe.scheduler.config)},
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    # diffusers applies clip_skip to the prompt only (its negative prompt takes the last layer): ask twice
    cond, uncond = (stock.encode_prompt(p, "cpu", 1, False, clip_skip=1)[0] for p in (PROMPT, "blue background"))
    theirs = stock(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=2, guidance_scale=5.0,
                   height=64, width=64, generator=torch.Generator().manual_seed(3)).images[0]
    plain = generate(pipe, PROMPT, "blue background", seed=3, sampler="ddim", **FAST)[0]
    skipped = generate(pipe, PROMPT, "blue background", seed=3, sampler="ddim", clip_skip=2, **FAST)[0]
    assert np.abs(pixels(skipped) - pixels(theirs)).max() <= 1
    assert np.abs(pixels(plain) - pixels(theirs)).max() > 1  # clip skip changes the image
    with pytest.raises(SettingsError, match=r"clip_skip=3 must be an integer from 1 \(the last layer\) to 2") as e:
        generate(pipe, PROMPT, clip_skip=3, **FAST)
    assert e.value.field == "clip_skip"


def test_callback_sees_every_step():
    calls = []
    generate(shipped_pipe(), PROMPT, seed=1, callback=lambda i, n, x, x0: calls.append((i, n, x.shape, x0.shape)),
             **{**FAST, "steps": 3})
    assert [(i, n) for i, n, *_ in calls] == [(0, 3), (1, 3), (2, 3)]
    assert all(shape == (1, 4, 16, 16) for *_, shape, _ in calls)


def test_other_sizes_in_multiples_of_the_vae_factor():
    pipe = shipped_pipe()
    assert vae_factor(pipe) == 4
    assert generate(pipe, PROMPT, seed=1, width=32, height=48, **FAST)[0].size == (32, 48)


def test_tiny_sd_architecture_generates():
    pipe = tiny_sd_files().pipe
    assert vae_factor(pipe) == 8 and native_size(pipe) == (64, 64)
    image = generate(pipe, "the red, (and:1.2) on", "the", seed=5, **FAST)[0]
    assert image.size == (64, 64) and read_parameters(image).seed == 5


# --- inputs that are allowed ---------------------------------------------------------------------

def test_empty_prompt_is_the_unconditional_prompt():
    """Allowed: "" encodes exactly the unconditional embedding (the one caption dropout trained)."""
    pipe = shipped_pipe()
    cond, uncond = encode_prompts(pipe, "", "")
    torch.testing.assert_close(cond, uncond)
    image = generate(pipe, "", seed=1, **FAST)[0]
    assert read_parameters(image).prompt == ""


def test_500_word_prompt_is_encoded_in_chunks():
    """Allowed: 75-token chunks (7 for 500 words), no truncation."""
    words = ("a large red circle on the left on a blue background".split() * 50)[:500]
    image = generate(shipped_pipe(), " ".join(words), seed=1, **{**FAST, "steps": 1})[0]
    assert read_parameters(image).prompt == " ".join(words)


def test_unbalanced_brackets_apply_to_the_end():
    """Allowed, as in A1111: an unclosed '(' weights the rest of the prompt."""
    pipe = shipped_pipe()
    open_ = generate(pipe, "a (red circle", seed=2, **FAST)[0]
    closed = generate(pipe, "a (red circle)", seed=2, **FAST)[0]
    assert np.array_equal(pixels(open_), pixels(closed))


# --- inputs that are refused, before any work --------------------------------------------------

@pytest.mark.parametrize("kwargs, field, message", [
    (dict(prompt="(a:1.2.3)"), None, r"weight '1\.2\.3'.*not a number"),
    (dict(width=63), "width", r"width=63 must be a positive multiple of 4"),
    (dict(height=0), "height", r"height=0 must be a positive multiple of 4"),
    (dict(width=64.0), "width", r"width=64\.0 must be a positive multiple"),
    (dict(steps=0), "steps", r"steps=0 must be an integer from 1 to 1000"),
    (dict(steps=10000), "steps", r"steps=10000 must be an integer from 1 to 1000"),
    (dict(guidance=math.nan), "guidance", r"guidance=nan must be a finite number ≥ 0"),
    (dict(guidance=-1.0), "guidance", r"guidance=-1\.0 must be a finite number ≥ 0"),
    (dict(guidance=math.inf), "guidance", r"guidance=inf must be a finite number"),
    (dict(seed=2**32), "seed", r"seed=4294967296 must be -1 \(random\) or an integer from 0 to 4294967295"),
    (dict(seed=2**32 - 1, batch_size=2), "seed", r"seed=4294967295 must be .* from 0 to 4294967294"),
    (dict(seed=-2), "seed", r"seed=-2 must be -1"),
    (dict(batch_size=0), "batch_size", r"batch_size=0 must be an integer ≥ 1"),
    (dict(sampler="DPM++ SDE"), "sampler", r"sampler='DPM\+\+ SDE' must be one of .*euler_a"),
    (dict(prompt=None), "prompt", r"prompt=None must be a string"),
    (dict(width=4096, height=4096), "size", r"size='4096x4096' must be at most 16× the model's native 64×64 "
                                            r"pixels on cpu \(e\.g\. 256×256\) \(4096× the native pixels; "
                                            r"estimated 1\.68e\+07× the attention work"),
])
def test_bad_input_is_refused_before_sampling(kwargs, field, message):
    calls, unet_sizes = [], []
    pipe = shipped_pipe()
    hooks = [pipe.text_encoder.register_forward_hook(lambda *a: calls.append("encoded")),
             pipe.unet.register_forward_hook(lambda m, inputs, out: unet_sizes.append(tuple(inputs[0].shape[-2:])))]
    args = {"prompt": PROMPT, "seed": 1, **FAST, **kwargs, "callback": lambda *a: calls.append(a)}
    try:
        with pytest.raises(ValueError, match=message) as error:
            generate(pipe, **args)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == []  # nothing encoded, no step taken
    assert set(unet_sizes) <= {(16, 16)}  # at most the size guard's timing of one native step
    if field is not None:
        assert isinstance(error.value, SettingsError) and error.value.field == field


def test_4096_squared_on_the_cpu_is_refused_at_once():
    """Was: still in step 1 after 180 s at 2 GB. Now refused before the text encoder runs, with
    the numbers: the pixel ratio, the attention ratio and the memory estimate."""
    pipe = shipped_pipe()
    with pytest.raises(SettingsError) as error:
        generate(pipe, "a red circle", steps=1, width=4096, height=4096, progress=False)
    assert error.value.field == "size" and error.value.limits["max_ratio"] == 16
    assert re.search(r"≥ [\d.]+ GiB of activations and ≥ [\d.]+ (s|min|h) for 1 step here", str(error.value))
    assert generate(pipe, PROMPT, seed=1, width=256, height=256, **{**FAST, "steps": 1})[0].size == (256, 256)


def test_a_callback_that_is_not_callable_is_refused_before_the_prompt_is_encoded():
    pipe = shipped_pipe()
    ran = []
    hook = pipe.text_encoder.register_forward_hook(lambda *a: ran.append(1))
    try:
        with pytest.raises(SettingsError, match=r"callback='x' must be None or a function") as error:
            generate(pipe, PROMPT, callback="x", **FAST)
    finally:
        hook.remove()
    assert ran == [] and error.value.field == "callback"


# --- what generate hands back, and its defaults --------------------------------------------------

def test_settings_come_back_as_objects_with_the_seed_resolved():
    pipe = shipped_pipe()
    images = generate(pipe, PROMPT, NEGATIVE, seed=-1, batch_size=2, **FAST)
    assert isinstance(images, list) and len(images.settings) == 2
    first, second = images.settings
    assert isinstance(first, GenerationSettings) and 0 <= first.seed < 2**32 and second.seed == first.seed + 1
    assert [read_parameters(im) for im in images] == images.settings


def test_none_means_the_models_defaults():
    pipe = shipped_pipe()
    d = defaults_for(pipe)
    assert (d.guidance, d.steps, d.sampler, d.width, d.height) == (2.0, 25, "euler_a", 64, 64)
    image = generate(pipe, PROMPT, seed=3, steps=2, progress=False)
    assert image.settings[0].guidance == 2.0
    explicit = generate(pipe, PROMPT, seed=3, steps=2, guidance=2.0, sampler="euler_a", width=64, height=64,
                        progress=False)
    assert np.array_equal(pixels(image[0]), pixels(explicit[0]))


def test_windows_line_breaks_are_recorded_as_they_are_encoded():
    pipe = shipped_pipe()
    windows = generate(pipe, "a red circle\r\non the left", seed=2, **FAST)
    unix = generate(pipe, "a red circle\non the left", seed=2, **FAST)
    assert windows.settings[0].prompt == "a red circle\non the left"
    assert np.array_equal(pixels(windows[0]), pixels(unix[0]))


def test_generate_many_is_generate_per_prompt_and_takes_fixed_noise():
    pipe = shipped_pipe()
    prompts = ["a red circle on the left", "a (blue:1.2) square at the top", "a green triangle"]
    many = generate_many(pipe, prompts, seed=10, steps=2, output="numpy", batch_size=2, progress=False)
    assert [s.seed for s in many.settings] == [10, 11, 12] and [s.prompt for s in many.settings] == prompts
    for i, prompt in enumerate(prompts):
        alone = generate(pipe, prompt, seed=10 + i, steps=2, progress=False)[0]
        assert np.abs(pixels(alone) - many[i].astype(int)).max() <= 1  # batched vs alone: float rounding
    noise, _ = initial_noise([10, 11, 12], (4, 16, 16))
    fixed = generate_many(pipe, prompts, seed=10, steps=2, output="numpy", noise=noise, batch_size=2,
                          progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(many, fixed))
    other = generate_many(pipe, prompts, seed=10, steps=2, output="numpy", noise=noise.flip(0),
                          batch_size=2, progress=False)
    assert not np.array_equal(other[0], many[0])
    pil = generate_many(pipe, prompts[:1], seed=10, steps=2, progress=False)
    assert read_parameters(pil[0]) == pil.settings[0]
    with pytest.raises(SettingsError, match=r"noise=\(1, 4, 16, 16\) must be None or a tensor of shape \(3, 4, 16, 16\)"):
        generate_many(pipe, prompts, noise=noise[:1], progress=False)
    with pytest.raises(SettingsError, match=r"output='png' must be one of 'pil', 'numpy'"):
        generate_many(pipe, prompts, output="png")


def test_cpu_thread_count_is_restored(monkeypatch):
    before = torch.get_num_threads()
    seen = []
    generate(shipped_pipe(), PROMPT, seed=1, threads=1, callback=lambda *a: seen.append(torch.get_num_threads()),
             **{**FAST, "steps": 1})
    assert seen == [1] and torch.get_num_threads() == before


# --- the fp16 NaN guard --------------------------------------------------------------------------

def test_nan_in_a_half_precision_decode_is_decoded_again_in_float32():
    pipe = load_pipeline(device="cpu", dtype=torch.float16)
    with nan_in_half_precision_decode(pipe), \
            pytest.warns(RuntimeWarning, match=r"NaN in the image decoded by the torch\.float16 VAE"):
        image = generate(pipe, PROMPT, seed=4, **{**FAST, "steps": 1})[0]
    assert pipe.vae.dtype == torch.float16  # put back
    assert np.asarray(image).std() > 0  # a real picture, not NaN turned black
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).half()
    expected = decode(pipe, latents)  # no hook: the ordinary half-precision decode …
    torch.nn.Module.to(pipe.vae, torch.float32)
    torch.testing.assert_close(expected.float(), decode(pipe, latents.float()), atol=2e-2, rtol=0)  # … ≈ fp32


def test_nan_in_the_latents_is_an_error_not_a_black_image():
    pipe = load_pipeline(device="cpu")
    pipe.unet.conv_out.register_forward_hook(lambda m, i, o: torch.full_like(o, math.nan))
    with pytest.raises(FloatingPointError, match=re.escape("NaN latents")):
        generate(pipe, PROMPT, seed=4, **{**FAST, "steps": 1})
