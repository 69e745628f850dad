"""Loading a text-to-image pipeline: the shipped tiny model, a diffusers folder, a hub id, or a
single AUTOMATIC1111-style checkpoint file, safely.

Where checkpoints live (as in the web UI): put downloaded `.safetensors` files (or diffusers
folders) in `models/Stable-diffusion/` at the top of the course folder, or point the environment
variable `TUTORIAL_LDM_MODELS_DIR` at another folder. `list_models()` scans it, and a bare file
name given to `load_pipeline` is looked up there. See docs/checkpoints.md.

Offline: a single file needs nothing from the hub. Its architecture (SD 1.x, 2.x, XL,
inpainting) is read from its keys and shapes and its configs come with the package
(`tutorial_ldm.sd_architecture`, tutorial_ldm/configs/*.json). VAE files are found as A1111
finds them (`find_vae`); `pipe.model_info` records what was loaded, with A1111's short
`model_hash`.

Safety: a `.safetensors` file holds only tensors and is read as such. A `.ckpt` (or a folder's
`.bin`) is a Python pickle, which can run arbitrary code when unpickled; it is read only through
`torch.load(weights_only=True)`, which accepts tensors and plain containers and refuses
anything else before any of it runs. What a refused file would have called is read from its
pickle opcodes (`pickle_imports`), never by running it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import pickletools
import re
import tempfile
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .devices import default_device
from .paths import DEFAULT_MODELS_DIR, MODELS_DIR_ENV, REPO_ROOT, SHIPPED_MODEL, models_dir  # noqa: F401

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_DIR_ENV = "TUTORIAL_LDM_VAE_DIR"
CACHE_DIR_ENV = "TUTORIAL_LDM_CACHE"
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
SUPPORTED_DEVICES = ("cpu", "cuda", "mps")
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusionInpaintPipeline")
PREDICTION_TYPES = ("epsilon", "v_prediction")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_EXPECTED = "a diffusers folder (with model_index.json), a .safetensors or .ckpt file, or a hub id"


class ModelList(list):
    """`list_models`' answer: the checkpoints found, and in `skipped` the (path, reason) of every
    subfolder that could not be read."""

    def __init__(self, found=(), skipped=()):
        super().__init__(found)
        self.skipped: list[tuple[Path, str]] = list(skipped)


def _scan(root: Path, suffixes: tuple[str, ...], folders_count: bool) -> ModelList:
    """Files with `suffixes` below `root`, sorted by name (case-insensitive), and, where
    `folders_count`, diffusers folders (a folder with model_index.json: its weights files are
    not models of their own). Hidden entries are passed over. Symlinked subfolders are scanned
    too (A1111 users link model folders in), each real folder once, so a link loop ends. A
    subfolder that cannot be read is skipped and named in the result's `.skipped`."""
    found, skipped, seen = [], [], set()

    def scan(directory: Path) -> None:
        try:
            real = directory.resolve()
            if real in seen:
                return
            seen.add(real)
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop, on Python < 3.13
            skipped.append((directory, getattr(e, "strerror", None) or str(e)))
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():  # follows symlinks
                    if folders_count and (path / "model_index.json").is_file():
                        found.append(path)
                    else:
                        scan(path)
                elif entry.is_file() and path.suffix.lower() in suffixes:
                    found.append(path)
            except OSError as e:
                skipped.append((path, e.strerror or str(e)))

    if root.is_dir():
        scan(root)
    return ModelList(sorted(found, key=lambda p: str(p.relative_to(root)).lower()), skipped)


def list_models(folder: str | os.PathLike | None = None) -> ModelList:
    """Checkpoints in an A1111-style models folder, sorted by name (case-insensitive).

    Finds `.safetensors` and `.ckpt` files (also in subfolders, as the web UI does) and diffusers
    folders (a folder with model_index.json). A folder that does not exist holds no models.
    Symlinked subfolders are scanned too, each real folder once; a subfolder that cannot be read
    is skipped and named in the result's `.skipped`; the rest is still listed.
    """
    return _scan(models_dir(folder), CHECKPOINT_SUFFIXES, folders_count=True)


def vae_dir(folder: str | os.PathLike | None = None) -> Path:
    """The VAE folder, as A1111's models/VAE: `folder`, else $TUTORIAL_LDM_VAE_DIR, else VAE/
    beside the checkpoint folder."""
    if folder is not None:
        return Path(folder).expanduser()
    return Path(os.environ.get(VAE_DIR_ENV) or models_dir().parent / "VAE").expanduser()


def list_vaes(folder: str | os.PathLike | None = None) -> ModelList:
    """VAE files (.safetensors, .ckpt, .pt) in the VAE folder and its subfolders, sorted by name,
    scanned as `list_models` scans (symlinks followed, unreadable folders in `.skipped`)."""
    return _scan(vae_dir(folder), VAE_SUFFIXES, folders_count=False)


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
    allowed = "'cpu', 'cuda' (or 'cuda:N'), 'mps'"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; allowed: {allowed}") from None
    if parsed.type not in SUPPORTED_DEVICES:
        raise ValueError(f"device {str(parsed)!r} is not supported here; allowed: {allowed}")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[parsed.type]:
        here = ", ".join(name for name, ok in available.items() if ok)
        raise ValueError(f"device {str(parsed)!r} is not available on this machine; available: {here}")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(parsed)!r} is not available: this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return parsed


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


# ---------------------------------------------------------------------------------------------
# Reading files safely


def check_safetensors(path: Path) -> dict[str, tuple]:
    """Read the header of a .safetensors file: it must be whole and contain tensors.
    Returns each tensor's shape (nothing else is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(
            f"{path} is not a valid .safetensors file ({e}); expected a complete safetensors "
            "checkpoint. Is the download truncated, or is it another format renamed?"
        ) from None
    if not shapes:
        raise ValueError(f"{path} holds no tensors; expected a Stable Diffusion checkpoint")
    return shapes


def pickle_imports(path: Path) -> list[str]:
    """The callables a pickle-based file (.ckpt, .bin, .pt) names, read from its opcodes
    without running any of it (pickletools). torch.save's zip holds the pickle as */data.pkl;
    the legacy format and raw pickles are a few pickles in a row."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            streams = [io.BytesIO(z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
    else:
        with open(path, "rb") as f:
            streams = [io.BytesIO(f.read(64 * 2**20))]  # the pickles come before the tensor data
    names = []
    for stream in streams:
        for _ in range(5):  # legacy torch.save: magic, protocol, sys info, then the object
            strings, memo = [], {}
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST"):
                        names.append(arg.replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str) and ("UNICODE" in op.name or "STRING" in op.name):
                        strings.append(arg)
                    elif op.name == "MEMOIZE" and strings:
                        memo[len(memo)] = strings[-1]
                    elif op.name in ("PUT", "BINPUT", "LONG_BINPUT") and strings:
                        memo[arg] = strings[-1]
                    elif op.name in ("GET", "BINGET", "LONG_BINGET") and arg in memo:
                        strings.append(memo[arg])
            except Exception:  # the end of the pickles, or not a pickle at all
                break
    return list(dict.fromkeys(names))


def code_in_pickle(path: Path) -> list[str]:
    """The callables in a pickle that torch's weights-only loader does not allow: code."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # a private API: without it, anything outside torch counts
        allowed = None
    allowed_extra = {f"{f.__module__}.{f.__qualname__}" for f in torch.serialization.get_safe_globals()
                     if hasattr(f, "__qualname__")}
    return [n for n in pickle_imports(path)
            if not (n in allowed_extra or (n in allowed if allowed is not None else n.startswith("torch.")))]


def _refuse_pickle(path: Path) -> ValueError:
    """The error for a pickle that torch.load(weights_only=True) refused (pickle.UnpicklingError)."""
    code = code_in_pickle(path)
    if code:
        return ValueError(
            f"refused to load {path}: it contains code, not plain weights (unpickling it would "
            f"call {', '.join(code)}). Nothing in it was run. Use a .safetensors version of this model."
        )
    return ValueError(
        f"refused to load {path}: it is not a checkpoint of plain weights (not written by "
        "torch.save, damaged, or holding more than tensors). Expected a state dict saved by "
        "torch.save; prefer .safetensors."
    )


def load_ckpt_safely(path: Path) -> dict:
    """A .ckpt's state dict through `torch.load(weights_only=True)`: no code in it ever runs.

    torch refuses anything but tensors and plain containers with pickle.UnpicklingError; we
    match that type (not its wording, which changes between releases) and say what the file
    contains, read from its opcodes.
    """
    try:
        # mmap (no copy in memory) works only for the zip format torch.save writes since 1.6
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        raise _refuse_pickle(path) from None
    except Exception as e:  # damaged zip, truncated file, ...: nothing in the file has run
        first = (str(e).strip().splitlines() or [""])[0]
        reason = type(e).__name__ + ("" if "weights_only" in first else f": {first}")
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({reason}); "
                         "expected a .ckpt state dict saved by torch.save") from None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no tensors; expected a Stable Diffusion state dict")
    return state


def checkpoint_shapes(path: Path) -> dict[str, tuple]:
    """Each tensor's shape in a .safetensors or .ckpt file, read safely."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return check_safetensors(path)
    if suffix in (".ckpt", ".pt"):
        return {k: tuple(v.shape) for k, v in load_ckpt_safely(path).items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path} has an unknown format {path.suffix!r}; expected {_EXPECTED}")


# ---------------------------------------------------------------------------------------------
# What was loaded, and A1111's short hash


@dataclass
class ModelInfo:
    """What `load_pipeline` loaded, kept on the pipeline as `pipe.model_info`.

    architecture: 'sd1', 'sd2', 'sdxl', 'sd1-inpainting', 'sd2-inpainting', or 'tiny-ldm';
    name: A1111's `Model:` (file name without suffix, folder name, or hub id);
    path: the checkpoint file or folder (None for a hub id); prediction_type: 'epsilon' or
    'v_prediction', and prediction_source: how that was decided; vae_path: a separate VAE file
    (None: the checkpoint's own). `hash` and `vae_hash` are A1111's short hashes (computed on
    first use, then cached); `vae_name` is the VAE file's name as A1111 writes it.
    """

    architecture: str
    name: str
    path: Path | None = None
    prediction_type: str = "epsilon"
    prediction_source: str = "config"
    vae_path: Path | None = None

    @property
    def hash(self) -> str | None:
        return model_hash(self.path) if self.path is not None and self.path.is_file() else None

    @property
    def vae_name(self) -> str | None:
        return self.vae_path.name if self.vae_path is not None else None

    @property
    def vae_hash(self) -> str | None:
        return model_hash(self.vae_path) if self.vae_path is not None else None


_HASHES: dict[tuple, str] = {}


def cache_dir() -> Path:
    """Where small caches live: $TUTORIAL_LDM_CACHE, else $XDG_CACHE_HOME/tutorial_ldm, else
    ~/.cache/tutorial_ldm."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "tutorial_ldm"


def model_hash(path: str | os.PathLike) -> str:
    """A1111's short model hash: the first 10 hex digits of the file's SHA-256.

    Cached by absolute path, size and modification time, in memory and in
    <cache_dir>/hashes.json, so a 5 GB checkpoint is read once, not at every image.
    """
    from tqdm.auto import tqdm

    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _HASHES:
        return _HASHES[key]
    store = cache_dir() / "hashes.json"
    try:
        saved = json.loads(store.read_text())
    except (OSError, ValueError):
        saved = {}
    entry = saved.get(str(path))
    if isinstance(entry, dict) and [entry.get("size"), entry.get("mtime_ns")] == [stat.st_size, stat.st_mtime_ns]:
        _HASHES[key] = entry["sha256"][:10]
        return _HASHES[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=stat.st_size, unit="B", unit_scale=True, leave=False,
                                     desc=f"hashing {path.name}", disable=stat.st_size < 2**30) as bar:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
            bar.update(len(block))
    sha = digest.hexdigest()
    _HASHES[key] = sha[:10]
    saved[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    try:  # whole or absent: write a temporary file, then rename it over the old one
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(saved, indent=1))
        os.replace(tmp, store)
    except OSError:
        pass  # a read-only cache only costs hashing again next time
    return sha[:10]


def architecture_of(pipe) -> str:
    """'sdxl', 'sd1', 'sd2', '…-inpainting' or 'tiny-ldm', from a pipeline's components."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    unet = pipe.unet.config
    family = {768: "sd1", 1024: "sd2"}.get(unet.cross_attention_dim)
    if family is None or len(unet.block_out_channels) != 4 or unet.block_out_channels[0] < 320:
        return "tiny-ldm" if Path(str(pipe.config.get("_name_or_path", ""))) == SHIPPED_MODEL else "custom"
    return family + ("-inpainting" if unet.in_channels == 9 else "")


# ---------------------------------------------------------------------------------------------
# Loaders for each kind of source


def _check_folder(path: Path) -> None:
    """Refuse, before loading, a diffusers folder that cannot load safely: an unknown pipeline
    class, components from other libraries (code in the folder), weights missing, or pickled
    weights that carry code."""
    import diffusers
    import transformers

    index_file = path / "model_index.json"
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{index_file} is not readable JSON ({e}); expected a diffusers model index") from None
    name = index.get("_class_name") if isinstance(index, dict) else None
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.DiffusionPipeline)):
        raise ValueError(f"{index_file} names the pipeline class {name!r}, which diffusers "
                         f"{diffusers.__version__} does not have; expected one of {', '.join(SUPPORTED_PIPELINES)}")
    libraries = {"diffusers": diffusers, "transformers": transformers}
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        library, class_name = spec
        if library not in libraries:
            raise ValueError(f"{index_file}: component {component!r} comes from {library!r}; only "
                             "diffusers and transformers components are loaded (code shipped with a "
                             "model is never run)")
        component_cls = getattr(libraries[library], str(class_name), None)
        is_model = isinstance(component_cls, type) and (
            issubclass(component_cls, diffusers.ModelMixin) or issubclass(component_cls, transformers.PreTrainedModel))
        if not is_model:
            continue
        folder = path / component
        files = [p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
        if not files:
            expected = "diffusion_pytorch_model.safetensors" if library == "diffusers" else "model.safetensors"
            raise ValueError(f"{folder} has no weights: expected {folder / expected}")
        if not any(p.suffix == ".safetensors" for p in files):  # pickles are what will be read
            for pickled in (p for p in files if p.suffix == ".bin"):
                code = code_in_pickle(pickled)
                if code:
                    raise ValueError(f"refused to load {pickled}: it contains code, not plain weights "
                                     f"(unpickling it would call {', '.join(code)}). Nothing in it was run.")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _from_folder(path: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{path} is a folder without model_index.json; expected a diffusers pipeline folder "
            "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    _check_folder(path)
    try:  # The safety checker is never run by generate(); loading it would only cost memory.
        return DiffusionPipeline.from_pretrained(path, dtype=dtype, safety_checker=None,
                                                 requires_safety_checker=False)
    except pickle.UnpicklingError:
        raise ValueError(f"refused to load {path}: one of its weight files is not plain weights; "
                         "expected .safetensors files") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError) as e:
        raise ValueError(f"could not load the diffusers folder {path} ({_first_line(e)})") from None


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


def _prediction_type(path: Path, arch: str, shapes: dict, override) -> tuple[str | None, str]:
    """(prediction type, how it was decided) for a single file; (None, 'probe') when only
    running the UNet can tell (an SD 2.x file with no marker).

    In order: the `prediction_type=` argument; a `<name>.yaml` beside the file with
    `parameterization: "v"` (A1111's convention: SD 2.x 768-v ships v2-inference-v.yaml);
    a `v_pred` key in the file (how ComfyUI and v-prediction fine-tunes such as NoobAI mark
    it); then for SD 2.x A1111's test (`_predicts_v`); every other architecture is ε.
    """
    if override is not None:
        if override not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {override!r} not supported; allowed: {', '.join(PREDICTION_TYPES)}")
        return override, "argument"
    yaml_file = path.with_suffix(".yaml")
    if yaml_file.is_file():
        import yaml

        try:
            params = (yaml.safe_load(yaml_file.read_text()) or {})["model"]["params"]
        except (yaml.YAMLError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"{yaml_file} is not an LDM config (model.params missing: {e}); "
                             "remove it or fix it") from None
        return ("v_prediction" if params.get("parameterization") == "v" else "epsilon"), yaml_file.name
    if "v_pred" in shapes:
        return "v_prediction", "v_pred key"
    if arch == "sd2":
        return None, "probe"
    return "epsilon", "default"


@torch.no_grad()
def _predicts_v(unet, device) -> bool:
    """A1111's test for SD 2.x v-prediction (modules/sd_models_config.py): at t = 999, where
    z_t is almost pure noise, an ε-model predicts about z_t itself, so ε̂ − z_t ≈ 0; a v-model
    predicts v = α_t ε − σ_t x_0, which for a constant input z_t = 0.5 comes out well below
    it. A1111 calls it v when mean(out − z_t) < −1. Meaningful for trained weights only."""
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=unet.dtype, device=device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=unet.dtype, device=device)
    out = unet(x, torch.tensor([999], device=device), encoder_hidden_states=context).sample
    return (out.float() - x.float()).mean().item() < -1


def _set_prediction_type(pipe, prediction_type: str) -> None:
    if pipe.scheduler.config.prediction_type != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)


def _from_single_file(path: Path, dtype: torch.dtype, config, prediction_type) -> tuple:
    """(pipeline, ModelInfo) for an A1111/civitai single file, offline.

    Without `config=`, the diffusers configs come from the shipped JSON and the file's own
    shapes (`sd_architecture.configs_for`), the tokenizers from CLIP's vocabulary
    (`sd_architecture.write_clip_tokenizer`), written to a temporary folder that diffusers'
    own single-file conversion reads as its `config=`.
    """
    import diffusers

    from .sd_architecture import UnsupportedCheckpoint, configs_for, describe, write_config_folder

    shapes = checkpoint_shapes(path)
    try:
        arch = describe(shapes)
        configs = configs_for(arch, shapes) if config is None else None
    except UnsupportedCheckpoint as e:
        raise UnsupportedCheckpoint(f"{path} is not a model this package can load: it {e}") from None
    chosen, source = _prediction_type(path, arch, shapes, prediction_type)
    if config is not None and source in ("probe", "default"):  # no marker: the config folder decides
        chosen, source = None, "config folder"
    with tempfile.TemporaryDirectory(prefix="tutorial-ldm-config-") as tmp:
        if config is None:
            folder = write_config_folder(Path(tmp), configs)
        else:
            folder = Path(config).expanduser()
            if not (folder / "model_index.json").is_file():
                raise FileNotFoundError(
                    f"config folder {folder} has no model_index.json; expected a diffusers folder of "
                    "the same architecture (configs and tokenizer are enough, weights are not needed)"
                )
        pipeline_class = getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])
        try:
            pipe = pipeline_class.from_single_file(str(path), config=str(folder), local_files_only=True, dtype=dtype)
        except Exception as e:  # diffusers raises many kinds here; all mean "not loadable as SD"
            raise ValueError(f"could not load {path} as a Stable Diffusion checkpoint ({_first_line(e)})") from e
    if chosen is not None:
        _set_prediction_type(pipe, chosen)  # for "probe", load_pipeline decides on the device
    pipe.register_to_config(_name_or_path=str(path))
    info = ModelInfo(architecture=arch if config is None else architecture_of(pipe), name=path.stem,
                     path=path, prediction_type=pipe.scheduler.config.prediction_type, prediction_source=source)
    return pipe, info


def find_vae(vae, checkpoint: Path | None = None) -> Path | None:
    """The VAE file `vae` names, as A1111 resolves its VAE setting.

    "Automatic" (the default): `<checkpoint>.vae.safetensors` (or .vae.ckpt / .vae.pt) beside
    the checkpoint, or with that name in the VAE folder; else None. None or "None": the
    checkpoint's own VAE. Anything else: a path, or a file name in the VAE folder (`vae_dir`).
    """
    if vae is None or (isinstance(vae, str) and vae.lower() == "none"):
        return None
    if isinstance(vae, str) and vae.lower() in ("automatic", "auto"):
        if checkpoint is None or not checkpoint.is_file():
            return None
        stem = checkpoint.name[: -len(checkpoint.suffix)]
        for folder in (checkpoint.parent, vae_dir()):
            for suffix in VAE_SUFFIXES:
                candidate = folder / f"{stem}.vae{suffix}"
                if candidate.is_file():
                    return candidate
        return None
    path = Path(vae).expanduser()
    if path.is_file():
        return path
    if not path.is_absolute() and (vae_dir() / path).is_file():
        return vae_dir() / path
    raise FileNotFoundError(f"no such VAE file: {path} (also looked in {vae_dir()}); expected a "
                            "VAE .safetensors/.ckpt file, 'Automatic' or None")


def load_vae(path: Path, like, dtype: torch.dtype):
    """An AutoencoderKL with the config of `like` (the pipeline's VAE) and the weights of a VAE
    file: A1111 style (encoder.*/decoder.*, or inside a full checkpoint under
    first_stage_model.*) or diffusers style; diffusers' own conversion reads either."""
    from diffusers import AutoencoderKL

    shapes = checkpoint_shapes(path)
    if not any(k.split(".")[0] in ("encoder", "decoder") or k.startswith(("first_stage_model.encoder.", "vae.encoder."))
               for k in shapes):
        raise ValueError(f"{path} is not a VAE (it has no encoder.*/decoder.* weights); expected a VAE "
                         "file such as vae-ft-mse-840000-ema-pruned.safetensors")
    with tempfile.TemporaryDirectory(prefix="tutorial-ldm-vae-") as tmp:
        (Path(tmp) / "vae").mkdir()
        (Path(tmp) / "vae" / "config.json").write_text(json.dumps(dict(like.config)))
        try:
            vae = AutoencoderKL.from_single_file(str(path), config=tmp, subfolder="vae",
                                                 local_files_only=True, torch_dtype=dtype)
        except Exception as e:
            reason = _first_line(e).split(" If you want")[0]  # not diffusers' advice to load it anyway
            raise ValueError(f"could not load {path} as a VAE for this model ({reason}); expected a "
                             "VAE of the checkpoint's architecture") from e
    return vae.eval()


_NOISE = ("requires torchvision", "cannot run with `cpu` device", "should be kept in float32: []")


@contextmanager
def _quiet_loading():
    """Notices that mean nothing here: transformers' "requires torchvision" (diffusers looks
    up CLIPImageProcessor for the safety checker, which we never load: a red box in every first
    notebook cell), diffusers' float16-on-CPU warning, printed once per component (we say it
    once ourselves, in load_pipeline), and its note that no module needs float32. Also the
    libraries' per-component loading bars: a saved notebook shows them stuck at 0 %, and a UI
    says "Loading…" itself."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    bars = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in bars:
        lib.disable_progress_bar()
    loggers = [logging.getLogger("transformers.utils.import_utils"),
               logging.getLogger("diffusers.pipelines.pipeline_utils"),
               logging.getLogger("diffusers.models.modeling_utils")]

    def drop(record):
        message = record.getMessage()
        return not any(noise in message for noise in _NOISE)

    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
        for lib in bars:
            lib.enable_progress_bar()


def load_pipeline(source=None, *, device=None, dtype=None, low_vram: bool = False, config=None,
                  vae="Automatic", prediction_type: str | None = None):
    """Load a Stable Diffusion (1.x, 2.x, XL, inpainting) pipeline, ready for `tutorial_ldm.generate`.

    source: None (the shipped tiny model), a diffusers folder, a `.safetensors` / `.ckpt` file
        (A1111/civitai single-file checkpoint), a file or folder name inside the models folder
        (see `list_models`), or a Hugging Face hub id (needs internet, or the hub cache).
        A single file loads offline: its architecture is read from its keys and shapes.
    device: "cuda", "mps", "cpu", ...; default: the best available.
    dtype: default fp16 on CUDA, fp32 elsewhere.
    low_vram: for ~6 GB cards: attention slicing, VAE slicing and tiling, and (on CUDA) model
        CPU offload: each of text encoder, UNet and VAE moves to the GPU only while it runs.
    config: for single files, a local diffusers folder of the same architecture whose configs
        and tokenizer are used instead of the shipped ones (it wins).
    vae: "Automatic" (a `<checkpoint>.vae.safetensors` beside the file or in models/VAE, else
        the checkpoint's own), None (the checkpoint's own), or a VAE file (path or name in
        models/VAE; see `find_vae`).
    prediction_type: "epsilon" or "v_prediction" to override what is detected (SD 2.x 768-v
        models predict v; see `_prediction_type`).

    What was loaded is kept as `pipe.model_info` (a `ModelInfo`: architecture, name, hash,
    VAE name and hash, prediction type and how it was decided).

    Errors name the path and what was expected: FileNotFoundError for a missing path,
    ValueError for a file or folder of the wrong format, OSError for an unreachable hub id.
    """
    device = _as_device(device)
    dtype = _as_dtype(dtype) if dtype is not None else default_dtype(device)
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} not supported; allowed: {', '.join(PREDICTION_TYPES)}")
    if dtype == torch.float16 and device.type == "cpu":
        warnings.warn("float16 on the CPU works but is slower than float32 there (CPUs have few "
                      "float16 kernels); float32 is the CPU default", UserWarning, stacklevel=2)
    where = resolve_source(source)
    vae_path = find_vae(vae, where if isinstance(where, Path) else None)
    with _quiet_loading():
        if isinstance(where, Path) and where.is_file():
            pipe, info = _from_single_file(where, dtype, config, prediction_type)
        else:
            pipe = _from_hub(where, dtype) if isinstance(where, str) else _from_folder(where, dtype)
            if prediction_type is not None:
                _set_prediction_type(pipe, prediction_type)
            info = ModelInfo(architecture=architecture_of(pipe), name=model_name(pipe),
                             path=where if isinstance(where, Path) else None,
                             prediction_type=pipe.scheduler.config.prediction_type,
                             prediction_source="argument" if prediction_type else "scheduler config")
        if type(pipe).__name__ not in SUPPORTED_PIPELINES or any(
                getattr(pipe, c, None) is None for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")):
            raise ValueError(f"{where} is a {type(pipe).__name__}; expected one of {', '.join(SUPPORTED_PIPELINES)} "
                             "(text encoder(s), a UNet, a VAE)")
        if vae_path is not None:
            pipe.register_modules(vae=load_vae(vae_path, pipe.vae, dtype))
            info.vae_path = vae_path
        pipe.model_info = info
        pipe = configure_pipeline(pipe, device=device, low_vram=low_vram)
    if info.prediction_source == "probe":  # on the device: one UNet call on an 8×8 latent
        v = _predicts_v(pipe.unet, pipe._execution_device)
        _set_prediction_type(pipe, "v_prediction" if v else "epsilon")
        info.prediction_type, info.prediction_source = pipe.scheduler.config.prediction_type, "A1111's t=999 test"
    return pipe


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
    with _quiet_loading():
        if low_vram and device.type == "cuda":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    return pipe


def model_info(pipe) -> ModelInfo:
    """`pipe.model_info` (set by `load_pipeline`), or what the pipeline itself tells for one
    built another way (no file, so no hash)."""
    info = getattr(pipe, "model_info", None)
    if info is not None:
        return info
    return ModelInfo(architecture=architecture_of(pipe), name=model_name(pipe),
                     prediction_type=pipe.scheduler.config.prediction_type, prediction_source="scheduler config")


def model_name(pipe) -> str:
    """The name A1111 writes as `Model:`: a checkpoint's file name without suffix, a folder's
    name, or a hub id."""
    info = getattr(pipe, "model_info", None)
    if info is not None:
        return info.name
    source = str(pipe.config.get("_name_or_path", "") or "")
    path = Path(source)
    if path.exists():
        return path.stem if path.is_file() else path.name
    return source
