"""Steps against prompt adherence for each sampler: the LDM paper's DDIM trade-off at tiny scale.

    python bench/samplers.py [--model assets/tiny-ldm] [--steps 10 20 50 100 200] [--prompts 90]

Generates one image per benchmark prompt (every colour × shape × position, `tutorial_ldm.metrics`)
with each of our samplers (`tutorial_ldm.samplers.sample`) at each step count, seed = --seed + the
prompt's index, and prints the share of images whose colour, shape and position all match the
prompt ("all3") and the seconds per image, as a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tutorial_ldm import metrics
from tutorial_ldm.samplers import SAMPLERS, sample

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def generate(pipe, name, prompts, seeds, *, steps, guidance, device):
    """Images (uint8 HWC) of `prompts` by sampler `name`, image k from torch seed seeds[k]."""
    from diffusers.utils.torch_utils import randn_tensor

    cond, uncond = pipe.encode_prompt(prompts, device, 1, True)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    size = pipe.unet.config.sample_size
    noise = randn_tensor((len(prompts), pipe.unet.config.in_channels, size, size), generator=generators, device=device)
    latents = sample(
        name, pipe.unet, noise, pipe.scheduler.config, steps=steps, cond=cond, uncond=uncond,
        guidance=guidance, generator=generators,
    )  # fmt: skip
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return list((pipe.image_processor.postprocess(images, output_type="np") * 255).round().astype(np.uint8))


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "tiny-ldm"))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100, 200])
    parser.add_argument("--prompts", type=int, default=90, help="the first N benchmark prompts (90 per variant)")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    pipe = StableDiffusionPipeline.from_pretrained(args.model).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    prompts = metrics.benchmark_prompts(variants=-(-args.prompts // 90), seed=args.seed)[: args.prompts]
    results = {}
    for name in args.samplers:
        for steps in args.steps:
            images, seconds = [], 0.0
            for i in tqdm(range(0, len(prompts), args.batch), desc=f"{name} {steps} steps", leave=False):
                batch = prompts[i : i + args.batch]
                start = time.perf_counter()
                images += generate(
                    pipe, name, batch, range(args.seed + i, args.seed + i + len(batch)),
                    steps=steps, guidance=args.guidance, device=args.device,
                )  # fmt: skip
                seconds += time.perf_counter() - start
            results[name, steps] = metrics.adherence(images, prompts)["all3"], seconds / len(prompts)

    print(
        f"\n{len(prompts)} prompts, guidance {args.guidance}, batch {args.batch}, {args.device}: "
        "colour+shape+position adherence (all3) / seconds per image\n"
    )
    print("| steps | " + " | ".join(args.samplers) + " |")
    print("|---:|" + "---:|" * len(args.samplers))
    for steps in args.steps:
        cells = [f"{100 * results[n, steps][0]:.0f}% / {results[n, steps][1]:.3f}s" for n in args.samplers]
        print(f"| {steps} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
