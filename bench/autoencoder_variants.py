"""Which autoencoder recipe keeps shapes readable? Short training runs of stage-1 variants,
each measured by the analyzer after the round trip (the ceiling an autoencoder puts on shape
adherence).

    python bench/autoencoder_variants.py [--steps 500] [--variants baseline edge1] [--threads 1]
    python bench/autoencoder_variants.py --finetune --steps 150 --lr 2e-4   # on from the shipped one
    python bench/autoencoder_variants.py --variants --misread runs/misread   # the shipped one's errors

With --misread DIR, each autoencoder's misread scenes of seed 2024 are saved as DIR/<name>.png
(one row each: rendered, round trip, the analyzer's blob of each) and listed with the blob's fill
ratio (what `metrics._classify_shape` decides on: < 0.64 triangle, > 0.89 square) and the share of
its area in the upper half of its box (a triangle pointing up has 1/4, a circle or square 1/2).

Each variant trains from scratch (or, with --finetune, on from the shipped autoencoder) with the
shipped recipe's stage 1 (`train.train_autoencoder`, resumable from --run-dir), then encodes and decodes 500 scenes of the model card's set
(seed 2024) and 500 fresh ones (seed 7) and prints the analyzer's accuracy, and the shape
errors by (true shape, size) so one sees which shapes the autoencoder blurs.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tutorial_ldm import metrics, world
from tutorial_ldm.autoencoder import decode, encode, to_images
from tutorial_ldm.paths import REPO_ROOT, SHIPPED_MODEL
from tutorial_ldm.tiny_model import TinyLDMConfig
from tutorial_ldm.train import TrainConfig, train_autoencoder

# name -> (changes to TrainConfig, changes to TinyLDMConfig); "encoder-" + name: decoder frozen
VARIANTS = {
    "baseline": ({}, {}),
    "edge1": ({"edge_weight": 1.0}, {}),
    "edge4": ({"edge_weight": 4.0}, {}),
    "contrast": ({"contrast_weighting": True}, {}),
    "contrast+edge4": ({"contrast_weighting": True, "edge_weight": 4.0}, {}),
    "wide": ({}, {"vae_channels": (64, 64, 64)}),
    "hard": ({"hard_fraction": 0.5}, {}),
    "latent8": ({}, {"latent_channels": 8}),
    "latent8+hard": ({"hard_fraction": 0.5}, {"latent_channels": 8}),
    "hard1": ({"hard_fraction": 1.0}, {}),
    "eq": ({"equivariance_weight": 1.0}, {}),
    "hard1+contrast+edge4": ({"hard_fraction": 1.0, "contrast_weighting": True,
                              "edge_weight": 4.0}, {}),
}


@torch.no_grad()
def round_trip_scores(vae, seed: int) -> tuple[dict, collections.Counter]:
    scenes = world.sample_scenes(500, seed=seed)
    images = to_images(decode(vae, encode(vae, torch.from_numpy(world.render_batch(scenes)))))
    errors = collections.Counter((s.shape, s.size or "medium") for s, im in zip(scenes, images)
                                 if metrics.analyze(im).shape != s.shape)
    return metrics.adherence(images, [s.caption for s in scenes]), errors


def analyzer_blob(image) -> np.ndarray:
    """The pixels `metrics.analyze` reads the shape from (its steps, without the attributes)."""
    arr = np.asarray(image, float)
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    distance = np.linalg.norm(arr - bg, axis=-1)
    fg = np.median(arr[metrics._largest_blob(distance > 0.5 * distance.max())], axis=0)
    t = (arr - bg) @ (fg - bg) / ((fg - bg) @ (fg - bg))
    return metrics._largest_blob(t > 0.5)


def fill_and_top_share(blob: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(blob)
    fill = blob.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    return float(fill), float((ys < (ys.min() + ys.max()) / 2).mean())


@torch.no_grad()
def save_misread(vae, name: str, out_dir: Path) -> None:
    scenes = world.sample_scenes(500, seed=2024)
    rendered = world.render_batch(scenes)
    images = to_images(decode(vae, encode(vae, torch.from_numpy(rendered))))
    rows = []
    for scene, image in zip(scenes, images):
        reading = metrics.analyze(image).shape
        if reading == scene.shape:
            continue
        original = world.render(scene)
        blobs = [analyzer_blob(original), analyzer_blob(image)]
        (f0, t0), (f1, t1) = (fill_and_top_share(b) for b in blobs)
        print(f"  {scene.caption!r}: read {reading}; fill {f0:.3f} → {f1:.3f}, "
              f"top-half share {t0:.3f} → {t1:.3f}")
        masks = [np.repeat(b[..., None] * np.uint8(255), 3, axis=-1) for b in blobs]
        rows.append(np.concatenate([original, image, *masks], axis=1))
    if rows:
        out_dir.mkdir(parents=True, exist_ok=True)
        mosaic = np.concatenate(rows)
        Image.fromarray(mosaic).resize((mosaic.shape[1] * 4, mosaic.shape[0] * 4),
                                       Image.NEAREST).save(out_dir / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=[*VARIANTS, *(f"encoder-{v}" for v in VARIANTS)])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--finetune", action="store_true", help="start from assets/tiny-ldm/vae")
    parser.add_argument("--lr", type=float, default=TrainConfig.vae_lr)
    parser.add_argument("--misread", type=Path, default=None,
                        help="save each autoencoder's misread scenes here as <name>.png")
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / "runs" / "autoencoder-variants")
    args = parser.parse_args()

    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    shipped = AutoencoderKL.from_pretrained(SHIPPED_MODEL / "vae").eval()
    for seed in (2024, 7):  # the reference every variant is compared with
        scores, errors = round_trip_scores(shipped, seed)
        print(f"{'shipped':<9} scenes seed {seed}: shape {100 * scores['shape']:5.1f}%  "
              f"shape errors {dict(errors)}", flush=True)
    if args.misread:
        save_misread(shipped, "shipped", args.misread)
    for name in args.variants:
        encoder_only = name.startswith("encoder-")
        train_changes, model_changes = VARIANTS[name.removeprefix("encoder-")]
        cfg = TrainConfig(vae_steps=args.steps, vae_lr=args.lr, checkpoint_every=50, **train_changes)
        run_dir = args.run_dir / f"{name}-{args.steps}{'-finetune' if args.finetune else ''}"
        run_dir.mkdir(parents=True, exist_ok=True)
        vae, log = train_autoencoder(cfg, TinyLDMConfig(**model_changes), run_dir,
                                     start_from=shipped if args.finetune else None,
                                     encoder_only=encoder_only)
        vae.eval()
        for seed in (2024, 7):
            scores, errors = round_trip_scores(vae, seed)
            print(f"{name:<9} {args.steps} steps, scenes seed {seed}: "
                  f"shape {100 * scores['shape']:5.1f}%  colour {100 * scores['colour']:5.1f}%  "
                  f"position {100 * scores['position']:5.1f}%  size {100 * scores['size']:5.1f}%  "
                  f"final loss {log[-1][1]:.4f}  shape errors {dict(errors)}", flush=True)
        if args.misread:
            save_misread(vae, run_dir.name, args.misread)


if __name__ == "__main__":
    main()
