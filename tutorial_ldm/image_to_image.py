"""Image to image: img2img, inpainting and the hires fix — one latent model, many tasks.

    out = img2img(pipe, image, "a blue circle on the left", strength=0.6, seed=1)
    out = inpaint(pipe, image, mask, "a green square on the left")      # white = repaint
    out = generate(pipe, "a red circle", hires_upscale=2, hires_denoising=0.5)   # hires fix

The LDM paper's point (Rombach et al. 2022, Sec. 4) is that the same latent diffusion model
serves many conditional tasks. None of these three needs a new model, only a new start:

- img2img is SDEdit (Meng et al. 2022): encode the image, z₀ = E(x)·scale, noise it forward to the
  level of `strength` (DDPM eq. 4, x_t = √ᾱ_t·z₀ + √(1−ᾱ_t)·ε) and run the sampler from there.
  Of a `steps`-step ladder it runs int(steps·strength) steps (diffusers' `get_timesteps`,
  `samplers.img2img_start`): strength 0 returns the input, 1 starts from pure noise at the top.
  Coarse layout is decided on the top rungs and colour and detail low down (chapters 1 and 5),
  so a low strength can recolour but not move.
- inpainting with an ordinary checkpoint blends the known latents back after every step,
  z ← (1−m)·noised(z₀, next level) + m·z (m = 1 where the mask is white: repaint), as diffusers'
  StableDiffusionInpaintPipeline does for 4-channel UNets: "Blended Latent Diffusion" (Avrahami
  et al. 2023), the latent form of RePaint's known-region step (Lugmayr et al. 2022, eq. 8)
  without its resampling. The sampler's callback does the blending, writing into its x.
  Inpainting checkpoints (9-channel UNet; `loading.model_info(pipe).architecture` ends in
  "-inpainting") were trained with the mask and the masked image's latents as 5 more input
  channels (the paper's Sec. 4.5); they get exactly that, and no blending.
  Finally the input's pixels are pasted back outside the (blurred) mask, as A1111 does by
  default: there the result *is* the input, exactly.
- the hires fix (A1111's) is the paper's super-resolution the latent way: make the image at the
  native size, enlarge it (its latents with bilinear or nearest interpolation, or its pixels with
  Lanczos) and img2img the enlargement at `hires_denoising`, so the layout comes from the size the
  model knows and only the detail is drawn at the new one. `generate(..., hires_upscale=2)`.

The image is encoded with the posterior mean of q(z | x), so the seed alone decides the noise
(diffusers samples q(z | x) with the generator; given our latents both agree, tests/test_image_to_image.py).
Sizes: width and height default to the image's, rounded down to multiples of the VAE factor,
and the image is resized to them with Lanczos (A1111's "Just resize"); a mask of another size
is resized to the image in the same way. Each such change is said with an `ImageNote` warning.
Results carry A1111's text ("Denoising strength", "Mask blur", "Hires upscale", …) and
`img2img(pipe, image, **read_parameters(result).generate_kwargs())` makes the image again.

Notation key: z₀ (image_latents) the clean latents, m (latent_mask) the repaint mask at the latent
size, m_px (pixel_mask) the blurred mask at the image size, ε (noise) the seed's noise.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .autoencoder import encode_latents, to_tensor, vae_factor
from .generation import (GeneratedImages, _generate, _sample_and_decode, _sample_latents, _settings,
                         decode_images, generate, initial_noise, latent_shape)
from .samplers import build_schedule, img2img_start
from .settings import SettingsError, check_callback, hires_size

# A1111's upscaler names → how the enlargement is made (A1111's "Latent" is bilinear)
UPSCALERS = {"Latent": "bilinear", "Latent (nearest)": "nearest", "Lanczos": "lanczos"}
IMAGE_KINDS = "a PIL image, an image file (path or bytes: PNG, JPEG, WebP, …) or an H×W×3 uint8 array"


class ImageNote(UserWarning):
    """An input changed to be usable (resized), as A1111 changes it: said, not silent."""


# ----------------------------------------------------------------------------- inputs


def load_image(image, name: str = "image", mode: str = "RGB"):
    """`image` as a PIL image in `mode`, or a SettingsError naming what it is instead."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise SettingsError(name, str(image), f"{IMAGE_KINDS}; there is no file at that path")
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(image))) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, ValueError):
            raise SettingsError(name, f"{len(image)} bytes that are not an image", IMAGE_KINDS) from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise SettingsError(name, f"array {image.dtype} {image.shape}", IMAGE_KINDS)
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise SettingsError(name, type(image).__name__, IMAGE_KINDS)
    return image.convert(mode)


def _target_size(pipe, image, width, height) -> tuple[int, int]:
    """width × height, by default the image's rounded down to multiples of the VAE factor."""
    f = vae_factor(pipe)
    w = max(image.width // f * f, f) if width is None else width
    h = max(image.height // f * f, f) if height is None else height
    if (width is None or height is None) and (w, h) != image.size:
        warnings.warn(f"image resized from {image.width}×{image.height} to {w}×{h}: sides must be "
                      f"multiples of {f}, the VAE's factor (A1111 rounds down the same way)", ImageNote, stacklevel=3)
    return w, h


def _resized(image, s, name: str = "image"):
    from PIL import Image

    if image.size == (s.width, s.height):
        return image
    if name == "mask":
        warnings.warn(f"mask resized from {image.width}×{image.height} to the image's {s.width}×{s.height}",
                      ImageNote, stacklevel=3)
    return image.resize((s.width, s.height), Image.Resampling.LANCZOS)


def steps_run(steps: int, strength: float) -> int:
    """How many of the `steps` steps img2img runs at `strength` (diffusers' rule)."""
    return steps - img2img_start(steps, strength)


# ----------------------------------------------------------------------------- img2img


def img2img(
    pipe,
    image,
    prompt: str,
    negative_prompt: str = "",
    *,
    strength: float = 0.75,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = -1,
    sampler: str | None = None,
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    callback=None,
    progress: bool | None = None,
    threads: int | None = None,
    clip_skip: int | None = None,
) -> GeneratedImages:
    """SDEdit: `image` noised to `strength` and denoised towards `prompt`; images with `.settings`.

    image: a PIL image, a path, PNG/JPEG bytes or a uint8 array (`load_image`).
    strength: 0 … 1 (A1111's "Denoising strength", diffusers' `strength`); int(steps·strength)
        steps run, and none at all (strength 0, or steps·strength < 1) returns the input.
    width, height: the output size, by default the image's in multiples of the VAE factor.
    The rest as for `generate`. Bad input raises SettingsError before any work.
    """
    check_callback(callback)
    image = load_image(image)
    width, height = _target_size(pipe, image, width, height)
    s = _settings(pipe, prompt, negative_prompt, steps, guidance, seed, sampler, width, height, batch_size,
                  clip_skip, strength=strength)
    x_in = to_tensor([np.asarray(_resized(image, s))])
    start = img2img_start(s.steps, s.strength)

    def run(pipe, s, prompts, seeds, callback, per_image):
        if start == s.steps:  # nothing to run: the input
            return x_in.repeat(len(seeds), 1, 1, 1)
        z0 = encode_latents(pipe, x_in.to(pipe._execution_device, pipe.vae.dtype)).repeat(len(seeds), 1, 1, 1)
        return _sample_and_decode(pipe, s, prompts, seeds, callback=callback, per_image=per_image,
                                  init_latents=z0, start_step=start)

    return _generate(pipe, s, batch_size, run, s.steps - start, callback=callback, progress=progress,
                     threads=threads)


# ----------------------------------------------------------------------------- inpainting


class InpaintingUNet:
    """A 9-channel inpainting UNet seen as a 4-channel one: its input z_t gets the mask and the
    masked image's latents appended, as in training (diffusers' StableDiffusionInpaintPipeline)."""

    def __init__(self, unet, conditioning: torch.Tensor):
        self.unet, self.conditioning = unet, conditioning  # (1, 1 + C, h, w): m, E(x·(1−m)), the same for all
        self.config = unet.config

    def __call__(self, x, t, **kwargs):
        c = self.conditioning.expand(x.shape[0], -1, -1, -1)  # any batch: images, guidance's halves
        return self.unet(torch.cat([x, c.to(x)], dim=1), t, **kwargs)


def is_inpainting_model(pipe) -> bool:
    """A UNet trained for inpainting: 4 latent + 1 mask + 4 masked-image channels."""
    return pipe.unet.config.in_channels == 2 * pipe.vae.config.latent_channels + 1


def masks(mask_image, blur: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(binary, pixel_mask): the mask thresholded at half (white = repaint) and, for the final
    paste-back, blurred by a Gaussian of radius `blur` pixels (A1111's "Mask blur"); (1, 1, H, W)."""
    from PIL import ImageFilter

    binary = mask_image.point(lambda v: 255 if v >= 128 else 0)
    blurred = binary.filter(ImageFilter.GaussianBlur(blur)) if blur else binary
    as_tensor = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None, None]  # noqa: E731
    pixel_mask = as_tensor(blurred)
    return (pixel_mask >= 0.5).float(), pixel_mask


def inpaint(
    pipe,
    image,
    mask,
    prompt: str,
    negative_prompt: str = "",
    *,
    strength: float = 1.0,
    mask_blur: int = 4,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = -1,
    sampler: str | None = None,
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    callback=None,
    progress: bool | None = None,
    threads: int | None = None,
    clip_skip: int | None = None,
) -> GeneratedImages:
    """Repaint the white part of `mask` to `prompt`, keep the rest: images with `.settings`.

    mask: an image like `image` (grey levels ≥ 128 are white: repaint); one of another size is
        resized to the image (with an ImageNote); an all-black one is refused (nothing to repaint).
    strength: 1 (A1111's default for inpainting) repaints from pure noise; lower keeps more of
        what was under the mask. mask_blur: pixels of Gaussian blur on the mask's edge for the
        final paste-back (A1111's default 4); outside the blurred mask the pixels are the input's.
    The rest as for `img2img`.
    """
    check_callback(callback)
    image = load_image(image)
    mask_image = load_image(mask, "mask", mode="L")
    width, height = _target_size(pipe, image, width, height)
    s = _settings(pipe, prompt, negative_prompt, steps, guidance, seed, sampler, width, height, batch_size,
                  clip_skip, strength=strength, mask_blur=mask_blur)
    x_in = to_tensor([np.asarray(_resized(image, s))])
    binary, pixel_mask = masks(_resized(mask_image, s, "mask"), s.mask_blur)
    if not binary.any():
        raise SettingsError("mask", "all black", "a mask with some white (white = repaint): an all-black "
                            "mask leaves nothing to repaint")
    start = img2img_start(s.steps, s.strength)

    def run(pipe, s, prompts, seeds, callback, per_image):
        x = x_in if start == s.steps else _inpaint(pipe, s, prompts, seeds, x_in, binary, start, callback, per_image)
        m, known = pixel_mask.to(x.device), x_in.to(x.device)
        return m * x + (1 - m) * known  # the final paste-back (A1111's)

    return _generate(pipe, s, batch_size, run, s.steps - start, callback=callback, progress=progress,
                     threads=threads)


def _inpaint(pipe, s, prompts, seeds, x_in, binary, start, callback, per_image) -> torch.Tensor:
    """The repainted images in [-1, 1], before the paste-back."""
    device, dtype = pipe._execution_device, pipe.unet.dtype
    encode = lambda x: encode_latents(pipe, x.to(device, pipe.vae.dtype)).to(dtype)  # noqa: E731
    z0 = encode(x_in).repeat(len(seeds), 1, 1, 1)
    latent_mask = F.interpolate(binary, size=z0.shape[-2:]).to(device, dtype)  # nearest, as diffusers
    # diffusers' rule: strength 1 starts from pure noise, not from the image noised to the top
    begin = dict(init_latents=z0, start_step=start) if s.strength < 1 else {}
    if is_inpainting_model(pipe):
        conditioning = torch.cat([latent_mask, encode(x_in * (binary < 0.5))], dim=1)
        return _sample_and_decode(pipe, s, prompts, seeds, callback=callback, per_image=per_image,
                                  unet=InpaintingUNet(pipe.unet, conditioning), **begin)

    noise, _ = initial_noise(seeds, latent_shape(pipe, s))  # the ε the sampler starts from
    noise = noise.to(device, dtype)
    schedule = build_schedule(s.sampler, pipe.scheduler.config, s.steps).from_step(start)

    def blend(i, total, x, x0):
        # the known region, noised to the level x is at now (clean after the last step)
        known = z0 if i == total - 1 else schedule.from_step(i + 1).start(noise, z0)
        x.copy_((1 - latent_mask) * known + latent_mask * x)  # in place: the sampler goes on from it
        callback(i, total, x, x0)

    return _sample_and_decode(pipe, s, prompts, seeds, callback=blend, per_image=per_image, **begin)


# ----------------------------------------------------------------------------- hires fix


def upscale_latents(pipe, latents: torch.Tensor, size: tuple[int, int], upscaler: str,
                    per_image: bool = False) -> torch.Tensor:
    """Latents for a width×height `size` image: interpolated ("Latent…") or, for "Lanczos",
    decoded, resized in pixels and encoded again (per_image: each image alone, as made alone)."""
    from PIL import Image

    width, height = size
    f = vae_factor(pipe)
    if UPSCALERS[upscaler] != "lanczos":
        return F.interpolate(latents, size=(height // f, width // f), mode=UPSCALERS[upscaler])
    if per_image and len(latents) > 1:
        return torch.cat([upscale_latents(pipe, z[None], size, upscaler) for z in latents])
    images = pipe.image_processor.postprocess(decode_images(pipe, latents), output_type="pil")
    big = to_tensor([np.asarray(im.resize(size, Image.Resampling.LANCZOS)) for im in images])
    return encode_latents(pipe, big.to(pipe._execution_device, pipe.vae.dtype)).to(latents.dtype)


@torch.no_grad()
def hires_fix(pipe, s, prompts, seeds, *, callback=None, per_image: bool = False) -> torch.Tensor:
    """A1111's hires fix, `generate`'s run when `s.hires_upscale` is set: images in [-1, 1] at
    `settings.hires_size(s)`. The second pass runs int(hires_steps·hires_denoising) steps of a
    hires_steps ladder (diffusers' img2img rule; A1111 instead stretches the ladder so that all
    hires_steps run), from each seed's noise at the new size."""
    latents = _sample_latents(pipe, s, prompts, seeds, callback=callback, per_image=per_image)
    size = hires_size(s, vae_factor(pipe))
    big = upscale_latents(pipe, latents, size, s.hires_upscaler, per_image)
    second = replace(s, width=size[0], height=size[1], steps=s.hires_steps)
    start = img2img_start(second.steps, s.hires_denoising)
    if start == second.steps:
        return decode_images(pipe, big, per_image)
    return _sample_and_decode(pipe, second, prompts, seeds, callback=callback, per_image=per_image,
                              init_latents=big, start_step=start)


# ----------------------------------------------------------------------------- chapter 7's measurements
# On the tiny model's world, read back by `metrics.analyze`; bench/img2img.py prints the same.

SOURCE_CAPTION = "a red circle on the left"
RECOLOUR, MOVE = "a blue circle on the left", "a red circle on the right"
REPAINT = "a green square on the left"
HIRES_PROMPTS = ("a red circle on the left", "a blue square at the top", "a green triangle on the right",
                 "a yellow circle at the bottom")


def source_image(caption: str = SOURCE_CAPTION):
    """The world's own rendering of `caption` (no model involved): the input of the studies."""
    from PIL import Image

    from . import world

    return Image.fromarray(world.render(world.parse_caption(caption)))


def source_mask(caption: str = SOURCE_CAPTION, pad: int = 4):
    """A white rectangle over the shape of `caption` (its box in the world, padded), as uint8."""
    from . import world

    scene = world.parse_caption(caption)
    (cx, cy), half = world.POSITIONS[scene.position], world.SIZES[scene.size] // 2 + pad
    mask = np.zeros((world.IMAGE_SIZE, world.IMAGE_SIZE), np.uint8)
    mask[max(cy - half, 0): cy + half, max(cx - half, 0): cx + half] = 255
    return mask


def _psnr(images, reference) -> float:
    from .autoencoder import psnr

    x = to_tensor([np.asarray(im) for im in images])
    return float(psnr(x, to_tensor([np.asarray(reference)] * len(images))).mean())


def _hits(images, want: dict) -> float:
    from .metrics import analyze

    readings = [analyze(im) for im in images]
    return float(np.mean([all(getattr(r, k) == v for k, v in want.items()) for r in readings]))


def strength_sweep(pipe, strengths=tuple(np.round(np.arange(1, 11) / 10, 1)), *, n: int = 8, steps: int = 20,
                   seed: int = 0) -> list[dict]:
    """img2img of the red circle on the left towards a blue one (a colour change) and towards one
    on the right (a move), n seeds per strength: the share that succeeded and the PSNR (dB) to the
    source. Colour is decided low on the ladder, layout high up: the move needs more strength."""
    src = source_image()
    rows = []
    for strength in strengths:
        row = {"strength": float(strength)}
        for name, prompt, want in (("colour", RECOLOUR, {"colour": "blue", "position": "on the left"}),
                                   ("move", MOVE, {"colour": "red", "position": "on the right"})):
            out = img2img(pipe, src, prompt, strength=float(strength), steps=steps, seed=seed, batch_size=n,
                          progress=False)
            row[name], row[f"{name}_psnr"] = _hits(out, want), _psnr(out, src)
        rows.append(row)
    return rows


def inpaint_study(pipe, *, n: int = 8, steps: int = 20, seed: int = 0) -> list[dict]:
    """Repaint the red circle's box as a green square: inpainting (latent blending and paste-back)
    against img2img of the whole picture. Success is the analyzer reading a green square on the
    left; `outside` the mean |Δ| (0–255 levels) to the source outside the mask and its blurred edge
    (mask_blur=4: the paste-back blends there), `outside_max` the largest |Δ| there."""
    from PIL import Image

    src, mask = source_image(), source_mask()
    outside = masks(Image.fromarray(mask), 4)[1][0, 0].numpy() == 0
    runs = {"inpaint": lambda: inpaint(pipe, src, mask, REPAINT, steps=steps, seed=seed, batch_size=n, progress=False)}
    for strength in (0.75, 1.0):
        runs[f"img2img {strength}"] = lambda strength=strength: img2img(
            pipe, src, REPAINT, strength=strength, steps=steps, seed=seed, batch_size=n, progress=False)
    rows = []
    for method, run in runs.items():
        out = run()
        delta = [np.abs(np.asarray(im, int) - np.asarray(src, int))[outside] for im in out]
        rows.append({"method": method, "success": _hits(out, {"colour": "green", "shape": "square",
                                                                "position": "on the left"}),
                     "outside": float(np.mean([d.mean() for d in delta])),
                     "outside_max": int(max(d.max() for d in delta))})
    return rows


def hires_study(pipe, prompts=HIRES_PROMPTS, *, n: int = 4, steps: int = 20, seed: int = 0) -> list[dict]:
    """Twice the native size, directly and by the hires fix (latent upscale at denoising 0.5, or
    Lanczos in pixels at 0.3): the share of images with exactly one shape (`metrics.count_shapes`)
    and whose reading (shrunk to the native size) matches the prompt's colour, shape and position;
    the native size as the reference."""
    from PIL import Image

    from . import world
    from .metrics import count_shapes

    side = 2 * world.IMAGE_SIZE
    methods = {"native 64": {}, "direct 128": {"width": side, "height": side},
               "hires Latent 0.5": {"hires_upscale": 2, "hires_denoising": 0.5},
               "hires Lanczos 0.3": {"hires_upscale": 2, "hires_upscaler": "Lanczos", "hires_denoising": 0.3}}
    rows = []
    for method, kwargs in methods.items():
        one, right = [], []
        for prompt in prompts:
            out = generate(pipe, prompt, steps=steps, seed=seed, batch_size=n, progress=False, **kwargs)
            small = [im.resize((world.IMAGE_SIZE,) * 2, Image.Resampling.LANCZOS) for im in out]
            scene = world.parse_caption(prompt)
            one += [count_shapes(im) == 1 for im in out]
            right.append(_hits(small, {"colour": scene.colour, "shape": scene.shape, "position": scene.position}))
        rows.append({"method": method, "one_shape": float(np.mean(one)), "adherence": float(np.mean(right))})
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows of a study as an aligned text table (bench/img2img.py and the chapter print it)."""
    keys = list(rows[0])
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(k), *(len(cell(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    return "\n".join(lines + ["  ".join(cell(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in rows])

