"""Tiny random models for fast tests: the shipped architecture at toy width, built offline."""

import torch

from tutorial_ldm.tiny_model import (TinyLDMConfig, build_autoencoder, build_pipeline,
                                     build_text_encoder, build_tokenizer, build_unet)

TOY = TinyLDMConfig(vae_channels=(8, 16, 16), unet_channels=(16, 16, 32), text_width=32,
                    unet_heads=2)


def toy_pipeline(seed: int = 0):
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TOY)
    pipe = build_pipeline(TOY, build_autoencoder(TOY).eval(),
                          build_text_encoder(TOY, tokenizer).eval(), tokenizer,
                          build_unet(TOY).eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe
