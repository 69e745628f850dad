"""The forward (noising) process q(x_t | x_0) and the noise schedules that drive it.

A diffusion model learns to undo a fixed corruption that adds a little Gaussian noise at each of
T steps. LDM (Rombach et al. 2022, Sec. 3.2, Eq. 1) runs exactly this process of DDPM (Ho et al.
2020) — only on the autoencoder's latents z instead of pixels x.

Notation key (DDPM's symbols; index t runs 0 … T-1 as in diffusers, so x_t has had t+1 steps):

    betas           β_t      variance of the noise added at step t                (Eq. 2)
    alphas          α_t      1 - β_t
    alphas_cumprod  ᾱ_t      ∏_{s≤t} α_s: how much of x_0's variance survives     (Eq. 4)
    snr             SNR(t)   ᾱ_t / (1 - ᾱ_t), signal-to-noise ratio of x_t
    x0, noise       x_0, ε   clean sample, ε ~ N(0, I)

    (2)  q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)          one step of the chain
    (4)  q(x_t | x_0)     = N(√ᾱ_t x_0, (1-ᾱ_t) I)              any t in one jump
         x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε                           (4) reparameterised

Schedules are built by free functions (`make_betas`, `rescale_zero_terminal_snr`) and wrapped in
a small `NoiseSchedule` whose numbers match diffusers' `DDPMScheduler` (tests check it to 1e-6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
ALIASES = {"cosine": "squaredcos_cap_v2"}

# (β_start, β_end) when none are given: DDPM's pixel-space linear schedule and SD's latent one.
DEFAULT_BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal 2021, Eq. 17: keeps β_0 from being vanishingly small
MAX_BETA = 0.999  # their clipping of β_t, so the last step is not a singular β = 1


# --- beta schedules --------------------------------------------------------------------------


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM's schedule (Ho et al. 2020, Sec. 4): β_t linear from β_start to β_end."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)


def scaled_linear_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float
) -> torch.Tensor:
    """LDM/SD's schedule: √β_t linear (the CompVis code's "linear"), so β_t grows quadratically."""
    return (
        torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32)
        ** 2
    )


def cosine_betas(num_train_timesteps: int) -> torch.Tensor:
    """Improved DDPM's schedule (Nichol & Dhariwal 2021, Eq. 17): ᾱ(τ) = cos²((τ+s)/(1+s)·π/2).

    β_t = 1 - ᾱ(τ_{t+1}) / ᾱ(τ_t), clipped at 0.999.
    """

    def alpha_bar(tau: float) -> float:
        return math.cos((tau + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((t + 1) / T) / alpha_bar(t / T), MAX_BETA) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def canonical_schedule_name(name: str) -> str:
    """`name` as diffusers spells it ("cosine" → "squaredcos_cap_v2"); ValueError if unknown."""
    name = ALIASES.get(name, name)
    if name not in SCHEDULES:
        allowed = ", ".join(SCHEDULES) + " (or 'cosine' for squaredcos_cap_v2)"
        raise ValueError(f"unknown beta schedule {name!r}; allowed: {allowed}")
    return name


def make_betas(
    schedule: str,
    num_train_timesteps: int = 1000,
    beta_start: float | None = None,
    beta_end: float | None = None,
) -> torch.Tensor:
    """β_0 … β_{T-1} of a named schedule (float32, as diffusers computes them).

    `beta_start`/`beta_end` default to the schedule's own range (DEFAULT_BETA_RANGE); the cosine
    schedule has none and ignores them.
    """
    schedule = canonical_schedule_name(schedule)
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer ≥ 2, got {num_train_timesteps!r}")
    if schedule == "squaredcos_cap_v2":
        return cosine_betas(num_train_timesteps)
    default_start, default_end = DEFAULT_BETA_RANGE[schedule]
    beta_start = default_start if beta_start is None else beta_start
    beta_end = default_end if beta_end is None else beta_end
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start ≤ beta_end < 1, "
            f"got beta_start={beta_start!r}, beta_end={beta_end!r}"
        )
    if schedule == "linear":
        return linear_betas(num_train_timesteps, beta_start, beta_end)
    return scaled_linear_betas(num_train_timesteps, beta_start, beta_end)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.

    Shift √ᾱ_t so that √ᾱ_{T-1} = 0 (no signal left: x_T is pure noise, SNR = 0), and scale it so
    √ᾱ_0 keeps its old value; the schedule in between keeps its shape.
    """
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alphas_bar = sqrt_ab**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])  # undo the cumprod
    return 1 - alphas


def cumulative_alphas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s) (DDPM, above Eq. 4)."""
    return torch.cumprod(1 - betas, dim=0)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t): signal variance over noise variance in x_t (Kingma et al. 2021)."""
    return alphas_cumprod / (1 - alphas_cumprod)


# --- the forward process ---------------------------------------------------------------------


def _check_timesteps(t, num_train_timesteps: int, batch_size: int) -> torch.Tensor:
    """t as an integer tensor, 0-d or one per sample, every value in [0, T)."""
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(
            f"timesteps must be integers in [0, {num_train_timesteps}), got dtype {t.dtype}"
        )
    if t.dim() > 1 or (t.dim() == 1 and len(t) not in (1, batch_size)):
        raise ValueError(
            f"timesteps must be one integer or one per sample (shape ({batch_size},)), "
            f"got shape {tuple(t.shape)}"
        )
    bad = t[(t < 0) | (t >= num_train_timesteps)]
    if bad.numel():
        raise ValueError(
            f"timestep {bad.flatten()[0].item()} is outside [0, {num_train_timesteps})"
        )
    return t


def _check_sample(x: torch.Tensor, noise: torch.Tensor, x_name: str) -> None:
    """Float tensors of one shape: an integer image (uint8) would be scaled to nothing."""
    for name, value in ((x_name, x), ("noise", noise)):
        if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"{name} must be a floating-point torch.Tensor (an image scaled to [-1, 1]), "
                f"got {kind}"
            )
    if noise.shape != x.shape:
        raise ValueError(
            f"noise has shape {tuple(noise.shape)} but {x_name} has shape {tuple(x.shape)}; "
            "they must be the same"
        )


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape one value per sample (or a single one) to broadcast over `like`'s trailing dims."""
    return values.reshape(-1, *([1] * (like.dim() - 1))) if like.dim() else values.reshape(())


def q_sample(
    x0: torch.Tensor, t, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Sample q(x_t | x_0) in one jump: x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (DDPM Eq. 4).

    `t` is one integer timestep or one per sample (x0's first dim); `noise` is ε, x0's shape.
    """
    _check_sample(x0, noise, "x0")
    t = _check_timesteps(t, len(alphas_cumprod), x0.shape[0] if x0.dim() else 1)
    a_bar = _per_sample(alphas_cumprod.to(x0.device, x0.dtype)[t.to(x0.device)], x0)
    return a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * noise


def q_step(x_prev: torch.Tensor, t, noise: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """One step of the chain, q(x_t | x_{t-1}): x_t = √(1-β_t)·x_{t-1} + √β_t·ε (DDPM Eq. 2)."""
    _check_sample(x_prev, noise, "x_prev")
    t = _check_timesteps(t, len(betas), x_prev.shape[0] if x_prev.dim() else 1)
    beta = _per_sample(betas.to(x_prev.device, x_prev.dtype)[t.to(x_prev.device)], x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def forward_chain(
    x0: torch.Tensor, t: int, betas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x_t reached the slow way: t+1 steps of Eq. 2 from x_0, fresh noise at every step.

    Gaussians compose, so this has the same distribution as `q_sample` (tests check it).
    """
    _check_timesteps(t, len(betas), 1)
    x = x0
    for s in range(int(t) + 1):
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = q_step(x, s, noise, betas)
    return x


# --- a schedule, ready to use ----------------------------------------------------------------


@dataclass
class NoiseSchedule:
    """A forward process with the same numbers as `diffusers.DDPMScheduler(**same_arguments)`."""

    beta_schedule: str = "scaled_linear"  # linear | scaled_linear | squaredcos_cap_v2 (or "cosine")
    num_train_timesteps: int = 1000  # T
    beta_start: float | None = None  # None: the schedule's own (DDPM 1e-4, SD 0.00085)
    beta_end: float | None = None  # None: the schedule's own (DDPM 0.02, SD 0.012)
    rescale_betas_zero_snr: bool = False  # Lin et al. 2024: force ᾱ_{T-1} = 0, SNR(T) = 0

    betas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        self.beta_schedule = canonical_schedule_name(self.beta_schedule)
        betas = make_betas(
            self.beta_schedule, self.num_train_timesteps, self.beta_start, self.beta_end
        )
        if self.rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas_cumprod = cumulative_alphas(betas)

    @classmethod
    def from_config(cls, config: Mapping) -> NoiseSchedule:
        """From a diffusers scheduler config (`pipe.scheduler.config`); other keys are ignored."""
        keys = (
            "beta_schedule",
            "num_train_timesteps",
            "beta_start",
            "beta_end",
            "rescale_betas_zero_snr",
        )
        return cls(**{k: config[k] for k in keys if k in config})

    @property
    def snr(self) -> torch.Tensor:
        """SNR(t) for t = 0 … T-1 (0 at the end of a zero-terminal-SNR schedule)."""
        return snr(self.alphas_cumprod)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (Eq. 4); see the free function `q_sample`."""
        return q_sample(x0, t, noise, self.alphas_cumprod)

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps
    ) -> torch.Tensor:
        """`DDPMScheduler.add_noise`, argument for argument: Eq. 4 with one timestep per sample."""
        return q_sample(original_samples, timesteps, noise, self.alphas_cumprod)

    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """One step of Eq. 2; see the free function `q_step`."""
        return q_step(x_prev, t, noise, self.betas)

    def forward_chain(
        self, x0: torch.Tensor, t: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x_t by t+1 steps of Eq. 2; see the free function `forward_chain`."""
        return forward_chain(x0, t, self.betas, generator)
