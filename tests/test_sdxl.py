"""SDXL through generate(): both text encoders, pooled embeddings and the size/crop conditioning,
equal to diffusers' StableDiffusionXLPipeline with the matching scheduler (issue 11)."""

import functools
import re

import numpy as np
import pytest
import torch
from tiny_sd import nan_in_half_precision_decode, tiny_single_file

from tutorial_ldm.generation import generate, is_sdxl, native_size, size_time_ids
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters
from tutorial_ldm.prompts import encode_prompts_sdxl
from tutorial_ldm.samplers import SAMPLERS, to_diffusers
from tutorial_ldm.settings import defaults_for

PROMPT, NEGATIVE = "a red circle on the left", "(blue:1.3) background"
FAST = dict(steps=2, guidance=5.0, width=64, height=64, progress=False)


def pixels(image):
    return np.asarray(image).astype(int)


@functools.lru_cache(maxsize=None)
def sdxl(dtype=torch.float32):
    """The tiny random SDXL checkpoint, loaded from its single file offline."""
    return load_pipeline(tiny_single_file("sdxl").file, device="cpu", dtype=dtype)


def stock_images(pipe, sampler, seeds, prompt=PROMPT, negative=NEGATIVE, **size):
    """diffusers' own SDXL pipeline, given our (A1111-weighted) embeddings and the matching scheduler."""
    from diffusers import StableDiffusionXLPipeline

    cond, uncond, pooled, negative_pooled = encode_prompts_sdxl(pipe, prompt, negative)
    stock = StableDiffusionXLPipeline(**{**pipe.components, "scheduler": to_diffusers(sampler, pipe.scheduler.config)})
    stock.set_progress_bar_config(disable=True)
    n = len(seeds)
    return stock(prompt_embeds=cond.expand(n, -1, -1), negative_prompt_embeds=uncond.expand(n, -1, -1),
                 pooled_prompt_embeds=pooled.expand(n, -1), negative_pooled_prompt_embeds=negative_pooled.expand(n, -1),
                 num_inference_steps=2, guidance_scale=5.0, generator=[torch.Generator().manual_seed(s) for s in seeds],
                 **{"width": 64, "height": 64, **size}).images


def test_native_size_and_defaults():
    pipe = sdxl()
    assert is_sdxl(pipe) and native_size(pipe) == (1024, 1024)
    d = defaults_for(pipe)
    assert (d.width, d.height, d.guidance, d.model) == (1024, 1024, 7.0, "tiny-sdxl")
    assert size_time_ids(832, 1216) == [1216, 832, 0, 0, 1216, 832]  # (height, width), crop (0, 0)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_pixels_as_diffusers_sdxl_pipeline(sampler):
    pipe = sdxl()
    ours = generate(pipe, PROMPT, NEGATIVE, seed=3, batch_size=2, sampler=sampler, **FAST)
    for a, b in zip(ours, stock_images(pipe, sampler, [3, 4])):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1  # as for SD 1.x (test_generation.py)


def test_size_conditioning_is_the_asked_size():
    """A non-square size: time_ids (h, w, 0, 0, h, w) as diffusers builds them; another size's
    time_ids give another image (the UNet does read them)."""
    pipe = sdxl()
    ours = generate(pipe, PROMPT, NEGATIVE, seed=5, sampler="euler", **{**FAST, "width": 96})[0]
    theirs = stock_images(pipe, "euler", [5], width=96)[0]
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1
    told_other = stock_images(pipe, "euler", [5], width=96, original_size=(1024, 1024), target_size=(1024, 1024))[0]
    assert np.abs(pixels(ours) - pixels(told_other)).max() > 1


def test_empty_negative_prompt_and_no_guidance():
    pipe = sdxl()
    ours = generate(pipe, PROMPT, seed=6, sampler="ddim", **FAST)[0]  # empty negative: zeros, as diffusers
    assert np.abs(pixels(ours) - pixels(stock_images(pipe, "ddim", [6], negative="")[0])).max() <= 1
    unguided = generate(pipe, PROMPT, seed=6, sampler="ddim", **{**FAST, "guidance": 1.0})[0]
    assert unguided.size == (64, 64) and np.abs(pixels(unguided) - pixels(ours)).max() > 1


def test_batch_image_k_is_exactly_the_image_at_seed_plus_k_and_the_png_says_sdxl():
    pipe = sdxl()
    batch = generate(pipe, PROMPT, NEGATIVE, seed=9, batch_size=2, sampler="euler_a", **FAST)
    for k, image in enumerate(batch):
        s = read_parameters(image)
        assert (s.seed, s.model, s.model_hash) == (9 + k, "tiny-sdxl", pipe.model_info.hash)
        again = generate(pipe, **s.generate_kwargs(), progress=False)[0]
        assert np.array_equal(pixels(image), pixels(again))


def test_clip_skip_is_recorded_and_does_not_change_sdxl_as_in_a1111():
    pipe = sdxl()
    plain = generate(pipe, PROMPT, seed=2, **FAST)[0]
    skipped = generate(pipe, PROMPT, seed=2, clip_skip=2, **FAST)[0]
    assert "Clip skip: 2" in skipped.info["parameters"]
    assert np.array_equal(pixels(plain), pixels(skipped))


def test_nan_guard_covers_the_sdxl_vae():
    """SDXL's VAE overflows in float16 (its config says force_upcast): decoded again in float32."""
    pipe = sdxl(torch.float16)
    assert pipe.vae.config.force_upcast

    with nan_in_half_precision_decode(pipe), \
            pytest.warns(RuntimeWarning, match=r"NaN in the image decoded by the torch\.float16 VAE"):
        image = generate(pipe, PROMPT, seed=4, **{**FAST, "steps": 1})[0]
    assert pipe.vae.dtype == torch.float16 and np.asarray(image).std() > 0


def test_an_inpainting_checkpoint_is_refused_for_text_to_image_with_a_reason():
    from tiny_sd import build_tiny

    from tutorial_ldm.settings import SettingsError

    with pytest.raises(SettingsError, match=r"model='a UNet with 9 input channels' must be a text-to-image model.*"
                                            r"use it for inpainting") as e:
        generate(build_tiny("sd1-inpainting"), PROMPT, **FAST)
    assert e.value.field == "model"


def test_sample_needs_sdxls_added_conditioning():
    from tutorial_ldm.samplers import sample

    pipe = sdxl()
    cond, uncond, pooled, negative_pooled = encode_prompts_sdxl(pipe, PROMPT)
    noise = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match=r"this UNet takes added_cond \(SDXL's text_embeds and time_ids\)"):
        sample("ddim", pipe.unet, noise, pipe.scheduler.config, steps=1, cond=cond, uncond=uncond, guidance=5.0)
    added = {"text_embeds": pooled, "time_ids": torch.tensor([size_time_ids(64, 64)], dtype=torch.float32)}
    with pytest.raises(ValueError, match=r"give added_uncond too"):
        sample("ddim", pipe.unet, noise, pipe.scheduler.config, steps=1, cond=cond, uncond=uncond, guidance=5.0,
               added_cond=added)
    latents = sample("ddim", pipe.unet, noise, pipe.scheduler.config, steps=1, cond=cond, uncond=uncond,
                     guidance=5.0, added_cond=added, added_uncond={**added, "text_embeds": negative_pooled})
    assert latents.shape == noise.shape and torch.isfinite(latents).all()


def test_size_guard_times_sdxls_unet_with_its_added_conditioning():
    """The cost estimate behind the size guard runs one native-size UNet step: for SDXL with
    the pooled embedding and time_ids it needs."""
    from tutorial_ldm.settings import SettingsError

    with pytest.raises(SettingsError, match=r"at most 16× the model's native 1024×1024 pixels on cpu") as e:
        generate(sdxl(), PROMPT, steps=1, width=8192, height=8192, progress=False)
    assert e.value.field == "size" and re.search(r"≥ [\d.]+ (s|min|h) for 1 step here", str(e.value))
