"""Command line: `python -m tutorial_ldm train …`."""

from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(seed=args.seed)
    for name in ("vae_steps", "unet_steps", "n_latents", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    train(args.run_dir, cfg, export_to=args.export)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tutorial_ldm")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the tiny LDM (resumable: rerun to continue)")
    p.add_argument("--run-dir", default="runs/tiny-ldm", help="checkpoints and logs go here")
    p.add_argument("--export", default=None, help="save the finished pipeline to this folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--unet-steps", type=int, default=None)
    p.add_argument("--n-latents", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: every core; 1 is faster when other jobs share the CPU)")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
