"""Test helper: a tiny SD-1.5-architecture pipeline saved the way A1111/civitai ship checkpoints.

A single-file checkpoint stores the three models under the original CompVis LDM names
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`). This
helper renames a diffusers pipeline's state dicts back to those names, the inverse of
diffusers' `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` /
`convert_ldm_clip_checkpoint` (diffusers/loaders/single_file_utils.py), so that
`from_single_file` can be tested without downloading a real checkpoint.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(cfg) -> dict[str, str]:
    """diffusers module path -> LDM module path, for every block of the UNet."""
    per_level = cfg.layers_per_block + 1  # LDM counts the down/upsampler as a layer
    n = len(cfg.block_out_channels)
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
    for b in range(n):
        for j in range(cfg.layers_per_block):
            i = 1 + b * per_level + j
            names[f"down_blocks.{b}.resnets.{j}"] = f"input_blocks.{i}.0"
            names[f"down_blocks.{b}.attentions.{j}"] = f"input_blocks.{i}.1"
        if b < n - 1:
            names[f"down_blocks.{b}.downsamplers.0.conv"] = f"input_blocks.{1 + b * per_level + per_level - 1}.0.op"
        has_attention = "CrossAttn" in cfg.up_block_types[b]
        for j in range(per_level):
            i = b * per_level + j
            names[f"up_blocks.{b}.resnets.{j}"] = f"output_blocks.{i}.0"
            names[f"up_blocks.{b}.attentions.{j}"] = f"output_blocks.{i}.1"
        if b < n - 1:
            last = b * per_level + per_level - 1
            names[f"up_blocks.{b}.upsamplers.0.conv"] = f"output_blocks.{last}.{2 if has_attention else 1}.conv"
    return names


def _vae_prefixes(cfg) -> dict[str, str]:
    n = len(cfg.block_out_channels)
    names = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        names[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        names[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        names[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
    for i in range(n):
        names[f"encoder.down_blocks.{i}.resnets"] = f"encoder.down.{i}.block"
        names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        names[f"decoder.up_blocks.{i}.resnets"] = f"decoder.up.{n - 1 - i}.block"
        names[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    return names


def _rename(key: str, prefixes: dict[str, str]) -> tuple[str, str, str]:
    """(diffusers prefix, LDM prefix, rest) for the longest known prefix of `key`."""
    best = max((p for p in prefixes if key.startswith(p + ".")), key=len, default=None)
    if best is None:
        return "", "", key
    return best, prefixes[best], key[len(best) + 1:]


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefixes(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        old, new, rest = _rename(key, prefixes)
        if ".resnets." in old:
            first, _, tail = rest.partition(".")
            rest = f"{UNET_RESNET.get(first, first)}.{tail}"
        out["model.diffusion_model." + (f"{new}.{rest}" if new else rest)] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    prefixes = _vae_prefixes(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        old, new, rest = _rename(key, prefixes)
        if ".resnets" in old or ".mid_block.resnets." in old:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in old:
            module, _, param = rest.rpartition(".")
            rest = f"{VAE_ATTENTION.get(module, module)}.{param}"
            if value.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + (f"{new}.{rest}" if new else rest)] = value
    return out


def text_encoder_to_ldm(text_encoder, prefix="cond_stage_model.transformer.") -> dict[str, torch.Tensor]:
    """CLIP ViT-L/14 keeps transformers' names in a single file, under `prefix`."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + key] = value
    return out


OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def open_clip_to_ldm(text_encoder, prefix: str, extra_layer: bool = False) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under open_clip's names (the inverse of diffusers'
    `convert_open_clip_checkpoint`): q/k/v fused into attn.in_proj_*, the projection as a
    (width, dim) matrix. extra_layer: append one more (random) block, the last layer that SD 2.x
    has in its file but never runs (it reads the penultimate layer)."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    width = state["embeddings.token_embedding.weight"].shape[1]
    out = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
           "positional_embedding": state["embeddings.position_embedding.weight"],
           "ln_final.weight": state["final_layer_norm.weight"], "ln_final.bias": state["final_layer_norm.bias"],
           "text_projection": (state["text_projection.weight"].T if "text_projection.weight" in state
                               else torch.randn(width, width))}
    n = text_encoder.config.num_hidden_layers
    for i in range(n + extra_layer):
        layer = f"encoder.layers.{min(i, n - 1)}."
        block = f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[layer + f"self_attn.{x}_proj.{kind}"] for x in "qkv"]
            out[block + f"attn.in_proj_{kind}"] = torch.cat(qkv)
            for ours, theirs in OPEN_CLIP_LAYER.items():
                out[block + f"{theirs}.{kind}"] = state[layer + f"{ours}.{kind}"]
        if i == n:  # the unused last block: other numbers than the one it copies
            for key in [k for k in out if k.startswith(block)]:
                out[key] = torch.randn_like(out[key])
    return {prefix + k: v for k, v in out.items()}


def ldm_state_dict(pipe, arch: str = "sd1") -> dict[str, torch.Tensor]:
    """The pipeline's weights under A1111 single-file checkpoint names (contiguous copies).

    arch: 'sd1' (CLIP under cond_stage_model.transformer.*), 'sd2' (OpenCLIP under
    cond_stage_model.model.*, with the unused last layer) or 'sdxl' (CLIP and OpenCLIP under
    conditioner.embedders.0/1.*)."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if arch.startswith("sd1"):
        state.update(text_encoder_to_ldm(pipe.text_encoder))
    elif arch.startswith("sd2"):
        state.update(open_clip_to_ldm(pipe.text_encoder, "cond_stage_model.model.", extra_layer=True))
    else:
        state.update(text_encoder_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


# Each architecture's shipped configs, every width shrunk but every rule kept that a single file
# cannot show and the loader assumes: 32 groups per norm, SD 1.x's 8 UNet heads, 64 channels per
# head elsewhere (so widths are multiples of 64), the real CLIP vocabulary and 77 positions.
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
                 projection_dim=64)
# SDXL's second encoder must differ in width from the first: diffusers tells them apart by it
TINY_TEXT_2 = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                   projection_dim=128)
TINY = {
    "sd1": dict(unet=dict(block_out_channels=[32, 32, 64, 64], cross_attention_dim=64)),
    "sd2": dict(unet=dict(block_out_channels=[64, 64, 128, 128], attention_head_dim=[1, 1, 2, 2],
                          cross_attention_dim=64)),
    "sdxl": dict(unet=dict(block_out_channels=[64, 128, 128], attention_head_dim=[1, 2, 2],
                           transformer_layers_per_block=[1, 1, 2], cross_attention_dim=64 + 128,
                           projection_class_embeddings_input_dim=128 + 6 * 256)),
}
TINY_VAE = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1)


def build_tiny(arch: str, seed: int = 0, tiny: bool = True):
    """A random pipeline of architecture 'sd1', 'sd2', 'sdxl' or 'sd1-inpainting'
    ('sd2-inpainting'), from tutorial_ldm/configs/*.json with the widths of TINY (or, with
    tiny=False, full size: what bench/load_single_file.py saves)."""
    import diffusers
    import transformers

    from tutorial_ldm.sd_architecture import shipped_config, write_clip_tokenizer

    family, _, variant = arch.partition("-")
    configs = shipped_config(family)
    torch.manual_seed(seed)
    shrink = (lambda config, small: {**config, **small}) if tiny else (lambda config, small: dict(config))
    unet_config = {**shrink(configs["unet"], TINY[family]["unet"]), "in_channels": 9 if variant else 4}
    parts = {
        "unet": diffusers.UNet2DConditionModel.from_config(unet_config),
        "vae": diffusers.AutoencoderKL.from_config(shrink(configs["vae"], TINY_VAE)),
        "scheduler": getattr(diffusers, configs["scheduler"]["_class_name"]).from_config(configs["scheduler"]),
    }
    tmp = Path(tempfile.mkdtemp(prefix="tiny-tokenizer-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for suffix in ("", "_2") if family == "sdxl" else ("",):
        text = shrink(configs["text_encoder" + suffix], TINY_TEXT_2 if suffix else TINY_TEXT)
        cls = getattr(transformers, text["architectures"][0])
        parts["text_encoder" + suffix] = cls(transformers.CLIPTextConfig(**text))
        pad = configs["tokenizer" + suffix]["pad_token"]
        parts["tokenizer" + suffix] = transformers.CLIPTokenizer.from_pretrained(
            write_clip_tokenizer(tmp / ("tokenizer" + suffix), pad))
    pipeline = getattr(diffusers, "StableDiffusionInpaintPipeline" if variant else configs["pipeline"]["_class_name"])
    if family != "sdxl":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipeline(**parts)
    return pipe


# ---------------------------------------------------------------------------------------------
# Models shared by the test modules, built once per test session


@functools.lru_cache(maxsize=None)
def tiny_sd_files() -> SimpleNamespace:
    """A tiny SD-1.5-architecture pipeline on disk in every form a user may have it.

    folder: a diffusers folder; config: the same without weights (for offline single-file
    loading); single: an A1111 `.safetensors`; ckpt: the same as a `.ckpt` (a `state_dict`
    inside, as the original checkpoints have); pipe: the pipeline they all hold.
    """
    from safetensors.torch import save_file

    from tutorial_ldm.sd_architecture import build_sd15_pipeline

    root = Path(tempfile.mkdtemp(prefix="tiny-sd-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    pipe = build_sd15_pipeline(tiny=True, seed=0)
    pipe.save_pretrained(root / "diffusers")
    shutil.copytree(root / "diffusers", root / "config",
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    state = ldm_state_dict(pipe)
    save_file(state, root / "tiny-sd.safetensors")
    torch.save({"state_dict": state}, root / "tiny-sd.ckpt")
    return SimpleNamespace(folder=root / "diffusers", config=root / "config",
                           single=root / "tiny-sd.safetensors", ckpt=root / "tiny-sd.ckpt", pipe=pipe)


@functools.lru_cache(maxsize=None)
def tiny_single_file(arch: str) -> SimpleNamespace:
    """A tiny random model of `arch` saved as one A1111-layout .safetensors file.
    file: its path; pipe: the pipeline it holds (the reference to compare a loaded one with)."""
    from safetensors.torch import save_file

    root = Path(tempfile.mkdtemp(prefix=f"tiny-{arch}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    pipe = build_tiny(arch)
    path = root / f"tiny-{arch}.safetensors"
    save_file(ldm_state_dict(pipe, arch), path)
    return SimpleNamespace(file=path, pipe=pipe)


def a_vae_file(path, seed=1):
    """A different random VAE of the tiny SD 1.x architecture, saved as A1111's VAE files are
    (encoder.*, decoder.*, no prefix); returns its weights in diffusers' names."""
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(tiny_single_file("sd1").pipe.vae.config)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae).items()}, path)
    return vae.state_dict()


@functools.lru_cache(maxsize=None)
def shipped_pipe():
    """The shipped tiny LDM on the CPU (don't modify it in a test: load your own for that)."""
    from tutorial_ldm.loading import load_pipeline

    return load_pipeline(device="cpu")


@contextmanager
def nan_in_half_precision_decode(pipe):
    """The VAE decoder's last layer overflows to NaN as in float16, and only there (a forward hook,
    removed afterwards): the case the fp16 NaN guard re-decodes in float32."""
    def nan_when_half(module, inputs, output):
        return output if module.weight.dtype == torch.float32 else torch.full_like(output, math.nan)

    handle = pipe.vae.decoder.conv_out.register_forward_hook(nan_when_half)
    try:
        yield
    finally:
        handle.remove()
