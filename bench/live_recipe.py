"""The live training recipe of chapter 3: how well a text encoder + UNet trained from scratch for a
few CPU minutes on the shipped autoencoder's latents follows prompts.

    python bench/live_recipe.py [--steps N] [--threads 1]

Prints the training time and colour / shape / position accuracy on 90 benchmark prompts
(DDIM 25 steps, guidance 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch
from diffusers import AutoencoderKL

from tutorial_ldm import metrics
from tutorial_ldm.guidance import generate_batch
from tutorial_ldm.loading import SHIPPED_MODEL
from tutorial_ldm.train import LIVE_TRAIN, train_live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=LIVE_TRAIN.unet_steps)
    parser.add_argument("--threads", type=int, default=0, help="0 = every core")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    vae = AutoencoderKL.from_pretrained(SHIPPED_MODEL / "vae")
    cfg = dataclasses.replace(LIVE_TRAIN, unet_steps=args.steps)
    start, cpu_start = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        pipe, _ = train_live(vae, run_dir, cfg)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{args.steps} steps: {wall:.0f} s wall, {cpu:.0f} s CPU ({torch.get_num_threads()} threads)")

    pipe.set_progress_bar_config(disable=True)
    prompts = metrics.benchmark_prompts(variants=1)
    images = []
    for i in range(0, len(prompts), 16):
        images += generate_batch(pipe, prompts[i:i + 16], 5.0, seed=i, steps=25)
    scores = metrics.adherence(images, prompts)
    print("  ".join(f"{k} {100 * v:.0f}%" for k, v in scores.items()))


if __name__ == "__main__":
    main()
