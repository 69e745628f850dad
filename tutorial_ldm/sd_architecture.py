"""Stable Diffusion's architectures: SD 1.5 with random weights, and what a single-file
checkpoint holds (SD 1.x, 2.x, XL, inpainting) with the diffusers configs to load it offline.

`build_sd15_pipeline` builds SD 1.5 from its configs with random weights (nothing downloaded):
useful to count its parameters, time it on a GPU (bench/sd_gpu.py) or test code that must run
real checkpoints. `tiny=True` keeps every structural choice (four UNet levels, two layers per
level, cross-attention in the first three, an f = 8 VAE, a CLIP text encoder over a 77-token
window) but shrinks every width, so it runs in a second on a CPU. Its tokenizer is a real
`CLIPTokenizer` over a small character-level vocabulary.

`describe` and `configs_for` read a checkpoint's keys and shapes; `write_clip_tokenizer` writes
CLIP's real 49,408-token tokenizer from the BPE file the `openai-clip` package ships.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import string
from functools import lru_cache
from pathlib import Path

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


# ---------------------------------------------------------------------------------------------
# Single-file checkpoints: which architecture a file holds, and its diffusers configs, offline.
#
# A1111/civitai checkpoints keep the original CompVis names: the UNet under
# `model.diffusion_model.*`, the VAE under `first_stage_model.*`, the text encoder under
# `cond_stage_model.*` (SD 1.x: CLIP ViT-L/14; SD 2.x: OpenCLIP ViT-H/14) or, for SDXL,
# `conditioner.embedders.0.*` (CLIP ViT-L/14) and `conditioner.embedders.1.*` (OpenCLIP
# ViT-bigG/14). The architecture is read from those keys and the tensors' shapes, as ComfyUI
# does; the fixed parts of each architecture's configs ship in tutorial_ldm/configs/*.json.

CONFIGS = Path(__file__).parent / "configs"
UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L = {"sd1": "cond_stage_model.transformer.text_model.",
          "sdxl": "conditioner.embedders.0.transformer.text_model."}
OPEN_CLIP = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
HEAD_CHANNELS = 64  # SD 2.x, SDXL and every CLIP text tower use 64 channels per attention head
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
             "sdxl": "StableDiffusionXLPipeline", "inpainting": "StableDiffusionInpaintPipeline"}
SUPPORTED = "SD 1.x, SD 2.x (ε and v), SDXL base, and SD 1.x/2.x inpainting checkpoints"

# CLIP's byte-pair vocabulary, as OpenAI ship it (`bpe_simple_vocab_16e6.txt.gz`, the same bytes
# in open_clip_torch); we read it from the `openai-clip` package, which needs no torch.
CLIP_VOCAB_PACKAGE, CLIP_VOCAB_FILE = "clip", "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


class UnsupportedCheckpoint(ValueError):
    """A file that is not one of the supported Stable Diffusion architectures; says what it is."""


def describe(shapes: dict[str, tuple]) -> str:
    """What a state dict (key → shape) holds: 'sd1', 'sd2', 'sdxl', 'sd1-inpainting',
    'sd2-inpainting', or raise UnsupportedCheckpoint naming what the file looks like."""
    keys = shapes.keys()

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    def looks_like(what: str):
        return UnsupportedCheckpoint(f"looks like {what}; supported: {SUPPORTED}")

    if any("lora_" in k or ".lora_down." in k or ".lora_A." in k or k.startswith("lora") for k in keys):
        raise looks_like("a LoRA (it belongs in models/Lora, and is applied to a checkpoint)")
    if has("joint_blocks.") or has(UNET + "joint_blocks."):
        raise looks_like("a Stable Diffusion 3 model")
    if has("double_blocks.") or has(UNET + "double_blocks."):
        raise looks_like("a Flux model")
    if has("control_model.") or has("controlnet_cond_embedding."):
        raise looks_like("a ControlNet")
    if "string_to_param" in keys or "emb_params" in keys or ("clip_l" in keys and "clip_g" in keys):
        raise looks_like("a textual-inversion embedding (it belongs in embeddings/)")
    if not has(UNET):
        if (has("encoder.") and has("decoder.")) or (has(VAE) and not has("cond_stage_model.")):
            raise looks_like("a VAE on its own (it belongs in models/VAE; "
                             "pass it as load_pipeline(..., vae=...))")
        raise looks_like("no Stable Diffusion model: it has no UNet weights (model.diffusion_model.*)")
    if has("conditioner.embedders.0.model."):
        raise looks_like("an SDXL refiner (image-to-image only; load the SDXL base)")
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    channels = conv_in[1] if conv_in else None
    if has(OPEN_CLIP["sdxl"]) and has(CLIP_L["sdxl"]):
        if channels != 4:
            raise looks_like(f"an SDXL model with a {channels}-channel UNet (SDXL inpainting)")
        return "sdxl"
    if has(OPEN_CLIP["sd2"]):
        arch = "sd2"
    elif has(CLIP_L["sd1"]):
        arch = "sd1"
    else:
        raise looks_like("a UNet without its text encoder (no cond_stage_model.* weights)")
    if channels == 9:
        return arch + "-inpainting"
    if channels != 4:
        raise looks_like(f"a {arch.upper()} model with a {channels}-channel UNet "
                         "(instruct-pix2pix or a depth/upscaler model)")
    return arch


def _count(shapes: dict, prefix: str) -> int:
    """How many numbered children `prefix{i}.` has."""
    found = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
    return len([i for i in found if i.isdigit()])


def _unet_config(base: dict, shapes: dict, arch: str) -> dict:
    """The UNet's config: widths, depths and attention from the checkpoint's shapes (the
    inverse of diffusers' LDM-to-diffusers renaming), the rest from the shipped config."""
    def shape(key):
        return shapes.get(UNET + key)

    levels, level, i = [], [], 1
    while shape(f"input_blocks.{i}.0.op.weight") or shape(f"input_blocks.{i}.0.out_layers.3.weight"):
        if shape(f"input_blocks.{i}.0.op.weight"):  # a downsampler ends the level
            levels.append(level)
            level = []
        else:
            depth = _count(shapes, UNET + f"input_blocks.{i}.1.transformer_blocks.")
            level.append((shape(f"input_blocks.{i}.0.out_layers.3.weight")[0], depth))
        i += 1
    levels.append(level)
    channels = [lv[0][0] for lv in levels]
    depths = [lv[0][1] for lv in levels]
    attn = next(k for k in shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    proj_in = next(k for k in shapes if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    config = {
        **base,
        "in_channels": shape("input_blocks.0.0.weight")[1],
        "out_channels": shape("out.2.weight")[0],
        "block_out_channels": channels,
        "layers_per_block": len(levels[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "cross_attention_dim": shapes[attn][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
    }
    if arch != "sd1":  # SD 1.x has 8 heads everywhere; the later models 64 channels per head
        config["attention_head_dim"] = [c // HEAD_CHANNELS for c in channels]
    if max(depths) > 1:
        config["transformer_layers_per_block"] = [max(d, 1) for d in depths]
    if shape("label_emb.0.0.weight"):
        config["projection_class_embeddings_input_dim"] = shape("label_emb.0.0.weight")[1]
    return config


def _vae_config(base: dict, shapes: dict) -> dict:
    n = _count(shapes, VAE + "encoder.down.")
    return {**base,
            "block_out_channels": [shapes[VAE + f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n)],
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "layers_per_block": _count(shapes, VAE + "encoder.down.0.block."),
            "latent_channels": shapes[VAE + "post_quant_conv.weight"][1]}


def _clip_config(base: dict, shapes: dict, prefix: str) -> dict:
    """CLIP ViT-L/14's text tower (transformers' names in the file)."""
    tokens = shapes[prefix + "embeddings.token_embedding.weight"]
    return {**base, "vocab_size": tokens[0], "hidden_size": tokens[1],
            "num_attention_heads": tokens[1] // HEAD_CHANNELS,
            "max_position_embeddings": shapes[prefix + "embeddings.position_embedding.weight"][0],
            "num_hidden_layers": _count(shapes, prefix + "encoder.layers."),
            "intermediate_size": shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]}


def _open_clip_config(base: dict, shapes: dict, prefix: str, drop_last_layer: bool) -> dict:
    """An OpenCLIP text tower (open_clip's names in the file). SD 2.x reads its penultimate
    layer, so diffusers' text encoder for it stops one layer short (the last is not loaded)."""
    tokens = shapes[prefix + "token_embedding.weight"]
    config = {**base, "vocab_size": tokens[0], "hidden_size": tokens[1],
              "num_attention_heads": tokens[1] // HEAD_CHANNELS,
              "max_position_embeddings": shapes[prefix + "positional_embedding"][0],
              "num_hidden_layers": _count(shapes, prefix + "transformer.resblocks.") - drop_last_layer,
              "intermediate_size": shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]}
    if prefix + "text_projection" in shapes:
        config["projection_dim"] = shapes[prefix + "text_projection"][1]
    return config


def shipped_config(family: str) -> dict:
    """The configs shipped for 'sd1', 'sd2' or 'sdxl' (tutorial_ldm/configs/<family>.json)."""
    return json.loads((CONFIGS / f"{family}.json").read_text())


def configs_for(arch: str, shapes: dict[str, tuple]) -> dict:
    """Every component's diffusers config for a checkpoint of architecture `arch` (see
    `describe`): the shipped JSON, with what the checkpoint's shapes tell filled in."""
    family, _, variant = arch.partition("-")
    configs = shipped_config(family)
    configs.pop("_comment", None)
    for key, shape in shapes.items():
        if key.endswith("token_embedding.weight") and shape[1] % HEAD_CHANNELS:
            raise UnsupportedCheckpoint(
                f"has a {shape[1]}-wide text encoder ({key}): its attention heads cannot be read from "
                f"the file, and every SD text encoder has {HEAD_CHANNELS} channels per head; pass "
                "config= a diffusers folder of its architecture")
    if variant == "inpainting":
        configs["pipeline"]["_class_name"] = PIPELINES["inpainting"]
    configs["unet"] = _unet_config(configs["unet"], shapes, family)
    configs["vae"] = _vae_config(configs["vae"], shapes)
    if family == "sd1":
        configs["text_encoder"] = _clip_config(configs["text_encoder"], shapes, CLIP_L["sd1"])
    elif family == "sd2":
        configs["text_encoder"] = _open_clip_config(configs["text_encoder"], shapes, OPEN_CLIP["sd2"], True)
    else:
        configs["text_encoder"] = _clip_config(configs["text_encoder"], shapes, CLIP_L["sdxl"])
        configs["text_encoder_2"] = _open_clip_config(configs["text_encoder_2"], shapes, OPEN_CLIP["sdxl"], False)
    return configs


def write_config_folder(folder: Path, configs: dict) -> Path:
    """A diffusers folder without weights (what `from_single_file(config=...)` reads)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(configs["pipeline"], indent=2))
    for name, config in configs.items():
        if name == "pipeline":
            continue
        (folder / name).mkdir(exist_ok=True)
        if name.startswith("tokenizer"):
            encoder = configs["text_encoder" + name[len("tokenizer"):]]
            write_clip_tokenizer(folder / name, config["pad_token"], encoder["max_position_embeddings"])
        else:
            filename = "scheduler_config.json" if name == "scheduler" else "config.json"
            (folder / name / filename).write_text(json.dumps(config, indent=2))
    return folder


# ---------------------------------------------------------------------------------------------
# CLIP's tokenizer files, built offline from the BPE vocabulary


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (CLIP's simple_tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_path() -> Path:
    """Where the installed `openai-clip` package keeps CLIP's BPE file (found, not imported:
    importing `clip` would import torchvision)."""
    spec = importlib.util.find_spec(CLIP_VOCAB_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        if (Path(folder) / CLIP_VOCAB_FILE).is_file():
            return Path(folder) / CLIP_VOCAB_FILE
    raise FileNotFoundError(
        f"CLIP's vocabulary ({CLIP_VOCAB_FILE}) was not found: it comes with the package "
        "openai-clip (pip install openai-clip==1.0.1, a dependency of tutorial-ldm)"
    )


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """(vocab, merges) of CLIP's tokenizer, built as CLIP's own simple_tokenizer builds them:
    256 byte characters, the same with `</w>` (end of word), one token per merge (48,894), then
    <|startoftext|> and <|endoftext|>: 49,408 tokens, identical to openai/clip-vit-large-patch14's
    vocab.json and merges.txt."""
    data = clip_vocab_path().read_bytes()
    if hashlib.sha256(data).hexdigest() != CLIP_VOCAB_SHA256:
        raise ValueError(f"{clip_vocab_path()} is not CLIP's vocabulary file (its SHA-256 differs)")
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path, pad_token: str, max_length: int = 77) -> Path:
    """vocab.json, merges.txt and the config of a CLIPTokenizer padding with `pad_token`
    (SD 1.x and SDXL's first encoder: <|endoftext|>; SD 2.x and SDXL's second: '!', id 0)."""
    vocab, merges = clip_vocabulary()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
         "do_lower_case": True, "errors": "replace", "add_prefix_space": False}))
    return folder
