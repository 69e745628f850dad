"""The synthetic captioned world the tiny model is trained on.

Every image is 64×64 RGB with one axis-aligned shape, and its caption says exactly what is
drawn, so a generated picture can be checked against its prompt (see `tutorial_ldm.metrics`).

    caption = "a [small|large] <colour> <shape> <position> [on a <colour> background]"

Scenes are drawn deterministically from a seed: `sample_scenes(n, seed)` then `render(scene)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle")

# Saturated, clearly distinct hues (RGB 0..255).
COLOURS = {
    "red": (220, 30, 30),
    "orange": (245, 135, 15),
    "yellow": (240, 215, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 190),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (15, 15, 15), **COLOURS}
# Colours the shipped model never saw: drawn and read, but in no training caption (chapter 8
# teaches one to the model; `sample_scenes` never picks them). Pink, because the shipped
# autoencoder reconstructs it (cyan, lime or magenta it turns into blue, orange or purple).
UNSEEN_COLOURS = {"pink": (245, 120, 185)}

# Phrase -> centre of the shape in pixels (x, y), y pointing down.
POSITIONS = {
    "on the left": (16, 32),
    "on the right": (48, 32),
    "at the top": (32, 16),
    "at the bottom": (32, 48),
    "in the center": (32, 32),
}

# Size word ("" = unsaid) -> side of the shape's bounding box in pixels.
SIZES = {"small": 16, "": 24, "large": 32}

POSITION_JITTER = 3  # pixels; the shape's centre wanders this far from its anchor
WHITE_BACKGROUND_P = 0.5  # half the scenes have the unsaid white background


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    size: str = ""
    background: str = "white"
    dx: int = 0
    dy: int = 0

    @property
    def caption(self) -> str:
        words = ["a", self.size, self.colour, self.shape, self.position]
        if self.background != "white":
            words.append(f"on a {self.background} background")
        return " ".join(w for w in words if w)


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order."""
    words: list[str] = ["a", "small", "large", *SHAPES, *BACKGROUNDS, "background"]
    for phrase in POSITIONS:
        words += phrase.split()
    return list(dict.fromkeys(words))


def normalize_prompt(prompt: str) -> str:
    """Case-insensitive, spaces collapsed: the form captions are compared in."""
    return " ".join(prompt.lower().split())


def parse_caption(caption: str) -> Scene:
    """Read a caption of this world back into a `Scene` (the inverse of `Scene.caption`)."""
    colours = "|".join([*COLOURS, *UNSEEN_COLOURS])
    pattern = (
        rf"a (?:(?P<size>small|large) )?(?P<colour>{colours}) (?P<shape>{'|'.join(SHAPES)}) "
        rf"(?P<position>{'|'.join(POSITIONS)})"
        rf"(?: on a (?P<background>{'|'.join(BACKGROUNDS)}) background)?"
    )
    match = re.fullmatch(pattern, normalize_prompt(caption))
    if match is None:
        raise ValueError(
            f"caption {caption!r} is not of the form "
            "'a [small|large] <colour> <shape> <position> [on a <colour> background]'"
        )
    return Scene(
        shape=match["shape"],
        colour=match["colour"],
        position=match["position"],
        size=match["size"] or "",
        background=match["background"] or "white",
    )


def sample_scenes(n: int, seed: int) -> list[Scene]:
    """`n` random scenes, the same for the same seed."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        colour = str(rng.choice(list(COLOURS)))
        background = "white"
        if rng.random() >= WHITE_BACKGROUND_P:
            background = str(rng.choice([b for b in BACKGROUNDS if b not in ("white", colour)]))
        dx, dy = rng.integers(-POSITION_JITTER, POSITION_JITTER + 1, size=2)
        scenes.append(
            Scene(
                shape=str(rng.choice(SHAPES)),
                colour=colour,
                position=str(rng.choice(list(POSITIONS))),
                size=str(rng.choice(list(SIZES))),
                background=background,
                dx=int(dx),
                dy=int(dy),
            )
        )
    return scenes


def _shape_mask(shape: str, cx: float, cy: float, side: float, supersample: int = 4) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, anti-aliased by supersampling."""
    n = IMAGE_SIZE * supersample
    coords = (np.arange(n) + 0.5) / supersample
    x, y = np.meshgrid(coords, coords)
    half = side / 2
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    elif shape == "triangle":  # pointing up: apex at the top, base at the bottom
        rel_y = (y - (cy - half)) / side  # 0 at the apex, 1 at the base
        inside = (rel_y >= 0) & (rel_y <= 1) & (np.abs(x - cx) <= half * rel_y)
    else:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    return inside.reshape(IMAGE_SIZE, supersample, IMAGE_SIZE, supersample).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene as a uint8 array of shape (64, 64, 3)."""
    cx, cy = POSITIONS[scene.position]
    mask = _shape_mask(scene.shape, cx + scene.dx, cy + scene.dy, SIZES[scene.size])[..., None]
    fg = np.array({**COLOURS, **UNSEEN_COLOURS}[scene.colour], dtype=np.float32)
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    return np.round(mask * fg + (1 - mask) * bg).astype(np.uint8)


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Scenes as a float32 array (N, 3, 64, 64) in [-1, 1], the range the VAE works in."""
    images = np.stack([render(s) for s in scenes]).astype(np.float32)
    return images.transpose(0, 3, 1, 2) / 127.5 - 1.0
