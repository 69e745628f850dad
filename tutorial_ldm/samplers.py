"""Samplers written by hand: DDPM, DDIM, Euler, Euler a, DPM++ 2M (Karras), equal to diffusers.

A sampler runs the reverse process: from pure noise it steps down a ladder of noise levels, asking
the denoiser at every rung what the clean latent looks like. The code is shaped like k-diffusion's
`sampling.py` (Crowson):

- one denoiser, `Denoiser`: the UNet, classifier-free guidance (chapter 4's
  `classifier_free_guidance`) and the reading of its ε or v output as x̂₀ and ε̂;
- one ladder, `Schedule`: the timesteps and noise levels to visit, built separately
  (`build_schedule`) and passed in; `schedule.from_step(k)` is its lower part, where img2img starts;
- one signature for every sampler, a loop around one step function (`ddpm_step`, `ddim_step`,
  `euler_step`, `euler_ancestral_step`, `dpmpp_2m_step`) that turns (x, x̂₀, ε̂) into the next x::

      latents = sample_xxx(denoiser, x, schedule, *, generator=None, callback=None)

  where x is the starting latent in the schedule's coordinates (`schedule.start(noise)`),
  `generator` feeds the fresh noise of the stochastic samplers (DDPM, DDIM with η > 0, Euler a)
  and `callback(i, n, x, x0)` sees the latents and x̂₀ after each step;
- one record per sampler, `Sampler` (its function, A1111 name, diffusers twin, kind of σ's), in
  one registry, `REGISTRY`, from which `SAMPLERS`, `A1111_NAMES` and `FROM_A1111` are read;
- `sample(name, unet, noise, scheduler_config, ...)`, the entry point of `tutorial_ldm.generate`;
  for SDXL it also takes the UNet's `added_cond` / `added_uncond` (pooled text, size `time_ids`).

The two ways of writing the same forward process:

- ᾱ view (DDPM, DDIM, DPM-Solver; Ho et al. 2020, Song et al. 2021):  x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε
- σ view (Euler; Karras et al. 2022):                                 x_σ = x₀ + σ·ε,  σ = √((1−ᾱ_t)/ᾱ_t)

They describe the same noisy latent up to a scale, x_t = α·x_σ with α = √ᾱ_t = 1/√(σ²+1): Karras
et al.'s (2022) eq. 4 writes both as x = s·(x₀ + σ·ε), s = α or 1. That is the one coordinate
system of this module: every schedule says which s its sampler keeps x in (`Schedule.view`), and
the denoiser, told x and its rung, always shows the UNet x_t = x/(s·√(σ²+1)) and returns x̂₀ and
ε̂ = (x/s − x̂₀)/σ.

Notation key (variable → symbol):

    t        timestep t ∈ {0, …, T−1} the UNet is told          ab, ab_prev  ᾱ_t, ᾱ_{t−Δ}
    x        the current noisy latent x_t (or x_σ)               x0, eps      x̂₀, ε̂ (predictions)
    sigma    σ_t = √((1−ᾱ_t)/ᾱ_t)                                alpha, sd    α_t = √ᾱ_t, σ_t^VP = √(1−ᾱ_t)
    log_snr  λ = log(α/σ^VP) = −log σ, DPM-Solver's time         h            λ_next − λ (DPM-Solver)
    eta      η, DDIM's stochasticity: 0 = deterministic, 1 = DDPM's variance
    view     the coordinates x is kept in, x = s·(x₀ + σ·ε): "sigma" (s = 1) or "alpha" (s = α)

Equivalence with diffusers is the point: the latents after every step are those of the matching
diffusers scheduler (`to_diffusers`) in its pipeline, txt2img and img2img, one image or a batch
(tests/test_samplers.py checks them to 1e-4; measured, they are equal bit for bit).
Where that needs diffusers' arithmetic or its quirks rather than the paper's, the code is in the
"diffusers parity" section below, each quirk with the reason.

Batches: with `per_image=True` image k of a batch is, bit for bit, the image sampled alone from the
same noise and generator, for every sampler (the UNet then runs image by image: batched matrix
products round differently); by default the UNet is batched as diffusers batches it, and image k
is within float rounding of it (a few 1e-5 in the latents, ≤ 1/255 in pixels). Either way the result
is bit for bit repeatable on one device with one thread count; another thread count moves the
last bits (≤ 2e-5 in the latents, measured). Figures: bench/batch_determinism.py.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from types import MappingProxyType

import numpy as np
import torch

from .guidance import classifier_free_guidance
from .noise_schedule import NoiseSchedule
from .settings import check_guidance, check_steps

# ---------------------------------------------------------------------------------------------
# The noise schedule: ᾱ_t (chapter 1's `NoiseSchedule`) → σ_t → the levels a sampler visits


def alpha_bars_from_config(config, *, finite_terminal_sigma: bool = False) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) (DDPM eq. 4), for t = 0 … T−1.

    With a zero-terminal-SNR schedule ᾱ_T = 0, so σ_T = ∞ and the samplers on σ ladders (Euler,
    DPM-Solver) could not start. They (and diffusers' Euler and DPM-Solver schedulers) replace it by
    2⁻²⁴: σ_T ≈ 4096, still pure noise in float32. DDPM and DDIM keep the exact 0.
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


# ---------------------------------------------------------------------------------------------
# The ladder: the levels a sampler walks down, built once (`build_schedule`) and passed in


@dataclass(frozen=True)
class Schedule:
    """The ladder of n steps: step i tells the UNet t_i, reads x at rung i and moves it to rung i+1.

    Every rung is given in both views, computed as the sampler's diffusers twin computes it (σ from
    ᾱ for DDPM/DDIM, α and σ^VP from σ for the σ-view ladders), so that both sides round alike.
    """

    timesteps: torch.Tensor  # (n,) t_i, the time the UNet is told (fractional for Euler's Karras σ's)
    sigmas: torch.Tensor  # (n+1,) float32 σ_0 > … > σ_n: where the last step lands (0: clean)
    alphas: torch.Tensor  # (n+1,) α_i = √ᾱ_i = 1/√(σ_i²+1)
    sds: torch.Tensor  # (n+1,) σ^VP_i = √(1−ᾱ_i) = σ_i·α_i
    view: str  # the coordinates x is kept in: "sigma" (x = x_σ, s = 1) or "alpha" (x = x_t, s = α)
    init_noise_sigma: torch.Tensor  # the std of pure noise in those coordinates at rung 0
    alpha_bars: torch.Tensor | None = None  # (n,) DDPM/DDIM: ᾱ at t_i
    alpha_bars_prev: torch.Tensor | None = None  # (n,) DDPM/DDIM: the ᾱ step i lands on
    clip_sample: float | None = None  # DDPM/DDIM: clamp x̂₀ to ±this (pixel space); None in latent space

    def __len__(self) -> int:
        return len(self.timesteps)

    def from_step(self, k: int) -> Schedule:
        """The ladder from rung k down: what img2img walks (diffusers' `timesteps[t_start:]`)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self):
            raise ValueError(f"start step {k!r} must be from 0 to {len(self) - 1} (the ladder has {len(self)} steps)")
        cut = {name: getattr(self, name)[k:] for name in ("timesteps", "sigmas", "alphas", "sds")}
        if self.alpha_bars is not None:
            cut |= {"alpha_bars": self.alpha_bars[k:], "alpha_bars_prev": self.alpha_bars_prev[k:]}
        return replace(self, **cut)

    def start(self, noise: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """x at rung 0: pure noise scaled to its level, or the clean latents x0 noised to it.

        The forward process in the schedule's coordinates, x = s·(x₀ + σ·ε) (DDPM eq. 4 when s = α),
        written as diffusers' `add_noise` writes it.
        """
        if x0 is None:
            return noise * self.init_noise_sigma
        if self.view == "sigma":
            return x0 + noise * self.sigmas[0]
        return self.alphas[0] * x0 + self.sds[0] * noise


# ---------------------------------------------------------------------------------------------
# The denoiser: UNet + classifier-free guidance + reading ε or v as x̂₀, in one coordinate system


def guided_model(unet, cond, uncond=None, guidance: float = 1.0, *, per_image: bool = False,
                 added_cond=None, added_uncond=None):
    """Turn a UNet and text embeddings into `model(x_t, t) -> output` (ε or v), guided.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6; `tutorial_ldm.guidance`), applied when
    w > 1 and an unconditional embedding is given. Like diffusers it mixes the raw output (v for a
    v-prediction model) and runs both halves as one batch [uncond, cond].

    added_cond, added_uncond: the UNet's `added_cond_kwargs` for each half, dicts of tensors with
    the batch first (SDXL: the pooled text embedding `text_embeds` and the size/crop `time_ids`,
    Podell et al. 2023, §2.2); None for UNets without them (SD 1.x/2.x).

    per_image=False runs the whole batch at once, as diffusers does; True runs the UNet image by
    image, so that image k of a batch is bit for bit the image made alone (batched matrix products
    round differently from single ones), at 2–2.6× the CPU time for batches of 4–16
    (bench/batch_determinism.py).
    """
    cfg = uncond is not None and guidance > 1

    def guided(x, t, cond, uncond, added, added_un):
        if not cfg:
            return unet(x, t, encoder_hidden_states=cond, added_cond_kwargs=added, return_dict=False)[0]
        both = None if added is None else {k: torch.cat([added_un[k], v]) for k, v in added.items()}
        out = unet(torch.cat([x] * 2), t, encoder_hidden_states=torch.cat([uncond, cond]),
                   added_cond_kwargs=both, return_dict=False)[0]
        out_uncond, out_cond = out.chunk(2)
        return classifier_free_guidance(out_uncond, out_cond, guidance)

    def model(x, t):
        if not per_image:
            return guided(x, t, cond, uncond, added_cond, added_uncond)
        return torch.cat([guided(x[k], t, cond[k], _part(uncond, k), _part(added_cond, k), _part(added_uncond, k))
                          for k in (slice(k, k + 1) for k in range(len(x)))])

    return model


def _part(batch, k: slice):
    """Image k's slice of a tensor or of a dict of tensors (None stays None)."""
    if batch is None or isinstance(batch, torch.Tensor):
        return None if batch is None else batch[k]
    return {key: v[k] for key, v in batch.items()}


class Denoiser:
    """D(x; rung) → (x̂₀, ε̂): the guided UNet read as a denoiser (Karras et al. 2022, eq. 7).

    x is in the schedule's coordinates x = s·(x₀ + σ·ε) (module docstring). The UNet is shown
    x_t = x/(s·√(σ²+1)) and its output read as
        ε-prediction (DDPM eq. 15):             x̂₀ = (x_t − σ^VP·ε̂)/α
        v-prediction (Salimans & Ho 2022, §4):  x̂₀ = α·x_t − σ^VP·v̂,   v = α·ε − σ^VP·x₀
    and ε̂ = (x/s − x̂₀)/σ, which in the σ view is the probability-flow ODE's slope dx/dσ.
    """

    def __init__(self, unet, cond, uncond=None, guidance: float = 1.0, *, prediction_type: str, per_image=False,
                 added_cond=None, added_uncond=None):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; use 'epsilon' or 'v_prediction'")
        self.model = guided_model(unet, cond, uncond, guidance, per_image=per_image,
                                  added_cond=added_cond, added_uncond=added_uncond)
        self.prediction_type = prediction_type

    def __call__(self, x, schedule: Schedule, i: int):
        t = schedule.timesteps[i]
        if schedule.view == "sigma":  # x_t = x_σ/√(σ²+1): Euler's `scale_model_input`
            sigma = schedule.sigmas[i]
            return read_sigma_view(self.model(x / ((sigma**2 + 1) ** 0.5), t), x, sigma, self.prediction_type)
        return read_alpha_view(self.model(x, t), x, schedule.alphas[i], schedule.sds[i], self.prediction_type)


# ---------------------------------------------------------------------------------------------
# One step of each sampler: (x, x̂₀, ε̂) at the current level → x one level down


def ddpm_step(x, x0, ab, ab_prev, *, noise=None):
    """DDPM's ancestral step (Ho et al. 2020, Algorithm 2): sample q(x_t' | x_t, x̂₀) (eq. 6–7).

    `noise` ~ N(0, I) is added with the posterior variance β̃ ("fixed_small"); None at t = 0.
    """
    # 1. the per-step α and β between the two levels: α_t = ᾱ_t/ᾱ_t', β_t = 1 − α_t
    alpha_t = ab / ab_prev
    beta_t = 1 - alpha_t
    # 2. the posterior mean μ̃ (eq. 7): √ᾱ_t'·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_t')/(1−ᾱ_t)·x_t
    x0_coeff = (ab_prev**0.5 * beta_t) / (1 - ab)
    x_coeff = alpha_t**0.5 * (1 - ab_prev) / (1 - ab)
    mean = x0_coeff * x0 + x_coeff * x
    if noise is None:
        return mean
    # 3. plus noise of variance β̃_t = (1−ᾱ_t')/(1−ᾱ_t)·β_t (eq. 7)
    variance = torch.clamp((1 - ab_prev) / (1 - ab) * beta_t, min=1e-20)
    return mean + variance**0.5 * noise


def ddim_step(x, x0, eps, ab, ab_prev, *, eta=0.0, noise=None):
    """DDIM's step (Song et al. 2021, eq. 12):

    x_t' = √ᾱ_t'·x̂₀ + √(1 − ᾱ_t' − σ_t²)·ε̂ + σ_t·z,  σ_t = η·√((1−ᾱ_t')/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_t') (eq. 16).
    `noise` (z) is needed when η > 0.
    """
    # 1. σ_t(η) (eq. 16)
    variance = ((1 - ab_prev) / (1 - ab)) * (1 - ab / ab_prev)
    std = eta * variance**0.5
    # 2. "direction pointing to x_t" (eq. 12's second term)
    direction = ddim_direction_scale(ab_prev, std) * eps
    # 3. x_t' without, then with, the random noise (eq. 12's first and third terms)
    x = ab_prev**0.5 * x0 + direction
    if eta > 0:
        x = x + std * noise
    return x


def euler_step(x, eps, sigma, sigma_next):
    """Euler's method on the probability-flow ODE dx/dσ = (x − x̂₀)/σ = ε̂ (Karras et al. 2022, eq. 3;
    their Algorithm 1 without its 2nd-order correction), in the σ view."""
    return (upcast(x) + eps * (sigma_next - sigma)).to(x.dtype)


def euler_ancestral_step(x, eps, sigma, sigma_next, noise):
    """Euler ancestral ("Euler a"): an Euler step down to σ_down, then fresh noise σ_up back up.

    σ_up² = σ_next²·(σ² − σ_next²)/σ² and σ_down² = σ_next² − σ_up² split DDPM's posterior step into
    its deterministic and random parts (k-diffusion's `get_ancestral_step` with η = 1).
    """
    # 1. split σ → σ_next into a deterministic part (to σ_down) and a random part (σ_up)
    sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    # 2. Euler step to σ_down, then noise up to σ_next
    x_down = upcast(x) + eps * (sigma_down - sigma)
    return (x_down + noise * sigma_up).to(x.dtype)


def log_snr(sigma):
    """λ = log(α_t/σ_t^VP) = −log σ: DPM-Solver's time variable."""
    alpha, sd = sigma_to_vp(sigma)
    return torch.log(alpha) - torch.log(sd)


def dpmpp_2m_step(x, x0, sigma, sigma_next, *, sigma_prev=None, x0_prev=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), on x_t = α_t·x₀ + σ_t·ε.

    1st order (DPM-Solver++(1), which is DDIM, eq. 7) without a previous x̂₀ and on the last step;
    2nd order otherwise, extrapolating x̂₀ linearly in λ from the previous step's.
    """
    if sigma_next == 0:
        # 1. the last step lands on σ = 0: x̂₀ itself (eq. 7's limit λ → ∞)
        return x0.to(x.dtype)
    alpha_t, sd_t = sigma_to_vp(sigma_next)
    _, sd_s = sigma_to_vp(sigma)
    h = log_snr(sigma_next) - log_snr(sigma)
    # 2. first order (eq. 7): x_t' = (σ_t'/σ_t)·x_t − α_t'·(e^{−h} − 1)·x̂₀
    x_next = (sd_t / sd_s) * upcast(x) - (alpha_t * (torch.exp(-h) - 1.0)) * x0
    if x0_prev is not None:
        # 3. second order: D = x̂₀ + (1/2r)·(x̂₀ − x̂₀_prev), r = h_prev/h (Algorithm 2)
        r = (log_snr(sigma) - log_snr(sigma_prev)) / h
        d1 = (1.0 / r) * (x0 - x0_prev)
        x_next = x_next - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
    return x_next.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# The samplers: a loop over the ladder around one step function


@torch.no_grad()
def sample_ddpm(denoiser, x, schedule: Schedule, *, generator=None, callback=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on a subsequence of timesteps.
    Fresh noise at every step whose t > 0."""
    for i, t in enumerate(schedule.timesteps):
        x0, _ = denoiser(x, schedule, i)
        x0 = clip_x0(x0, schedule.clip_sample)
        z = randn_like_diffusers(x, generator) if t > 0 else None
        x = ddpm_step(x, x0, schedule.alpha_bars[i], schedule.alpha_bars_prev[i], noise=z)
        if callback is not None:
            callback(i, len(schedule), x, x0)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, schedule: Schedule, *, eta: float = 0.0, generator=None, callback=None):
    """DDIM (Song et al. 2021): deterministic for η = 0, DDPM's variance for η = 1.
    Fresh noise at every step when η > 0."""
    for i in range(len(schedule)):
        x0, eps = denoiser(x, schedule, i)
        x0 = clip_x0(x0, schedule.clip_sample)
        z = randn_like_diffusers(x, generator) if eta > 0 else None
        x = ddim_step(x, x0, eps, schedule.alpha_bars[i], schedule.alpha_bars_prev[i], eta=eta, noise=z)
        if callback is not None:
            callback(i, len(schedule), x, x0)
    return x


@torch.no_grad()
def sample_euler(denoiser, x, schedule: Schedule, *, generator=None, callback=None):
    """Euler (Karras et al. 2022): deterministic; `generator` is unused."""
    for i in range(len(schedule)):
        x0, eps = denoiser(x, schedule, i)
        x = euler_step(x, eps, schedule.sigmas[i], schedule.sigmas[i + 1])
        if callback is not None:
            callback(i, len(schedule), x, x0)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoiser, x, schedule: Schedule, *, generator=None, callback=None):
    """Euler a: fresh noise at every step, the last one (σ_up = 0) included, as diffusers draws it.
    The image changes with the step count, unlike the ODE samplers'."""
    for i in range(len(schedule)):
        x0, eps = denoiser(x, schedule, i)
        z = randn_like_diffusers(x, generator)
        x = euler_ancestral_step(x, eps, schedule.sigmas[i], schedule.sigmas[i + 1], z)
        if callback is not None:
            callback(i, len(schedule), x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, schedule: Schedule, *, generator=None, callback=None):
    """DPM-Solver++(2M): 2nd order for the price of one model call per step, by reusing the
    previous step's x̂₀. Deterministic; `generator` is unused."""
    x0 = None
    for i in range(len(schedule)):
        x0_prev = x0
        x0, _ = denoiser(x, schedule, i)
        x = dpmpp_2m_step(x, x0, schedule.sigmas[i], schedule.sigmas[i + 1],
                          sigma_prev=schedule.sigmas[i - 1] if i > 0 else None, x0_prev=x0_prev)  # fmt: skip
        if callback is not None:
            callback(i, len(schedule), x, x0)
    return x


# ---------------------------------------------------------------------------------------------
# Diffusers parity: where we write the arithmetic as the twin diffusers scheduler writes it, or
# follow its quirks, so that our latents are bit for bit its latents. Each item says why.


def read_alpha_view(out, x, alpha, sd, prediction_type):
    """(x̂₀, ε̂) from the output at x = x_t (DDPM, DDIM, DPM-Solver), in their schedulers' words.

    ε̂ is the output itself (ε) or α·v̂ + σ^VP·x_t (v), not (x_t − α·x̂₀)/σ^VP: equal on paper,
    not in float32, and DDIM uses it.
    """
    if prediction_type == "epsilon":
        return (x - sd * out) / alpha, out
    return alpha * x - sd * out, alpha * out + sd * x


def read_sigma_view(out, x, sigma, prediction_type):
    """(x̂₀, ε̂) from the output at x = x_σ (Euler), in EulerDiscreteScheduler's words.

    x̂₀ = x_σ − σ·ε̂ (ε) or −σ/√(σ²+1)·v̂ + x_σ/(σ²+1) (v), both computed from x_σ, not from the
    x_t the UNet saw, and in float32 (`upcast`); ε̂ = (x_σ − x̂₀)/σ is Euler's "derivative".
    """
    x = upcast(x)
    if prediction_type == "epsilon":
        x0 = x - sigma * out
    else:
        x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    return x0, (x - x0) / sigma


def upcast(x):
    """Euler's and DPM-Solver's schedulers step in float32 whatever the UNet's dtype (σ reaches
    thousands, where float16 keeps 3 digits) and hand back the UNet's dtype: so do we."""
    return x.to(torch.float32)


def clip_x0(x0, clip_sample):
    """DDPM/DDIM clamp x̂₀ to ±clip_sample_range when `clip_sample` is set (meant for pixel-space
    models, where x₀ ∈ [−1, 1]); DDIM then keeps the unclamped ε̂ (`use_clipped_model_output=False`)."""
    return x0 if clip_sample is None else x0.clamp(-clip_sample, clip_sample)


def ddim_direction_scale(ab_prev, std):
    """√(1 − ᾱ_t' − σ_t²) of DDIM's eq. 12. From ᾱ_t = 0 with η = 1 the root's argument is 0 on
    paper and can round to −1e−8; diffusers then returns NaN (for 50 steps of the shipped model's
    schedule), we clamp at 0: identical wherever the argument is ≥ 0. Our one deliberate deviation."""
    return (1 - ab_prev - std**2).clamp(min=0) ** 0.5


def randn_like_diffusers(x, generator):
    """Fresh noise drawn as diffusers' schedulers draw it: one tensor, or one slice per generator
    (`randn_tensor`), so that a list of generators gives image k the draws it gets alone."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def img2img_start(steps: int, strength: float) -> int:
    """The rung img2img starts at (diffusers' `get_timesteps`): it runs int(steps·strength) of the
    `steps` steps, so strength 0.6 of 25 steps skips the first 10 and runs 15."""
    return steps - min(int(steps * strength), steps)


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


def twin_config(name: str, scheduler_config) -> dict:
    """The scheduler config as `to_diffusers(name, …)` reads it, without building a scheduler: a key
    the config leaves out takes the twin's default (from its __init__'s signature, as `from_config`
    does), and the record's settings override the config (dpmpp_2m is never Karras). Each twin has
    its own defaults (Euler "linspace", DDIM "leading"), so the same partial config means different
    ladders to different samplers, in diffusers and here alike. Refuses settings we do not implement.
    """
    import diffusers

    record = REGISTRY[sampler_name(name)]
    params = inspect.signature(getattr(diffusers, record.twin).__init__).parameters
    defaults = {key: p.default for key, p in params.items() if p.default is not inspect.Parameter.empty}
    given = {key: value for key, value in dict(scheduler_config).items() if key in params}
    config = {**defaults, **given, **record.twin_config}
    for key, ok in _SUPPORTED.items():
        if key in config and config[key] not in (ok if isinstance(ok, tuple) else (ok,)):
            raise ValueError(f"scheduler setting {key}={config[key]!r} is not supported by {name!r}; use {ok!r}")
    if config["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type={config['prediction_type']!r} is not supported; use 'epsilon' or 'v_prediction'"
        )
    return config


def alpha_bar_schedule(config, steps: int, *, ddim: bool, karras: bool = False) -> Schedule:
    """The ladder DDPMScheduler (ddim=False) or DDIMScheduler (ddim=True) would walk for `steps` steps.

    DDPM steps from each listed timestep to the next and finally to ᾱ = 1. DDIM steps by the fixed
    stride T//n (t → t − T//n) whatever the listed timesteps are, which for "trailing" and "linspace"
    with n not dividing T lands slightly off the next listed one (then tells the UNet the listed
    one), and finally to ᾱ_0 (or 1 with set_alpha_to_one): we reproduce both so that our DDIM is
    diffusers' DDIM. Karras σ's are for the σ ladders: DDPM and DDIM space timesteps.
    """
    if karras:
        raise ValueError("Karras σ's need a σ ladder (Euler, DPM-Solver); DDPM and DDIM space timesteps")
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
    rungs = torch.cat([ab[timesteps], ab_prev[-1:]])  # ᾱ at each t_i, then where the last step lands
    return Schedule(
        timesteps=timesteps, sigmas=alpha_bar_to_sigma(rungs), alphas=rungs**0.5, sds=(1 - rungs) ** 0.5,
        view="alpha", init_noise_sigma=torch.tensor(1.0), alpha_bars=ab[timesteps], alpha_bars_prev=ab_prev,
        clip_sample=config["clip_sample_range"] if config.get("clip_sample", False) else None,
    )  # fmt: skip


def sigma_schedule(config, steps: int, *, karras: bool = False, solver: bool = False) -> Schedule:
    """The σ ladder EulerDiscreteScheduler (solver=False) or DPMSolverMultistepScheduler (solver=True)
    would walk for `steps` steps, optionally with Karras σ's.

    σ_i is interpolated at the spaced timesteps from the training σ's; Karras σ's instead space σ by
    eq. 5 and map each back to a timestep (DPM-Solver rounds it, and spans the whole training range
    where Euler spans the spaced timesteps' range). Euler keeps x in the σ view and starts from
    noise·σ_0 ("trailing", "linspace") or noise·√(σ_0²+1) ("leading"), as diffusers'
    init_noise_sigma does; DPM-Solver works on x_t (the ᾱ view) and starts from plain noise.
    """
    T = config["num_train_timesteps"]
    train_sigmas = np.array(alpha_bar_to_sigma(alpha_bars_from_config(config, finite_terminal_sigma=True)))
    t = spaced_timesteps(T, steps, config["timestep_spacing"], config["steps_offset"], solver_grid=solver)
    if solver:
        t = t.round().astype(np.int64)
        if karras:
            sigmas = karras_sigmas(train_sigmas[0].item(), train_sigmas[-1].item(), steps)
            t = sigma_to_t(sigmas, train_sigmas)
            # Near σ_max several σ's can map to one timestep (999 three times for the shipped model
            # at 50 steps). Diffusers' txt2img then starts its step counter at the second rung with
            # that timestep and runs off the end; we walk every σ in order, as it does once the
            # counter starts at 0 (img2img's set_begin_index). Rounded, except for the cosine
            # schedule, where diffusers truncates.
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
    alphas, sds = sigma_to_vp(sigmas)
    return Schedule(timesteps=torch.from_numpy(t), sigmas=sigmas, alphas=alphas, sds=sds,
                    view="alpha" if solver else "sigma", init_noise_sigma=init)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The registry: one record per sampler


@dataclass(frozen=True)
class Sampler:
    """What a sampler is: its loop, its names, its diffusers twin and the ladder it walks."""

    function: Callable  # sample_xxx(denoiser, x, schedule, *, generator, callback)
    a1111: str  # the name AUTOMATIC1111's web UI shows
    twin: str  # the diffusers scheduler class that samples exactly as `function`
    ladder: Callable  # (config, steps, *, karras) → Schedule, laid as `twin` lays it
    sigmas: str = "default"  # "default" (the spaced timesteps' σ's) or "karras" (Karras et al. 2022, eq. 5)
    twin_config: Mapping = field(default_factory=dict)  # the settings that make `twin` this sampler

    @property
    def takes_eta(self) -> bool:
        """Whether the loop has DDIM's η (`sample(..., eta=)`)."""
        return "eta" in inspect.signature(self.function).parameters


_PLAIN_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}

# A1111 has no plain DDPM sampler (its list starts at DDIM/PLMS and the k-diffusion samplers); "DDPM"
# is our label only. Same algorithm, not the same pixels: A1111 runs k-diffusion's implementations,
# we match diffusers'.
_EULER = partial(sigma_schedule, solver=False)
_DPM_SOLVER = partial(sigma_schedule, solver=True)
REGISTRY: Mapping[str, Sampler] = MappingProxyType({
    "ddpm": Sampler(sample_ddpm, "DDPM", "DDPMScheduler", partial(alpha_bar_schedule, ddim=False)),
    "ddim": Sampler(sample_ddim, "DDIM", "DDIMScheduler", partial(alpha_bar_schedule, ddim=True)),
    "euler": Sampler(sample_euler, "Euler", "EulerDiscreteScheduler", _EULER, twin_config=_PLAIN_SIGMAS),
    "euler_a": Sampler(sample_euler_ancestral, "Euler a", "EulerAncestralDiscreteScheduler", _EULER),
    "dpmpp_2m": Sampler(sample_dpmpp_2m, "DPM++ 2M", "DPMSolverMultistepScheduler", _DPM_SOLVER,
                        twin_config={**_DPMPP_2M, **_PLAIN_SIGMAS}),
    "dpmpp_2m_karras": Sampler(sample_dpmpp_2m, "DPM++ 2M Karras", "DPMSolverMultistepScheduler",
                               _DPM_SOLVER, sigmas="karras",
                               twin_config={**_DPMPP_2M, **_PLAIN_SIGMAS, "use_karras_sigmas": True}),
})  # fmt: skip

SAMPLERS = {name: record.function for name, record in REGISTRY.items()}
A1111_NAMES = {name: record.a1111 for name, record in REGISTRY.items()}
FROM_A1111 = {a1111: ours for ours, a1111 in A1111_NAMES.items()}


def sampler_name(name: str) -> str:
    """Our name for a sampler given ours or A1111's ("Euler a" → "euler_a"); ValueError otherwise."""
    if name in REGISTRY:
        return name
    if name in FROM_A1111:
        return FROM_A1111[name]
    raise ValueError(
        f"unknown sampler {name!r}; allowed: {', '.join(REGISTRY)} or A1111's {', '.join(FROM_A1111)}"
    )


def to_diffusers(name: str, scheduler_config):
    """The stock diffusers scheduler that samples exactly as `SAMPLERS[name]`, built from the config."""
    import diffusers

    record = REGISTRY[sampler_name(name)]
    return getattr(diffusers, record.twin).from_config(dict(scheduler_config), **record.twin_config)


def build_schedule(name: str, scheduler_config, steps: int) -> Schedule:
    """The ladder `SAMPLERS[name]` walks for `steps` steps, laid as its diffusers twin lays it."""
    record = REGISTRY[sampler_name(name)]
    return record.ladder(twin_config(name, scheduler_config), steps, karras=record.sigmas == "karras")


# ---------------------------------------------------------------------------------------------
# The entry point: a UNet, text embeddings and noise → latents


def _check_inputs(name, noise, scheduler_config, steps, cond, uncond, guidance, generator, eta, init_latents):
    check_steps(steps, dict(scheduler_config)["num_train_timesteps"])
    check_guidance(guidance)
    if not isinstance(eta, (int, float)) or math.isnan(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} must be a number ≥ 0")
    if eta != 0 and not REGISTRY[name].takes_eta:
        takes = " and ".join(repr(n) for n, record in REGISTRY.items() if record.takes_eta)
        raise ValueError(f"eta={eta!r} applies to {takes} only, not {name!r}")
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
    if init_latents is not None and init_latents.shape != noise.shape:
        raise ValueError(f"init_latents' shape {tuple(init_latents.shape)} must equal the noise's {tuple(noise.shape)}")


def _check_added(unet, noise, uncond, added_cond, added_uncond):
    """SDXL's UNet needs its added conditioning (for both halves under guidance), others none."""
    needs = getattr(unet.config, "addition_embed_type", None) == "text_time"
    if needs != (added_cond is not None):
        raise ValueError("this UNet takes added_cond (SDXL's text_embeds and time_ids)" if needs else
                         "added_cond was given, but this UNet takes no added conditioning (not SDXL)")
    if added_cond is None:
        return
    if uncond is not None and added_uncond is None:
        raise ValueError("uncond was given with added_cond: give added_uncond too (the negative prompt's)")
    for part in (added_cond, added_uncond or {}):
        for key, value in part.items():
            if value.shape[0] != noise.shape[0]:
                raise ValueError(f"added {key} has batch {value.shape[0]}, the noise {noise.shape[0]}")


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
    init_latents: torch.Tensor | None = None,
    start_step: int = 0,
    per_image: bool = False,
    added_cond: dict | None = None,
    added_uncond: dict | None = None,
) -> torch.Tensor:
    """Run sampler `name` (ours or A1111's name) from `noise` and return latents in the UNet's space.

    - noise: (batch, C, h, w) standard-normal, as diffusers' `prepare_latents` draws it before
      scaling by `init_noise_sigma`;
    - cond / uncond: text-encoder hidden states (batch, tokens, dim); guidance applies iff
      `guidance > 1` and `uncond` is given (diffusers' rule);
    - generator: None, a torch.Generator or a list of them, one per image (diffusers' `randn_tensor`
      semantics), for the stochastic samplers' fresh noise;
    - callback(i, n, x, x0) after each step; eta: DDIM's η (ddim only). The sampler goes on from
      the x it showed, so a callback may write into it: inpainting blends the known latents back
      that way (`image_to_image.inpaint`);
    - init_latents, start_step: img2img. The clean latents (scaled, as the UNet sees them) are
      noised to rung `start_step` of the `steps`-step ladder and sampled from there, as diffusers'
      img2img pipeline does with `img2img_start(steps, strength)`; n is then steps − start_step;
    - per_image: False batches the UNet as diffusers does (image k then differs from the image
      sampled alone by float rounding: a few 1e-5 in the latents, ≤ 1/255 after decoding);
      True makes image k of a batch bit for bit the image sampled alone from noise[k] and
      generator[k] (on the same device and thread count), at 2–2.6× the CPU time. See `guided_model`;
    - added_cond / added_uncond: the UNet's `added_cond_kwargs` for cond and uncond (SDXL's
      `text_embeds` and `time_ids`, batch first), as diffusers' SDXL pipeline passes them.
    The caller divides the result by `vae.config.scaling_factor` and decodes it.
    """
    name = sampler_name(name)
    _check_inputs(name, noise, scheduler_config, steps, cond, uncond, guidance, generator, eta, init_latents)
    _check_added(unet, noise, uncond, added_cond, added_uncond)
    if start_step and init_latents is None:
        raise ValueError(f"start_step={start_step!r} needs init_latents: only img2img starts part-way down")
    schedule = build_schedule(name, scheduler_config, steps).from_step(start_step)
    prediction_type = twin_config(name, scheduler_config)["prediction_type"]
    if schedule.view == "alpha" and prediction_type == "epsilon" and bool(schedule.alphas[0] == 0):
        raise ValueError(
            f"{name!r} cannot start at t={int(schedule.timesteps[0])} where ᾱ = 0 (zero terminal SNR) with an "
            "ε-prediction model: x̂₀ = (x − ε̂)/0. Use a v-prediction model, timestep_spacing='leading', "
            "or a sampler on a σ ladder, which starts at σ ≈ 4096 instead (euler, euler_a, dpmpp_2m)"
        )
    denoiser = Denoiser(unet, cond, uncond, guidance, prediction_type=prediction_type, per_image=per_image,
                        added_cond=added_cond, added_uncond=added_uncond)
    extra = {"eta": eta} if REGISTRY[name].takes_eta else {}
    x = schedule.start(noise, init_latents)
    return SAMPLERS[name](denoiser, x, schedule, generator=generator, callback=callback, **extra)
