"""Is it the encoder or the decoder that rounds the small triangles? Fit the latents directly.

    python bench/decoder_latent_fit.py [--steps 80] [--lr 0.03] [--png runs/latent-fit.png]

Takes the scenes of the model card's set (500, seed 2024) whose shape the analyzer misreads after
the shipped autoencoder's round trip, and optimises each one's latent z (Adam, starting from
E(x), the same L1 + MSE as stage 1) through the frozen decoder: argmin_z |D(z) - x|. If D(z*)
reads right where D(E(x)) does not, the decoder can draw the shape and the encoder's amortised
guess is what loses it. Prints how many read right every 20 steps; --png saves rendered | round
trip | fitted latent, one row per scene. Also prints how much each latent channel carries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tutorial_ldm import metrics, world
from tutorial_ldm.autoencoder import decode, encode, to_images
from tutorial_ldm.paths import SHIPPED_MODEL


def main() -> None:
    from diffusers import AutoencoderKL

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    vae = AutoencoderKL.from_pretrained(SHIPPED_MODEL / "vae").eval().requires_grad_(False)
    scenes = world.sample_scenes(500, seed=2024)
    x_all = torch.from_numpy(world.render_batch(scenes))
    with torch.no_grad():
        posterior = vae.encode(x_all).latent_dist
        round_trip = to_images(decode(vae, posterior.mean))
    print("per latent channel: std of the posterior mean "
          + " ".join(f"{v:.2f}" for v in posterior.mean.std(dim=(0, 2, 3)).tolist())
          + "; mean posterior σ " + " ".join(f"{v:.2f}" for v in posterior.std.mean(dim=(0, 2, 3)).tolist()))
    bad = [i for i, (s, im) in enumerate(zip(scenes, round_trip))
           if metrics.analyze(im).shape != s.shape]
    print(f"{len(bad)} of {len(scenes)} misread after the round trip")
    x = x_all[bad]
    with torch.no_grad():
        z = encode(vae, x).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=args.lr)
    for step in range(args.steps + 1):
        if step % 20 == 0 or step == args.steps:
            with torch.no_grad():
                fitted = to_images(decode(vae, z))
            right = sum(metrics.analyze(im).shape == scenes[i].shape for i, im in zip(bad, fitted))
            print(f"step {step:3d}: {right}/{len(bad)} read right", flush=True)
        if step == args.steps:
            break
        error = vae.decode(z).sample - x
        loss = error.abs().mean() + error.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if args.png:
        rows = [np.concatenate([world.render(scenes[i]), round_trip[i], im], axis=1)
                for i, im in zip(bad, fitted)]
        mosaic = np.concatenate(rows)
        Image.fromarray(mosaic).resize((mosaic.shape[1] * 4, mosaic.shape[0] * 4),
                                       Image.NEAREST).save(args.png)


if __name__ == "__main__":
    main()
