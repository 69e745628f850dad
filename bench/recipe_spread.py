"""How much does one recipe's outcome depend on its seed? The whole recipe, once per seed.

    python bench/recipe_spread.py --out runs/spread --seeds 0 1 2 [--set snr_gamma=5 plain_steps=4000]
        [--model-set 'languages=["en", "zh"]' max_tokens=32] [--threads 2] [--variants 2]

For each seed, `train.train` runs the whole recipe (stage 1 included; resumable: rerun to continue)
into OUT/seedN and exports OUT/seedN/pipeline. Then, per seed: the wall time (only when the run
was not resumed), how the autoencoder uses its latent channels (the spread of the posterior means
and the mean posterior σ per channel, over the cached latents), the analyzer's reading after the
autoencoder's round trip (the model card's 500 scenes, seed 2024, and 500 of seed 7) and the
generated images' adherence per language as `bench/adherence.py` measures it (DDIM 25 steps,
CFG 2, 90 prompts per variant). `--set` / `--model-set` change `TrainConfig` / `TinyLDMConfig`
fields (JSON values), as in `bench/denoiser_variants.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors.torch import load_file

from adherence import generated, show, vae_round_trip
from denoiser_variants import settings
from tutorial_ldm import metrics, world
from tutorial_ldm.tiny_model import TinyLDMConfig
from tutorial_ldm.train import TrainConfig, train


def channel_use(run: Path) -> str:
    tensors = load_file(run / "latents.safetensors")
    spread = tensors["means"].std(dim=(0, 2, 3)).tolist()
    sigma = tensors["stds"].mean(dim=(0, 2, 3)).tolist()
    scale = json.loads((run / "latents.json").read_text())["scaling_factor"]
    return (f"scaling factor {scale:.4f}; per channel, std of posterior means "
            + " ".join(f"{v:.2f}" for v in spread) + ", mean posterior σ "
            + " ".join(f"{v:.2f}" for v in sigma))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig fields, name=JSON value")
    parser.add_argument("--model-set", nargs="*", default=[], help="TinyLDMConfig fields, name=JSON value")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: every core)")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--variants", type=int, default=2, help="90 prompts per variant")
    args = parser.parse_args()

    model_cfg = TinyLDMConfig(**settings(args.model_set))
    round_trip_sets = {seed: world.sample_scenes(500, seed=seed) for seed in (2024, 7)}
    for seed in args.seeds:
        run = args.out / f"seed{seed}"
        cfg = TrainConfig(**{**settings(args.set), "seed": seed, "threads": args.threads})
        resumed = (run / "autoencoder_state.safetensors").exists()
        start = time.perf_counter()
        pipe = train(run, cfg, model_cfg, export_to=run / "pipeline")
        minutes = (time.perf_counter() - start) / 60
        print(f"--- seed {seed}: " + ("resumed, no wall time" if resumed else f"{minutes:.1f} min"))
        print(channel_use(run))
        for scenes_seed, scenes in round_trip_sets.items():
            show(f"round trip (scenes of seed {scenes_seed}):",
                 metrics.adherence(vae_round_trip(pipe, scenes), [s.caption for s in scenes]))
        for language in model_cfg.languages:
            generated(pipe, language, args.guidance, variants=args.variants)


if __name__ == "__main__":
    main()
