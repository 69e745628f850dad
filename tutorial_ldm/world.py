"""The synthetic captioned world the tiny model is trained on.

Every image is 64×64 RGB with one axis-aligned shape, and its caption says exactly what is
drawn, so a generated picture can be checked against its prompt (see `tutorial_ldm.metrics`).
Captions come in English and in Chinese:

    caption    = "a [small|large] <colour> <shape> <position> [on a <colour> background]"
    caption_zh = "[在]<位置>有一个[大的|小的]<颜色>[的]<形状>[，<颜色>背景]"   ("的" optional anywhere)

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

# The same words in Chinese; where there are several, the first is the canonical one.
COLOURS_ZH = {"red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色",
              "purple": "紫色"}
BACKGROUNDS_ZH = {"white": "白色", "black": "黑色", **COLOURS_ZH}
SHAPES_ZH = {"circle": ("圆形",), "square": ("正方形", "方形"), "triangle": ("三角形",)}
POSITIONS_ZH = {"on the left": ("左边", "左侧"), "on the right": ("右边", "右侧"),
                "at the top": ("上边", "上面"), "at the bottom": ("下边", "下面"),
                "in the center": ("中间",)}
SIZES_ZH = {"small": "小", "": "", "large": "大"}
ZH_GLUE = ("在", "有", "一个", "的", "，", "背景")  # the words of the two sentence forms

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

    @property
    def caption_zh(self) -> str:
        """The canonical Chinese caption: "<位置>有一个[大的|小的]<颜色>的<形状>[，<颜色>背景]"."""
        return chinese_caption(self)


def chinese_caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The scene in Chinese. Without `rng`, the canonical caption; with it, one of the variants a
    person writes: either sentence form, the synonyms (方形, 左侧, 上面 …), "的" sometimes left out."""

    def pick(options):
        return options[0] if rng is None else options[int(rng.integers(len(options)))]

    def de(canonical: bool) -> str:  # the optional "的": 7 times in 10 in the variants
        return ("的" if canonical else "") if rng is None else "的" * (rng.random() < 0.7)

    size = SIZES_ZH[scene.size] + de(True) if scene.size else ""
    text = (pick(("", "在")) + pick(POSITIONS_ZH[scene.position]) + "有一个" + size
            + COLOURS_ZH[scene.colour] + de(True) + pick(SHAPES_ZH[scene.shape]))
    if scene.background != "white":
        text += "，" + BACKGROUNDS_ZH[scene.background] + de(False) + "背景"
    return text


def chinese_captions(captions: list[str], seed: int) -> list[str]:
    """One Chinese variant (`chinese_caption`) for each English caption, the same for the same seed."""
    rng = np.random.default_rng([seed, 86])  # 86: the telephone code of China, a stream of its own
    return [chinese_caption(parse_caption(c), rng) for c in captions]


def translations() -> dict[str, str]:
    """Each Chinese content word → the English word it translates (左边 → left, 大 → large,
    背景 → background); the glue words of the sentence forms (在 有 一个 的 ，) have none."""
    pairs = [(zh, en) for table in (BACKGROUNDS_ZH, SHAPES_ZH, SIZES_ZH) for en, entry in table.items()
             for zh in _words(entry) if zh]
    pairs += [(zh, phrase.split()[-1]) for phrase, entry in POSITIONS_ZH.items() for zh in entry]
    return dict(pairs + [("背景", "background")])


def vocabulary(languages: tuple[str, ...] = ("en",)) -> list[str]:
    """Every word a caption can contain, in a fixed order: English first, then (with "zh") the
    Chinese words, so that adding Chinese keeps every English word's index."""
    words: list[str] = ["a", "small", "large", *SHAPES, *BACKGROUNDS, "background"]
    for phrase in POSITIONS:
        words += phrase.split()
    if "zh" in languages:
        words += [*BACKGROUNDS_ZH.values(), *sum(SHAPES_ZH.values(), ()),
                  *sum(POSITIONS_ZH.values(), ()), "大", "小", *ZH_GLUE]
    return list(dict.fromkeys(words))


def normalize_prompt(prompt: str) -> str:
    """Case-insensitive, spaces collapsed (removed around Chinese): the form captions are
    compared in."""
    text = " ".join(prompt.lower().split())
    return re.sub(r"\s*([\u3000-\u9fff\uff00-\uffef])\s*", r"\1", text)


def _words(entry) -> tuple[str, ...]:
    return entry if isinstance(entry, tuple) else (entry,)


def _parse_chinese(text: str) -> re.Match | None:
    def named(group, table):  # one named alternation of the table's words, longest first
        words = sorted((w for entry in table.values() for w in _words(entry)), key=len, reverse=True)
        return rf"(?P<{group}>{'|'.join(words)})"

    pattern = (rf"在?{named('position', POSITIONS_ZH)}有一个(?:(?P<size>[大小])的?)?"
               rf"{named('colour', COLOURS_ZH)}的?{named('shape', SHAPES_ZH)}"
               rf"(?:[，,]{named('background', BACKGROUNDS_ZH)}的?背景)?")
    return re.fullmatch(pattern, text)


def _english_key(table: dict, word: str | None) -> str | None:
    """The English key of a Chinese word in one of the *_ZH tables."""
    return next((k for k, entry in table.items() if word in _words(entry)), None)


def parse_caption(caption: str) -> Scene:
    """Read a caption of this world, English or Chinese, back into a `Scene` (the inverse of
    `Scene.caption` and `chinese_caption`)."""
    text = normalize_prompt(caption)
    if re.search(r"[\u4e00-\u9fff]", text):
        match = _parse_chinese(text)
        if match is None:
            raise ValueError(
                f"caption {caption!r} is not of the form "
                "'[在]<位置>有一个[大的|小的]<颜色>[的]<形状>[，<颜色>背景]'"
            )
        return Scene(
            shape=_english_key(SHAPES_ZH, match["shape"]),
            colour=_english_key(COLOURS_ZH, match["colour"]),
            position=_english_key(POSITIONS_ZH, match["position"]),
            size={"大": "large", "小": "small"}.get(match["size"], ""),
            background=_english_key(BACKGROUNDS_ZH, match["background"]) or "white",
        )
    colours = "|".join([*COLOURS, *UNSEEN_COLOURS])
    pattern = (
        rf"a (?:(?P<size>small|large) )?(?P<colour>{colours}) (?P<shape>{'|'.join(SHAPES)}) "
        rf"(?P<position>{'|'.join(POSITIONS)})"
        rf"(?: on a (?P<background>{'|'.join(BACKGROUNDS)}) background)?"
    )
    match = re.fullmatch(pattern, text)
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
