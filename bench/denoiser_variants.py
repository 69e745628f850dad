"""Which stage-2 recipe teaches the bilingual model its shapes? The denoiser stage alone, on the
latents a training run already cached, then the generated images' adherence in both languages.

    python bench/denoiser_variants.py --run-dir RUN --out OUT [--set unet_steps=12000 ema_decay=0.999]
    python bench/denoiser_variants.py --run-dir RUN --out OUT --continue-from PIPELINE --set unet_steps=3000 unet_lr=5e-4 warmup=100

RUN is a `python -m tutorial_ldm train` run folder (its `vae/`, `latents.safetensors` and
`latents.json`: the autoencoder and the latents stay fixed, so variants differ only in stage 2).
`--set` changes `TrainConfig` fields (JSON values), `--model-set` `TinyLDMConfig` fields (default
languages en zh). The text encoder and UNet are trained from scratch (`train.train_denoiser`, the
recipe's own stage 2, resumable from OUT) or, with --continue-from, on from an exported pipeline's
weights; the result is saved as OUT/pipe and measured as `bench/adherence.py` measures (DDIM 25
steps, 180 prompts per language, seeds 0…179). With `ema_decay` the last weights (not averaged) are
measured too, from the run's checkpoint, so one run shows what the average adds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from adherence import generated
from tutorial_ldm.tiny_model import TinyLDMConfig, build_pipeline
from tutorial_ldm.train import TrainConfig, train_denoiser


def settings(pairs: list[str]) -> dict:
    """["unet_steps=12000", "ema_decay=0.999"] → {"unet_steps": 12000, "ema_decay": 0.999}"""
    return {name: json.loads(value) for name, _, value in (pair.partition("=") for pair in pairs)}


def main() -> None:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig fields, name=JSON value")
    parser.add_argument("--model-set", nargs="*", default=[], help="TinyLDMConfig fields, name=JSON value")
    parser.add_argument("--continue-from", type=Path, default=None, help="an exported pipeline")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--variants", type=int, default=2, help="90 prompts per variant")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    run = args.run_dir
    latents = {**load_file(run / "latents.safetensors"), **json.loads((run / "latents.json").read_text())}
    vae = AutoencoderKL.from_pretrained(run / "vae")
    vae.register_to_config(scaling_factor=latents["scaling_factor"])
    model_cfg = TinyLDMConfig(**{"languages": ("en", "zh"), **settings(args.model_set)})
    cfg = TrainConfig(**{"checkpoint_every": 500, **settings(args.set)})
    start = None if args.continue_from is None else StableDiffusionPipeline.from_pretrained(args.continue_from)
    stage = "denoiser" if start is None else "continued"
    tokenizer, text_encoder, unet, _ = train_denoiser(cfg, model_cfg, args.out, latents, stage=stage,
                                                      start_from=start)
    pipe = build_pipeline(model_cfg, vae.eval(), text_encoder.eval(), tokenizer, unet.eval())
    pipe.save_pretrained(args.out / "pipe")

    weights = {"exported": pipe}
    if cfg.ema_decay:  # the same run's last weights, from its checkpoint
        state = load_file(args.out / f"{stage}_state.safetensors")
        text_last, unet_last = type(text_encoder)(text_encoder.config), type(unet).from_config(unet.config)
        for name, module in (("text_encoder", text_last), ("unet", unet_last)):
            module.load_state_dict({k[len(name) + 1:]: v for k, v in state.items()
                                    if k.startswith(name + ".")})
        weights["last (not averaged)"] = build_pipeline(model_cfg, vae, text_last.eval(), tokenizer,
                                                        unet_last.eval())
    for label, p in weights.items():
        print(f"--- {args.out.name}: {label} weights, CFG {args.guidance}")
        for language in model_cfg.languages:
            generated(p, language, args.guidance, variants=args.variants)


if __name__ == "__main__":
    main()
