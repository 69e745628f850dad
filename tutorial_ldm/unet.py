"""The time-conditional UNet ε_θ(z_t, t, τ_θ(y)) and the objective it is trained with.

LDM (Rombach et al. 2022, Sec. 3.2-3.3) denoises latents with the UNet of DDPM: a ladder of
ResNet blocks that halves the resolution on the way down and doubles it on the way up, with skip
connections across, the timestep t fed to every ResNet block as a sinusoidal embedding, and
(Sec. 3.3) cross-attention to the text at the lower resolutions.

Notation:

    z0, z_t   clean and noised latent             t         timestep, 0 … T-1
    noise     ε ~ N(0, I)                         context   τ_θ(y), the text encoder's output
    a_bar     ᾱ_t (see noise_schedule)            v         √ᾱ_t·ε − √(1−ᾱ_t)·z0 (Salimans & Ho)

    (1)  L_LDM = E_{z0, y, ε, t} ‖ ε − ε_θ(z_t, t, τ_θ(y)) ‖²      paper Eq. 3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .language import say
from .noise_schedule import q_sample

PREDICTION_TYPES = ("epsilon", "v_prediction")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (Transformer's positional encoding, Vaswani et al. 2017,
    as DDPM uses it): [cos(t·ω_k), sin(t·ω_k)] for dim/2 frequencies ω_k = max_period^(−k/(dim/2)),
    k = 0 … dim/2 − 1, from one cycle per 2π steps down to one per 2π·max_period steps.

    t: (N,) timesteps (may be fractional). Returns (N, dim). The cos-first order and the
    frequencies are those of SD's UNet (`flip_sin_to_cos=True, freq_shift=0` in diffusers)."""
    t = torch.as_tensor(t)
    if t.dim() != 1:
        raise ValueError(f"timesteps must be a 1-d tensor, one per sample; got shape {tuple(t.shape)}")
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies.to(t.device)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def velocity(z0: torch.Tensor, noise: torch.Tensor, a_bar: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·z0; `a_bar` broadcasts over z0 (one value per sample)."""
    return a_bar.sqrt() * noise - (1 - a_bar).sqrt() * z0


def denoising_loss(unet, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   context: torch.Tensor, alphas_cumprod: torch.Tensor,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """The LDM objective (1) for one draw of (z0, t, ε) per sample: ‖target − UNet(z_t, t, τ)‖²,
    averaged over each latent's elements, one value per sample.

    The target is ε as in the paper, or v for a v-prediction model like our tiny one
    (at t = T, where z_t = ε, predicting ε teaches nothing; v_T = −z0 is the picture itself)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    z_t = q_sample(z0, t, noise, alphas_cumprod)
    if prediction_type == "epsilon":
        target = noise
    else:
        target = velocity(z0, noise, alphas_cumprod[t].reshape(-1, *[1] * (z0.dim() - 1)))
    prediction = unet(z_t, t, context).sample
    return (prediction - target).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------- anatomy


@dataclass
class Block:
    """One stage of the UNet as a forward pass sees it."""

    name: str  # attribute path in the diffusers model, e.g. "down_blocks.1"
    kind: str  # its class, e.g. "CrossAttnDownBlock2D"
    shape_in: tuple  # (C, H, W) of the feature map coming in
    shape_out: tuple  # (C, H, W) going out
    cross_attention: bool  # does it attend to the text?
    skips: int  # feature maps it hands across to the up path (down blocks) or takes (up blocks)
    parameters: int


@torch.no_grad()
def unet_anatomy(unet, latent_size: int | None = None) -> list[Block]:
    """The UNet's stages in the order a latent flows through them, from one forward pass."""
    size = latent_size or unet.config.sample_size
    stages = [("time_embedding", unet.time_embedding), ("conv_in", unet.conv_in),
              *[(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)],
              ("mid_block", unet.mid_block),
              *[(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)],
              ("conv_norm_out", unet.conv_norm_out), ("conv_out", unet.conv_out)]
    seen: dict[str, tuple] = {}

    def recorder(name):
        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            if name.startswith("down"):
                skips = len(output[1])
            elif name.startswith("up"):
                skips = len(kwargs["res_hidden_states_tuple"])
            else:  # conv_in's output is the first feature map handed across
                skips = int(name == "conv_in")
            seen[name] = (tuple(x.shape[1:]), tuple(y.shape[1:]), skips)
        return hook

    handles = [m.register_forward_hook(recorder(n), with_kwargs=True) for n, m in stages]
    try:
        like = dict(device=unet.device, dtype=unet.dtype)
        z = torch.zeros(1, unet.config.in_channels, size, size, **like)
        unet(z, 0, torch.zeros(1, 1, unet.config.cross_attention_dim, **like))
    finally:
        for h in handles:
            h.remove()
    return [Block(name, type(m).__name__, *seen[name][:2],
                  cross_attention=any(getattr(a, "is_cross_attention", False)
                                      for a in m.modules()),
                  skips=seen[name][2], parameters=sum(p.numel() for p in m.parameters()))
            for name, m in stages]


def format_anatomy(blocks: list[Block]) -> str:
    """`unet_anatomy` as a text table, its words in the course's language."""
    lines = [say(f"{'stage':<14} {'kind':<23} {'in C×H×W':>11} {'out C×H×W':>11} {'text?':>5} "
                 f"{'skips':>5} {'parameters':>10}",
                 f"{'阶段':<12} {'类型':<21} {'输入 C×H×W':>9} {'输出 C×H×W':>9} {'文本':>3} "
                 f"{'跳跃':>3} {'参数':>8}")]
    for b in blocks:
        shape_in, shape_out = ("×".join(map(str, s)) for s in (b.shape_in, b.shape_out))
        text = say("yes", "有") if b.cross_attention else ""
        lines.append(f"{b.name:<14} {b.kind:<23} {shape_in:>11} {shape_out:>11} {text:>5} "
                     f"{b.skips or '':>5} {b.parameters:>10,}")
    return "\n".join(lines)
