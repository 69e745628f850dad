"""An image's generation settings, stored in its PNG as AUTOMATIC1111 stores them.

The web UI writes a `parameters` text chunk into every PNG it saves:

    a red circle on the left
    Negative prompt: (worst quality:2), lowres
    Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512,
    Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: tutorial-ldm 0.1.0

Line 1+ is the prompt (it may span lines), then the negative prompt, then one line of
`key: value` pairs (one line; wrapped here), in A1111's order (`A1111_ORDER`); a value containing
`,` `:` or a newline is written as a JSON string. We write the same format and read ours or
A1111's back (`read_parameters`: old sampler names such as `DPM++ 2M Karras` and the newer
`Sampler` + `Schedule type` pair), so an image can be regenerated from its own file, and A1111
images' settings can be reused here; fields we do not use (LoRA hashes, …) are kept
in `extra` and written back where A1111 writes them.

Two things A1111's format cannot say, and how we say them: a prompt line that itself begins with
`Negative prompt:` is written with one more leading backslash (`\\Negative prompt: …`; a line
of backslashes and the marker gets one more, and reading takes one off), so it cannot be taken for
the marker; and line breaks are `\\n` only (`\\r\\n` and `\\r` are read, and generated, as `\\n`).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path

from . import __version__
from .settings import GenerationSettings

# one `key: value` pair of the last line; a value is a JSON string or runs to the next comma
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"
_ESCAPED = re.compile(r"^(\\*Negative prompt:)")  # a line the reader would take for the marker
_ESCAPED_BACK = re.compile(r"^\\(\\*Negative prompt:)")


# The fields of A1111's infotext in the order its `create_infotext` writes them (modules/processing.py,
# v1.10). Those we make are filled from the settings, the others are written from `extra` where A1111
# would put them: its own at their place, then its `extra_generation_params` (inpainting's Mask blur,
# the hires fix's, the extensions') after Tiling in the order they were read (ours first when the
# text is new: A1111 adds them in the order of `_IMAGE_KEYS`); then Version and User.
A1111_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
               "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
               "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
               "Conditional mask weight", "Clip skip", "ENSD", "Tiling")
A1111_TAIL = ("Version", "User")
VERSION = f"tutorial-ldm {__version__}"


def format_parameters(s: GenerationSettings) -> str:
    """The A1111 `parameters` text of settings `s` (`GenerationSettings.to_text`)."""
    lines = _escape(s.prompt)
    if s.negative_prompt:
        first, *rest = _escape(s.negative_prompt)
        lines += [f"{_NEGATIVE} {first}", *rest]
    lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in _fields(s).items() if v != ""))
    return "\n".join(lines)


def _fields(s: GenerationSettings) -> dict:
    """The `key: value` pairs of the last line, in A1111's order ("" values are left out)."""
    ours = {
        "Steps": s.steps,
        **_a1111_sampler(s.sampler),
        "CFG scale": _number(s.guidance),
        "Seed": s.seed,
        "Size": f"{s.width}x{s.height}" if s.width and s.height else "",
        "Model hash": s.model_hash,
        "Model": s.model,
        "VAE hash": s.vae_hash,
        "VAE": s.vae,
        "Clip skip": s.clip_skip if s.clip_skip != 1 else "",
    }
    image = _image_fields(s)  # always the settings' own; `extra` only says where a read text had them
    known = {k: image.get(k, "") if k in _IMAGE_KEYS else s.extra.get(k, ours.get(k, "")) for k in A1111_ORDER}
    read = [k for k in s.extra if k not in A1111_ORDER and k not in A1111_TAIL]
    new = [k for k in _IMAGE_KEYS if k not in A1111_ORDER and k not in read]
    added = {k: image.get(k, "") if k in _IMAGE_KEYS else s.extra[k] for k in new + read}
    tail = {"Version": s.extra.get("Version", VERSION), "User": s.extra.get("User", "")}
    return {**known, **added, **tail}


def _a1111_sampler(ours: str) -> dict:
    """A1111 ≥ 1.9's pair: `Sampler` without the schedule, and `Schedule type`."""
    from .samplers import A1111_NAMES, REGISTRY

    record = REGISTRY.get(ours)
    if record is None:  # an unknown name read from a file is written back as it was
        return {"Sampler": A1111_NAMES.get(ours, ours)}
    if record.sigmas == "karras":
        return {"Sampler": record.a1111.removesuffix(" Karras"), "Schedule type": "Karras"}
    return {"Sampler": record.a1111, "Schedule type": "Automatic"}


def parse_parameters(text: str, cls=None) -> GenerationSettings:
    """Parse a `parameters` text, ours or A1111's (extra fields land in `extra`, in their order,
    and are written back where A1111 writes them)."""
    cls = cls or GenerationSettings
    *lines, last = _newlines(text).rstrip("\n").split("\n")
    pairs = _PAIR.findall(last)
    if len(pairs) < 3:  # A1111's rule: fewer than three pairs is still prompt
        lines, pairs = [*lines, last], []
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith(_NEGATIVE) and not in_negative:
            in_negative, line = True, line[len(_NEGATIVE):].removeprefix(" ")
        (negative if in_negative else prompt).append(_unescape(line))

    values = {key.strip(): _unquote(value.strip()) for key, value in pairs}
    settings = cls(prompt="\n".join(prompt), negative_prompt="\n".join(negative), extra={})
    for key, value in values.items():
        if key in _READERS:
            _READERS[key](settings, key, value)
        elif key == "Version" and value == VERSION:
            pass  # ours: written again anyway; another program's (or version's) is kept
        elif key != "Sampler":
            settings.extra[key] = value
    if "Sampler" in values:
        settings.sampler = _our_sampler(values["Sampler"], settings.extra)
    _read_image_fields(settings, values)  # their keys stay in `extra` too, for their place in the text
    return settings


# The image-to-image fields (`tutorial_ldm.image_to_image`), written as A1111 writes them: img2img
# and inpaint record "Denoising strength" (and "Mask blur"); a txt2img with hires fix records its
# second pass's "Denoising strength" beside "Hires upscale", "Hires steps" and "Hires upscaler".
_IMAGE_KEYS = {"Denoising strength": float, "Mask blur": int, "Hires upscale": float, "Hires steps": int,
               "Hires upscaler": str}


def _image_fields(s: GenerationSettings) -> dict:
    from .settings import IMAGE_FIELDS

    fields = {}
    for name, key in IMAGE_FIELDS.items():
        value = getattr(s, name)
        if value is not None:
            fields[key] = _number(float(value)) if isinstance(value, float) else value
    return fields


def _read_image_fields(settings: GenerationSettings, values: dict[str, str]) -> None:
    from .settings import IMAGE_FIELDS

    hires = "Hires upscale" in values
    for name, key in IMAGE_FIELDS.items():
        if key in values and (key != "Denoising strength" or hires == (name == "hires_denoising")):
            kind = _IMAGE_KEYS[key]
            setattr(settings, name, _parse(kind, key, values[key], "a number") if kind is not str else values[key])


def _read_size(settings, key, value):
    size = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", value)
    if size is None:
        raise ValueError(f"parameters field 'Size' has the value {value!r}; expected "
                         "WIDTHxHEIGHT, e.g. 512x512")
    settings.width, settings.height = int(size.group(1)), int(size.group(2))


def _setter(name: str, kind=str, expected: str = ""):
    def read(settings, key, value):
        setattr(settings, name, value if kind is str else _parse(kind, key, value, expected))
    return read


# the fields `generate` uses, and the settings attribute each sets
_READERS = {
    "Steps": _setter("steps", int, "an integer"),
    "CFG scale": _setter("guidance", float, "a number"),
    "Seed": _setter("seed", int, "an integer"),
    "Size": _read_size,
    "Model": _setter("model"),
    "Model hash": _setter("model_hash"),
    "VAE": _setter("vae"),
    "VAE hash": _setter("vae_hash"),
    "Clip skip": _setter("clip_skip", int, "an integer"),
}


def _newlines(text: str) -> str:
    """Windows' \\r\\n and old Macs' \\r read as \\n: no stray \\r in a prompt or a value."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _escape(text: str) -> list[str]:
    """The lines of a prompt, each line that would read as the negative-prompt marker escaped.

    A1111 cannot tell a prompt line that begins with "Negative prompt:" from the marker itself.
    We write such a line with one more leading backslash ("\\Negative prompt: …", and
    "\\\\Negative prompt:" for one that already had one), and read one backslash off again."""
    return [_ESCAPED.sub(r"\\\1", line) for line in _newlines(text).split("\n")]


def _unescape(line: str) -> str:
    return _ESCAPED_BACK.sub(r"\1", line)


def _number(x: float) -> int | float:
    """7.0 → 7 (as A1111 writes it), 7.5 → 7.5; repr keeps every digit of a float."""
    return int(x) if isinstance(x, float) and math.isfinite(x) and x.is_integer() else x


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return value


def _parse(kind, key: str, value: str, expected: str):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"parameters field {key!r} has the value {value!r}; expected {expected}") from None


def _our_sampler(a1111: str, extra: dict[str, str]) -> str:
    """A1111's sampler name → ours; since A1111 1.9 the schedule is a separate `Schedule type`
    ("Automatic": the sampler's own). A pair we do not have (e.g. Euler with Karras σ's) keeps
    both names ("Euler Karras"), which `generate` refuses, naming the samplers it has."""
    from .samplers import FROM_A1111

    schedule = extra.pop("Schedule type", "Automatic")
    name = a1111 if schedule == "Automatic" else f"{a1111} {schedule}"
    return FROM_A1111.get(name, name)  # unknown ones are kept; generate() will name them


def read_parameters(png) -> GenerationSettings:
    """The settings in a PNG's `parameters` chunk: a path or an already opened PIL image."""
    from PIL import Image

    if isinstance(png, Image.Image):
        text = png.info.get("parameters")
        where = "this image"
    else:
        where = str(png)
        if not Path(png).is_file():
            raise FileNotFoundError(f"no such image: {png}")
        with Image.open(png) as image:
            text = image.info.get("parameters")
    if not isinstance(text, str):
        raise ValueError(f"{where} has no 'parameters' text chunk (not saved by tutorial-ldm or A1111?)")
    return parse_parameters(text)


def save_image(image, path, *, overwrite: bool = True) -> Path:
    """Save as PNG with the image's `parameters` chunk, atomically (no half-written file).

    The file gets the permissions any new file gets (0666 less the umask, as `open` gives).
    overwrite=False refuses an existing path with FileExistsError, also one that appears while
    the image is written (the finished file is linked in, which fails if the name is taken)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: images are saved as .png (the settings live in a PNG text chunk)")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; not overwriting it (choose another name, or allow overwriting)")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if "parameters" in image.info:
        info.add_text("parameters", image.info["parameters"])
    tmp, fd = _new_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} exists; not overwriting it") from None
            os.unlink(tmp)
    except BaseException:
        if tmp.exists():
            os.unlink(tmp)
        raise
    return path


def _new_temporary(path: Path) -> tuple[Path, int]:
    """A new hidden file beside `path`, created as `open` would create it (mode 0666 & ~umask;
    tempfile.mkstemp would make it 0600, private to its owner)."""
    while True:
        tmp = path.with_name(f".{path.stem}-{secrets.token_hex(4)}.png")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
