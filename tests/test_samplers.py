"""Our hand-written samplers give the same images as stock diffusers.

Each case runs one prompt, seed, step count and guidance through `tutorial_ldm.samplers.sample` and
through `StableDiffusionPipeline(...)` with `to_diffusers(name, config)` as its scheduler, on a tiny
random pipeline built here, and requires max |Δpixel| ≤ 2/255 (and the latents of every step to
agree to 1e-4; measured, they are equal). `test_tolerance_is_meaningful` checks that a one-step or
off-by-one error would fail it. Batches (image k = the image made alone, with per_image=True) and
img2img (starting part-way down the ladder) are checked the same way.
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
    REGISTRY,
    SAMPLERS,
    Denoiser,
    build_schedule,
    ddim_step,
    img2img_start,
    karras_sigmas,
    sample,
    sampler_name,
    sigma_schedule,
    spaced_timesteps,
    to_diffusers,
    twin_config,
)

PROMPT = "a red circle at the top"
STEPS = 6  # 1000 % 6 != 0: exercises DDIM's fixed stride with "trailing" spacing
GUIDANCE = 3.0
TOL = 2 / 255
SIZE = 32  # pixels; latents are SIZE/4 = 8 wide: small is quick, and the UNet's three levels still fit

SMALL = tm.TinyLDMConfig(vae_channels=(16, 16, 16), unet_channels=(16, 32, 32), text_layers=1, text_width=32)

# Scheduler configs, as changes to the shipped model's (v-prediction, zero terminal SNR, "trailing").
CONFIGS = {
    "v_zero_snr_trailing": {},  # the shipped tiny model
    "eps_sd15": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "timestep_spacing": "leading"},
    "eps_linspace": {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "timestep_spacing": "linspace"},
    "v_cosine": {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": False},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def scheduler_config(changes):
    return {**tm.scheduler_config(SMALL), **changes}  # not pipe.scheduler's: the tests swap it


def decode(pipe, latents):
    with torch.no_grad():
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np")


_diffusers_runs = {}


def run_diffusers(pipe, name, config, *, steps=STEPS, guidance=GUIDANCE, seeds=(1,), eta=0.0, size=SIZE):
    """The stock pipeline's images and its latents after every step (cached: tests share them)."""
    key = (id(pipe), name, repr(sorted(config.items())), steps, guidance, seeds, eta, size)
    if key not in _diffusers_runs:
        _diffusers_runs[key] = _run_diffusers(pipe, name, config, steps, guidance, seeds, eta, size)
    return _diffusers_runs[key]


def _run_diffusers(pipe, name, config, steps, guidance, seeds, eta, size, count_from_zero=False):
    pipe.scheduler = to_diffusers(name, config)
    if count_from_zero:  # start the scheduler's step counter at 0, as img2img pipelines do
        set_timesteps = pipe.scheduler.set_timesteps
        pipe.scheduler.set_timesteps = lambda *a, **k: (set_timesteps(*a, **k), pipe.scheduler.set_begin_index(0))
    trace = []

    def on_step(_pipe, i, t, kwargs):
        trace.append(kwargs["latents"].clone())
        return kwargs

    generator = [torch.Generator().manual_seed(s) for s in seeds]
    image = pipe(
        [PROMPT] * len(seeds),
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator if len(seeds) > 1 else generator[0],
        eta=eta,
        height=size,
        width=size,
        output_type="np",
        callback_on_step_end=on_step,
    ).images
    return image, trace


def run_ours(pipe, name, config, *, steps=STEPS, guidance=GUIDANCE, seeds=(1,), eta=0.0, size=SIZE, per_image=False):
    """Our sampler with the pipeline's parts, the noise drawn as the pipeline draws it."""
    from diffusers.utils.torch_utils import randn_tensor

    generator = [torch.Generator().manual_seed(s) for s in seeds]
    generator = generator if len(seeds) > 1 else generator[0]
    n = len(seeds)
    cond, uncond = pipe.encode_prompt([PROMPT] * n, "cpu", 1, True)
    latent = size // pipe.vae_scale_factor
    noise = randn_tensor((n, pipe.unet.config.in_channels, latent, latent), generator=generator)
    trace = []
    latents = sample(
        name, pipe.unet, noise, config, steps=steps, cond=cond, uncond=uncond, guidance=guidance,
        generator=generator, eta=eta, callback=lambda i, total, x, x0: trace.append(x.clone()), per_image=per_image,
    )  # fmt: skip
    return decode(pipe, latents), trace


def max_diff(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# With the cosine schedule, diffusers' DPM-Solver with Karras σ's repeats its first timestep, and its
# step counter, which starts at the *second* occurrence of the first timestep, runs off the end
# (IndexError). test_dpmpp_karras_with_repeated_timesteps covers that case.
CASES = [(n, c) for n in SAMPLERS for c in CONFIGS if (n, c) != ("dpmpp_2m_karras", "v_cosine")]


@pytest.mark.parametrize("name, config_name", CASES)
def test_matches_diffusers(pipe, name, config_name):
    config = scheduler_config(CONFIGS[config_name])
    ref, ref_trace = run_diffusers(pipe, name, config)
    ours, our_trace = run_ours(pipe, name, config)
    assert max_diff(ours, ref) <= TOL
    assert len(our_trace) == len(ref_trace) == STEPS
    for i, (a, b) in enumerate(zip(our_trace, ref_trace)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"latents differ after step {i}")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_both_views_read_the_same_prediction(prediction_type):
    """One coordinate system: the same latent given as x_σ (σ view) or x_t = α·x_σ (ᾱ view) is read
    as the same x̂₀ and ε̂, up to float rounding."""
    from tutorial_ldm.samplers import read_alpha_view, read_sigma_view, sigma_to_vp

    out, x_sigma = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 1.0, 14.6):
        sigma = torch.tensor(sigma)
        alpha, sd = sigma_to_vp(sigma)
        x_sigma_scaled = x_sigma * (sigma**2 + 1) ** 0.5  # a latent of the right size at this level
        x0_s, eps_s = read_sigma_view(out, x_sigma_scaled, sigma, prediction_type)
        x0_a, eps_a = read_alpha_view(out, alpha * x_sigma_scaled, alpha, sd, prediction_type)
        torch.testing.assert_close(x0_s, x0_a, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(eps_s, eps_a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"])
def test_sigma_samplers_handle_eps_with_zero_terminal_snr(pipe, name):
    # σ_T = ∞ here; like diffusers we start from ᾱ_T = 2⁻²⁴ (σ ≈ 4096)
    config = scheduler_config({"prediction_type": "epsilon"})
    assert max_diff(run_ours(pipe, name, config)[0], run_diffusers(pipe, name, config)[0]) <= TOL


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_eps_at_zero_terminal_snr_is_refused_by_alpha_samplers(pipe, name):
    # x̂₀ = (x − ε̂)/√ᾱ_T divides by 0 (diffusers returns NaNs); we say why instead
    config = scheduler_config({"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="zero terminal SNR"):
        run_ours(pipe, name, config)


@pytest.mark.parametrize("name", SAMPLERS)
def test_tolerance_is_meaningful(pipe, name):
    """A sampler off by one step, or telling the UNet the next timestep, fails the 2/255 test."""
    config = scheduler_config({})
    ref, _ = run_diffusers(pipe, name, config)
    ours_one_more_step, _ = run_ours(pipe, name, config, steps=STEPS + 1)
    assert max_diff(ours_one_more_step, ref) > 4 * TOL

    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    schedule = build_schedule(name, config, STEPS)
    shifted = torch.cat([schedule.timesteps[1:], schedule.timesteps[-1:] * 0])  # t_{i+1} instead of t_i
    broken = dataclasses.replace(schedule, timesteps=shifted)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((1, 4, SIZE // 4, SIZE // 4), generator=g)
    denoiser = Denoiser(pipe.unet, cond, uncond, GUIDANCE, prediction_type=config["prediction_type"])
    latents = SAMPLERS[name](denoiser, broken.start(noise), broken, generator=g)
    assert max_diff(decode(pipe, latents), ref) > 2 * TOL


def test_samplers_give_different_images(pipe):
    config = scheduler_config({})
    images = {name: run_ours(pipe, name, config)[0] for name in ("ddim", "euler_a", "dpmpp_2m_karras")}
    assert max_diff(images["ddim"], images["euler_a"]) > 10 * TOL
    assert max_diff(images["ddim"], images["dpmpp_2m_karras"]) > 10 * TOL


@pytest.mark.parametrize("name", SAMPLERS)
def test_batch_image_k_is_the_image_made_alone(pipe, name):
    """A1111's seed+k rule, bit for bit: with per_image=True image k of a batch is the image generated
    alone from seed k; batched as diffusers batches (per_image=False, the default) it is diffusers'
    batch, and within float rounding of the images made alone."""
    config = scheduler_config({})
    seeds = (5, 6)
    _, batch = run_ours(pipe, name, config, seeds=seeds, per_image=True)
    for k, seed in enumerate(seeds):
        _, alone = run_ours(pipe, name, config, seeds=(seed,))
        same = all(torch.equal(a[k : k + 1], b) for a, b in zip(batch, alone))
        assert same, f"image {k} of the batch differs from seed {seed} alone"
    assert max_diff(batch[-1][0], batch[-1][1]) > 0.1
    images, batched = run_ours(pipe, name, config, seeds=seeds, per_image=False)
    ref_images, ref_trace = run_diffusers(pipe, name, config, seeds=seeds)
    assert max_diff(images, ref_images) <= TOL
    for a, b in zip(batched, ref_trace):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batched[-1], batch[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", SAMPLERS)
def test_img2img_matches_diffusers(pipe, name):
    """Starting part-way down the ladder from noised latents is diffusers' img2img, step for step."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from diffusers.utils.torch_utils import randn_tensor

    config, strength = scheduler_config({}), 0.6
    init = torch.randn((1, 4, SIZE // 4, SIZE // 4), generator=torch.Generator().manual_seed(3))
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(pipe)
    img2img.scheduler = to_diffusers(name, config)
    ref_trace = []
    img2img(PROMPT, image=init, strength=strength, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(1), output_type="latent",
            callback_on_step_end=lambda _p, i, t, kw: (ref_trace.append(kw["latents"].clone()), kw)[1])  # fmt: skip
    start = img2img_start(STEPS, strength)
    ref_timesteps, n = img2img.get_timesteps(STEPS, strength, "cpu")
    assert start == STEPS - n == 3
    assert build_schedule(name, config, STEPS).from_step(start).timesteps.tolist() == ref_timesteps.tolist()

    g = torch.Generator().manual_seed(1)
    noise = randn_tensor(init.shape, generator=g)
    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    trace = []
    sample(name, pipe.unet, noise, config, steps=STEPS, cond=cond, uncond=uncond, guidance=GUIDANCE, generator=g,
           init_latents=init, start_step=start, callback=lambda i, total, x, x0: trace.append(x.clone()))  # fmt: skip
    assert len(trace) == len(ref_trace) == STEPS - start
    for i, (a, b) in enumerate(zip(trace, ref_trace)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"latents differ after step {i}")
    assert img2img_start(25, 0.6) == 10 and img2img_start(25, 1.0) == 0 and img2img_start(25, 0.01) == 25


def test_ddim_eta(pipe):
    config = scheduler_config({})
    ours, _ = run_ours(pipe, "ddim", config, eta=0.5)
    assert max_diff(ours, run_diffusers(pipe, "ddim", config, eta=0.5)[0]) <= TOL
    # DDIM with η = 1 is DDPM (Song et al. 2021, §4.1) when its stride hits the listed timesteps
    # and its last step lands on ᾱ = 1 as DDPM's does
    config = scheduler_config({"set_alpha_to_one": True})
    ddim1, _ = run_ours(pipe, "ddim", config, steps=5, eta=1.0)
    ddpm, _ = run_ours(pipe, "ddpm", config, steps=5)
    assert max_diff(ddim1, ddpm) <= TOL
    assert max_diff(ddim1, run_ours(pipe, "ddim", config, steps=5)[0]) > 10 * TOL


def test_ddim_eta_one_from_pure_noise_is_finite():
    # from ᾱ_t = 0, η = 1 makes √(1 − ᾱ_t' − σ_t²) a root of (rounded) 0: diffusers returns NaN for
    # some step counts (50 with this schedule); we clamp
    config = {**tm.scheduler_config(SMALL), "set_alpha_to_one": True}
    x, x0, eps = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for steps in range(1, 201):
        schedule = build_schedule("ddim", config, steps)
        assert schedule.alpha_bars[0] == 0
        x_next = ddim_step(x, x0, eps, schedule.alpha_bars[0], schedule.alpha_bars_prev[0],
                           eta=1.0, noise=torch.ones_like(x))  # fmt: skip
        assert torch.isfinite(x_next).all(), f"NaN after the first of {steps} steps"


@pytest.mark.parametrize("changes, steps", [({"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": False}, 6),
                                            ({}, 50)])  # fmt: skip
def test_dpmpp_karras_with_repeated_timesteps(pipe, changes, steps):
    # Karras σ's near σ_max map to the same timestep (999 three times for the shipped model's
    # schedule at 50 steps); we walk the σ's in order, as diffusers does once its counter starts at 0
    config = scheduler_config(changes)
    schedule = build_schedule("dpmpp_2m_karras", config, steps)
    assert schedule.timesteps[0] == schedule.timesteps[1]
    ours, _ = run_ours(pipe, "dpmpp_2m_karras", config, steps=steps)
    ref, _ = _run_diffusers(pipe, "dpmpp_2m_karras", config, steps, GUIDANCE, (1,), 0.0, SIZE, count_from_zero=True)
    assert max_diff(ours, ref) <= TOL


def test_without_guidance(pipe):
    config = scheduler_config({})
    # diffusers' rule: no guidance unless guidance_scale > 1, and then only the conditional half runs
    ours, _ = run_ours(pipe, "dpmpp_2m", config, guidance=1.0)
    assert max_diff(ours, run_diffusers(pipe, "dpmpp_2m", config, guidance=1.0)[0]) <= TOL


def test_callback_sees_every_step(pipe):
    config = scheduler_config({})
    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    noise = torch.randn((1, 4, SIZE // 4, SIZE // 4), generator=torch.Generator().manual_seed(0))
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


@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_twin_config_is_what_diffusers_reads(name, config_name):
    # defaults read from the twin's signature, without building a scheduler, are what from_config gives
    for config in (scheduler_config(CONFIGS[config_name]), {"num_train_timesteps": 1000}):
        ours, theirs = twin_config(name, config), dict(to_diffusers(name, config).config)
        assert {key: ours[key] for key in theirs if key in ours} == {key: theirs[key] for key in theirs if key in ours}
        assert set(ours) >= {"timestep_spacing", "steps_offset", "prediction_type", "beta_schedule"}


def test_names():
    assert set(REGISTRY) == set(SAMPLERS) == set(A1111_NAMES)
    assert all(REGISTRY[n].function is SAMPLERS[n] and REGISTRY[n].a1111 == A1111_NAMES[n] for n in REGISTRY)
    assert [n for n in REGISTRY if REGISTRY[n].sigmas == "karras"] == ["dpmpp_2m_karras"]
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
    config = scheduler_config({})
    cond, uncond = pipe.encode_prompt([PROMPT], "cpu", 1, True)
    noise = torch.randn(1, 4, SIZE // 4, SIZE // 4)

    def run(name="ddim", **kw):
        return sample(name, pipe.unet, noise, config, **(dict(steps=3, cond=cond, uncond=uncond, guidance=GUIDANCE) | kw))

    from tutorial_ldm.settings import SettingsError

    for steps in (0, 1001, 2.5):
        with pytest.raises(SettingsError, match=f"steps={steps}") as e:
            run(steps=steps)
        assert e.value.field == "steps"
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
    with pytest.raises(ValueError, match="start_step=2 needs init_latents"):
        run(start_step=2)
    for start in (3, -1):
        with pytest.raises(ValueError, match=f"start step {start} must be from 0 to 2"):
            run(start_step=start, init_latents=noise)
    with pytest.raises(ValueError, match="init_latents' shape"):
        run(start_step=1, init_latents=noise[:, :3])
    with pytest.raises(ValueError, match="thresholding=True is not supported"):
        sample("ddim", pipe.unet, noise, {**config, "thresholding": True}, steps=3, cond=cond)


def shipped_model_path():
    for path in (Path(__file__).resolve().parents[1] / "assets" / "tiny-ldm", Path("/work/stand-in/tiny-ldm")):
        if (path / "model_index.json").exists():
            return path
    return None


@pytest.fixture(scope="module")
def shipped_pipe():
    from diffusers import StableDiffusionPipeline

    if shipped_model_path() is None:
        pytest.skip("assets/tiny-ldm is not in this checkout")
    pipe = StableDiffusionPipeline.from_pretrained(shipped_model_path(), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe, dict(pipe.scheduler.config)  # the config as shipped: the tests swap pipe.scheduler


@pytest.mark.parametrize("name", SAMPLERS)
def test_matches_diffusers_on_shipped_model(shipped_pipe, name):
    shipped_pipe, config = shipped_pipe
    ref, _ = run_diffusers(shipped_pipe, name, config, steps=5, size=64)
    ours, _ = run_ours(shipped_pipe, name, config, steps=5, size=64)
    assert max_diff(ours, ref) <= TOL
