"""Samplers written by hand: DDPM, DDIM, Euler, Euler a, DPM++ 2M (Karras), equal to diffusers.

A sampler runs the reverse process: from pure noise it steps down a ladder of noise levels, asking
the denoiser at every rung what the clean latent looks like. Every sampler here is a free function
with one signature (k-diffusion style)::

    x0 = sample_xxx(model, noise, schedule, *, generator=None, callback=None)

- `model(x, t)` is the UNet's raw output (ε or v) for the input it is given, with classifier-free
  guidance already applied (`guided_model`);
- `noise` is standard-normal noise, the sampler scales it to its starting level;
- `schedule` is the ladder of noise levels, built separately from the scheduler config
  (`alpha_bar_schedule` for DDPM/DDIM, `sigma_schedule` for Euler/DPM++);
- `generator` feeds the fresh noise of the stochastic samplers (DDPM, DDIM with η > 0, Euler a),
  drawn in the same order and shape as diffusers draws it;
- `callback(i, n, x, x0)` sees the latents and the prediction x̂₀ after each step.

The two ways of writing the same forward process:

- ᾱ view (DDPM, DDIM; Ho et al. 2020, Song et al. 2021):  x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
- σ view (Euler, DPM-Solver; Karras et al. 2022):          x_σ = x₀ + σ·ε,  σ = √((1−ᾱ_t)/ᾱ_t)

They describe the same noisy latent up to a scale, x_σ = x_t/√ᾱ_t.

Notation key (variable → symbol):

    t        timestep t ∈ {0, …, T−1} the UNet is told          ab, ab_prev  ᾱ_t, ᾱ_{t−Δ}
    x        the current noisy latent x_t (or x_σ)               x0, eps      x̂₀, ε̂ (predictions)
    sigma    σ_t = √((1−ᾱ_t)/ᾱ_t)                                alpha, sd    α_t = √ᾱ_t, σ_t^VP = √(1−ᾱ_t)
    lam      λ = log(α/σ^VP), the log signal-to-noise ratio      h            λ_next − λ (DPM-Solver)
    eta      η, DDIM's stochasticity: 0 = deterministic, 1 = DDPM's variance

Equivalence with diffusers is the point, so each step reproduces the arithmetic of the matching
diffusers scheduler (`to_diffusers`), including its quirks, which are pointed out where they occur.
The tests check that both give the same image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .noise_schedule import NoiseSchedule

# ---------------------------------------------------------------------------------------------
# The noise schedule: ᾱ_t (chapter 1's `NoiseSchedule`) → σ_t → the levels a sampler visits


def alpha_bars_from_config(config, *, finite_terminal_sigma: bool = False) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) (DDPM eq. 4), for t = 0 … T−1.

    With a zero-terminal-SNR schedule ᾱ_T = 0, so σ_T = ∞ and the σ-view samplers could not start.
    They (and diffusers' Euler and DPM-Solver schedulers) replace it by 2⁻²⁴: σ_T ≈ 4096, still
    pure noise in float32. DDPM and DDIM keep the exact 0.
    """
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler setting trained_betas is not supported; give beta_schedule instead")
    ab = NoiseSchedule.from_config(config).alphas_cumprod.clone()
    if finite_terminal_sigma and config.get("rescale_betas_zero_snr", False):
        ab[-1] = 2**-24
    return ab


def alpha_bar_to_sigma(ab):
    """σ = √((1 − ᾱ)/ᾱ): the noise-to-signal ratio, the σ view's noise level."""
    return ((1 - ab) / ab) ** 0.5


def sigma_to_vp(sigma):
    """(α_t, σ_t^VP) = (1/√(σ²+1), σ/√(σ²+1)): from the σ view back to x_t = α_t·x₀ + σ_t^VP·ε."""
    alpha = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha, sigma * alpha


def sigma_to_t(sigma: np.ndarray, train_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) timestep of a noise level: linear interpolation in log σ between training steps."""
    return np.interp(np.log(np.maximum(sigma, 1e-10)), np.log(train_sigmas), np.arange(len(train_sigmas)))


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ.

    Spends more steps at low noise, where the image's details are decided.
    """
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def spaced_timesteps(
    num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0, *, solver_grid: bool = False
) -> np.ndarray:
    """Which `steps` of the T training timesteps to visit, largest first (Lin et al. 2024, Table 2).

    - "leading":  0, T/n, 2T/n, … shifted by `steps_offset` (SD 1.x: 901, 801, …, 1). Never starts at
      t = T, so a zero-terminal-SNR model never sees its pure-noise step.
    - "trailing": T−1, T−1−T/n, …: starts at pure noise.
    - "linspace": n evenly spaced points from 0 to T−1 (not rounded: diffusers' Euler keeps them
      fractional; DDIM and DDPM round them).
    DPM-Solver (`solver_grid=True`) lays n+1 points with "leading" and "linspace" and drops the t = 0
    one, since its last step lands on σ = 0 by itself.
    """
    T, n = num_train_timesteps, steps
    if spacing == "linspace":
        if solver_grid:
            return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy()
        return np.linspace(0, T - 1, n)[::-1].copy()
    if spacing == "leading":
        if solver_grid:
            ratio = T // (n + 1)
            return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy() + steps_offset
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].copy() + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)) - 1
    raise ValueError(f"timestep_spacing={spacing!r} is not supported; use 'leading', 'trailing' or 'linspace'")


# ---------------------------------------------------------------------------------------------
# Schedules: the ladder a sampler walks down, built once and passed in


@dataclass(frozen=True)
class AlphaSchedule:
    """DDPM/DDIM's ladder in the ᾱ view: step i goes from x_{t_i} to the level ᾱ_prev[i]."""

    timesteps: torch.Tensor  # (n,) int64: t_i, the time the UNet is told
    alpha_bars: torch.Tensor  # (n,) ᾱ at t_i
    alpha_bars_prev: torch.Tensor  # (n,) ᾱ step i lands on ("prev" in forward time, as in the papers)
    prediction_type: str  # what the model predicts: "epsilon" or "v_prediction"
    clip_sample: float | None = None  # clamp x̂₀ to ±this (pixel-space DDPM); None in latent space
    init_noise_sigma: float = 1.0  # x_T = noise: in the ᾱ view pure noise has unit variance


@dataclass(frozen=True)
class SigmaSchedule:
    """Euler's and DPM-Solver's ladder in the σ view: σ_0 > σ_1 > … > σ_n = 0."""

    timesteps: torch.Tensor  # (n,) t_i, the time the UNet is told at σ_i (fractional for Karras σ's)
    sigmas: torch.Tensor  # (n+1,) float32, ending at 0: clean
    prediction_type: str
    init_noise_sigma: torch.Tensor  # the std of the starting latent in the sampler's own coordinates


def alpha_bar_schedule(config, steps: int, *, ddim: bool) -> AlphaSchedule:
    """The ladder DDPMScheduler (ddim=False) or DDIMScheduler (ddim=True) would walk for `steps` steps.

    DDPM steps from each listed timestep to the next and finally to ᾱ = 1. DDIM steps by the fixed
    stride T//n (t → t − T//n) whatever the listed timesteps are, which for "trailing" and "linspace"
    with n not dividing T lands slightly off the next listed one, and finally to ᾱ_0 (or 1 with
    set_alpha_to_one): we reproduce both so that our DDIM is diffusers' DDIM.
    """
    T = config["num_train_timesteps"]
    ab = alpha_bars_from_config(config)
    t = spaced_timesteps(T, steps, config["timestep_spacing"], config["steps_offset"]).round().astype(np.int64)
    timesteps = torch.from_numpy(t)
    if ddim:
        final = torch.tensor(1.0) if config["set_alpha_to_one"] else ab[0]
        prev = [int(ti) - T // steps for ti in t]
    else:
        final = torch.tensor(1.0)
        prev = [int(ti) for ti in t[1:]] + [-1]
    ab_prev = torch.stack([ab[p] if p >= 0 else final for p in prev])
    return AlphaSchedule(
        timesteps=timesteps,
        alpha_bars=ab[timesteps],
        alpha_bars_prev=ab_prev,
        prediction_type=config["prediction_type"],
        clip_sample=config["clip_sample_range"] if config.get("clip_sample", False) else None,
    )


def sigma_schedule(config, steps: int, *, karras: bool = False, solver: bool = False) -> SigmaSchedule:
    """The σ ladder EulerDiscreteScheduler (solver=False) or DPMSolverMultistepScheduler (solver=True)
    would walk for `steps` steps, optionally with Karras σ's.

    σ_i is interpolated at the spaced timesteps from the training σ's; Karras σ's instead space σ by
    eq. 5 and map each back to a timestep (DPM-Solver rounds it, and spans the whole training range
    where Euler spans the spaced timesteps' range). Euler starts from noise·σ_0 ("trailing",
    "linspace") or noise·√(σ_0²+1) ("leading"), as diffusers' init_noise_sigma does; DPM-Solver
    works on x_t and starts from plain noise.
    """
    T = config["num_train_timesteps"]
    train_sigmas = np.array(alpha_bar_to_sigma(alpha_bars_from_config(config, finite_terminal_sigma=True)))
    t = spaced_timesteps(T, steps, config["timestep_spacing"], config["steps_offset"], solver_grid=solver)
    if solver:
        t = t.round().astype(np.int64)
        if karras:
            sigmas = karras_sigmas(train_sigmas[0].item(), train_sigmas[-1].item(), steps)
            t = sigma_to_t(sigmas, train_sigmas)
            # diffusers rounds these, except for the cosine schedule, where it truncates
            t = (t if config["beta_schedule"] == "squaredcos_cap_v2" else t.round()).astype(np.int64)
        else:
            sigmas = np.interp(t, np.arange(T), train_sigmas)
    else:
        t = t.astype(np.float32)
        sigmas = np.interp(t, np.arange(T), train_sigmas)
        if karras:
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), steps)
            t = sigma_to_t(sigmas, train_sigmas).astype(np.float32)
    sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
    if solver:
        init = torch.tensor(1.0)
    elif config["timestep_spacing"] in ("linspace", "trailing"):
        init = sigmas.max()
    else:
        init = (sigmas.max() ** 2 + 1) ** 0.5
    return SigmaSchedule(
        timesteps=torch.from_numpy(t), sigmas=sigmas, prediction_type=config["prediction_type"], init_noise_sigma=init
    )


# ---------------------------------------------------------------------------------------------
# Reading the model's output: ε- and v-prediction → x̂₀ (and ε̂)


def predict_vp(out, x, alpha, sd, prediction_type):
    """(x̂₀, ε̂) from the model output at x_t = α·x₀ + sd·ε (the ᾱ view, α = √ᾱ, sd = √(1−ᾱ)).

    ε-prediction (DDPM eq. 15):  x̂₀ = (x_t − sd·ε̂)/α
    v-prediction (Salimans & Ho 2022, §4), v = α·ε − sd·x₀:  x̂₀ = α·x_t − sd·v̂,  ε̂ = α·v̂ + sd·x_t
    """
    if prediction_type == "epsilon":
        return (x - sd * out) / alpha, out
    if prediction_type == "v_prediction":
        return alpha * x - sd * out, alpha * out + sd * x
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")


def predict_ve(out, x, sigma, prediction_type):
    """x̂₀ from the model output at x_σ = x₀ + σ·ε (the σ view; the UNet saw x_σ/√(σ²+1) = x_t).

    ε-prediction: x̂₀ = x_σ − σ·ε̂;  v-prediction: x̂₀ = −σ/√(σ²+1)·v̂ + x_σ/(σ²+1).
    """
    if prediction_type == "epsilon":
        return x - sigma * out
    if prediction_type == "v_prediction":
        return out * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")


def randn_like_diffusers(x, generator):
    """Fresh noise drawn as diffusers' schedulers draw it: one tensor, or one slice per generator."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance: a UNet and two conditionings → one guided model


def guided_model(unet, cond, uncond=None, guidance: float = 1.0):
    """Turn a UNet and text embeddings into `model(x_t, t) -> output` (ε or v), guided.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6): out = out_uncond + w·(out_cond − out_uncond),
    applied when w > 1 and an unconditional embedding is given. Like diffusers, it mixes the raw
    output (v for a v-prediction model), and runs both halves as one batch [uncond, cond].
    """
    cfg = uncond is not None and guidance > 1
    context = torch.cat([uncond, cond]) if cfg else cond

    def model(x, t):
        out = unet(torch.cat([x] * 2) if cfg else x, t, encoder_hidden_states=context, return_dict=False)[0]
        if not cfg:
            return out
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)

    return model


# ---------------------------------------------------------------------------------------------
# One step of each sampler: the model's output at the current level → the latent one level down


def ddpm_step(out, x, ab, ab_prev, prediction_type, *, noise=None, clip_sample=None):
    """DDPM's ancestral step (Ho et al. 2020, Algorithm 2): sample q(x_t' | x_t, x̂₀) (eq. 6–7).

    Returns (x_t', x̂₀). `noise` ~ N(0, I) is added with the posterior variance β̃ ("fixed_small");
    None at t = 0.
    """
    # 1. the per-step α and β between the two levels: α_t = ᾱ_t/ᾱ_t', β_t = 1 − α_t
    alpha_t = ab / ab_prev
    beta_t = 1 - alpha_t
    # 2. predict x̂₀ (eq. 15, or from v), clamped in pixel-space models
    x0, _ = predict_vp(out, x, ab**0.5, (1 - ab) ** 0.5, prediction_type)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    # 3. the posterior mean μ̃ (eq. 7): √ᾱ_t'·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_t')/(1−ᾱ_t)·x_t
    x0_coeff = (ab_prev**0.5 * beta_t) / (1 - ab)
    x_coeff = alpha_t**0.5 * (1 - ab_prev) / (1 - ab)
    mean = x0_coeff * x0 + x_coeff * x
    if noise is None:
        return mean, x0
    # 4. plus noise of variance β̃_t = (1−ᾱ_t')/(1−ᾱ_t)·β_t (eq. 7)
    variance = torch.clamp((1 - ab_prev) / (1 - ab) * beta_t, min=1e-20)
    return mean + variance**0.5 * noise, x0


def ddim_step(out, x, ab, ab_prev, prediction_type, *, eta=0.0, noise=None, clip_sample=None):
    """DDIM's step (Song et al. 2021, eq. 12), returns (x_t', x̂₀):

    x_t' = √ᾱ_t'·x̂₀ + √(1 − ᾱ_t' − σ_t²)·ε̂ + σ_t·z,  σ_t = η·√((1−ᾱ_t')/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_t') (eq. 16).
    `noise` (z) is needed when η > 0.
    """
    # 1. "predicted x₀" and the noise it implies (eq. 12's first and second terms)
    x0, eps = predict_vp(out, x, ab**0.5, (1 - ab) ** 0.5, prediction_type)
    if clip_sample is not None:
        x0 = x0.clamp(-clip_sample, clip_sample)
    # 2. σ_t(η) (eq. 16)
    variance = ((1 - ab_prev) / (1 - ab)) * (1 - ab / ab_prev)
    std = eta * variance**0.5
    # 3. "direction pointing to x_t" (eq. 12). From ᾱ_t = 0 with η = 1 the root's argument is 0 and
    # rounding can make it −1e−8; diffusers then returns NaN, we clamp (identical wherever it is ≥ 0)
    direction = (1 - ab_prev - std**2).clamp(min=0) ** 0.5 * eps
    # 4. x_t' without, then with, the random noise (eq. 12's third term)
    x = ab_prev**0.5 * x0 + direction
    if eta > 0:
        x = x + std * noise
    return x, x0


def euler_step(out, x, sigma, sigma_next, prediction_type):
    """Euler's method on the probability-flow ODE dx/dσ = (x − x̂₀)/σ (Karras et al. 2022, eq. 3;
    their Algorithm 1 without its 2nd-order correction). Returns (x_σ', x̂₀)."""
    x = x.to(torch.float32)
    x0 = predict_ve(out, x, sigma, prediction_type)
    # the ODE's slope d = (x − x̂₀)/σ, one step of length σ_next − σ
    d = (x - x0) / sigma
    return (x + d * (sigma_next - sigma)).to(out.dtype), x0


def euler_ancestral_step(out, x, sigma, sigma_next, prediction_type, noise):
    """Euler ancestral ("Euler a"): an Euler step down to σ_down, then fresh noise σ_up back up.

    σ_up² = σ_next²·(σ² − σ_next²)/σ² and σ_down² = σ_next² − σ_up² split DDPM's posterior step into
    its deterministic and random parts (k-diffusion's `get_ancestral_step` with η = 1).
    Returns (x_σ', x̂₀).
    """
    x = x.to(torch.float32)
    x0 = predict_ve(out, x, sigma, prediction_type)
    # 1. split σ → σ_next into a deterministic part (to σ_down) and a random part (σ_up)
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    # 2. Euler step to σ_down, then noise up to σ_next
    d = (x - x0) / sigma
    x = x + d * (sigma_down - sigma)
    return (x + noise * sigma_up).to(out.dtype), x0


def log_snr(sigma):
    """λ = log(α_t/σ_t^VP) = −log σ: DPM-Solver's time variable."""
    alpha, sd = sigma_to_vp(sigma)
    return torch.log(alpha) - torch.log(sd)


def dpmpp_2m_step(out, x, sigma, sigma_next, prediction_type, *, sigma_prev=None, x0_prev=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), on x_t = α_t·x₀ + σ_t·ε. Returns (x_t', x̂₀).

    1st order (DPM-Solver++(1), which is DDIM, eq. 7) without a previous x̂₀ and on the last step;
    2nd order otherwise, extrapolating x̂₀ linearly in λ from the previous step's.
    """
    alpha_s, sd_s = sigma_to_vp(sigma)
    x0, _ = predict_vp(out, x, alpha_s, sd_s, prediction_type)
    x = x.to(torch.float32)
    if sigma_next == 0:
        # 1. the last step lands on σ = 0: x̂₀ itself (eq. 7's limit λ → ∞)
        return x0.to(out.dtype), x0
    alpha_t, sd_t = sigma_to_vp(sigma_next)
    h = log_snr(sigma_next) - log_snr(sigma)
    # 2. first order (eq. 7): x_t' = (σ_t'/σ_t)·x_t − α_t'·(e^{−h} − 1)·x̂₀
    x_next = (sd_t / sd_s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0
    if x0_prev is not None:
        # 3. second order: D = x̂₀ + (1/2r)·(x̂₀ − x̂₀_prev), r = h_prev/h (Algorithm 2)
        r = (log_snr(sigma) - log_snr(sigma_prev)) / h
        d1 = (1.0 / r) * (x0 - x0_prev)
        x_next = x_next - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
    return x_next.to(out.dtype), x0


# ---------------------------------------------------------------------------------------------
# The samplers: a loop over the schedule around one step function


@torch.no_grad()
def sample_ddpm(model, noise, schedule: AlphaSchedule, *, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on a subsequence of timesteps.
    Fresh noise at every step whose t > 0."""
    x = noise * schedule.init_noise_sigma
    for i, t in enumerate(schedule.timesteps):
        out = model(x, t)
        z = randn_like_diffusers(out, generator) if t > 0 else None
        x, x0 = ddpm_step(
            out, x, schedule.alpha_bars[i], schedule.alpha_bars_prev[i], schedule.prediction_type,
            noise=z, clip_sample=schedule.clip_sample,
        )  # fmt: skip
        if callback is not None:
            callback(i, len(schedule.timesteps), x, x0)
    return x


@torch.no_grad()
def sample_ddim(model, noise, schedule: AlphaSchedule, *, eta: float = 0.0, generator=None, callback=None):
    """DDIM (Song et al. 2021): deterministic for η = 0, DDPM's variance for η = 1.
    Fresh noise at every step when η > 0."""
    x = noise * schedule.init_noise_sigma
    for i, t in enumerate(schedule.timesteps):
        out = model(x, t)
        z = randn_like_diffusers(out, generator) if eta > 0 else None
        x, x0 = ddim_step(
            out, x, schedule.alpha_bars[i], schedule.alpha_bars_prev[i], schedule.prediction_type,
            eta=eta, noise=z, clip_sample=schedule.clip_sample,
        )  # fmt: skip
        if callback is not None:
            callback(i, len(schedule.timesteps), x, x0)
    return x


@torch.no_grad()
def sample_euler(model, noise, schedule: SigmaSchedule, *, generator=None, callback=None):
    """Euler (Karras et al. 2022): deterministic; `generator` is unused. The UNet was trained on
    x_t = x_σ/√(σ²+1), so that is what it is shown."""
    x = noise * schedule.init_noise_sigma
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        out = model(x / ((sigma**2 + 1) ** 0.5), t)
        x, x0 = euler_step(out, x, sigma, sigma_next, schedule.prediction_type)
        if callback is not None:
            callback(i, len(schedule.timesteps), x, x0)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, noise, schedule: SigmaSchedule, *, generator=None, callback=None):
    """Euler a: fresh noise at every step, the last one (σ_up = 0) included, as diffusers draws it.
    The image changes with the step count, unlike the ODE samplers'."""
    x = noise * schedule.init_noise_sigma
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = schedule.sigmas[i], schedule.sigmas[i + 1]
        out = model(x / ((sigma**2 + 1) ** 0.5), t)
        z = randn_like_diffusers(out, generator)
        x, x0 = euler_ancestral_step(out, x, sigma, sigma_next, schedule.prediction_type, z)
        if callback is not None:
            callback(i, len(schedule.timesteps), x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, noise, schedule: SigmaSchedule, *, generator=None, callback=None):
    """DPM-Solver++(2M): 2nd order for the price of one model call per step, by reusing the
    previous step's x̂₀. Deterministic; `generator` is unused."""
    x = noise * schedule.init_noise_sigma
    x0 = None
    for i, t in enumerate(schedule.timesteps):
        out = model(x, t)
        x, x0 = dpmpp_2m_step(
            out, x, schedule.sigmas[i], schedule.sigmas[i + 1], schedule.prediction_type,
            sigma_prev=schedule.sigmas[i - 1] if i > 0 else None, x0_prev=x0,
        )  # fmt: skip
        if callback is not None:
            callback(i, len(schedule.timesteps), x, x0)
    return x


# ---------------------------------------------------------------------------------------------
# The registry: our names, A1111's names, diffusers' schedulers


SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_a": sample_euler_ancestral,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_karras": sample_dpmpp_2m,  # the same solver on Karras σ's
}

# The name AUTOMATIC1111's web UI shows for each. A1111 has no plain DDPM sampler (its list starts
# at DDIM/PLMS and the k-diffusion samplers); "DDPM" here is our label only. Same algorithm, not the
# same pixels: A1111 runs k-diffusion's implementations, we match diffusers'.
A1111_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
}
FROM_A1111 = {a1111: ours for ours, a1111 in A1111_NAMES.items()}

# name → (diffusers scheduler class, the settings that make it this sampler)
_PLAIN_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DIFFUSERS = {
    "ddpm": ("DDPMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", _PLAIN_SIGMAS),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_PLAIN_SIGMAS}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {**_DPMPP_2M, **_PLAIN_SIGMAS, "use_karras_sigmas": True}),
}

# settings of the diffusers schedulers we do not implement: (key, the value we support)
_SUPPORTED = {
    "thresholding": False,
    "variance_type": ("fixed_small", None),  # DDPM: "fixed_small"; DPM-Solver: None
    "interpolation_type": "linear",
    "timestep_type": "discrete",
    "final_sigmas_type": "zero",
    "sigma_min": None,
    "sigma_max": None,
    "solver_type": "midpoint",
    "euler_at_final": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "lambda_min_clipped": -math.inf,
}


def sampler_name(name: str) -> str:
    """Our name for a sampler given ours or A1111's ("Euler a" → "euler_a"); ValueError otherwise."""
    if name in SAMPLERS:
        return name
    if name in FROM_A1111:
        return FROM_A1111[name]
    raise ValueError(
        f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)} or A1111's {', '.join(FROM_A1111)}"
    )


def to_diffusers(name: str, scheduler_config):
    """The stock diffusers scheduler that samples exactly as `SAMPLERS[name]`, built from the config."""
    import diffusers

    cls, settings = _DIFFUSERS[sampler_name(name)]
    return getattr(diffusers, cls).from_config(dict(scheduler_config), **settings)


def build_schedule(name: str, scheduler_config, steps: int):
    """The schedule `SAMPLERS[name]` walks for `steps` steps.

    The config is first read through `to_diffusers(name, …)` so that whatever it leaves out takes
    that scheduler's default, and means the same to both sides.
    """
    name = sampler_name(name)
    config = dict(to_diffusers(name, scheduler_config).config)
    for key, ok in _SUPPORTED.items():
        if key in config and config[key] not in (ok if isinstance(ok, tuple) else (ok,)):
            raise ValueError(f"scheduler setting {key}={config[key]!r} is not supported by {name!r}; use {ok!r}")
    if config["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type={config['prediction_type']!r} is not supported; use 'epsilon' or 'v_prediction'"
        )
    if name in ("ddpm", "ddim"):
        return alpha_bar_schedule(config, steps, ddim=name == "ddim")
    return sigma_schedule(config, steps, karras=name.endswith("karras"), solver=name.startswith("dpmpp"))


def _check_inputs(name, noise, scheduler_config, steps, cond, uncond, guidance, generator, eta):
    T = dict(scheduler_config)["num_train_timesteps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps={steps!r} must be an integer from 1 to num_train_timesteps={T}")
    if not isinstance(guidance, (int, float)) or math.isnan(guidance) or guidance < 0:
        raise ValueError(f"guidance={guidance!r} must be a number ≥ 0 (1 = no guidance)")
    if not isinstance(eta, (int, float)) or math.isnan(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} must be a number ≥ 0")
    if eta != 0 and name != "ddim":
        raise ValueError(f"eta={eta!r} applies to 'ddim' only, not {name!r}")
    if noise.ndim != 4:
        raise ValueError(f"noise must be (batch, channels, height, width), got shape {tuple(noise.shape)}")
    if cond.ndim != 3 or cond.shape[0] != noise.shape[0]:
        raise ValueError(
            f"cond must be (batch, tokens, dim) with the noise's batch {noise.shape[0]}, got {tuple(cond.shape)}"
        )
    if uncond is not None and uncond.shape != cond.shape:
        raise ValueError(f"uncond's shape {tuple(uncond.shape)} must equal cond's {tuple(cond.shape)}")
    if isinstance(generator, list) and len(generator) != noise.shape[0]:
        raise ValueError(f"{len(generator)} generators given for a batch of {noise.shape[0]}: give one per image")


def sample(
    name: str,
    unet,
    noise: torch.Tensor,
    scheduler_config,
    *,
    steps: int,
    cond: torch.Tensor,
    uncond: torch.Tensor | None = None,
    guidance: float = 1.0,
    generator=None,
    callback=None,
    eta: float = 0.0,
) -> torch.Tensor:
    """Run sampler `name` (ours or A1111's name) from `noise` and return latents in the UNet's space.

    - noise: (batch, C, h, w) standard-normal, as diffusers' `prepare_latents` draws it before
      scaling by `init_noise_sigma`;
    - cond / uncond: text-encoder hidden states (batch, tokens, dim); guidance applies iff
      `guidance > 1` and `uncond` is given (diffusers' rule);
    - generator: None, a torch.Generator or a list of them, one per image (diffusers' `randn_tensor`
      semantics), for the stochastic samplers' fresh noise;
    - callback(i, n, x, x0) after each step; eta: DDIM's η (ddim only).
    The caller divides the result by `vae.config.scaling_factor` and decodes it.
    """
    name = sampler_name(name)
    _check_inputs(name, noise, scheduler_config, steps, cond, uncond, guidance, generator, eta)
    schedule = build_schedule(name, scheduler_config, steps)
    if name in ("ddpm", "ddim") and schedule.prediction_type == "epsilon" and bool(schedule.alpha_bars[0] == 0):
        raise ValueError(
            f"{name!r} cannot start at t={int(schedule.timesteps[0])} where ᾱ = 0 (zero terminal SNR) with an "
            "ε-prediction model: x̂₀ = (x − ε̂)/0. Use a v-prediction model, timestep_spacing='leading', "
            "or a σ-view sampler (euler, euler_a, dpmpp_2m)"
        )
    model = guided_model(unet, cond, uncond, guidance)
    extra = {"eta": eta} if name == "ddim" else {}
    return SAMPLERS[name](model, noise, schedule, generator=generator, callback=callback, **extra)
