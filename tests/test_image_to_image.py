"""img2img, inpaint and the hires fix: diffusers' pipelines through our front door, A1111's PNG
text and regeneration from it, the paste-back, and every bad input."""

import functools
import warnings

import numpy as np
import pytest
import torch
from tiny_sd import build_tiny, shipped_pipe

from tutorial_ldm import generate, img2img, inpaint, world
from tutorial_ldm.autoencoder import encode_latents, to_tensor
from tutorial_ldm.image_to_image import ImageNote, is_inpainting_model, masks
from tutorial_ldm.metrics import analyze
from tutorial_ldm.parameters import read_parameters
from tutorial_ldm.prompts import encode_prompts
from tutorial_ldm.samplers import img2img_start, to_diffusers
from tutorial_ldm.settings import SettingsError

PROMPT, NEGATIVE = "a blue circle on the left", "green"
FAST = dict(steps=6, guidance=3.0, progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@functools.lru_cache(maxsize=None)
def tiny(arch):
    pipe = build_tiny(arch)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def source(size=64):
    from PIL import Image

    image = Image.fromarray(world.render(world.parse_caption("a red circle on the left")))
    return image.resize((size, size), Image.Resampling.LANCZOS) if size != 64 else image


def left_half_mask(size=64):
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4: 3 * size // 4, : size // 2] = 255
    return mask


def pixels(image):
    return np.asarray(image).astype(int)


def recorder():
    trace = []
    return trace, lambda i, n, x, x0: trace.append(x.clone())


def diffusers_trace(kind, pipe, sampler="ddim", **kwargs):
    import diffusers

    stock = getattr(diffusers, kind).from_pipe(pipe, scheduler=to_diffusers(sampler, pipe.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    trace = []
    cond, uncond = encode_prompts(pipe, PROMPT, NEGATIVE)
    stock(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=FAST["steps"],
          guidance_scale=FAST["guidance"], generator=torch.Generator().manual_seed(5), output_type="latent",
          callback_on_step_end=lambda _p, i, t, kw: (trace.append(kw["latents"].clone()), kw)[1], **kwargs)
    return trace


def assert_same_trace(ours, theirs):
    assert len(ours) == len(theirs) > 0
    for i, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"latents differ after step {i}")


# --- equal to diffusers ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["shipped", "sd1"])
def test_ddim_img2img_equals_diffusers_img2img_pipeline(model):
    """Same start rung, same noised latents, same steps: diffusers' pipeline given our latents of
    the image (we encode with the posterior mean; it would sample q(z|x) with the generator)."""
    pipe = shipped_pipe() if model == "shipped" else tiny("sd1")
    trace, callback = recorder()
    out = img2img(pipe, source(), PROMPT, NEGATIVE, strength=0.6, seed=5, sampler="ddim", callback=callback, **FAST)
    assert len(trace) == FAST["steps"] - img2img_start(FAST["steps"], 0.6) == 3
    z0 = encode_latents(pipe, to_tensor(np.asarray(source())))
    assert_same_trace(trace, diffusers_trace("StableDiffusionImg2ImgPipeline", pipe, image=z0, strength=0.6))
    assert out[0].size == (64, 64)


@pytest.mark.parametrize("arch,strength,sampler", [
    ("sd1", 1.0, "ddim"), ("sd1", 0.7, "ddim"), ("sd1-inpainting", 1.0, "ddim"), ("sd1-inpainting", 0.7, "ddim"),
    ("sd1", 0.7, "euler_a"), ("sd1", 0.7, "dpmpp_2m_karras"), ("shipped", 0.7, "euler")])
def test_inpaint_equals_diffusers_inpaint_pipeline(arch, strength, sampler):
    """4-channel UNets: the known latents blended back after every step; 9-channel ones: mask and
    masked-image latents as extra channels. Inside the mask the pixels are diffusers' image,
    outside (mask_blur=0) the input's."""
    pipe = shipped_pipe() if arch == "shipped" else tiny(arch)
    assert is_inpainting_model(pipe) == arch.endswith("inpainting")
    mask = left_half_mask()
    trace, callback = recorder()
    out = inpaint(pipe, source(), mask, PROMPT, NEGATIVE, strength=strength, mask_blur=0, seed=5,
                  sampler=sampler, callback=callback, **FAST)[0]
    x = to_tensor(np.asarray(source()))
    binary = torch.from_numpy(mask >= 128)[None, None]
    from PIL import Image

    theirs = diffusers_trace("StableDiffusionInpaintPipeline", pipe, sampler, image=encode_latents(pipe, x),
                             mask_image=Image.fromarray(mask), strength=strength, height=64, width=64,
                             masked_image_latents=encode_latents(pipe, x * ~binary))
    assert_same_trace(trace, theirs)
    with torch.no_grad():
        decoded = pipe.vae.decode(theirs[-1] / pipe.vae.config.scaling_factor).sample
    expected = pipe.image_processor.postprocess(decoded, output_type="np")[0] * 255
    inside = mask >= 128
    assert np.abs(pixels(out)[inside] - expected[inside]).max() <= 1.5
    assert (pixels(out)[~inside] == pixels(source())[~inside]).all()


# --- what strength means --------------------------------------------------------------------------

def test_strength_0_returns_the_input_and_1_ignores_it():
    pipe = shipped_pipe()
    kept = img2img(pipe, source(), PROMPT, strength=0, seed=1, **FAST)[0]
    assert (pixels(kept) == pixels(source())).all()
    assert img2img(pipe, source(), PROMPT, strength=0.1, seed=1, **FAST)[0].tobytes() == kept.tobytes()  # 0 steps
    # strength 1: the same image from two different inputs (pure noise at the top of the ladder;
    # zero terminal SNR makes √ᾱ = 0 there, so the input has no weight at all)
    other = source().transpose(0)
    a = img2img(pipe, source(), PROMPT, strength=1, seed=1, **FAST)[0]
    b = img2img(pipe, other, PROMPT, strength=1, seed=1, **FAST)[0]
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_the_steps_run_follow_diffusers_rule():
    calls = []
    img2img(shipped_pipe(), source(), PROMPT, strength=0.6, seed=1, callback=lambda i, n, x, x0: calls.append(n),
            **{**FAST, "steps": 25})
    assert calls == [15] * 15


def test_img2img_changes_colour_at_moderate_strength():
    out = img2img(shipped_pipe(), source(), PROMPT, strength=0.6, seed=1, steps=20, progress=False)[0]
    reading = analyze(out)
    assert (reading.colour, reading.shape, reading.position) == ("blue", "circle", "on the left")


# --- PNG text and regeneration -------------------------------------------------------------------

def test_img2img_text_is_a1111s_and_regenerates(tmp_path):
    from tutorial_ldm.parameters import save_image

    pipe = shipped_pipe()
    out = img2img(pipe, source(), PROMPT, NEGATIVE, strength=0.55, seed=9, **FAST)[0]
    assert out.info["parameters"].splitlines()[-1] == (
        "Steps: 6, Sampler: Euler a, Schedule type: Automatic, CFG scale: 3, Seed: 9, Size: 64x64, Model: tiny-ldm, "
        "Denoising strength: 0.55, Version: tutorial-ldm 0.1.0")
    s = read_parameters(save_image(out, tmp_path / "out.png"))
    again = img2img(pipe, source(), **s.generate_kwargs(), progress=False)[0]
    assert again.tobytes() == out.tobytes()


def test_inpaint_text_is_a1111s_and_regenerates_with_the_same_mask():
    pipe = shipped_pipe()
    out = inpaint(pipe, source(), left_half_mask(), "a green square on the left", seed=4, **FAST)[0]
    assert out.info["parameters"].endswith("Denoising strength: 1, Mask blur: 4, Version: tutorial-ldm 0.1.0")
    again = inpaint(pipe, source(), left_half_mask(), **read_parameters(out).generate_kwargs(), progress=False)[0]
    assert again.tobytes() == out.tobytes()


def test_outside_the_blurred_mask_the_pixels_are_the_inputs_exactly():
    mask = left_half_mask()
    out = inpaint(shipped_pipe(), source(), mask, "a green square on the left", seed=4, **FAST)[0]
    from PIL import Image

    _, pixel_mask = masks(Image.fromarray(mask), 4)
    outside = pixel_mask[0, 0].numpy() == 0
    assert outside.sum() > 0.4 * outside.size and (pixels(out)[outside] == pixels(source())[outside]).all()
    assert analyze(out).colour == "green"


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Lanczos"])
def test_hires_fix_doubles_the_size_and_records_it(upscaler):
    pipe = shipped_pipe()
    calls = []
    out = generate(pipe, "a red circle on the left", seed=2, hires_upscale=2, hires_steps=4, hires_upscaler=upscaler,
                   hires_denoising=0.5, callback=lambda i, n, x, x0: calls.append(tuple(x.shape[-2:])), **FAST)
    assert out[0].size == (128, 128)
    assert calls == [(16, 16)] * 6 + [(32, 32)] * 2  # int(4 · 0.5) steps at the new size
    text = out[0].info["parameters"].splitlines()[-1]
    assert text.endswith(f"Size: 64x64, Model: tiny-ldm, Denoising strength: 0.5, Hires upscale: 2, "
                         f"Hires steps: 4, Hires upscaler: {upscaler}, Version: tutorial-ldm 0.1.0")
    again = generate(pipe, **read_parameters(out[0]).generate_kwargs(), progress=False)[0]
    assert again.tobytes() == out[0].tobytes()


def test_works_on_tiny_sd1_checkpoints():
    assert img2img(tiny("sd1"), source(), PROMPT, seed=1, **FAST)[0].size == (64, 64)
    assert inpaint(tiny("sd1-inpainting"), source(), left_half_mask(), PROMPT, seed=1, **FAST)[0].size == (64, 64)
    assert generate(tiny("sd1"), PROMPT, seed=1, width=64, height=64, hires_upscale=1.5, **FAST)[0].size == (96, 96)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_strength_outside_0_1_is_refused(strength):
    with pytest.raises(SettingsError, match="strength") as e:
        img2img(shipped_pipe(), source(), PROMPT, strength=strength, **FAST)
    assert e.value.field == "strength" and "from 0" in e.value.allowed


def test_an_all_black_mask_has_nothing_to_repaint():
    with pytest.raises(SettingsError, match="nothing to repaint") as e:
        inpaint(shipped_pipe(), source(), np.zeros((64, 64), np.uint8), PROMPT, **FAST)
    assert e.value.field == "mask"


def test_a_mask_of_another_size_is_resized_with_a_note():
    with pytest.warns(ImageNote, match="mask resized from 32×32 to the image's 64×64"):
        out = inpaint(shipped_pipe(), source(), left_half_mask(32), PROMPT, seed=1, **FAST)[0]
    assert out.size == (64, 64)


def test_a_size_off_the_vae_grid_is_rounded_down_as_a1111_does_and_said():
    with pytest.warns(ImageNote, match=r"image resized from 70×66 to 68×64: sides must be multiples of 4"):
        out = img2img(shipped_pipe(), source().resize((70, 66)), PROMPT, seed=1, **FAST)[0]
    assert out.size == (68, 64) and read_parameters(out).width == 68


@pytest.mark.parametrize("upload,what", [(b"not an image at all", "bytes that are not an image"),
                                         ("no/such/file.png", "no file at that path"),
                                         (np.zeros((4, 4, 3), np.float32), "array float32"),
                                         (42, "int")])
def test_non_images_are_refused(upload, what):
    with pytest.raises(SettingsError, match=what) as e:
        img2img(shipped_pipe(), upload, PROMPT, **FAST)
    assert e.value.field == "image" and "PIL image" in e.value.allowed


@pytest.mark.parametrize("kwargs,field", [(dict(hires_upscale=9), "hires_upscale"),
                                          (dict(hires_upscale=2, hires_upscaler="ESRGAN"), "hires_upscaler"),
                                          (dict(hires_upscale=2, hires_denoising=2), "hires_denoising"),
                                          (dict(hires_steps=3), "hires_steps")])
def test_bad_hires_settings_are_refused(kwargs, field):
    with pytest.raises(SettingsError) as e:
        generate(shipped_pipe(), PROMPT, **kwargs, **FAST)
    assert e.value.field == field


def test_mask_blur_is_checked():
    with pytest.raises(SettingsError, match="mask_blur"):
        inpaint(shipped_pipe(), source(), left_half_mask(), PROMPT, mask_blur=-1, **FAST)


def test_no_note_for_an_image_of_the_right_size():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageNote)
        img2img(shipped_pipe(), source(), PROMPT, seed=1, **FAST)


# --- SDXL: the same three tasks with its added conditioning (pooled text, size time_ids) ----------

@functools.lru_cache(maxsize=None)
def tiny_sdxl():
    from tiny_sd import tiny_single_file

    from tutorial_ldm.loading import load_pipeline

    return load_pipeline(tiny_single_file("sdxl").file, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("sampler", ["ddim", "euler_a"])
def test_sdxl_img2img_equals_diffusers_sdxl_img2img_pipeline(sampler):
    """Our latents of the image given to StableDiffusionXLImg2ImgPipeline: the same steps, the
    same time_ids (original = target = the image's size, crop (0, 0)), the same latents."""
    import diffusers

    from tutorial_ldm.prompts import encode_prompts_sdxl

    pipe = tiny_sdxl()
    trace, callback = recorder()
    out = img2img(pipe, source(), PROMPT, NEGATIVE, strength=0.6, seed=5, sampler=sampler, callback=callback, **FAST)
    assert out[0].size == (64, 64) and len(trace) == 3
    stock = diffusers.StableDiffusionXLImg2ImgPipeline.from_pipe(
        pipe, scheduler=to_diffusers(sampler, pipe.scheduler.config))
    stock.set_progress_bar_config(disable=True)
    cond, uncond, pooled, negative_pooled = encode_prompts_sdxl(pipe, PROMPT, NEGATIVE)
    theirs = []
    stock(prompt_embeds=cond, negative_prompt_embeds=uncond, pooled_prompt_embeds=pooled,
          negative_pooled_prompt_embeds=negative_pooled, image=encode_latents(pipe, to_tensor(np.asarray(source()))),
          strength=0.6, num_inference_steps=FAST["steps"], guidance_scale=FAST["guidance"],
          generator=torch.Generator().manual_seed(5), output_type="latent",
          callback_on_step_end=lambda _p, i, t, kw: (theirs.append(kw["latents"].clone()), kw)[1])
    assert_same_trace(trace, theirs)


def test_sdxl_hires_fix_and_inpaint_run_and_batches_are_exact():
    """The second pass is conditioned on its own size; image k of a batch is the one made alone."""
    pipe = tiny_sdxl()
    small = dict(FAST, width=64, height=64)
    out = generate(pipe, PROMPT, NEGATIVE, seed=2, batch_size=2, hires_upscale=1.5, hires_steps=4,
                   hires_denoising=0.5, **small)
    assert out[1].size == (96, 96) and out.settings[1].seed == 3
    alone = generate(pipe, PROMPT, NEGATIVE, seed=3, hires_upscale=1.5, hires_steps=4, hires_denoising=0.5, **small)
    assert alone[0].tobytes() == out[1].tobytes()
    assert read_parameters(out[0]).hires_upscale == 1.5
    from PIL import Image

    mask = left_half_mask()
    painted = inpaint(pipe, source(), mask, PROMPT, NEGATIVE, seed=4, batch_size=2, **FAST)
    outside = masks(Image.fromarray(mask), 4)[1][0, 0].numpy() == 0
    assert (pixels(painted[0])[outside] == pixels(source())[outside]).all()
    assert painted[1].tobytes() == inpaint(pipe, source(), mask, PROMPT, NEGATIVE, seed=5, **FAST)[0].tobytes()
