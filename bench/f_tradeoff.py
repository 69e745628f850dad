"""The paper's downsampling-factor trade-off (its LDM-1 … LDM-32 comparison, Sec. 4.1), small.

    python bench/f_tradeoff.py [--train] [--factors 2 4 8 16] [--steps 400] [--threads 1]

With --train, trains one small autoencoder per f with the shipped recipe's stage 1
(`tutorial_ldm.train.train_autoencoder`, the same short budget for every f; resumable from
runs/f-tradeoff/) and saves each to assets/vae-f/f<N>/ in float16, where chapter 2 loads them.
Then prints, per f: the latent diffusion has to model, the reconstruction PSNR on held-out scenes
and on the astronaut photo, how often the analyzer still reads a scene right after the round trip,
the tiny UNet's FLOPs per denoising step on that latent, and its measured milliseconds per step.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from tutorial_ldm import autoencoder
from tutorial_ldm.paths import REPO_ROOT
from tutorial_ldm.tiny_model import TinyLDMConfig, build_unet
from tutorial_ldm.train import TrainConfig, train_autoencoder



def train_missing(factors, steps: int, out: Path, run_root: Path) -> None:
    for f in factors:
        folder = out / f"f{f}"
        if (folder / "config.json").exists():
            continue
        run_dir = run_root / f"f{f}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = TrainConfig(vae_steps=steps, checkpoint_every=50)
        vae, log = train_autoencoder(cfg, autoencoder.f_config(f), run_dir)
        vae.half().save_pretrained(folder, safe_serialization=True)
        print(f"f = {f}: {sum(p.numel() for p in vae.parameters())} parameters, "
              f"final loss {log[-1][1]:.4f}, saved to {folder}")


@torch.no_grad()
def ms_per_step(latent_size: int, latent_channels: int, repeats: int = 20) -> float:
    unet = build_unet(replace(TinyLDMConfig(), latent_channels=latent_channels)).eval()
    z = torch.randn(2, latent_channels, latent_size, latent_size)  # CFG: two branches
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    unet(z, 500, context)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        unet(z, 500, context)
    return 1000 * (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the missing autoencoders")
    parser.add_argument("--factors", type=int, nargs="+", default=[16, 8, 4, 2])
    parser.add_argument("--steps", type=int, default=400, help="training steps per autoencoder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=autoencoder.F_AUTOENCODERS)
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / "runs" / "f-tradeoff")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.train:
        train_missing(args.factors, args.steps, args.out, args.run_dir)
    rows = autoencoder.f_tradeoff(autoencoder.load_f_autoencoders(args.out))
    print(autoencoder.format_f_tradeoff(rows))
    print(f"\nUNet ms per denoising step with CFG (batch 2, {args.threads} thread(s)):")
    for r in rows:
        c, h, _ = r["latent"]
        print(f"  f = {r['f']:>2}: {ms_per_step(h, c):7.1f} ms")


if __name__ == "__main__":
    main()
