"""Prompt adherence against the classifier-free guidance scale (chapter 4's sweep, full size).

    python bench/guidance_sweep.py [--model assets/tiny-ldm] [--scales 1 2 3 5 8] [--steps 20]
                                   [--sampler ddim]

One image per benchmark prompt (every colour × shape × position; --variants 2 adds sizes and
backgrounds) and scale, prompt i always from the noise of seed + i, sampled as diffusers' DDIM
(or --sampler's diffusers twin) samples; prints colour / shape / position / all-three accuracy
per scale, as the analyzer reads the images.
"""

from __future__ import annotations

import argparse
import os
import time

from tutorial_ldm import guidance, metrics
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.samplers import SAMPLERS, to_diffusers


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--scales", type=float, nargs="+", default=[1, 2, 3, 5, 8, 12])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", type=int, default=1, help="90 prompts per variant")
    parser.add_argument("--negative", default=None, help="negative prompt (default: none, i.e. \"\")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="ddim", choices=list(SAMPLERS))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: devices.cpu_threads())")
    args = parser.parse_args()

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what devices.cpu_threads() then uses
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.scheduler = to_diffusers(args.sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = metrics.benchmark_prompts(args.variants, seed=args.seed)

    start = time.perf_counter()
    rows = guidance.guidance_sweep(pipe, prompts, args.scales, seed=args.seed, steps=args.steps,
                                   negative_prompt=args.negative)
    print(f"{len(prompts)} prompts, {args.sampler} {args.steps} steps, negative prompt {args.negative!r}, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'scale':>5} {'colour':>7} {'shape':>6} {'position':>9} {'all three':>10}")
    for r in rows:
        print(f"{r['scale']:>5g} {r['colour']:>7.1%} {r['shape']:>6.1%} {r['position']:>9.1%} "
              f"{r['all3']:>10.1%}")


if __name__ == "__main__":
    main()
