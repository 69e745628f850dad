"""Prompt adherence: read an image of the world back into words and compare with its prompt.

`analyze` finds the background (the median colour of the border), the shape (the largest blob of
pixels closer to the shape's colour than to the background's) and then reads each attribute the
caption can state: colour by nearest palette entry, position by the nearest anchor, size by the
blob's extent and shape by how much of its bounding box it fills (square 1, circle π/4,
triangle 1/2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import world

# Fill ratio (blob area / bounding-box area) between the three shapes' ideals 1/2, π/4 and 1.
TRIANGLE_BELOW = 0.64
SQUARE_ABOVE = 0.89
MIN_BLOB_PIXELS = 12  # anything smaller is speckle, not a shape


@dataclass(frozen=True)
class Reading:
    """What an image shows, in the caption's words; None where no shape was found."""

    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    background: str


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], float) - rgb, axis=1)
    return names[int(distances.argmin())]


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    from skimage.measure import label

    labels = label(mask, connectivity=1)
    if labels.max() == 0:
        return mask
    counts = np.bincount(labels.ravel())[1:]
    return labels == counts.argmax() + 1


def _classify_shape(blob: np.ndarray) -> str:
    ys, xs = np.nonzero(blob)
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    fill = blob.sum() / box
    if fill < TRIANGLE_BELOW:
        return "triangle"
    return "square" if fill > SQUARE_ABOVE else "circle"


def _classify_size(blob: np.ndarray) -> str:
    ys, xs = np.nonzero(blob)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    return min(world.SIZES, key=lambda s: abs(world.SIZES[s] - extent))


def _classify_position(blob: np.ndarray) -> str:
    ys, xs = np.nonzero(blob)
    # A triangle's centroid sits a sixth of its height below its box centre: use the box centre.
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    return min(world.POSITIONS, key=lambda p: np.hypot(cx - world.POSITIONS[p][0],
                                                        cy - world.POSITIONS[p][1]))


def analyze(image, colours: dict | None = None) -> Reading:
    """Read a 64×64 image of the world (PIL image or uint8 array HWC) back into a `Reading`;
    `colours`: the palette a shape's colour is read from (default `world.COLOURS`)."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=float)
    if arr.shape != (world.IMAGE_SIZE, world.IMAGE_SIZE, 3):
        raise ValueError(f"expected a {world.IMAGE_SIZE}×{world.IMAGE_SIZE} RGB image, "
                         f"got an array of shape {arr.shape}")
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    background = _nearest(bg, world.BACKGROUNDS)

    distance = np.linalg.norm(arr - bg, axis=-1)
    candidates = distance > 0.5 * distance.max()
    if distance.max() < 60 or candidates.sum() < MIN_BLOB_PIXELS:
        return Reading(None, None, None, None, background)
    fg = np.median(arr[_largest_blob(candidates)], axis=0)
    # Pixels at least half-way from the background to the shape's colour: the 50 % coverage line
    # of an anti-aliased edge, so the blob has the shape's true geometry.
    axis = fg - bg
    t = (arr - bg) @ axis / (axis @ axis)
    blob = _largest_blob(t > 0.5)
    if blob.sum() < MIN_BLOB_PIXELS:
        return Reading(None, None, None, None, background)
    return Reading(
        colour=_nearest(np.median(arr[blob], axis=0), colours or world.COLOURS),
        shape=_classify_shape(blob),
        position=_classify_position(blob),
        size=_classify_size(blob),
        background=background,
    )


def adherence(images, prompts) -> dict[str, float]:
    """Share of images whose reading matches their prompt, per attribute and for
    colour, shape and position all three right ("all3"). Colours are read from `world.COLOURS`
    and the unseen colours the prompts name (`world.UNSEEN_COLOURS`, chapter 8)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; "
                         "need one image per prompt")
    if len(images) == 0:  # len(): images may be one numpy array (N, H, W, 3)
        raise ValueError("adherence needs at least one image")
    keys = ("colour", "shape", "position", "size", "background")
    hits = {k: 0 for k in (*keys, "all3")}
    wanted = [world.parse_caption(p) for p in prompts]
    palette = {**world.COLOURS, **{c: rgb for c, rgb in world.UNSEEN_COLOURS.items()
                                   if any(w.colour == c for w in wanted)}}
    for image, scene in zip(images, wanted):
        want = asdict(scene)
        got = asdict(analyze(image, palette))
        ok = {k: got[k] == want[k] for k in keys}
        for k in keys:
            hits[k] += ok[k]
        hits["all3"] += ok["colour"] and ok["shape"] and ok["position"]
    return {k: v / len(images) for k, v in hits.items()}


def benchmark_prompts(variants: int = 2, seed: int = 0, language: str = "en") -> list[str]:
    """Every colour × shape × position, `variants` times: first plain, then with a random size
    and background, so the set covers the whole vocabulary (90 × variants prompts).

    language="zh": the same scenes in Chinese, each in a random one of the sentence forms and
    synonyms `world.chinese_caption` writes (the same for the same seed)."""
    if language not in ("en", "zh"):
        raise ValueError(f"language={language!r} must be 'en' or 'zh'")
    rng = np.random.default_rng(seed)
    scenes = []
    for v in range(variants):
        for colour in world.COLOURS:
            for shape in world.SHAPES:
                for position in world.POSITIONS:
                    size, background = "", "white"
                    if v > 0:
                        size = str(rng.choice(list(world.SIZES)))
                        background = str(rng.choice(
                            [b for b in world.BACKGROUNDS if b != colour]))
                    scenes.append(world.Scene(shape, colour, position, size, background))
    if language == "zh":
        return world.chinese_captions([s.caption for s in scenes], seed)
    return [s.caption for s in scenes]


def count_shapes(image, min_fraction: float = MIN_BLOB_PIXELS / world.IMAGE_SIZE**2) -> int:
    """How many separate shapes an image of the world shows, at any size: the blobs of pixels far
    from the background (as `analyze` finds them) that cover at least `min_fraction` of it. The
    world has one shape per image; a model asked for a size it was not trained at draws more."""
    from skimage.measure import label

    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=float)
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    distance = np.linalg.norm(arr - np.median(border, axis=0), axis=-1)
    labels = label(distance > max(60.0, 0.5 * distance.max()), connectivity=1)
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_fraction * distance.size).sum())
