"""The non-zero-SNR failure, shown: a tiny model on SD 1.x's schedule draws where the noise leans.

    python bench/zero_snr.py                  # train the SD-schedule variant, measure, print
    python bench/zero_snr.py --write-cache    # ... and write assets/zero-snr/ for chapter 1

Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed") found that SD's
schedule leaves √ᾱ_T = 0.068 of the image in x_T, so a model trained on it learns to *read* the
layout and mean colour from x_T; sampling starts from pure noise, whose chance low frequencies are
then read as the picture. This script makes that visible on the tiny model:

1. a copy of the shipped model (zero terminal SNR, v-prediction, trailing spacing) is trained on
   for a few CPU minutes on SD 1.x's schedule (`train.train_on_schedule`: scaled_linear betas not
   rescaled, "leading" spacing). Only the schedule changes; the prediction type stays v, which is
   SD 2.x's 768-v setting, so what differs is what Lin et al. blame: the schedule.
2. both models sample the same prompts (every colour × shape × position, plain) from the same
   noise, twice: pure noise ε, and *leaning* noise x_T = √(1-a)·ε + √a·z_lean with a = SD's ᾱ_T
   (the share of x_T a training image has under SD's schedule), z_lean the latent of the prompt's
   shape at another position on a black background;
3. each image is read back (`metrics.analyze`): position vs the prompt's and vs the lean's,
   background, mean brightness. For pure noise, where the noise leans is measured too: the
   position whose latent template (mean-subtracted, as chapter 1's detector) ε correlates with best.

The cache (`--write-cache`): assets/zero-snr/figures.json (the figures, settings, command, date)
and grid.png (rows: prompts; columns: lean scene, SD schedule, ours — on leaning noise).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tutorial_ldm import train, world
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.metrics import analyze
from tutorial_ldm.noise_schedule import NoiseSchedule
from tutorial_ldm.paths import ASSETS

CACHE = ASSETS / "zero-snr"
POSITIONS = list(world.POSITIONS)
MODELS = ("sd_schedule", "zero_snr")
# pure noise and leaning noise with the prompt; leaning noise with the empty prompt, where only the
# lean can decide where the shape goes
CONDITIONS = ("pure", "leaning", "leaning_unconditional")
GRID_ROWS = 6  # prompts shown in grid.png


def prompts_and_leans() -> tuple[list[str], list[world.Scene]]:
    """Every colour × shape × position (white background), and for each the scene its noise leans
    towards: the same shape and colour at another position (the four others in turn), on black."""
    prompts, leans = [], []
    for i, (colour, shape, position) in enumerate(
            (c, s, p) for c in world.COLOURS for s in world.SHAPES for p in POSITIONS):
        other = POSITIONS[(POSITIONS.index(position) + 1 + i % 4) % len(POSITIONS)]
        prompts.append(world.Scene(shape, colour, position, "", "white").caption)
        leans.append(world.Scene(shape, colour, other, "", "black"))
    return prompts, leans


@torch.no_grad()
def encode(pipe, scenes: list[world.Scene]) -> torch.Tensor:
    """Scaled posterior means: the z_0 the denoiser was trained on, without the sampling noise."""
    x = torch.from_numpy(world.render_batch(scenes))
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


def noise_lean(pipe, noise: torch.Tensor, prompts: list[str]) -> list[str]:
    """Where pure noise leans: per image, the position whose latent (the prompt's shape drawn at
    each of the five, mean over them subtracted) ε correlates with best."""
    leans = []
    for eps, prompt in zip(noise, prompts):
        scene = world.parse_caption(prompt)
        z = encode(pipe, [dataclasses.replace(scene, position=p) for p in POSITIONS])
        templates = (z - z.mean(0)).flatten(1)
        leans.append(POSITIONS[int((templates @ eps.flatten()).argmax())])
    return leans


@torch.no_grad()
def sample(pipe, prompts: list[str], latents: torch.Tensor, steps: int, guidance: float,
           batch: int = 16) -> np.ndarray:
    """DDIM (η = 0) from the given x_T, the pipeline's own schedule and spacing: uint8 images."""
    images = []
    for i in range(0, len(prompts), batch):
        out = pipe(prompts[i:i + batch], latents=latents[i:i + batch], num_inference_steps=steps,
                   guidance_scale=guidance, output_type="np")
        images.append((out.images * 255).round().astype(np.uint8))
    return np.concatenate(images)


def read(images: np.ndarray, prompts: list[str], lean_positions: list[str]) -> dict[str, float]:
    """Shares of images whose shape sits where the prompt says / where the noise leans, with a
    black background; mean brightness (0 black … 1 white). `prompts`: the captions the images
    were meant to show (also for the unconditional ones, which are read against them)."""
    readings = [analyze(im) for im in images]
    wanted = [world.parse_caption(p) for p in prompts]
    n = len(images)
    return {
        "position_as_prompt": sum(r.position == w.position for r, w in zip(readings, wanted)) / n,
        "position_as_lean": sum(r.position == p for r, p in zip(readings, lean_positions)) / n,
        "colour_as_prompt": sum(r.colour == w.colour for r, w in zip(readings, wanted)) / n,
        "shape_found": sum(r.position is not None for r in readings) / n,
        "black_background": sum(r.background == "black" for r in readings) / n,
        "brightness": float(images.mean() / 255),
        "images": n,
    }


def run(steps: int = 20, guidance: float = 2.0, seeds: int = 2, train_steps: int | None = None,
        threads: int = 1) -> tuple[dict, dict]:
    """Train the SD-schedule variant, sample both models on pure and leaning noise, read the
    images. Returns (figures, images[model][condition] of the first seed)."""
    torch.set_num_threads(threads)
    cfg = dataclasses.replace(train.SCHEDULE_TRAIN, threads=threads,
                              **({"unet_steps": train_steps} if train_steps else {}))
    start = time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        sd_pipe, log = train.train_on_schedule(load_pipeline(device="cpu"), run_dir, cfg=cfg)
    train_minutes = (time.process_time() - start) / 60
    pipes = {"sd_schedule": sd_pipe, "zero_snr": load_pipeline(device="cpu")}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    prompts, lean_scenes = prompts_and_leans()
    ours = pipes["zero_snr"]
    a = float(NoiseSchedule.from_config(sd_pipe.scheduler.config).alphas_cumprod[-1])
    z_lean = encode(ours, lean_scenes)
    results = {m: {c: [] for c in CONDITIONS} for m in MODELS}
    natural = {m: [] for m in MODELS}
    first = {}
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(prompts), *z_lean.shape[1:]), generator=gen)
        leaning = (1 - a) ** 0.5 * noise + a ** 0.5 * z_lean
        latents = {"pure": noise, "leaning": leaning, "leaning_unconditional": leaning}
        pure_leans = noise_lean(ours, noise, prompts)
        for m, pipe in pipes.items():
            for c in CONDITIONS:
                unconditional = c == "leaning_unconditional"
                images = sample(pipe, [""] * len(prompts) if unconditional else prompts,
                                latents[c], steps, 1.0 if unconditional else guidance)
                leans = pure_leans if c == "pure" else [s.position for s in lean_scenes]
                results[m][c].append(read(images, prompts, leans))
                if seed == 0:
                    first.setdefault(m, {})[c] = images
    figures = {m: {c: {k: float(np.mean([r[k] for r in results[m][c]])) for k in results[m][c][0]}
                   for c in CONDITIONS} for m in MODELS}
    for m in MODELS:
        for c in CONDITIONS:
            figures[m][c]["images"] = int(sum(r["images"] for r in results[m][c]))
    settings = {"sampler": "DDIM, eta 0", "steps": steps, "guidance": guidance, "seeds": seeds,
                "prompts": len(prompts), "lean_amount_alpha_bar": a,
                "lean_scene": "the prompt's shape and colour at another position, black background",
                "sd_schedule": {k: sd_pipe.scheduler.config[k] for k in
                                ("beta_schedule", "beta_start", "beta_end", "rescale_betas_zero_snr",
                                 "timestep_spacing", "prediction_type")},
                "zero_snr_schedule": {k: ours.scheduler.config[k] for k in
                                      ("beta_schedule", "rescale_betas_zero_snr", "timestep_spacing",
                                       "prediction_type")},
                "training": {"steps": cfg.unet_steps, "batch": cfg.unet_batch, "lr": cfg.unet_lr,
                             "latents": cfg.n_latents, "from": "assets/tiny-ldm",
                             "final_loss": float(np.mean([l for _, l in log[-10:]])),
                             "cpu_minutes": round(train_minutes, 1)},
                "chance_position": 1 / len(POSITIONS)}
    return {"figures": figures, "settings": settings,
            "grid_prompts": prompts[:: len(prompts) // GRID_ROWS][:GRID_ROWS]}, {
        "images": first, "prompts": prompts, "lean_scenes": lean_scenes}


def grid(result: dict, samples: dict) -> Image.Image:
    """Rows: `result["grid_prompts"]`; columns: the scene the noise leans towards, the SD-schedule
    model and ours on that leaning noise, then both on the pure noise (64×64 tiles, no text)."""
    index = [samples["prompts"].index(p) for p in result["grid_prompts"]]
    rows = []
    for i in index:
        tiles = [world.render(samples["lean_scenes"][i]),
                 samples["images"]["sd_schedule"]["leaning"][i], samples["images"]["zero_snr"]["leaning"][i],
                 samples["images"]["sd_schedule"]["pure"][i], samples["images"]["zero_snr"]["pure"][i]]
        rows.append(np.concatenate(tiles, axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


GRID_COLUMNS = ["lean_scene", "sd_schedule/leaning", "zero_snr/leaning", "sd_schedule/pure", "zero_snr/pure"]


def report(result: dict) -> str:
    f, s = result["figures"], result["settings"]
    lines = [f"SD-schedule variant: {s['training']['steps']} steps from the shipped model, "
             f"{s['training']['cpu_minutes']} CPU min, final loss {s['training']['final_loss']:.3f}",
             f"{s['prompts']} prompts × {s['seeds']} seeds, {s['sampler']}, {s['steps']} steps, CFG {s['guidance']}; "
             f"leaning noise = √(1-a)·ε + √a·z_lean, a = {s['lean_amount_alpha_bar']:.4f}",
             f"{'model':<12} {'noise':<22} {'pos=prompt':>10} {'pos=lean':>9} {'colour':>7} "
             f"{'black bg':>8} {'brightness':>10}"]
    for m in MODELS:
        for c in CONDITIONS:
            r = f[m][c]
            lines.append(f"{m:<12} {c:<22} {r['position_as_prompt']:>10.1%} {r['position_as_lean']:>9.1%} "
                         f"{r['colour_as_prompt']:>7.1%} {r['black_background']:>8.1%} {r['brightness']:>10.3f}")
    lines.append(f"chance for position: {s['chance_position']:.0%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for sampling")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale (the model's default)")
    parser.add_argument("--seeds", type=int, default=2, help="noise seeds; each samples all 90 prompts")
    parser.add_argument("--train-steps", type=int, default=None,
                        help=f"training steps on SD's schedule (default {train.SCHEDULE_TRAIN.unet_steps})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-cache", action="store_true", help=f"write {CACHE}/figures.json and grid.png")
    args = parser.parse_args()
    result, samples = run(args.steps, args.guidance, args.seeds, args.train_steps, args.threads)
    print(report(result))
    if args.write_cache:
        result["command"] = "python bench/zero_snr.py " + shlex.join(sys.argv[1:])
        result["date"] = datetime.date.today().isoformat()
        result["grid"] = {"file": "grid.png", "tile": world.IMAGE_SIZE, "columns": GRID_COLUMNS}
        CACHE.mkdir(parents=True, exist_ok=True)
        grid(result, samples).save(CACHE / "grid.png", optimize=True)
        (CACHE / "figures.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {CACHE / 'figures.json'} and {CACHE / 'grid.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
