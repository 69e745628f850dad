"""Prompt adherence of a text-to-image model of the world, as the model card reports it.

    python bench/adherence.py [--model assets/tiny-ldm] [--steps 25] [--guidance 5] [--languages en zh]

Prints the analyzer's accuracy on the world's own images and after a round trip through the
model's autoencoder (the ceiling the autoencoder puts on adherence), then generates one image per
benchmark prompt (every colour × shape × position, plain and with size and background) with stock
diffusers DDIM, fixed seeds, and prints colour / shape / position / all-three accuracy and images/s,
for English prompts and, when the model's tokenizer knows Chinese, separately for the same scenes
in Chinese.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from tutorial_ldm import metrics, world
from tutorial_ldm.autoencoder import decode, encode, to_images
from tutorial_ldm.guidance import generate_batch
from tutorial_ldm.paths import SHIPPED_MODEL
from tutorial_ldm.tiny_model import speaks_chinese


def show(title: str, scores: dict) -> None:
    print(f"{title:<34}" + "  ".join(f"{k} {100 * v:5.1f}%" for k, v in scores.items()))


@torch.no_grad()
def vae_round_trip(pipe, scenes) -> np.ndarray:
    x = torch.from_numpy(world.render_batch(scenes))
    return to_images(decode(pipe.vae, encode(pipe.vae, x)))


def generated(pipe, language: str, guidance: float, steps: int = 25, variants: int = 2,
              batch: int = 16, seed: int = 0) -> dict:
    """Generate the benchmark prompts of `language` with `pipe` (stock DDIM), print the speed and
    the adherence, and return the adherence."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = metrics.benchmark_prompts(variants, seed=seed, language=language)
    images, seconds = [], 0.0
    for i in tqdm(range(0, len(prompts), batch), desc=f"generating ({language})"):
        start = time.perf_counter()
        images += generate_batch(pipe, prompts[i:i + batch], guidance, seed=seed + i, steps=steps)
        seconds += time.perf_counter() - start
    print(f"{len(prompts)} prompts ({language}), DDIM {steps} steps, guidance "
          f"{guidance}, batch {batch}: {len(prompts) / seconds:.1f} images/s")
    scores = metrics.adherence(images, prompts)
    show(f"generated images ({language}):", scores)
    return scores


def main() -> None:
    from diffusers import StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--variants", type=int, default=2, help="90 prompts per variant")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--languages", nargs="+", choices=["en", "zh"], default=None,
                        help="default: en, and zh when the tokenizer knows Chinese")
    args = parser.parse_args()

    scenes = world.sample_scenes(500, seed=2024)
    captions = [s.caption for s in scenes]
    show("analyzer on rendered images:", metrics.adherence([world.render(s) for s in scenes],
                                                           captions))
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    show("analyzer after the VAE round trip:", metrics.adherence(vae_round_trip(pipe, scenes),
                                                                 captions))

    languages = args.languages or ["en"] + ["zh"] * speaks_chinese(pipe.tokenizer)
    for language in languages:
        generated(pipe, language, args.guidance, args.steps, args.variants, args.batch, args.seed)


if __name__ == "__main__":
    main()
