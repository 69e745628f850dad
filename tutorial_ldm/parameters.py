"""An image's generation settings, stored in its PNG as AUTOMATIC1111 stores them.

The web UI writes a `parameters` text chunk into every PNG it saves:

    a red circle on the left
    Negative prompt: (worst quality:2), lowres
    Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: tiny-ldm

Line 1+ is the prompt (it may span lines), then the negative prompt, then one line of
`key: value` pairs; a value containing `,` `:` or a newline is written as a JSON string. We write
the same format and read ours or A1111's back (`read_parameters`), so an image can be
regenerated from its own file, and A1111 images' settings can be reused here.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

# one `key: value` pair of the last line; a value is a JSON string or runs to the next comma
_PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"


@dataclass
class GenerationSettings:
    """What `generate` needs to make an image again (our sampler names, A1111's field names)."""

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 25
    sampler: str = "euler_a"  # our name; A1111's name ("Euler a") in the PNG
    guidance: float = 7.5  # "CFG scale"
    seed: int = -1
    width: int | None = None
    height: int | None = None
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # other A1111 fields, verbatim

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `tutorial_ldm.generate(pipe, **kwargs)`."""
        return dict(prompt=self.prompt, negative_prompt=self.negative_prompt, steps=self.steps,
                    sampler=self.sampler, guidance=self.guidance, seed=self.seed,
                    width=self.width, height=self.height)

    def to_text(self) -> str:
        """The A1111 `parameters` text."""
        from .samplers import A1111_NAMES

        fields = {
            "Steps": self.steps,
            "Sampler": A1111_NAMES.get(self.sampler, self.sampler),
            "CFG scale": _number(self.guidance),
            "Seed": self.seed,
            "Size": f"{self.width}x{self.height}" if self.width and self.height else "",
            "Model": self.model,
            **self.extra,
        }
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"{_NEGATIVE} {self.negative_prompt}")
        lines.append(", ".join(f"{k}: {_quote(str(v))}" for k, v in fields.items() if v != ""))
        return "\n".join(lines)

    @classmethod
    def from_text(cls, text: str) -> GenerationSettings:
        """Parse a `parameters` text, ours or A1111's (extra fields land in `extra`)."""
        *lines, last = text.rstrip("\n").split("\n")
        pairs = _PAIR.findall(last)
        if len(pairs) < 3:  # A1111's rule: fewer than three pairs is still prompt
            lines, pairs = [*lines, last], []
        prompt, negative, in_negative = [], [], False
        for line in lines:
            if line.startswith(_NEGATIVE):
                in_negative, line = True, line[len(_NEGATIVE):].removeprefix(" ")
            (negative if in_negative else prompt).append(line)

        values = {key.strip(): _unquote(value.strip()) for key, value in pairs}
        settings = cls(prompt="\n".join(prompt), negative_prompt="\n".join(negative), extra={})
        for key, value in values.items():
            if key == "Steps":
                settings.steps = _parse(int, key, value)
            elif key == "CFG scale":
                settings.guidance = _parse(float, key, value)
            elif key == "Seed":
                settings.seed = _parse(int, key, value)
            elif key == "Size":
                w, _, h = value.partition("x")
                settings.width, settings.height = _parse(int, key, w), _parse(int, key, h)
            elif key == "Model":
                settings.model = value
            elif key != "Sampler":
                settings.extra[key] = value
        if "Sampler" in values:
            settings.sampler = _our_sampler(values["Sampler"], settings.extra)
        return settings


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


def _parse(kind, key: str, value: str):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"parameters field {key!r} has the value {value!r}, not a {kind.__name__}") from None


def _our_sampler(a1111: str, extra: dict[str, str]) -> str:
    """A1111's sampler name → ours; since A1111 1.9 "Karras" is a separate `Schedule type`."""
    from .samplers import FROM_A1111

    if extra.get("Schedule type") == "Karras" and f"{a1111} Karras" in FROM_A1111:
        del extra["Schedule type"]
        return FROM_A1111[f"{a1111} Karras"]
    if extra.get("Schedule type") == "Automatic":
        del extra["Schedule type"]
    return FROM_A1111.get(a1111, a1111)  # unknown ones are kept; generate() will name them


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
    return GenerationSettings.from_text(text)


def save_image(image, path) -> Path:
    """Save as PNG with the image's `parameters` chunk, atomically (no half-written file)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: images are saved as .png (the settings live in a PNG text chunk)")
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    if "parameters" in image.info:
        info.add_text("parameters", image.info["parameters"])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
