"""Chapter 7's figures on the shipped tiny model: img2img strength, inpainting, hires fix.

    python bench/img2img.py [--model assets/tiny-ldm] [--n 8] [--steps 20] [--seed 0]

Prints, from `tutorial_ldm.image_to_image`'s studies (the chapter runs the same calls):
1. img2img of the world's red circle on the left towards "a blue circle on the left" (colour)
   and "a red circle on the right" (move): success and PSNR to the source against strength;
2. inpainting the circle's box as a green square vs img2img of the whole picture: success and
   the error outside the mask;
3. 128×128 directly vs the hires fix 64→128: images with one shape, and adherence.
"""

from __future__ import annotations

import argparse
import time

import torch

from tutorial_ldm import image_to_image as study
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.paths import SHIPPED_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--n", type=int, default=8, help="seeds per setting")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    common = dict(steps=args.steps, seed=args.seed)
    for title, run in (
        ("img2img: success (share of seeds) and PSNR to the source (dB) against strength",
         lambda: study.strength_sweep(pipe, n=args.n, **common)),
        ("inpainting vs img2img of the whole picture: success; mean/max |Δ| (levels) outside the mask",
         lambda: study.inpaint_study(pipe, n=args.n, **common)),
        ("128×128: one shape and adherence (read at 64×64)",
         lambda: study.hires_study(pipe, n=max(args.n // 2, 1), **common)),
    ):
        start = time.perf_counter()
        rows = run()
        print(f"\n{title}  [{time.perf_counter() - start:.1f} s]\n{study.format_table(rows)}")


if __name__ == "__main__":
    main()
