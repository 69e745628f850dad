"""Classifier-free guidance (Ho & Salimans 2022), as the LDM paper samples its text-to-image model.

One network is trained both with the caption and, a tenth of the time, with the empty caption
(caption dropout), so it predicts the noise both ways. At sampling time the two predictions are
extrapolated past the conditional one:

    (1)  ε̃ = ε_θ(z_t, ∅) + s · (ε_θ(z_t, y) − ε_θ(z_t, ∅))      Ho & Salimans, Eq. 6

s = 1 is the plain conditional model; s > 1 pushes away from the unconditional prediction towards
what the caption adds. A negative prompt n takes the place of ∅: ε_θ(z_t, n) is what to move away
from.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. (1): the guided prediction from the unconditional and the conditional one."""
    return uncond + scale * (cond - uncond)


def generate_batch(pipe, prompts: list[str], guidance_scale: float, seed: int = 0, steps: int = 20,
                   negative_prompt: str | None = None) -> list[np.ndarray]:
    """One uint8 image per prompt, sampled as the pipeline's own scheduler samples (the stock
    pipeline's images); prompt i always starts from the noise of seed + i, so images at different
    guidance scales differ only by the guidance. A thin wrapper of `generation.generate_many`."""
    from .generation import generate_many, sampler_for

    return generate_many(pipe, list(prompts), negative_prompt=negative_prompt or "", steps=steps,
                         guidance=guidance_scale, sampler=sampler_for(pipe.scheduler), seed=seed,
                         batch_size=max(1, len(prompts)), output="numpy", progress=False)


def guidance_sweep(pipe, prompts: list[str], scales, seed: int = 0, steps: int = 20,
                   negative_prompt: str | None = None) -> list[dict]:
    """For each guidance scale: the images for `prompts` and their adherence
    (`tutorial_ldm.metrics.adherence`: colour, shape, position, size, background, all3)."""
    if not prompts:
        raise ValueError("guidance_sweep needs at least one prompt")
    rows = []
    for scale in tqdm(list(scales), desc="guidance sweep"):
        images = generate_batch(pipe, prompts, scale, seed, steps, negative_prompt)
        rows.append({"scale": scale, "images": images, **metrics.adherence(images, prompts)})
    return rows
