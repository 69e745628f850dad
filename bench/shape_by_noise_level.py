"""Where along the sampling trajectory does a model lose the shape? SDEdit from the true picture.

    python bench/shape_by_noise_level.py [--model assets/tiny-ldm] [--strengths 1 0.8 0.6 0.4 0.2]

For each benchmark prompt (the 180 of `bench/adherence.py`), the world's own rendering of that
scene is encoded, noised to `strength` and denoised towards its own caption with DDIM 25 steps at
the given guidance (`image_to_image.img2img`, seed i for prompt i), and the analyzer reads the
result. Strength 1 starts from pure noise (plain text-to-image); at strength s the model only has
to redraw what the noise level of s hides. The drop from one strength to the next is the share of
shapes the denoiser spoils on that stretch of the trajectory: a model whose shapes go wrong
only at strength 1 cannot lay shapes out; one that spoils them at 0.4 cannot draw their edges.
"""

from __future__ import annotations

import argparse

import torch
from tqdm.auto import tqdm

from tutorial_ldm import metrics, world
from tutorial_ldm.image_to_image import img2img
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.paths import SHIPPED_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL))
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4, 0.2])
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--language", choices=["en", "zh"], default="en")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    pipe = load_pipeline(args.model)
    prompts = metrics.benchmark_prompts(2, seed=0, language=args.language)
    sources = [world.render(world.parse_caption(p)) for p in prompts]
    print(f"{len(prompts)} prompts ({args.language}), DDIM 25 steps, guidance {args.guidance}")
    for strength in args.strengths:
        images = [img2img(pipe, source, prompt, strength=strength, steps=25, guidance=args.guidance,
                          seed=i, sampler="ddim", progress=False, threads=args.threads)[0]
                  for i, (source, prompt) in enumerate(tqdm(list(zip(sources, prompts)),
                                                            desc=f"strength {strength}"))]
        scores = metrics.adherence(images, prompts)
        print(f"strength {strength:.2f}: " + "  ".join(f"{k} {100 * v:5.1f}%" for k, v in scores.items()),
              flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
