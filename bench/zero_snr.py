"""The non-zero-SNR failure, shown: a tiny model trained on SD 1.x's schedule, where the noise leans.

    python bench/zero_snr.py                  # train the SD-schedule variant, measure, print
    python bench/zero_snr.py --write-cache    # ... and write assets/zero-snr/ for chapter 1
    python bench/zero_snr.py --save DIR / --load DIR   # keep / reuse the trained variant

Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed") found that SD's
schedule leaves √ᾱ_T = 0.068 of the image in x_T, so a model trained on it learns to *read* the
layout and mean colour from x_T; sampling starts from pure noise, whose chance low frequencies are
then read as the picture. This script makes that visible on the tiny world:

1. the shipped model (zero terminal SNR, v-prediction, trailing spacing) is trained on for a few
   CPU minutes on SD 1.x's schedule (`train.train_on_schedule`: scaled_linear betas not
   rescaled, "leading" spacing). It keeps predicting v, as SD 2.x's 768-v models do on SD's
   schedule, so the one difference is the one Lin et al. blame: the schedule.
2. every model samples the same prompts (every colour × shape × position, plain) from the same
   noise: pure noise ε, and *leaning* noise x_T = √(1-a)·ε + √a·z_lean with a = SD's ᾱ_T (what is
   left of a training image in SD's x_T), z_lean the latent of the prompt's shape at another
   position on a black background; with the prompt (CFG), and with the empty prompt;
3. the first guess x̂_0 of each model at its first sampling step (t = 951 for SD's leading
   spacing, 999 for ours), decoded, and each final image are read back (`metrics.analyze`): position vs the prompt's and vs the lean's,
   background, mean brightness. For pure noise, "where the noise leans" is the position whose
   latent template (the shape drawn at the five positions, mean subtracted, as chapter 1's
   detector) ε correlates with best.

The cache (`--write-cache`): assets/zero-snr/figures.json (figures, settings, command, date) and
grid.png (rows: prompts; columns: `GRID_COLUMNS`, 64×64 tiles without text).
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
from tutorial_ldm.tiny_model import SD_SCHEDULE

CACHE = ASSETS / "zero-snr"
POSITIONS = list(world.POSITIONS)
MODELS = ("sd_schedule", "zero_snr")  # the variant trained on SD's schedule; the shipped model
# with the prompt: pure and leaning noise; with the empty prompt: the same two, where nothing but
# the noise can decide the picture
CONDITIONS = ("pure", "leaning", "pure_unconditional", "leaning_unconditional")
FIRST_GUESSES = ("first_guess", "first_guess_unconditional")  # x̂_0 at the first step, leaning noise
GRID_ROWS = 6  # prompts shown in grid.png
GRID_COLUMNS = ["lean_scene", "sd_schedule/first_guess_unconditional", "zero_snr/first_guess_unconditional",
                "sd_schedule/leaning_unconditional", "zero_snr/leaning_unconditional",
                "sd_schedule/leaning", "zero_snr/leaning"]


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
           batch: int = 30) -> np.ndarray:
    """DDIM (η = 0) from the given x_T with the pipeline's own schedule and spacing: uint8 images."""
    images = []
    for i in range(0, len(prompts), batch):
        out = pipe(prompts[i:i + batch], latents=latents[i:i + batch], num_inference_steps=steps,
                   guidance_scale=guidance, output_type="np")
        images.append((out.images * 255).round().astype(np.uint8))
    return np.concatenate(images)


def read(images: np.ndarray, prompts: list[str], lean_positions: list[str]) -> dict[str, float]:
    """Shares of images whose shape sits where the prompt says / where the noise leans, with the
    prompt's colour, with a black / white background; mean brightness (0 black … 1 white).
    Unconditional images are read against the prompts their noise was drawn for."""
    readings = [analyze(im) for im in images]
    wanted = [world.parse_caption(p) for p in prompts]
    n = len(images)
    return {
        "position_as_prompt": sum(r.position == w.position for r, w in zip(readings, wanted)) / n,
        "position_as_lean": sum(r.position == p for r, p in zip(readings, lean_positions)) / n,
        "colour_as_prompt": sum(r.colour == w.colour for r, w in zip(readings, wanted)) / n,
        "shape_found": sum(r.position is not None for r in readings) / n,
        "black_background": sum(r.background == "black" for r in readings) / n,
        "white_background": sum(r.background == "white" for r in readings) / n,
        "brightness": float(images.mean() / 255),
        "images": n,
    }


def trained_variant(threads: int, train_steps: int | None, load: Path | None, save: Path | None):
    """The shipped model trained on on SD's schedule (or loaded from `load`), and its settings."""
    from diffusers import StableDiffusionPipeline

    cfg = dataclasses.replace(train.SCHEDULE_TRAIN, threads=threads,
                              **({"unet_steps": train_steps} if train_steps else {}))
    training = {"function": "tutorial_ldm.train.train_on_schedule", "from": "assets/tiny-ldm",
                "steps": cfg.unet_steps, "batch": cfg.unet_batch, "lr": cfg.unet_lr,
                "latents": cfg.n_latents, "seed": cfg.seed}
    if load is not None:
        return StableDiffusionPipeline.from_pretrained(load / "sd_schedule", safety_checker=None), {
            **training, "loaded_from": str(load / "sd_schedule")}
    start = time.process_time()
    with tempfile.TemporaryDirectory() as run_dir:
        pipe, log = train.train_on_schedule(load_pipeline(device="cpu"), run_dir, SD_SCHEDULE, cfg)
    training.update(cpu_minutes=round((time.process_time() - start) / 60, 1),
                    final_loss=float(np.mean([loss for _, loss in log[-10:]])))
    if save is not None:
        pipe.save_pretrained(save / "sd_schedule")
    return pipe, training


@torch.no_grad()
def first_guess(pipe, prompts: list[str], latents: torch.Tensor, steps: int, guidance: float) -> np.ndarray:
    """The model's x̂_0 = √ᾱ_t·x_t − √(1-ᾱ_t)·v̂ at the first timestep its scheduler samples (with
    CFG on v), decoded: what it makes of x_T at first sight."""
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    a = scheduler.alphas_cumprod[t]
    cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, [""] * len(prompts))
    v_uncond = pipe.unet(latents, t, encoder_hidden_states=uncond).sample
    v = v_uncond + guidance * (pipe.unet(latents, t, encoder_hidden_states=cond).sample - v_uncond)
    x0 = a.sqrt() * latents - (1 - a).sqrt() * v
    images = pipe.vae.decode(x0 / pipe.vae.config.scaling_factor).sample
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run(steps: int = 20, guidance: float = 2.0, seeds: int = 1, train_steps: int | None = None,
        threads: int = 1, load: Path | None = None, save: Path | None = None) -> tuple[dict, dict]:
    """Train (or load) the SD-schedule variant, sample it and the shipped model on the four kinds
    of noise, read the first guesses and the images. Returns (result, the first seed's images and
    the prompts)."""
    torch.set_num_threads(threads)
    variant, training = trained_variant(threads, train_steps, load, save)
    pipes = {"sd_schedule": variant, "zero_snr": load_pipeline(device="cpu")}
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    prompts, lean_scenes = prompts_and_leans()
    shipped = pipes["zero_snr"]  # both models use the shipped autoencoder: one latent space
    a = float(NoiseSchedule.from_config(pipes["sd_schedule"].scheduler.config).alphas_cumprod[-1])
    z_lean = encode(shipped, lean_scenes)
    results = {m: {c: [] for c in (*CONDITIONS, *FIRST_GUESSES)} for m in MODELS}
    first = {}
    for seed in range(seeds):
        noise = torch.randn((len(prompts), *z_lean.shape[1:]), generator=torch.Generator().manual_seed(seed))
        leaning = (1 - a) ** 0.5 * noise + a ** 0.5 * z_lean
        pure_leans = noise_lean(shipped, noise, prompts)
        for m in MODELS:
            for c in CONDITIONS:
                unconditional = c.endswith("_unconditional")
                images = sample(pipes[m], [""] * len(prompts) if unconditional else prompts,
                                leaning if c.startswith("leaning") else noise, steps,
                                1.0 if unconditional else guidance)
                leans = pure_leans if c.startswith("pure") else [s.position for s in lean_scenes]
                results[m][c].append(read(images, prompts, leans))
                if seed == 0:
                    first.setdefault(m, {})[c] = images
            for c in FIRST_GUESSES:
                unconditional = c.endswith("_unconditional")
                images = first_guess(pipes[m], [""] * len(prompts) if unconditional else prompts,
                                     leaning, steps, 1.0 if unconditional else guidance)
                results[m][c].append(read(images, prompts, [s.position for s in lean_scenes]))
                if seed == 0:
                    first[m][c] = images
    figures = {m: {c: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}
                   for c, rs in results[m].items()} for m in MODELS}
    for m in MODELS:
        for c in results[m]:
            figures[m][c]["images"] = int(sum(r["images"] for r in results[m][c]))

    def schedule_of(pipe):
        return {k: pipe.scheduler.config[k] for k in ("beta_schedule", "beta_start", "beta_end",
                "rescale_betas_zero_snr", "timestep_spacing", "prediction_type")}

    settings = {"sampler": "DDIM, eta 0", "steps": steps, "guidance": guidance,
                "guidance_unconditional": 1.0, "seeds": seeds, "prompts": len(prompts),
                "lean_amount_alpha_bar": a,
                "lean_scene": "the prompt's shape and colour at another position, black background",
                "schedules": {m: schedule_of(pipes[m]) for m in MODELS},
                "training": training, "chance_position": 1 / len(POSITIONS)}
    result = {"figures": figures, "settings": settings,
              "grid_prompts": prompts[:: len(prompts) // GRID_ROWS][:GRID_ROWS]}
    return result, {"images": first, "prompts": prompts, "lean_scenes": lean_scenes}


def grid(result: dict, samples: dict) -> Image.Image:
    """Rows: `result["grid_prompts"]`; columns: `GRID_COLUMNS` (the scene the noise leans towards,
    then model/condition), 64×64 tiles, no text (the chapter labels them in its language)."""
    rows = []
    for prompt in result["grid_prompts"]:
        i = samples["prompts"].index(prompt)
        tiles = [world.render(samples["lean_scenes"][i])]
        tiles += [samples["images"][m][c][i] for m, c in (col.split("/") for col in GRID_COLUMNS[1:])]
        rows.append(np.concatenate(tiles, axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def report(result: dict) -> str:
    f, s = result["figures"], result["settings"]
    lines = [f"SD-schedule variant: {s['training']}",
             f"{s['prompts']} prompts × {s['seeds']} seeds, {s['sampler']}, {s['steps']} steps, CFG {s['guidance']} "
             f"(empty prompt: CFG 1); leaning noise = √(1-a)·ε + √a·z_lean, a = {s['lean_amount_alpha_bar']:.4f}",
             f"{'model':<12} {'noise':<22} {'pos=prompt':>10} {'pos=lean':>9} {'colour':>7} {'shape':>6} "
             f"{'black bg':>8} {'white bg':>8} {'brightness':>10}"]
    for m in MODELS:
        for c in (*CONDITIONS, *FIRST_GUESSES):
            r = f[m][c]
            lines.append(f"{m:<12} {c:<22} {r['position_as_prompt']:>10.1%} {r['position_as_lean']:>9.1%} "
                         f"{r['colour_as_prompt']:>7.1%} {r['shape_found']:>6.0%} {r['black_background']:>8.1%} "
                         f"{r['white_background']:>8.1%} {r['brightness']:>10.3f}")
    lines.append(f"chance for position: {s['chance_position']:.0%}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for sampling")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale (the shipped model's default)")
    parser.add_argument("--seeds", type=int, default=1, help="noise seeds; each samples all 90 prompts")
    parser.add_argument("--train-steps", type=int, default=None,
                        help=f"training steps on SD's schedule (default {train.SCHEDULE_TRAIN.unet_steps})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save", type=Path, default=None, help="save the trained variant in DIR/sd_schedule")
    parser.add_argument("--load", type=Path, default=None, help="load the variant --save wrote instead of training")
    parser.add_argument("--write-cache", action="store_true", help=f"write {CACHE}/figures.json and grid.png")
    args = parser.parse_args()
    result, samples = run(args.steps, args.guidance, args.seeds, args.train_steps, args.threads,
                          args.load, args.save)
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
