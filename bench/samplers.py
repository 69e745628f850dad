"""Steps against prompt adherence for each sampler: the LDM paper's DDIM trade-off at tiny scale.

    python bench/samplers.py [--model assets/tiny-ldm] [--steps 10 20 50 100 200] [--prompts N]

Generates one image per benchmark prompt (`tutorial_ldm.metrics.benchmark_prompts`: every colour ×
shape × position, plain and with a size and background, 180 prompts) with each of our samplers
(through `tutorial_ldm.generation.generate_many`) at each step count, seed = --seed + the prompt's index, and prints the share of images whose colour, shape and position all match the
prompt ("all3") and the seconds per image, as a markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from tutorial_ldm import metrics
from tutorial_ldm.generation import generate_many
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.samplers import A1111_NAMES, SAMPLERS



def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100, 200])
    parser.add_argument("--variants", type=int, default=2, help="90 benchmark prompts per variant")
    parser.add_argument("--prompts", type=int, default=None, help="only N of them, evenly spread")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(args.model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = metrics.benchmark_prompts(args.variants, seed=args.seed)
    if args.prompts is not None:
        prompts = prompts[:: max(1, len(prompts) // args.prompts)][: args.prompts]
    def generate(name, batch, seed, steps):
        return generate_many(pipe, batch, sampler=name, seed=seed, steps=steps, guidance=args.guidance,
                             batch_size=len(batch), output="numpy", progress=False)

    generate("ddim", prompts[:1], 0, 1)  # warm-up
    results = {}
    for name in args.samplers:
        for steps in args.steps:
            images, seconds = [], 0.0
            for i in tqdm(range(0, len(prompts), args.batch), desc=f"{name} {steps} steps", leave=False):
                batch = prompts[i : i + args.batch]
                start = time.perf_counter()
                images += generate(name, batch, args.seed + i, steps)
                seconds += time.perf_counter() - start
            results[name, steps] = metrics.adherence(images, prompts)["all3"], seconds / len(prompts)

    print(
        f"\n{len(prompts)} prompts, guidance {args.guidance}, batch {args.batch}, {args.device}: "
        "colour+shape+position adherence (all3) / seconds per image\n"
    )
    print("| steps | " + " | ".join(f"{n} ({A1111_NAMES[n]})" for n in args.samplers) + " |")
    print("|---:|" + "---:|" * len(args.samplers))
    for steps in args.steps:
        cells = [f"{100 * results[n, steps][0]:.0f}% / {results[n, steps][1]:.3f}s" for n in args.samplers]
        print(f"| {steps} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
