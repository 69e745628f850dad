"""The autoencoder's latent space: perceptual compression by a factor f (LDM paper, Sec. 3.1).

The encoder E maps an image x ∈ R^{H×W×3} to a latent z = E(x) ∈ R^{h×w×c} with h = H/f,
w = W/f; the decoder D maps it back, x̃ = D(z). Diffusion then runs on z, which is f² times
smaller than x per channel. Our tiny model has f = 4 (64×64×3 → 16×16×4); SD has f = 8.

Notation:

    x      image, (N, 3, H, W) in [-1, 1]         z        latent, (N, c, H/f, W/f)
    mean   μ of the posterior q(z | x)            logvar   log σ² of the posterior
    f      downsampling factor = 2**(levels - 1)  scale    1/std of the latents (SD: 0.18215)

The scale factor itself is measured by `tutorial_ldm.train.measure_scaling_factor` on latents from
`tutorial_ldm.train.encode_world`, which the shipped model was built with.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .language import say
from .paths import ASSETS
from .tiny_model import TinyLDMConfig, build_unet
from .world import IMAGE_SIZE

F_AUTOENCODERS = ASSETS / "vae-f"  # the small autoencoders of the f trade-off, f2/ … f16/
F_WIDTH = (16, 32)  # channels of the first two levels; deeper levels keep the last width


# ----------------------------------------------------------------------------- pixels


def to_tensor(images) -> torch.Tensor:
    """uint8 image(s) H×W×3 or N×H×W×3 (arrays or PIL images) → float (N, 3, H, W) in [-1, 1]."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im) for im in images])
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images of shape (H, W, 3) or (N, H, W, 3), got "
                         f"{arr.dtype} of shape {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] → uint8 N×H×W×3; values outside [-1, 1] are clipped."""
    return ((x.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


# ----------------------------------------------------------------------------- E and D


@torch.no_grad()
def encode(vae, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """z = E(x): the posterior mean, or a sample z = μ + σ·ε of q(z | x) with `sample=True`.

    Unscaled: multiply by `vae.config.scaling_factor` for the latent the UNet sees."""
    posterior = vae.encode(x.to(vae.device, vae.dtype)).latent_dist
    if not sample:
        return posterior.mean
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
    return posterior.mean + posterior.std * noise


@torch.no_grad()
def decode(vae, z: torch.Tensor) -> torch.Tensor:
    """x̃ = D(z) for an unscaled latent, clipped to [-1, 1]."""
    return vae.decode(z.to(vae.device, vae.dtype)).sample.float().clamp(-1, 1).cpu()


def downsampling_factor(vae) -> int:
    """f: every level of the encoder but the last halves the resolution."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_factor(pipe) -> int:
    """f of a pipeline's (or a bare) VAE: pixels per latent cell along each side (SD 8, tiny 4)."""
    return downsampling_factor(getattr(pipe, "vae", pipe))


def native_size(pipe) -> tuple[int, int]:
    """(width, height) in pixels the pipeline's UNet was built for: its sample size × f."""
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    return w * vae_factor(pipe), h * vae_factor(pipe)


# The UNet works on scaled latents, z·scale (SD: 0.18215; SD3-style VAEs also shift first), so
# that they have about unit variance, as the noise schedule assumes (LDM paper, Sec. 4.3.2).


@torch.no_grad()
def encode_latents(pipe, x: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
    """The latent the UNet sees for images x in [-1, 1]: (E(x) − shift)·scale."""
    vae = getattr(pipe, "vae", pipe)
    z = encode(vae, x, sample=sample, generator=generator)
    shift = getattr(vae.config, "shift_factor", None)
    return ((z - shift) if shift is not None else z) * vae.config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """x = D(latents/scale + shift), in [-1, 1] (not clipped), with A1111's guard against fp16 NaNs.

    `pipe` is a pipeline or a bare VAE. A VAE in float16 can overflow to NaN on some latents; the
    image is then decoded again with the VAE in float32 (and the VAE put back), with a warning.
    NaN already in the latents comes from the UNet, which decoding cannot fix: FloatingPointError.
    """
    vae = getattr(pipe, "vae", pipe)
    if torch.isnan(latents).any():
        unet = getattr(pipe, "unet", None)
        dtype = unet.dtype if unet is not None else latents.dtype
        advice = ("load the model with dtype=torch.float32" if dtype != torch.float32 else
                  "in float32 that means an extreme input, e.g. a huge prompt weight or guidance scale")
        raise FloatingPointError(f"the sampler produced NaN latents (the UNet overflowed in {dtype}); {advice}")
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z + vae.config.shift_factor
    image = vae.decode(z.to(vae.device, vae.dtype), return_dict=False)[0]
    if torch.isnan(image).any() and vae.dtype != torch.float32:
        warnings.warn(f"NaN in the image decoded by the {vae.dtype} VAE; decoding again in float32",
                      RuntimeWarning, stacklevel=3)
        dtype = vae.dtype
        to = torch.nn.Module.to  # a plain cast; diffusers' .to() warns about casting
        to(vae, torch.float32)
        try:
            image = vae.decode(z.to(vae.device, torch.float32), return_dict=False)[0]
        finally:
            to(vae, dtype)
    if torch.isnan(image).any():
        raise FloatingPointError("the VAE decoded NaN even in float32: the checkpoint's VAE is broken")
    return image


# ----------------------------------------------------------------------------- measures


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB: 10·log10(range² / MSE). Images in [-1, 1]
    have range 2; a 1-level error on 0…255 pixels is about 48 dB, an error of 10 levels 28 dB."""
    if x.shape != y.shape:
        raise ValueError(f"psnr needs two batches of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²), summed over each latent (C, H, W).

    The autoencoder's regulariser (paper Sec. 3.1, "KL-reg."): a small weight on it keeps the
    latents near a standard normal without blurring the reconstructions."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


# ----------------------------------------------------------------------------- interpolation


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Straight line: (1 − t)·z0 + t·z1."""
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) along the great circle from z0 to z1.

    Two independent Gaussian samples are nearly orthogonal and of equal norm; the straight line
    between them passes through vectors of norm ≈ 0.71× theirs, which no Gaussian sample has.
    The arc keeps the norm, so every point still looks like noise the model was trained on."""
    a, b = z0.flatten().double(), z1.flatten().double()
    cos = (a @ b / (a.norm() * b.norm())).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega < 1e-4:  # (anti-)parallel to rounding: the arc is the line
        return lerp(z0, z1, t)
    w0, w1 = torch.sin((1 - t) * omega) / torch.sin(omega), torch.sin(t * omega) / torch.sin(omega)
    return (w0 * z0.double() + w1 * z1.double()).to(z0.dtype)


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, spherical: bool = False):
    """`steps` points from z0 to z1 (both included), stacked along a new first axis."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two ends), got {steps}")
    path = slerp if spherical else lerp
    return torch.stack([path(z0, z1, t) for t in np.linspace(0, 1, steps)])


# ----------------------------------------------------------------------------- the f trade-off


def f_config(f: int, width: tuple[int, ...] = F_WIDTH, base: TinyLDMConfig | None = None):
    """The model config whose autoencoder has downsampling factor f (a power of 2, ≥ 2)."""
    if f < 2 or f & (f - 1) or f > IMAGE_SIZE:
        raise ValueError(f"f must be a power of 2 between 2 and {IMAGE_SIZE}, got {f}")
    levels = int(math.log2(f)) + 1
    channels = tuple(width[min(i, len(width) - 1)] for i in range(levels))
    return replace(base or TinyLDMConfig(), vae_channels=channels)


def load_f_autoencoders(root: str | Path = F_AUTOENCODERS) -> dict:
    """{f: AutoencoderKL} for every `f<N>/` folder under `root` (bench/f_tradeoff.py makes them)."""
    from diffusers import AutoencoderKL

    root = Path(root)
    folders = sorted(root.glob("f*/config.json"), key=lambda p: int(p.parent.name[1:]))
    if not folders:
        raise FileNotFoundError(f"no autoencoders f<N>/ under {root}; run bench/f_tradeoff.py")
    vaes = {}
    for config in folders:
        vae = AutoencoderKL.from_pretrained(config.parent, torch_dtype=torch.float32).eval()
        vaes[downsampling_factor(vae)] = vae
    return vaes


@torch.no_grad()
def unet_flops(latent_size: int, latent_channels: int, cfg: TinyLDMConfig | None = None) -> int:
    """FLOPs of one denoising step (batch 1, text attended to) of the tiny model's UNet run on
    latents of that size: the compute diffusion pays per step, per image, at that f."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = replace(cfg or TinyLDMConfig(), latent_channels=latent_channels)
    unet = build_unet(cfg).eval()
    z = torch.zeros(1, latent_channels, latent_size, latent_size)
    context = torch.zeros(1, cfg.max_tokens, cfg.text_width)
    # the math backend spells attention out as matrix products, which the counter sees
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(z, 500, context)
    return counter.get_total_flops()


def astronaut(size: int = 128) -> np.ndarray:
    """scikit-image's astronaut photo, size×size uint8: held out of the autoencoder's training."""
    from skimage import data, transform, util

    return util.img_as_ubyte(transform.resize(data.astronaut(), (size, size), anti_aliasing=True))


@torch.no_grad()
def f_tradeoff(vaes: dict, n_scenes: int = 64, seed: int = 12345) -> list[dict]:
    """One row per f (plus f = 1, diffusion on pixels): the latent diffusion must model, what the
    autoencoder loses (PSNR on held-out scenes and on the astronaut, and how often the analyzer
    still reads colour, shape and position right after the round trip) and the UNet's FLOPs per
    denoising step at that latent size."""
    from . import metrics, world

    scenes = world.sample_scenes(n_scenes, seed)
    x = torch.from_numpy(world.render_batch(scenes))
    photo = to_tensor(astronaut())
    captions = [s.caption for s in scenes]
    rows = [dict(f=1, latent=(3, IMAGE_SIZE, IMAGE_SIZE), psnr_scenes=math.inf,
                 psnr_photo=math.inf, adherence=metrics.adherence(list(to_images(x)), captions)["all3"],
                 unet_flops=unet_flops(IMAGE_SIZE, 3))]
    for f, vae in sorted(vaes.items()):
        z = encode(vae, x)
        recon = decode(vae, z)
        rows.append(dict(
            f=f,
            latent=tuple(z.shape[1:]),
            psnr_scenes=psnr(recon, x).mean().item(),
            psnr_photo=psnr(decode(vae, encode(vae, photo)), photo).item(),
            adherence=metrics.adherence(list(to_images(recon)), captions)["all3"],
            unet_flops=unet_flops(z.shape[-1], z.shape[1]),
        ))
    for row in rows:
        row["compression"] = 3 * IMAGE_SIZE**2 / math.prod(row["latent"])
    return rows


def format_f_tradeoff(rows: list[dict]) -> str:
    """The rows of `f_tradeoff` as a text table, its header in the course's language."""
    lines = [say(f"{'f':>3} {'latent c×h×w':>13} {'numbers':>8} {'compression':>11} "
                 f"{'PSNR scenes':>11} {'PSNR photo':>10} {'read right':>10} {'UNet MFLOPs':>12}",
                 f"{'f':>3} {'潜变量 c×h×w':>10} {'数值个数':>4} {'压缩比':>8} "
                 f"{'PSNR 场景':>9} {'PSNR 照片':>8} {'读对':>8} {'UNet MFLOPs':>12}")]
    for r in rows:
        c, h, w = r["latent"]
        lines.append(f"{r['f']:>3} {f'{c}×{h}×{w}':>13} {c * h * w:>8} {r['compression']:>10.0f}× "
                     f"{r['psnr_scenes']:>8.1f} dB {r['psnr_photo']:>7.1f} dB "
                     f"{r['adherence']:>10.0%} {r['unet_flops'] / 1e6:>12.0f}")
    return "\n".join(lines)
