"""Chapter 8's three fine-tunings of the tiny model on the unseen colour pink, with the floors.

    python bench/finetune.py [--threads 2] [--steps N] [--methods lora textual_inversion full]

For each method: CPU minutes, trained parameters, file size, the new colour on its held-out prompts
before/after (chance beside it) and the original prompts after (what was forgotten). Then the LoRA
file is loaded back into a fresh shipped model with `<lora:pink>` (diffusers' kohya loading) and
measured again, and the floors are checked: LoRA draws the new colour ≥ 80 % of the time on its
held-out prompts, losing ≤ 5 points of all-three adherence on the original prompts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from tutorial_ldm import finetune as ft
from tutorial_ldm.loading import load_pipeline

FLOOR_NEW = 0.80  # share of held-out pink prompts drawn pink, after the LoRA
FLOOR_LOST = 5.0  # points of all-three adherence the LoRA may cost on the original prompts


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: FinetuneConfig.steps")
    parser.add_argument("--methods", nargs="+", default=list(ft.METHODS), choices=ft.METHODS)
    parser.add_argument("--out", default=None, help="where the files go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune-"))
    results = {}
    for method in args.methods:
        before = next(iter(results.values()), None)  # the shipped model, measured once
        results[method] = ft.run(method, out, steps=args.steps, threads=args.threads, before=before)
        print(ft.report(results[method]), flush=True)

    if "lora" not in results:
        return 0
    lora = results["lora"]
    os.environ["TUTORIAL_LDM_LORA_DIR"] = str(out / "Lora")
    os.environ["TUTORIAL_LDM_EMBEDDINGS_DIR"] = str(out / "Lora")  # no pink.pt there: the LoRA alone
    fresh = load_pipeline(device="cpu")
    loaded = ft.measure(fresh, [p + " <lora:pink>" for p in ft.concept_prompts()], files=True)
    print(f"LoRA loaded back with <lora:pink>: new colour {loaded['colour']:.0%} "
          f"(in training {lora['after_new']['colour']:.0%})")
    lost = 100 * (lora["before_old"]["all3"] - lora["after_old"]["all3"])
    ok_new, ok_lost = loaded["colour"] >= FLOOR_NEW, lost <= FLOOR_LOST
    print(f"floor: new colour ≥ {FLOOR_NEW:.0%}: {loaded['colour']:.0%} {'ok' if ok_new else 'FAILED'}; "
          f"original prompts ≤ {FLOOR_LOST:g} points lost: {lost:+.1f} {'ok' if ok_lost else 'FAILED'}")
    return 0 if ok_new and ok_lost else 1


if __name__ == "__main__":
    raise SystemExit(main())
