"""The tiny text-to-image latent diffusion model: configs and builders.

The paper's three parts, each from the field's own classes so the result is a stock diffusers
`StableDiffusionPipeline`:

- perceptual compression: a KL-regularised `AutoencoderKL`, f = 4 (64×64×3 → 16×16×4);
- the text encoder τ_θ: a tiny `CLIPTextModel` over a word-level tokenizer of the world's words
  (English, and with `languages=("en", "zh")` Chinese, segmented by greedy longest match);
- the denoiser ε_θ(z_t, t, τ_θ(y)): a `UNet2DConditionModel` with cross-attention at every level.

The noise schedule is SD's `scaled_linear` rescaled to zero terminal SNR, with v-prediction
(Lin et al. 2024): SD's own schedule leaves signal at t = T, and a model trained on it never
learns to place the shape from pure noise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .world import IMAGE_SIZE, vocabulary

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
LANGUAGES = (("en",), ("en", "zh"))  # English always; Chinese beside it


@dataclass
class TinyLDMConfig:
    # autoencoder: len(vae_channels) - 1 halvings, so f = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    latent_channels: int = 4
    # text encoder
    text_width: int = 64  # also the UNet's cross_attention_dim
    text_layers: int = 2
    text_heads: int = 4
    max_tokens: int = 77  # SD's window: 75 words + <bos> + <eos>
    languages: tuple[str, ...] = ("en",)  # caption languages: "en", and "zh" for Chinese too
    # denoiser
    unet_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    # cross-attention at the 8×8 and 4×4 levels (and the middle); self-attention over 16×16
    # latents would triple the cost of sampling and the layout is decided at low resolution
    unet_attention: tuple[bool, ...] = (False, True, True)
    unet_heads: int = 4
    # noise schedule (SD 1.x betas, rescaled to zero terminal SNR)
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    prediction_type: str = "v_prediction"

    def __post_init__(self):
        self.languages = tuple(self.languages)
        if self.languages not in LANGUAGES:
            raise ValueError(f"languages={self.languages!r} must be one of {LANGUAGES}")

    @property
    def latent_size(self) -> int:
        return IMAGE_SIZE // 2 ** (len(self.vae_channels) - 1)


def build_tokenizer(cfg: TinyLDMConfig):
    """A word-level tokenizer over the world's vocabulary; unknown words map to <unk>.

    Chinese is written without spaces, so with "zh" the pre-tokenizer first splits out the
    vocabulary's Chinese words by greedy longest match (a regex alternation, longest word first:
    at each position the longest word that starts there), then splits on whitespace and
    punctuation as for English. It is part of the standard `tokenizer.json`, so diffusers'
    pipeline and `tutorial_ldm.prompts` segment the same way. Text between known words
    (e.g. 非常漂亮) stays one piece and maps to a single <unk>."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary(cfg.languages)
    vocab = {w: i for i, w in enumerate([PAD, UNK, BOS, EOS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    chinese = sorted((w for w in words if not w.isascii()), key=len, reverse=True)
    if chinese:
        longest_first = Regex("|".join(map(re.escape, chinese)))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(longest_first, behavior="isolated"), pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=cfg.max_tokens,
    )


def speaks_chinese(tokenizer) -> bool:
    """True for a tokenizer that has the world's Chinese words as whole tokens (a tiny model
    trained with `languages=("en", "zh")`). SD's CLIP BPE has none: it spells Chinese as byte
    fragments its text encoder never learned (chapter 4), so SD models want English prompts."""
    vocab = tokenizer.get_vocab()
    return all(word in vocab for word in vocabulary(("en", "zh")) if not word.isascii())


def build_text_encoder(cfg: TinyLDMConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_tokens,
            projection_dim=cfg.text_width,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )


def build_autoencoder(cfg: TinyLDMConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.0,  # measured from data after training (train.measure_scaling_factor)
    )


def build_unet(cfg: TinyLDMConfig):
    from diffusers import UNet2DConditionModel

    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.unet_attention]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.unet_attention)]
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=cfg.unet_channels,
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,  # diffusers' historical name for the head count
        norm_num_groups=8,
    )


# Stable Diffusion 1.x's schedule, as changes to ours (its scheduler_config.json): the same
# scaled_linear betas *not* rescaled (√ᾱ_T = 0.068 of the image left at t = T) and "leading"
# spacing (sampling starts at t = 951 for 20 steps, never at T). For chapter 1's demonstration of
# what that schedule does (bench/zero_snr.py); the prediction type stays v.
SD_SCHEDULE = {"rescale_betas_zero_snr": False, "timestep_spacing": "leading"}


def scheduler_config(cfg: TinyLDMConfig, changes: dict | None = None) -> dict:
    """The schedule the model is trained with; every diffusers scheduler can be built from it.
    `changes`: settings that replace ours (e.g. `SD_SCHEDULE`); ValueError for an unknown key."""
    config = dict(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="scaled_linear",
        rescale_betas_zero_snr=True,
        prediction_type=cfg.prediction_type,
        timestep_spacing="trailing",  # starts sampling at t = T, where zero SNR puts pure noise
        steps_offset=1,  # without it diffusers rewrites the DDIM config with a warning
        clip_sample=False,
        set_alpha_to_one=False,
    )
    unknown = sorted(set(changes or {}) - set(config))
    if unknown:
        raise ValueError(f"unknown scheduler setting(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(config)}")
    return {**config, **(changes or {})}


def build_scheduler(cfg: TinyLDMConfig, changes: dict | None = None):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config(cfg, changes))


def build_pipeline(cfg: TinyLDMConfig, vae, text_encoder, tokenizer, unet, schedule: dict | None = None):
    """Assemble the parts into a stock `StableDiffusionPipeline` (no safety checker); `schedule`:
    changes to the scheduler's settings (`scheduler_config`)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(cfg, schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
