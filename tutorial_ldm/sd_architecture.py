"""Stable Diffusion 1.5's architecture from its configs, with random weights (nothing downloaded).

Useful to count its parameters, time it on a GPU (bench/sd_gpu.py) or test code that must run
real checkpoints. `tiny=True` keeps every structural choice (four UNet levels, two layers per
level, cross-attention in the first three, an f = 8 VAE, a CLIP text encoder over a 77-token
window) but shrinks every width, so it runs in a second on a CPU.

The tokenizer is a real `CLIPTokenizer` (byte-pair encoding, <|startoftext|>/<|endoftext|>) over
a small character-level vocabulary: CLIP's own 49,408-token vocabulary cannot be downloaded here.
"""

from __future__ import annotations

import string

import torch

# stable-diffusion-v1-5, as in its diffusers folder's configs
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,  # the head count, in diffusers' historical naming
    norm_num_groups=32,
)
SD15_VAE = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(  # CLIP ViT-L/14's text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SD15_SCHEDULER = dict(  # PNDMScheduler in the original folder; every sampler reads these
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
    skip_prk_steps=True,
)

# the same structure, every width shrunk (64×64 images, 8×8 latents)
TINY_UNET = {**SD15_UNET, "sample_size": 8, "block_out_channels": (32, 32, 64, 64),
             "cross_attention_dim": 32, "attention_head_dim": 2, "norm_num_groups": 8}
TINY_VAE = {**SD15_VAE, "sample_size": 64, "block_out_channels": (8, 16, 32, 32),
            "layers_per_block": 1, "norm_num_groups": 8}
TINY_TEXT = {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "projection_dim": 32}


def char_clip_tokenizer(max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is single characters (plus a few merges), built offline."""
    from transformers import CLIPTokenizer

    chars = string.ascii_lowercase + string.digits + ",.:;!?'-()[]"
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("r", "e"), ("re", "d</w>"),
              ("o", "n</w>")]
    tokens = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_sd15_pipeline(tiny: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline with SD-1.5's architecture (or its tiny twin), random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = char_clip_tokenizer()
    text = CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE)),
        text_encoder=CLIPTextModel(text),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET)),
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
