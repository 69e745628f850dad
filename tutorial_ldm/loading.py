"""Loading a text-to-image pipeline: the shipped tiny model, a diffusers folder, a hub id, or a
single AUTOMATIC1111-style checkpoint file, safely.

Where checkpoints live (as in the web UI): put downloaded `.safetensors` files (or diffusers
folders) in `models/Stable-diffusion/` at the top of the course folder, or point the environment
variable `TUTORIAL_LDM_MODELS_DIR` at another folder. `list_models()` scans it, and a bare file
name given to `load_pipeline` is looked up there. See docs/checkpoints.md.

Safety: a `.safetensors` file holds only tensors and is read as such. A `.ckpt` is a Python
pickle, which can run arbitrary code when unpickled; it is read only through
`torch.load(weights_only=True)`, which accepts tensors and plain containers and refuses
anything else before any of it runs.
"""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

import torch

from .devices import default_device
from .paths import DEFAULT_MODELS_DIR, MODELS_DIR_ENV, REPO_ROOT, SHIPPED_MODEL, models_dir  # noqa: F401

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_EXPECTED = "a diffusers folder (with model_index.json), a .safetensors or .ckpt file, or a hub id"


def list_models(folder: str | os.PathLike | None = None) -> list[Path]:
    """Checkpoints in an A1111-style models folder, sorted by name (case-insensitive).

    Finds `.safetensors` and `.ckpt` files (also in subfolders, as the web UI does) and diffusers
    folders (a folder with model_index.json). A folder that does not exist holds no models.
    """
    root = models_dir(folder)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
            if not any((p / "model_index.json").is_file() for p in path.parents if root in p.parents):
                found.append(path)  # not a weights file inside a diffusers folder
        elif path.is_dir() and (path / "model_index.json").is_file():
            found.append(path)
    return sorted(found, key=lambda p: str(p.relative_to(root)).lower())


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores); fp32 elsewhere (CPUs are slow in fp16 and
    fp16 on MPS produces NaNs with some checkpoints)."""
    return torch.float16 if device.type == "cuda" else torch.float32


_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype {dtype!r} not supported; allowed: {', '.join(_DTYPES)} or the torch dtypes")


def _as_device(device) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cuda', 'mps' or 'cpu'") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        here = ", ".join(name for name, ok in available.items() if ok)
        raise ValueError(f"device {str(device)!r} is not available on this machine; available: {here}")
    return device


def resolve_source(source: str | os.PathLike | None) -> Path | str:
    """Where `source` points: a local Path, or a hub id (str). Raises FileNotFoundError."""
    if source is None:
        if not (SHIPPED_MODEL / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the shipped tiny model is missing: expected a diffusers folder at {SHIPPED_MODEL}"
            )
        return SHIPPED_MODEL
    path = Path(source).expanduser()
    if path.exists():
        return path
    in_models = models_dir() / path
    if not path.is_absolute() and in_models.exists():
        return in_models
    text = str(source)
    if _HUB_ID.fullmatch(text) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return text
    raise FileNotFoundError(
        f"no such file or folder: {path} (also looked in {models_dir()}); expected {_EXPECTED}"
    )


def check_safetensors(path: Path) -> None:
    """Read the header of a .safetensors file: it must be whole and contain tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            n = len(list(f.keys()))
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a valid .safetensors file ({e}); expected a complete safetensors "
            "checkpoint. Is the download truncated, or is it another format renamed?"
        ) from None
    if n == 0:
        raise ValueError(f"{path} holds no tensors; expected a Stable Diffusion checkpoint")


def load_ckpt_safely(path: Path) -> dict:
    """A .ckpt's state dict through `torch.load(weights_only=True)`: no code in it ever runs."""
    import zipfile

    try:
        # mmap (no copy in memory) works only for the zip format torch.save writes since 1.6
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # weights_only: whatever failed, nothing in the file has run
        # torch's message is long advice to load unsafely; keep only what it found
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if code:
            raise ValueError(
                f"refused to load {path}: unpickling it would call {code.group(1)}, and a checkpoint "
                "that runs code is not loaded. Expected tensors only (a state dict saved by "
                "torch.save); prefer .safetensors."
            ) from None
        opcode = re.search(r"Unsupported operand \d+", str(e))
        if opcode:
            raise ValueError(
                f"refused to load {path}: it is not a pickle of tensors that torch can read safely "
                f"({opcode.group(0)}). Expected a state dict saved by torch.save; prefer .safetensors."
            ) from None
        reason = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason}); expected a .ckpt state dict") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no tensors; expected a Stable Diffusion state dict")
    return state


def _from_folder(path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{path} is a folder without model_index.json; expected a diffusers pipeline folder "
            "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    # The safety checker is never run by generate(); loading it would only cost memory.
    return DiffusionPipeline.from_pretrained(path, dtype=dtype, safety_checker=None,
                                             requires_safety_checker=False)


def _from_hub(repo_id: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(repo_id, dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False)
    except Exception as e:  # connection, missing repo, gated repo, incomplete cache, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise OSError(
            f"{repo_id!r} is not a local file or folder and could not be fetched from the "
            f"Hugging Face Hub ({reason}). Offline? Download it where there is internet, e.g. "
            f"`hf download {repo_id} --local-dir models/Stable-diffusion/{repo_id.split('/')[-1]}`, "
            "and pass that folder; see docs/checkpoints.md"
        ) from e


def _from_single_file(path: Path, dtype: torch.dtype, config):
    from diffusers import StableDiffusionPipeline

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        check_safetensors(path)
    elif suffix == ".ckpt":
        load_ckpt_safely(path)  # refuses unsafe pickles; diffusers then reads it weights-only too
    else:
        raise ValueError(f"{path} has an unknown format {path.suffix!r}; expected {_EXPECTED}")
    kwargs = {}
    if config is not None:
        config = Path(config).expanduser()
        if not (config / "model_index.json").is_file():
            raise FileNotFoundError(
                f"config folder {config} has no model_index.json; expected a diffusers folder of "
                "the same architecture (configs and tokenizer are enough, weights are not needed)"
            )
        kwargs = dict(config=str(config), local_files_only=True)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, **kwargs)
    except Exception as e:  # diffusers raises many kinds here; all mean "not loadable as SD"
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        hint = ("" if config is not None else
                " Offline, pass config=<a local diffusers folder of the same architecture> "
                "(the --config option of the command line).")
        raise ValueError(f"could not load {path} as a Stable Diffusion checkpoint ({reason}).{hint}") from e
    pipe.register_to_config(_name_or_path=str(path))
    return pipe


@contextmanager
def _without_torchvision_notice():
    """Loading an SD pipeline makes diffusers look up CLIPImageProcessor (for the safety checker,
    which we never load) and transformers then warns that torchvision is missing: a red box in
    every first notebook cell that alarms students and means nothing here."""
    logger = logging.getLogger("transformers.utils.import_utils")

    def drop(record):
        return "requires torchvision" not in record.getMessage()

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_pipeline(source=None, *, device=None, dtype=None, low_vram: bool = False, config=None):
    """Load a Stable-Diffusion-architecture pipeline, ready for `tutorial_ldm.generate`.

    source: None (the shipped tiny model), a diffusers folder, a `.safetensors` / `.ckpt` file
        (A1111/civitai single-file checkpoint), a file or folder name inside the models folder
        (see `list_models`), or a Hugging Face hub id (needs internet, or the hub cache).
    device: "cuda", "mps", "cpu", ...; default: the best available.
    dtype: default fp16 on CUDA, fp32 elsewhere.
    low_vram: for ~6 GB cards: attention slicing, VAE slicing and tiling, and (on CUDA) model
        CPU offload: each of text encoder, UNet and VAE moves to the GPU only while it runs.
    config: for single files, a local diffusers folder of the same architecture whose configs
        and tokenizer are used instead of fetching them from the hub (offline loading).

    Errors name the path and what was expected: FileNotFoundError for a missing path,
    ValueError for a file or folder of the wrong format, OSError for an unreachable hub id.
    """
    device = _as_device(device)
    dtype = _as_dtype(dtype) if dtype is not None else default_dtype(device)
    where = resolve_source(source)
    with _without_torchvision_notice():
        if isinstance(where, str):
            pipe = _from_hub(where, dtype)
        elif where.is_dir():
            pipe = _from_folder(where, dtype)
        else:
            pipe = _from_single_file(where, dtype, config)
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if getattr(pipe, c, None) is None]
    if missing or hasattr(pipe, "text_encoder_2"):
        raise ValueError(
            f"{where} is a {type(pipe).__name__}; expected a Stable Diffusion 1.x/2.x-style "
            "pipeline (one text encoder, a UNet, a VAE)"
        )
    return configure_pipeline(pipe, device=device, low_vram=low_vram)


def configure_pipeline(pipe, *, device=None, low_vram: bool = False):
    """Put a pipeline on its device, with the memory savers of `low_vram` if asked.

    low_vram: attention slicing (attention computed a slice of heads at a time), VAE slicing
    (one image of a batch at a time) and tiling (large images in overlapping tiles), and on
    CUDA model CPU offload (accelerate moves each model to the GPU only while it runs).
    """
    device = _as_device(device)
    pipe.set_progress_bar_config(disable=True)
    if low_vram:
        pipe.enable_attention_slicing()
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    if low_vram and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


def model_name(pipe) -> str:
    """The name A1111 writes as `Model:`: a checkpoint's file name without suffix, a folder's
    name, or a hub id."""
    source = str(pipe.config.get("_name_or_path", "") or "")
    path = Path(source)
    if path.exists():
        return path.stem if path.is_file() else path.name
    return source
