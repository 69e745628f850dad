"""generate(): seeds, batches, sizes, PNG settings, the NaN guard, and every bad input."""

import math
import re

import numpy as np
import pytest
import torch
from tiny_sd import shipped_pipe, tiny_sd_files

from tutorial_ldm.generation import decode, generate, native_size, vae_factor
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters, save_image
from tutorial_ldm.prompts import encode_prompts
from tutorial_ldm.samplers import to_diffusers

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
        "Steps: 2, Sampler: Euler a, CFG scale: 5, Seed: 42, Size: 64x64, Model: tiny-ldm")


def test_same_seed_same_image_and_image_k_uses_seed_plus_k():
    pipe = shipped_pipe()
    first = generate(pipe, PROMPT, NEGATIVE, seed=7, **FAST)[0]
    assert np.array_equal(pixels(first), pixels(generate(pipe, PROMPT, NEGATIVE, seed=7, **FAST)[0]))
    second = generate(pipe, PROMPT, NEGATIVE, seed=8, **FAST)[0]
    batch = generate(pipe, PROMPT, NEGATIVE, seed=7, batch_size=2, **FAST)
    for alone, batched in zip([first, second], batch):  # batched vs alone: float rounding only
        assert np.abs(pixels(alone) - pixels(batched)).max() <= 1
    assert np.abs(pixels(first) - pixels(second)).mean() > 1  # a different seed differs


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

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(prompt="(a:1.2.3)"), ValueError, r"weight '1\.2\.3'.*not a number"),
    (dict(width=63), ValueError, r"width=63 must be a positive multiple of 4"),
    (dict(height=0), ValueError, r"height=0 must be a positive multiple of 4"),
    (dict(width=64.0), ValueError, r"width=64\.0 must be a positive multiple"),
    (dict(steps=0), ValueError, r"steps=0 must be an integer from 1 to 1000"),
    (dict(steps=10000), ValueError, r"steps=10000 must be an integer from 1 to 1000"),
    (dict(guidance=math.nan), ValueError, r"guidance=nan must be a finite number ≥ 0"),
    (dict(guidance=-1.0), ValueError, r"guidance=-1\.0 must be a finite number ≥ 0"),
    (dict(guidance=math.inf), ValueError, r"guidance=inf must be a finite number"),
    (dict(seed=2**32), ValueError, r"seed=4294967296 must be -1 \(random\) or an integer from 0 to 4294967295"),
    (dict(seed=2**32 - 1, batch_size=2), ValueError, r"seed=4294967295 must be .* from 0 to 4294967294"),
    (dict(seed=-2), ValueError, r"seed=-2 must be -1"),
    (dict(batch_size=0), ValueError, r"batch_size=0 must be an integer ≥ 1"),
    (dict(sampler="DPM++ SDE"), ValueError, r"unknown sampler 'DPM\+\+ SDE'; allowed: .*euler_a"),
    (dict(prompt=None), TypeError, r"prompt must be a string"),
])
def test_bad_input_is_refused_before_sampling(kwargs, error, message):
    calls = []
    args = {"prompt": PROMPT, "seed": 1, **FAST, **kwargs, "callback": lambda *a: calls.append(a)}
    with pytest.raises(error, match=message):
        generate(shipped_pipe(), **args)
    assert calls == []


# --- the fp16 NaN guard --------------------------------------------------------------------------

def nan_when_half(module, inputs, output):
    """Forward hook: the layer overflows as in float16, and only there."""
    return output if module.weight.dtype == torch.float32 else torch.full_like(output, math.nan)


def test_nan_in_a_half_precision_decode_is_decoded_again_in_float32():
    pipe = load_pipeline(device="cpu", dtype=torch.float16)
    handle = pipe.vae.decoder.conv_out.register_forward_hook(nan_when_half)
    try:
        with pytest.warns(RuntimeWarning, match=r"NaN in the image decoded by the torch\.float16 VAE"):
            image = generate(pipe, PROMPT, seed=4, **{**FAST, "steps": 1})[0]
    finally:
        handle.remove()
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
