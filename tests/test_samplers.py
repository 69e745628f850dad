"""Our hand-written samplers give the same images as stock diffusers.

Each case runs one prompt, seed, step count and guidance through `tutorial_ldm.samplers.sample` and
through `StableDiffusionPipeline(...)` with `to_diffusers(name, config)` as its scheduler, on a tiny
random pipeline built here, and requires max |Δpixel| ≤ 2/255 (and the latents of every step to
agree). `test_tolerance_is_meaningful` checks that a one-step or off-by-one error would fail it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tutorial_ldm import tiny_model as tm
from tutorial_ldm.samplers import (
    A1111_NAMES,
    FROM_A1111,
    SAMPLERS,
    build_schedule,
    guided_model,
    karras_sigmas,
    sample,
    sampler_name,
    sigma_schedule,
    spaced_timesteps,
    to_diffusers,
)

PROMPT = "a red circle at the top"
STEPS = 7  # 1000 % 7 != 0: exercises DDIM's fixed stride with "trailing" spacing
GUIDANCE = 3.0
TOL = 2 / 255

SMALL = tm.TinyLDMConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), text_layers=1, text_width=32)

# Scheduler configs, as changes to the shipped model's (v-prediction, zero terminal SNR, "trailing").
CONFIGS = {
    "v_zero_snr_trailing": {},  # the shipped tiny model
    "eps_sd15": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "timestep_spacing": "leading"},
    "v_leading": {"rescale_betas_zero_snr": False, "timestep_spacing": "leading"},  # SD 2.x-like
    "eps_linspace": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "timestep_spacing": "linspace"},
}


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tok = tm.build_tokenizer(SMALL)
    unet = tm.build_unet(SMALL)
    # A random UNet barely depends on t; amplify its time embedding so that a sampler telling it the
    # wrong timestep produces a visibly different image (see test_tolerance_is_meaningful).
    with torch.no_grad():
        unet.time_embedding.linear_1.weight.mul_(10)
    p = tm.build_pipeline(SMALL, tm.build_autoencoder(SMALL), tm.build_text_encoder(SMALL, tok), tok, unet)
    p.set_progress_bar_config(disable=True)
    return p


def scheduler_config(pipe, changes):
    return {**tm.scheduler_config(SMALL), **changes}  # not pipe.scheduler's: the tests swap it


def decode(pipe, latents):
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")


def run_diffusers(pipe, name, config, *, steps=STEPS, guidance=GUIDANCE, seeds=(1,), eta=0.0, prompt=PROMPT):
    """The stock pipeline's images and its latents after every step."""
    pipe.scheduler = to_diffusers(name, config)
    trace = []

    def on_step(_pipe, i, t, kwargs):
        trace.append(kwargs["latents"].clone())
        return kwargs

    generator = [torch.Generator().manual_seed(s) for s in seeds]
    image = pipe(
        [prompt] * len(seeds),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator if len(seeds) > 1 else generator[0],
        eta=eta,
        output_type="np",
        callback_on_step_end=on_step,
    ).images
    return image, trace


def run_ours(pipe, name, config, *, steps=STEPS, guidance=GUIDANCE, seeds=(1,), eta=0.0, prompt=PROMPT):
    """Our sampler with the pipeline's parts, the noise drawn as the pipeline draws it."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = [torch.Generator().manual_seed(s) for s in seeds]
    generator = generator if len(seeds) > 1 else generator[0]
    n = len(seeds)
    cond, uncond = pipe.encode_prompt([prompt] * n, "cpu", 1, True)
    size = pipe.unet.config.sample_size
    noise = randn_tensor((n, pipe.unet.config.in_channels, size, size), generator=generator)
    trace = []
    latents = sample(
        name, pipe.unet, noise, config, steps=steps, cond=cond, uncond=uncond, guidance=guidance,
        generator=generator, eta=eta, callback=lambda i, total, x, x0: trace.append(x.clone()),
    )  # fmt: skip
    return decode(pipe, latents), trace


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_diffusers(pipe, name, config_name):
    config = scheduler_config(pipe, CONFIGS[config_name])
    ref, ref_trace = run_diffusers(pipe, name, config)
    ours, our_trace = run_ours(pipe, name, config)
    assert max_diff(ours, ref) <= TOL
    assert len(our_trace) == len(ref_trace) == STEPS
    for i, (a, b) in enumerate(zip(our_trace, ref_trace)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"latents differ after step {i}")


@pytest.mark.parametrize("name", ["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"])
def test_sigma_samplers_handle_eps_with_zero_terminal_snr(pipe, name):
    # σ_T = ∞ here; like diffusers we start from ᾱ_T = 2⁻²⁴ (σ ≈ 4096)
    config = scheduler_config(pipe, {"prediction_type": "epsilon"})
    assert max_diff(run_ours(pipe, name, config)[0], run_diffusers(pipe, name, config)[0]) <= TOL


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_eps_at_zero_terminal_snr_is_refused_by_alpha_samplers(pipe, name):
    # x̂₀ = (x − ε̂)/√ᾱ_T divides by 0 (diffusers returns NaNs); we say why instead
    config = scheduler_config(pipe, {"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="zero terminal SNR"):
        run_ours(pipe, name, config)


@pytest.mark.parametrize("name", SAMPLERS)
def test_tolerance_is_meaningful(pipe, name):
    """A sampler off by one step, or telling the UNet the next timestep, fails the 2/255 test."""
    config = scheduler_config(pipe, {})
    ref, _ = run_diffusers(pipe, name, config)
    ours_one_more_step, _ = run_ours(pipe, name, config, steps=STEPS + 1)
    assert max_diff(ours_one_more_step, ref) > 4 * TOL

    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    schedule = build_schedule(name, config, STEPS)
    shifted = torch.cat([schedule.timesteps[1:], schedule.timesteps[-1:] * 0])  # t_{i+1} instead of t_i
    broken = dataclasses.replace(schedule, timesteps=shifted)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((1, 4, 16, 16), generator=g)
    latents = SAMPLERS[name](guided_model(pipe.unet, cond, uncond, GUIDANCE), noise, broken, generator=g)
    assert max_diff(decode(pipe, latents), ref) > 2 * TOL


def test_samplers_give_different_images(pipe):
    config = scheduler_config(pipe, {})
    images = {name: run_ours(pipe, name, config)[0] for name in ("ddim", "euler_a", "dpmpp_2m_karras")}
    assert max_diff(images["ddim"], images["euler_a"]) > 10 * TOL
    assert max_diff(images["ddim"], images["dpmpp_2m_karras"]) > 10 * TOL


@pytest.mark.parametrize("name", ["euler_a", "ddim"])
def test_generator_list_gives_each_image_its_own_seed(pipe, name):
    """A1111's seed+k rule: image k of a batch equals the image generated alone with seed k."""
    config = scheduler_config(pipe, {})
    eta = 1.0 if name == "ddim" else 0.0  # make DDIM draw noise too
    batch, _ = run_ours(pipe, name, config, seeds=(5, 6), eta=eta)
    ref_batch, _ = run_diffusers(pipe, name, config, seeds=(5, 6), eta=eta)
    assert max_diff(batch, ref_batch) <= TOL
    for k, seed in enumerate((5, 6)):
        alone, _ = run_ours(pipe, name, config, seeds=(seed,), eta=eta)
        assert max_diff(batch[k], alone[0]) <= TOL
    assert max_diff(batch[0], batch[1]) > 10 * TOL


def test_ddim_eta(pipe):
    config = scheduler_config(pipe, {})
    for eta in (0.5, 1.0):
        ours, _ = run_ours(pipe, "ddim", config, eta=eta)
        assert max_diff(ours, run_diffusers(pipe, "ddim", config, eta=eta)[0]) <= TOL
    # DDIM with η = 1 is DDPM (Song et al. 2021, §4.1) when the stride hits the listed timesteps
    ddim1, _ = run_ours(pipe, "ddim", config, steps=5, eta=1.0)
    ddpm, _ = run_ours(pipe, "ddpm", config, steps=5)
    assert max_diff(ddim1, ddpm) <= TOL
    assert max_diff(ddim1, run_ours(pipe, "ddim", config, steps=5)[0]) > 10 * TOL


def test_without_guidance(pipe):
    config = scheduler_config(pipe, {})
    for guidance in (1.0, 0.0):  # diffusers' rule: no guidance unless guidance_scale > 1
        ours, _ = run_ours(pipe, "dpmpp_2m", config, guidance=guidance)
        assert max_diff(ours, run_diffusers(pipe, "dpmpp_2m", config, guidance=guidance)[0]) <= TOL


def test_callback_sees_every_step(pipe):
    config = scheduler_config(pipe, {})
    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    calls = []
    out = sample(
        "dpmpp_2m", pipe.unet, noise, config, steps=5, cond=cond, uncond=uncond, guidance=GUIDANCE,
        callback=lambda i, n, x, x0: calls.append((i, n, x.clone(), x0.clone())),
    )  # fmt: skip
    assert [(i, n) for i, n, _, _ in calls] == [(i, 5) for i in range(5)]
    assert all(x.shape == x0.shape == noise.shape for _, _, x, x0 in calls)
    torch.testing.assert_close(calls[-1][2], out)
    torch.testing.assert_close(calls[-1][3], out)  # the last step lands on x̂₀


def test_schedules():
    sd15 = {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading", "clip_sample": False,
        "set_alpha_to_one": False,
    }  # fmt: skip
    assert spaced_timesteps(1000, 10, "leading", 1).tolist() == list(range(901, 0, -100))
    assert spaced_timesteps(1000, 10, "trailing", 1).tolist() == list(range(999, 0, -100))
    ddim = build_schedule("ddim", sd15, 10)
    assert ddim.timesteps.tolist() == list(range(901, 0, -100))
    assert float(ddim.alpha_bars_prev[-1]) == pytest.approx(1 - 0.00085)  # set_alpha_to_one=False: ᾱ_0
    zero_snr = {**sd15, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    assert float(build_schedule("ddim", zero_snr, 10).alpha_bars[0]) == 0.0  # pure noise at t = T
    euler = build_schedule("euler", zero_snr, 10)
    assert euler.sigmas[0].item() == pytest.approx(2**12, rel=1e-3) and euler.sigmas[-1].item() == 0
    k = karras_sigmas(0.03, 14.6, 8)
    assert k[0] == pytest.approx(14.6) and k[-1] == pytest.approx(0.03) and np.all(np.diff(k) < 0)
    karras = sigma_schedule(sd15, 8, karras=True, solver=True)
    assert karras.timesteps[0].item() == 999 and karras.timesteps.dtype == torch.int64


def test_names():
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"}
    assert A1111_NAMES["euler_a"] == "Euler a" and A1111_NAMES["dpmpp_2m_karras"] == "DPM++ 2M Karras"
    assert all(sampler_name(a) == ours for a, ours in FROM_A1111.items())
    config = tm.scheduler_config(SMALL)
    assert type(to_diffusers("Euler a", config)).__name__ == "EulerAncestralDiscreteScheduler"
    assert to_diffusers("dpmpp_2m_karras", config).config.use_karras_sigmas is True
    assert to_diffusers("dpmpp_2m", {**config, "use_karras_sigmas": True}).config.use_karras_sigmas is False
    with pytest.raises(ValueError, match="allowed: ddpm, ddim, euler"):
        to_diffusers("plms", config)


def test_bad_input_is_refused(pipe):
    config = scheduler_config(pipe, {})
    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    noise = torch.randn(1, 4, 16, 16)

    def run(name="ddim", **kw):
        return sample(name, pipe.unet, noise, config, **(dict(steps=3, cond=cond, uncond=uncond, guidance=GUIDANCE) | kw))

    for steps in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=f"steps={steps}"):
            run(steps=steps)
    with pytest.raises(ValueError, match="unknown sampler 'LMS'.*euler_a"):
        run("LMS")
    for guidance in (math.nan, -1.0):
        with pytest.raises(ValueError, match="guidance="):
            run(guidance=guidance)
    with pytest.raises(ValueError, match="eta=0.5 applies to 'ddim' only"):
        run("euler", eta=0.5)
    with pytest.raises(ValueError, match="2 generators given for a batch of 1"):
        run(generator=[torch.Generator(), torch.Generator()])
    with pytest.raises(ValueError, match="uncond's shape"):
        run(uncond=uncond[:, :5])
    with pytest.raises(ValueError, match="thresholding=True is not supported"):
        sample("ddim", pipe.unet, noise, {**config, "thresholding": True}, steps=3, cond=cond)


def shipped_model_path():
    for path in (Path(__file__).resolve().parents[1] / "assets" / "tiny-ldm", Path("/work/stand-in/tiny-ldm")):
        if (path / "model_index.json").exists():
            return path
    return None


@pytest.mark.skipif(shipped_model_path() is None, reason="assets/tiny-ldm is not in this checkout")
@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_diffusers_on_shipped_model(name):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(shipped_model_path(), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    config = dict(pipe.scheduler.config)
    ref, _ = run_diffusers(pipe, name, config, steps=5)
    ours, _ = run_ours(pipe, name, config, steps=5)
    assert max_diff(ours, ref) <= TOL
