"""A cheap look at latents: a linear map from latent channels to RGB, fitted by least squares.

Decoding with the VAE at every sampling step would cost as much as a step. But each latent cell
of an LDM's autoencoder mostly encodes the colour of the f×f pixel patch above it, so one fixed
linear map (C latent channels → 3 colours, plus a bias) already gives a blurry, recognisable
thumbnail. AUTOMATIC1111's "Approx cheap" live preview and its published factors for SD 1.x are
such a map, found by hand or by regression. We fit it ourselves, the same way for every VAE:

    1. encode calibration images x (the synthetic world's scenes) into latents z, scaled as the
       UNet sees them: z = (E(x) − shift) · scaling_factor;
    2. average-pool x by the VAE factor f, so each pixel matches one latent cell;
    3. least squares: find W (C×3) and b (3) minimising ‖z·W + b − x_pooled‖² over all cells.

`project(latents, LatentRGB)` then turns any latents (for instance the sampler's current guess
x̂₀ of the clean latents) into an RGB thumbnail at latent resolution (16×16 for the tiny model,
64×64 for SD at 512²). The studio shows it as the live preview.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .autoencoder import encode_latents, vae_factor

CALIBRATION_SCENES = 32  # world scenes the map is fitted on (seed 0): a few thousand latent cells
CALIBRATION_SEED = 0


@dataclass(frozen=True)
class LatentRGB:
    """rgb = z · weight + bias per latent cell; rgb in [-1, 1] (the VAE's pixel range)."""

    weight: torch.Tensor  # (C, 3)
    bias: torch.Tensor  # (3,)


def least_squares_rgb(latents: torch.Tensor, rgb: torch.Tensor) -> LatentRGB:
    """The W, b that best map each cell's latent vector (N, C, h, w) to its colour (N, 3, h, w)."""
    if latents.shape[0] != rgb.shape[0] or latents.shape[2:] != rgb.shape[2:] or rgb.shape[1] != 3:
        raise ValueError(f"latents {tuple(latents.shape)} and rgb {tuple(rgb.shape)} must be "
                         "(N, C, h, w) and (N, 3, h, w) with the same N, h, w")
    z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
    target = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], dim=1)  # the 1s column fits b
    solution = torch.linalg.lstsq(design, target).solution
    return LatentRGB(weight=solution[:-1].float(), bias=solution[-1].float())


def vae_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → latents as the UNet sees them (the mean of the posterior, scaled)."""
    return encode_latents(vae, images).float().cpu()


def fit_latent_rgb(vae, images: torch.Tensor | None = None) -> LatentRGB:
    """Fit the latents → RGB map for `vae` on `images` (default: the world's scenes, seed 0)."""
    if images is None:
        from .world import render_batch, sample_scenes

        images = torch.from_numpy(render_batch(sample_scenes(CALIBRATION_SCENES, CALIBRATION_SEED)))
    f = vae_factor(vae)
    latents = vae_latents(vae, images)
    if not torch.isfinite(latents).all():  # e.g. a float16 VAE that overflows
        raise FloatingPointError(f"the {next(vae.parameters()).dtype} VAE encoded non-finite latents; "
                                 "no latent → RGB map can be fitted")
    return least_squares_rgb(latents, F.avg_pool2d(images.float(), f))


_FITTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def latent_rgb_for(vae) -> LatentRGB:
    """`fit_latent_rgb(vae)`, fitted once per VAE and remembered while the VAE lives."""
    if vae not in _FITTED:
        _FITTED[vae] = fit_latent_rgb(vae)
    return _FITTED[vae]


def project(latents: torch.Tensor, rgb_map: LatentRGB) -> np.ndarray:
    """Latents (N, C, h, w) → uint8 thumbnails (N, h, w, 3)."""
    z = latents.detach().float().cpu().permute(0, 2, 3, 1)
    rgb = (z @ rgb_map.weight + rgb_map.bias).clamp(-1, 1)
    return ((rgb + 1) * 127.5).round().to(torch.uint8).numpy()
