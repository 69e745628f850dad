"""Command line: `python -m tutorial_ldm train …`, `… generate …`, `… finetune …` and `… classroom …`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _train(args) -> int:
    _quiet_libraries()
    from .tiny_model import TinyLDMConfig
    from .train import TrainConfig, check_run, train

    cfg = TrainConfig(seed=args.seed)
    for name in ("vae_steps", "unet_steps", "n_latents", "threads", "checkpoint_every"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    try:
        model_cfg = TinyLDMConfig(languages=tuple(dict.fromkeys(["en", *args.languages])))
        check_run(args.run_dir, cfg, args.export)
    except (ValueError, TypeError, OSError) as e:  # bad input: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    train(args.run_dir, cfg, model_cfg, export_to=args.export)
    return 0


def _finetune(args) -> int:
    from .finetune import METHODS, report, run

    try:
        _quiet_libraries()
        result = None  # the shipped model's "before" figures are measured once
        for method in METHODS if args.method == "all" else [args.method]:
            result = run(method, args.out, variants=args.variants, original=args.original,
                         eval_steps=args.eval_steps, before=result, steps=args.steps, batch=args.batch,
                         n_concept=args.n_concept, n_prior=args.n_prior, threads=args.threads, seed=args.seed)
            if result is not None:  # None: another process than the main one of accelerate launch
                print(report(result))
    except (ValueError, TypeError, OSError) as e:  # bad input: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _classroom(args) -> int:
    from . import classroom

    notebooks = args.notebooks or classroom.NOTEBOOK_DIR
    timeout = classroom.TIMEOUT if args.timeout is None else args.timeout
    try:
        if args.action == "student-copies":
            for path in classroom.write_student_copies(args.folder, notebooks, overwrite=args.overwrite):
                print(path)
            return 0
        rows = classroom.grade(args.folder, args.out, notebook_dir=notebooks, timeout=timeout)
    except (ValueError, OSError) as e:  # bad input: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    for r in rows:
        print(f"{r.student:<16} {r.exercise:<26} {r.points:g}/{r.max_points:g}  {r.status:<13} {r.message[:80]}")
    print(f"{len(rows)} rows → {args.out}")
    return 0


def _quiet_libraries() -> None:
    """Only errors from transformers/diffusers: the command prints its own progress."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _outputs(out: Path, n: int) -> list[Path]:
    """out.png for one image; out-0.png, out-1.png, … for a batch."""
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{k}{out.suffix}") for k in range(n)]


def _generate(args) -> int:
    try:
        out = Path(args.out)
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out {out}: images are saved as .png (the settings live in a PNG text chunk)")
        if isinstance(args.batch_size, int) and args.batch_size >= 1 and not args.overwrite:
            taken = [str(p) for p in _outputs(out, args.batch_size) if p.exists()]
            if taken:
                raise FileExistsError(f"--out: {', '.join(taken)} exists; pass --overwrite to replace it")
        _quiet_libraries()
        from .generation import generate
        from .loading import load_pipeline
        from .parameters import save_image

        try:
            pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, low_vram=args.low_vram,
                                 config=args.config, vae=_vae_choice(args.vae),
                                 prediction_type=args.prediction_type)
        except (RuntimeError, NotImplementedError) as e:  # torch could not place the model there
            raise ValueError(f"could not load the model on device {args.device!r}: {_one_line(e)}") from None
        images = generate(pipe, args.prompt, args.negative, steps=args.steps, guidance=args.cfg,
                          seed=args.seed, sampler=args.sampler, width=args.width, height=args.height,
                          batch_size=args.batch_size, clip_skip=args.clip_skip, progress=True)
        for image, settings, path in zip(images, images.settings, _outputs(out, len(images))):
            save_image(image, path, overwrite=args.overwrite)
            print(f"{path}  (seed {settings.seed})")
    except (ValueError, TypeError, OSError, FloatingPointError) as e:  # bad input: one line, no traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _vae_choice(vae: str):
    """--vae as load_pipeline takes it: "None" is the checkpoint's own VAE."""
    return None if vae.lower() == "none" else vae


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
    p.add_argument("--languages", nargs="+", choices=["en", "zh"], default=["en"],
                   help="caption languages; en zh: each scene captioned as often in Chinese as in English")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints (default 250); a rerun resumes from the last one")
    p.error = lambda message: p.exit(2, f"error: {message}\n")
    p.set_defaults(func=_train)

    p = sub.add_parser("finetune", help="teach the shipped tiny model the unseen colour pink (chapter 8)")
    p.add_argument("--method", default="lora", choices=["textual_inversion", "lora", "full", "all"])
    p.add_argument("--out", default="runs/finetune", help="the files go to OUT/Lora, OUT/embeddings, OUT")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 500)")
    p.add_argument("--batch", type=int, default=None,
                   help="samples per step (default 32; per process under accelerate launch)")
    p.add_argument("--n-concept", type=int, default=None, help="rendered scenes of the new colour (default 400)")
    p.add_argument("--n-prior", type=int, default=None,
                   help="scenes of the old colours mixed in half and half (default 400)")
    p.add_argument("--variants", type=int, default=2, help="held-out prompts: 5 × variants")
    p.add_argument("--original", type=int, default=90, help="original prompts measured (of 90)")
    p.add_argument("--eval-steps", type=int, default=20, help="sampling steps when measuring")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: every core)")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("classroom", help="student copies without solutions, and grading (tutorial_ldm.classroom)")
    p.add_argument("action", choices=["student-copies", "grade"],
                   help="student-copies FOLDER: every chapter without solutions into FOLDER; "
                        "grade FOLDER: grade FOLDER/<student>/*.ipynb into --out")
    p.add_argument("folder", help="where the copies go (student-copies) or the submissions are (grade)")
    p.add_argument("--out", default="grades.csv", help="grade: the CSV, one row per student and exercise")
    p.add_argument("--timeout", type=float, default=None,
                   help="grade: seconds one notebook may take (default 300); past it its rows say 'timed out'")
    p.add_argument("--notebooks", default=None, help="the teacher's notebooks (default: the course's notebooks/)")
    p.add_argument("--overwrite", action="store_true", help="student-copies: replace existing copies")
    p.error = lambda message: p.exit(2, f"error: {message}\n")
    p.set_defaults(func=_classroom)

    # None: the model's own default (tutorial_ldm.settings.defaults_for), as generate() and the studio
    p = sub.add_parser("generate", help="text to image with the shipped model or your checkpoint")
    p.add_argument("prompt", help="A1111 syntax: (word:1.3), [word], BREAK; \"\" for unconditional")
    p.add_argument("--negative", default="", help="negative prompt, same syntax")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (25)")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance scale; default: the model's (7 for SD, 2 for the shipped tiny model)")
    p.add_argument("--seed", type=int, default=-1, help="-1: random (printed, and saved in the PNG)")
    p.add_argument("--sampler", default=None, help="euler_a (default), euler, ddim, ddpm, dpmpp_2m, "
                   "dpmpp_2m_karras, or A1111's names (\"Euler a\", \"DPM++ 2M Karras\")")
    p.add_argument("--width", type=int, default=None, help="default: the model's native size")
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--batch-size", type=int, default=1, help="image k gets seed + k")
    p.add_argument("--model", default=None, help="diffusers folder, .safetensors/.ckpt file, a name in "
                   "models/Stable-diffusion, or a hub id (default: the shipped tiny model)")
    p.add_argument("--config", default=None, help="for a single file offline: a local diffusers "
                   "folder of the same architecture")
    p.add_argument("--vae", default="Automatic", help="Automatic (a <checkpoint>.vae.safetensors beside it or "
                   "in models/VAE, else its own), None (the checkpoint's own), or a VAE file (path or name in "
                   "models/VAE)")
    p.add_argument("--prediction-type", default=None, choices=["epsilon", "v_prediction"],
                   help="override what the checkpoint is detected to predict (SD 2.x 768-v models: v_prediction)")
    p.add_argument("--clip-skip", type=int, default=None,
                   help="A1111's Clip skip: 1 = the last layer (default), 2 = the penultimate (SDXL ignores it)")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"])
    p.add_argument("--low-vram", action="store_true", help="slicing, tiling and CPU offload for ~6 GB GPUs")
    p.add_argument("--out", default="out.png", help="PNG path; a batch adds -0, -1, …")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    # a bad option gets one line, like any other bad input
    p.error = lambda message: p.exit(2, f"error: {message}\n")
    p.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
