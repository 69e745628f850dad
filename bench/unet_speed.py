"""What a change to the tiny UNet costs at sampling time: one forward pass of a batch of 32 (16
images with classifier-free guidance), for the shipped configuration and its variants.

    python bench/unet_speed.py [--threads 2] [--repeats 5]

Each variant is a `TinyLDMConfig` change (random weights: only the time matters) and a context
length, the tokens the text encoder hands over (77 for the shipped tokenizer's window). Prints
the best time per forward pass over the repeats, interleaved so that a busy machine slows every
variant alike, and the parameter count.
"""

from __future__ import annotations

import argparse
import time

import torch

from tutorial_ldm.tiny_model import TinyLDMConfig, build_unet

VARIANTS = {  # name -> (TinyLDMConfig changes, context tokens)
    "shipped": ({}, 77),
    "32-token context": ({}, 32),
    "no 8×8 attention": ({"unet_attention": (False, False, True)}, 77),
    "(48, 64, 128), 32 tokens": ({"unet_channels": (48, 64, 128)}, 32),
    "(64, 64, 128), no 8×8 attention, 32 tokens": ({"unet_channels": (64, 64, 128),
                                                    "unet_attention": (False, False, True)}, 32),
}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shipped = TinyLDMConfig()
    z = torch.randn(32, shipped.latent_channels, 16, 16)
    t = torch.full((32,), 500)
    unets = {name: build_unet(TinyLDMConfig(**changes)).eval() for name, (changes, _) in VARIANTS.items()}
    best = dict.fromkeys(VARIANTS, float("inf"))
    for _ in range(args.repeats):
        for name, unet in unets.items():
            context = torch.randn(32, VARIANTS[name][1], shipped.text_width)
            unet(z, t, context)  # warm-up
            start = time.perf_counter()
            for _ in range(4):
                unet(z, t, context)
            best[name] = min(best[name], (time.perf_counter() - start) / 4)
    print(f"UNet forward, batch 32, {args.threads} threads (best of {args.repeats}):")
    for name, seconds in best.items():
        params = sum(p.numel() for p in unets[name].parameters())
        print(f"  {name:<45} {1000 * seconds:6.1f} ms  ({seconds / best['shipped']:.0%})  "
              f"{params / 1e6:.2f} M parameters")


if __name__ == "__main__":
    main()
