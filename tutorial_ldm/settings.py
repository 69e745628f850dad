"""Generation settings: the one home of their defaults and of their validation.

    s = defaults_for(pipe)                        # what this model is best run with
    s = validate(replace(s, steps=30), pipe)      # a normalised copy, or SettingsError

`generate`, the command line and the studio all start from `defaults_for(pipe)` and check
through `validate`, so they agree for the same model. The defaults are A1111's for Stable
Diffusion (CFG 7, the model's native size) unless the model folder says otherwise: a
`generation_defaults.json` beside its `model_index.json` may recommend `steps`, `sampler` and
`guidance` (the shipped tiny model recommends CFG 2, and says why, in its own file).

Every refusal is a `SettingsError` (a ValueError) that names the field, the bad value and what
is allowed, in one line; its attributes let a UI say the same in its own language.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

MAX_SEED = 2**32 - 1  # A1111's seeds are unsigned 32-bit
MODEL_DEFAULTS_FILE = "generation_defaults.json"  # beside model_index.json
RECOMMENDABLE = ("steps", "sampler", "guidance")  # what a model folder may recommend
# Past this many times the model's native pixels per image, generation is refused on this kind
# of device (the UNet's cost grows with the pixels, its attention with their square: 4096×4096
# for the 64×64 tiny model is 4096× the pixels, hours of CPU). The studio's sliders stop at 4×
# the native side, 16× the pixels: always allowed, also on the CPU.
MAX_PIXEL_RATIO = {"cpu": 16}  # per device type; GPUs: DEFAULT_PIXEL_RATIO (SD 1.5 up to 4096×4096)
DEFAULT_PIXEL_RATIO = 64
# The image-to-image fields of GenerationSettings, each A1111's infotext key
IMAGE_FIELDS = {"strength": "Denoising strength", "mask_blur": "Mask blur", "hires_upscale": "Hires upscale",
                "hires_steps": "Hires steps", "hires_upscaler": "Hires upscaler",
                "hires_denoising": "Denoising strength"}
HIRES_DEFAULTS = {"hires_upscaler": "Latent", "hires_denoising": 0.7}  # A1111's
MAX_HIRES_UPSCALE = 4  # A1111's slider


class SettingsError(ValueError):
    """A setting generation cannot honour: `field` (e.g. "steps"), the bad `value`, and what is
    `allowed` (English, e.g. "an integer from 1 to 1000"). `limits` holds the numbers in
    `allowed` (e.g. {"min": 1, "max": 1000}) for a UI that words it in another language."""

    def __init__(self, field: str, value, allowed: str, *, limits: dict | None = None, note: str = ""):
        self.field, self.value, self.allowed = field, value, allowed
        self.limits, self.note = dict(limits or {}), note
        text = f"{field}={value!r} must be {allowed}"
        super().__init__(f"{text} ({note})" if note else text)


@dataclass
class GenerationSettings:
    """What `generate` needs to make an image again (our sampler names, A1111's field names).

    The field defaults are the generic ones (A1111's for Stable Diffusion); `defaults_for(pipe)`
    adds what a given model recommends and its native size."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 25
    sampler: str = "euler_a"  # our name; A1111's name ("Euler a") in the PNG
    guidance: float = 7.0  # "CFG scale"; A1111's default
    seed: int = -1  # -1: a random one, chosen when generating
    width: int | None = None  # None: the model's native size
    height: int | None = None
    model: str = ""
    # image to image (`tutorial_ldm.image_to_image`); None: not used, not written in the PNG
    strength: float | None = None  # img2img/inpaint "Denoising strength": 0 keeps the input, 1 ignores it
    mask_blur: int | None = None  # inpaint "Mask blur": pixels of Gaussian blur on the mask's edge
    hires_upscale: float | None = None  # txt2img hires fix "Hires upscale"; None: no hires fix
    hires_steps: int | None = None  # "Hires steps" of the second pass; None: the same as steps
    hires_upscaler: str | None = None  # "Hires upscaler": one of image_to_image.UPSCALERS
    hires_denoising: float | None = None  # the second pass's "Denoising strength"
    clip_skip: int = 1  # A1111's "Clip skip": 1 = the text encoder's last layer
    model_hash: str = ""  # A1111's short hash of the checkpoint file ("" when not from a file)
    vae: str = ""  # the separate VAE file's name ("": the checkpoint's own VAE)
    vae_hash: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # other A1111 fields, verbatim

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `tutorial_ldm.generate(pipe, **kwargs)` (the model, its hash and
        VAE are those of the pipeline, chosen when loading it); with a strength (and mask blur) they
        are those of `img2img(pipe, image, **kwargs)` (`inpaint(pipe, image, mask, …)`)."""
        kwargs = dict(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                      sampler=self.sampler, guidance=self.guidance, seed=self.seed,
                      width=self.width, height=self.height, clip_skip=self.clip_skip)
        return kwargs | {name: getattr(self, name) for name in IMAGE_FIELDS if getattr(self, name) is not None}

    def to_text(self) -> str:
        """The A1111 `parameters` text (`tutorial_ldm.parameters`)."""
        from .parameters import format_parameters

        return format_parameters(self)

    @classmethod
    def from_text(cls, text: str) -> GenerationSettings:
        """Parse a `parameters` text, ours or A1111's (extra fields land in `extra`)."""
        from .parameters import parse_parameters

        return parse_parameters(text, cls)


# ----------------------------------------------------------------------------- defaults


def model_folder_defaults(pipe) -> dict:
    """What the model's folder recommends in its generation_defaults.json ({} if none)."""
    source = Path(str(pipe.config.get("_name_or_path", "") or ""))
    path = source / MODEL_DEFAULTS_FILE
    if not source.is_dir() or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON ({e}); expected recommended settings such "
                         'as {"guidance": 5.0}') from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected a JSON object such as "
                         '{"guidance": 5.0}')
    return {key: data[key] for key in RECOMMENDABLE if key in data}


def defaults_for(pipe) -> GenerationSettings:
    """The settings `generate`, the CLI and the studio use for this model when not told otherwise."""
    from .autoencoder import native_size
    from .loading import model_name

    width, height = native_size(pipe)
    base = GenerationSettings(width=width, height=height, model=model_name(pipe), **model_fields(pipe))
    return validate(replace(base, **model_folder_defaults(pipe)), pipe)


def model_fields(pipe) -> dict:
    """What the infotext says of the loaded files: model_hash, vae, vae_hash ("" where none)."""
    from .loading import model_info

    info = model_info(pipe)
    return dict(model_hash=info.hash or "", vae=info.vae_name or "", vae_hash=info.vae_hash or "")


# ----------------------------------------------------------------------------- per-field checks


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_text(name: str, value) -> str:
    """A prompt, its line breaks as "\\n" (Windows' "\\r\\n" and old Macs' "\\r" become "\\n", as
    in the PNG text, so that the settings an image records are the ones it was made with)."""
    if not isinstance(value, str):
        raise SettingsError(name, value, "a string (A1111 prompt syntax; \"\" is allowed)")
    return value.replace("\r\n", "\n").replace("\r", "\n")


def check_steps(value, num_train_timesteps: int) -> int:
    if not _is_int(value) or not 1 <= value <= num_train_timesteps:
        raise SettingsError("steps", value, f"an integer from 1 to {num_train_timesteps} (the model's "
                            "training timesteps)", limits={"min": 1, "max": num_train_timesteps})
    return value


def check_guidance(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SettingsError("guidance", value, "a finite number ≥ 0 (CFG scale; ≤ 1 means no guidance)",
                            limits={"min": 0})
    return value


def check_batch_size(value) -> int:
    if not _is_int(value) or value < 1:
        raise SettingsError("batch_size", value, "an integer ≥ 1", limits={"min": 1})
    return value


def check_seed(value, batch_size: int = 1) -> int:
    top = MAX_SEED - batch_size + 1
    if not _is_int(value) or not (value == -1 or 0 <= value <= top):
        raise SettingsError("seed", value, f"-1 (random) or an integer from 0 to {top} (image k of a "
                            "batch uses seed + k, at most 2**32 - 1)", limits={"min": 0, "max": top})
    return value


def check_sampler(value) -> str:
    """Our name for a sampler given ours or A1111's ("Euler a" → "euler_a")."""
    from .samplers import A1111_NAMES, SAMPLERS, sampler_name

    try:
        return sampler_name(value)
    except (ValueError, TypeError):
        raise SettingsError("sampler", value, f"one of {', '.join(SAMPLERS)} or A1111's "
                            f"{', '.join(A1111_NAMES.values())}", limits={"choices": list(SAMPLERS)}) from None


def check_side(name: str, value, factor: int) -> int:
    if not _is_int(value) or value < factor or value % factor:
        raise SettingsError(name, value, f"a positive multiple of {factor} (the VAE's downsampling factor)",
                            limits={"multiple": factor})
    return value


def check_strength(value, name: str = "strength") -> float:
    """A denoising strength: 0 returns the input, 1 ignores it (A1111's and diffusers' meaning)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise SettingsError(name, value, "a number from 0 (keep the input) to 1 (ignore it)",
                            limits={"min": 0, "max": 1})
    return float(value)


def check_mask_blur(value) -> int:
    if not _is_int(value) or not 0 <= value <= 64:
        raise SettingsError("mask_blur", value, "an integer from 0 to 64 (pixels of blur on the mask's edge)",
                            limits={"min": 0, "max": 64})
    return value


def check_hires(s: GenerationSettings, factor: int) -> None:
    """The hires-fix fields of `s`, defaults filled in (A1111's), and the size it upscales to."""
    from .image_to_image import UPSCALERS

    if s.hires_upscale is None:
        for name in IMAGE_FIELDS:
            if name.startswith("hires_") and getattr(s, name) is not None:
                raise SettingsError(name, getattr(s, name), "None without hires_upscale (the hires fix is off)")
        return
    u = s.hires_upscale
    if isinstance(u, bool) or not isinstance(u, (int, float)) or not 1 <= u <= MAX_HIRES_UPSCALE:
        raise SettingsError("hires_upscale", u, f"a number from 1 to {MAX_HIRES_UPSCALE} (the factor "
                            "the first image is enlarged by)", limits={"min": 1, "max": MAX_HIRES_UPSCALE})
    for name, default in HIRES_DEFAULTS.items():
        setattr(s, name, default if getattr(s, name) is None else getattr(s, name))
    s.hires_steps = s.steps if s.hires_steps in (None, 0) else s.hires_steps  # A1111: 0 = the same
    if not _is_int(s.hires_steps) or not 1 <= s.hires_steps <= 1000:
        raise SettingsError("hires_steps", s.hires_steps, "an integer from 1 to 1000 (0 or None: as steps)",
                            limits={"min": 0, "max": 1000})
    if s.hires_upscaler not in UPSCALERS:
        raise SettingsError("hires_upscaler", s.hires_upscaler, f"one of {', '.join(UPSCALERS)}",
                            limits={"choices": list(UPSCALERS)})
    s.hires_denoising = check_strength(s.hires_denoising, "hires_denoising")
    for side, value in (("width", s.width), ("height", s.height)):
        if int(value * u) < factor:
            raise SettingsError("hires_upscale", u, f"a factor that makes the {side} at least {factor}")


def hires_size(s: GenerationSettings, factor: int) -> tuple[int, int]:
    """The hires fix's final size: width·upscale × height·upscale, down to multiples of the VAE
    factor (A1111 truncates the same way)."""
    return (int(s.width * s.hires_upscale) // factor * factor, int(s.height * s.hires_upscale) // factor * factor)


def check_clip_skip(value, pipe) -> int:
    """A1111's Clip skip: 1 (the last layer) … the text encoder's number of layers."""
    layers = pipe.text_encoder.config.num_hidden_layers
    if not _is_int(value) or not 1 <= value <= layers:
        raise SettingsError("clip_skip", value, f"an integer from 1 (the last layer) to {layers} (the "
                            "text encoder's layers; 2 = the penultimate)", limits={"min": 1, "max": layers})
    return value


def check_callback(value):
    if value is not None and not callable(value):
        raise SettingsError("callback", value, "None or a function callback(i, total, x, denoised)")
    return value


def check_device(pipe):
    """The device the pipeline computes on; the meta device (shapes without values) is refused."""
    device = pipe._execution_device
    if device.type == "meta":
        raise SettingsError("device", device.type, "a device that computes (cpu, cuda, mps): meta "
                            "tensors have shapes but no values")
    return device


def check_size(width: int, height: int, pipe, batch_size: int = 1, steps: int = 1) -> None:
    """Refuse a size far beyond the model's native one on this kind of device, before any work,
    with an estimate of what it would cost (`size_estimate`)."""
    from .autoencoder import native_size

    native_w, native_h = native_size(pipe)
    ratio = width * height / (native_w * native_h)
    kind = check_device(pipe).type
    limit = MAX_PIXEL_RATIO.get(kind, DEFAULT_PIXEL_RATIO)
    if ratio <= limit:
        return
    e = size_estimate(pipe, width, height, batch_size, steps)
    side = math.isqrt(limit)
    raise SettingsError(
        "size", f"{width}x{height}",
        f"at most {limit}× the model's native {native_w}×{native_h} pixels on {kind} "
        f"(e.g. {native_w * side}×{native_h * side})",
        limits={"max_ratio": limit, "native": (native_w, native_h)},
        note=f"{ratio:g}× the native pixels; estimated {e['attention_ratio']:.3g}× the attention work "
             f"of a native image, ≥ {e['gib']:.3g} GiB of activations and ≥ {_duration(e['seconds'])} "
             f"for {steps} step{'s' if steps != 1 else ''} here",
    )


def size_estimate(pipe, width: int, height: int, batch_size: int = 1, steps: int = 1) -> dict:
    """What generating at this size would cost, against the native size, as lower bounds.

    - pixel_ratio r: pixels per image over the native ones; convolutions cost ∝ r, self-attention
      over the latent cells ∝ r² (attention_ratio);
    - gib: the first level's feature maps (C₀ channels at the latent size, both halves of
      classifier-free guidance), of which a UNet block keeps about 8 alive at once;
    - seconds: one native-size UNet evaluation, timed now on this device, × r × steps × batch
      (the linear part alone: attention only adds to it).
    """
    from .autoencoder import native_size, vae_factor

    native_w, native_h = native_size(pipe)
    ratio = width * height / (native_w * native_h)
    f = vae_factor(pipe)
    cells = (width // f) * (height // f)
    unet = pipe.unet
    gib = 2 * batch_size * cells * unet.config.block_out_channels[0] * unet.dtype.itemsize * 8 / 2**30
    return {"pixel_ratio": ratio, "attention_ratio": ratio**2, "gib": gib,
            "seconds": _native_step_seconds(pipe) * ratio * steps * batch_size}


def _native_step_seconds(pipe) -> float:
    """Seconds of one UNet evaluation at the native size (batch 2: guidance's two halves), the
    faster of two."""
    import time

    import torch

    unet, device = pipe.unet, pipe._execution_device
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.zeros(2, unet.config.in_channels, h, w, device=device, dtype=unet.dtype)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim, device=device, dtype=unet.dtype)
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and 6 size numbers
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        added = {"text_embeds": context.new_zeros(2, pooled), "time_ids": context.new_zeros(2, 6)}
    seconds = []
    with torch.no_grad():
        for _ in range(2):  # the first call also pays one-off costs (allocation, kernel choice)
            start = time.perf_counter()
            unet(x, 500, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
    return min(seconds)


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


# ----------------------------------------------------------------------------- the validator


def validate(settings: GenerationSettings, pipe, *, batch_size: int = 1) -> GenerationSettings:
    """A checked, normalised copy of `settings` for `pipe`: our sampler name, the native size for
    a width/height of None, the model's name; raises SettingsError for the first bad field."""
    from .autoencoder import native_size, vae_factor
    from .loading import model_name

    if not isinstance(settings, GenerationSettings):
        raise SettingsError("settings", settings, "a GenerationSettings")
    s = replace(settings, extra=dict(settings.extra))
    s.prompt = check_text("prompt", s.prompt)
    s.negative_prompt = check_text("negative_prompt", s.negative_prompt)
    check_steps(s.steps, pipe.scheduler.config.num_train_timesteps)
    check_guidance(s.guidance)
    check_batch_size(batch_size)
    check_seed(s.seed, batch_size)
    s.sampler = check_sampler(s.sampler)
    native_w, native_h = native_size(pipe)
    s.width = native_w if s.width is None else s.width
    s.height = native_h if s.height is None else s.height
    check_side("width", s.width, vae_factor(pipe))
    check_side("height", s.height, vae_factor(pipe))
    check_size(s.width, s.height, pipe, batch_size, s.steps)
    if s.strength is not None:
        s.strength = check_strength(s.strength)
    if s.mask_blur is not None:
        check_mask_blur(s.mask_blur)
    check_hires(s, vae_factor(pipe))
    if s.hires_upscale is not None:
        check_size(*hires_size(s, vae_factor(pipe)), pipe, batch_size, s.hires_steps)
    check_clip_skip(s.clip_skip, pipe)
    s.model = s.model or model_name(pipe)
    return s
