"""Is image k of a batch the image generated alone at seed s + k? And at another thread count?

    python bench/batch_determinism.py [--model assets/tiny-ldm] [--steps 10] [--batch 4]

For each sampler it samples a batch of `--batch` images (seeds 42, 43, …) and each image alone, on
the CPU, with the UNet batched as diffusers batches it (`per_image=False`) and image by image
(`per_image=True`, the default of `tutorial_ldm.samplers.sample`), and prints the largest
difference in the latents and in the 8-bit pixels (decoded one image at a time, and as a batch).
Then the same image at 1 and 2 torch threads, and the CPU seconds per image of both ways for
batches of 1, 4 and 16 (process time, so that other jobs on the machine count less).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from tutorial_ldm.samplers import SAMPLERS, sample

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on the left"


@torch.no_grad()
def run(pipe, name, seeds, *, steps, per_image=True):
    """Latents of `seeds` sampled as one batch, noise and fresh draws from seed + k."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    size = pipe.unet.config.sample_size
    noise = torch.cat([torch.randn((1, pipe.unet.config.in_channels, size, size), generator=g) for g in generators])
    cond, uncond = pipe.encode_prompt([PROMPT] * len(seeds), "cpu", 1, True)
    return sample(name, pipe.unet, noise, pipe.scheduler.config, steps=steps, cond=cond, uncond=uncond,
                  guidance=5.0, generator=generators, per_image=per_image)  # fmt: skip


@torch.no_grad()
def pixels(pipe, latents, *, one_by_one):
    parts = latents.split(1) if one_by_one else [latents]
    images = torch.cat([pipe.vae.decode(z / pipe.vae.config.scaling_factor, return_dict=False)[0] for z in parts])
    return (pipe.image_processor.postprocess(images, output_type="np") * 255).round().astype(int)


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "tiny-ldm"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    torch.set_num_threads(1)
    seeds = [42 + k for k in range(args.batch)]

    print(f"batch of {args.batch} against each image alone, 1 thread: max |Δlatent|, max |Δpixel| (/255)")
    print("| sampler | batched UNet | per-image UNet | per-image UNet, batched decode |")
    print("|---|---:|---:|---:|")
    for name in SAMPLERS:
        alone = torch.cat([run(pipe, name, [s], steps=args.steps) for s in seeds])
        alone_px = pixels(pipe, alone, one_by_one=True)
        cells = []
        for per_image, one_by_one in ((False, True), (True, True), (True, False)):
            batch = run(pipe, name, seeds, steps=args.steps, per_image=per_image)
            dpx = np.abs(pixels(pipe, batch, one_by_one=one_by_one) - alone_px).max()
            cells.append(f"{(batch - alone).abs().max().item():.1e}, {dpx}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\none image, 1 thread against 2 threads: max |Δlatent|, max |Δpixel|")
    for name in SAMPLERS:
        torch.set_num_threads(1)
        one = run(pipe, name, [42], steps=args.steps)
        torch.set_num_threads(2)
        two = run(pipe, name, [42], steps=args.steps)
        dpx = np.abs(pixels(pipe, one, one_by_one=True) - pixels(pipe, two, one_by_one=True)).max()
        print(f"  {name:16s} {(one - two).abs().max().item():.1e}, {dpx}")

    torch.set_num_threads(1)
    print(f"\nCPU seconds per image (euler_a, {args.steps} steps, 1 thread; 2nd best of 5, interleaved)")
    for batch in (1, 4, 16):
        times = {False: [], True: []}
        for _ in range(5):
            for per_image in (False, True):
                start = time.process_time()
                run(pipe, "euler_a", list(range(batch)), steps=args.steps, per_image=per_image)
                times[per_image].append((time.process_time() - start) / batch)
        batched, single = sorted(times[False])[1], sorted(times[True])[1]
        print(f"  batch {batch:2d}: batched {batched:.3f} s, per-image {single:.3f} s (×{single / batched:.2f})")


if __name__ == "__main__":
    main()
