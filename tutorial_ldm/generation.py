"""Text to image, the A1111 way: weighted prompts, our samplers, seeds you can reproduce.

    images = generate(pipe, "a red circle on the left", "(blue:1.3)", steps=25, seed=42)
    images.settings[0]                      # the GenerationSettings image 0 was made with

What happens, in the paper's terms:

1. τ_θ(y): the prompt and the negative prompt are encoded with A1111's weighting
   (`tutorial_ldm.prompts`): the conditioning c and the unconditional c_∅ of guidance.
2. z_T ~ N(0, I) in latent space, drawn on the CPU from seed + k for image k of a batch, so a
   seed means the same starting noise on every device, as in A1111.
3. A sampler (`tutorial_ldm.samplers`) integrates the reverse process with ε_θ(z_t, t, c),
   mixed with ε_θ(z_t, t, c_∅) by classifier-free guidance.
4. The decoder D maps z_0 back to pixels: x = D(z_0 / scaling_factor) (`autoencoder.decode_latents`).

`generate` is the front door: one prompt, a batch of seeds, PIL images that carry their settings
in `image.info["parameters"]` (A1111's format, written into the PNG by `save_image`). Beside it,
`generate_many` makes one image per prompt of a list, as numpy arrays or PIL images, optionally
from given starting noise: what benchmarks, tests and the guidance sweep need. Both take their
defaults from `settings.defaults_for(pipe)` and check through `settings.validate`.
`sampler_for(pipe.scheduler)` names our sampler that equals a diffusers scheduler, so that code
written for the stock pipeline (`guidance.generate_batch`) gets the same pixels through here.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np
import torch
from tqdm.auto import tqdm

from . import extra_networks
from .autoencoder import decode_latents as decode  # noqa: F401  (generation.decode: public name)
from .autoencoder import native_size, vae_factor  # noqa: F401  (public names of this module too)
from .devices import cpu_threads_for
from .settings import (MAX_SEED, GenerationSettings, SettingsError, check_batch_size,  # noqa: F401
                       check_callback, check_text, defaults_for, validate)

# The generic defaults (A1111's for SD), kept under their old names; a model's own: defaults_for(pipe).
DEFAULT_STEPS, DEFAULT_GUIDANCE, DEFAULT_SAMPLER = (GenerationSettings.steps, GenerationSettings.guidance,
                                                    GenerationSettings.sampler)
PROGRESS_DELAY = 2.0  # seconds before the default progress bar appears
OUTPUTS = ("pil", "numpy")


class GeneratedImages(list):
    """The images (PIL images or uint8 H×W×3 arrays), and `.settings`: the GenerationSettings
    each one was made with, seed resolved, in the same order."""

    def __init__(self, images, settings: list[GenerationSettings]):
        super().__init__(images)
        self.settings = list(settings)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """z_T for each seed, drawn on the CPU in float32; the generators go on to feed the sampler."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
    return noise, generators


def _settings(pipe, prompt, negative_prompt, steps, guidance, seed, sampler, width, height,
              batch_size, clip_skip=None, **image_fields) -> GenerationSettings:
    """The caller's settings, None taken from the model's defaults, validated. image_fields:
    strength, mask_blur and the hires fix's (`settings.IMAGE_FIELDS`)."""
    d = defaults_for(pipe)
    given = replace(
        d, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
        steps=d.steps if steps is None else steps, guidance=d.guidance if guidance is None else guidance,
        sampler=d.sampler if sampler is None else sampler,
        width=d.width if width is None else width, height=d.height if height is None else height,
        clip_skip=d.clip_skip if clip_skip is None else clip_skip, **image_fields,
    )
    return validate(given, pipe, batch_size=batch_size)


def check_txt2img(pipe) -> None:
    """Text to image needs a UNet that takes latents alone; an inpainting UNet (9 channels: latents,
    mask, masked image) is refused with a pointer to where it is used."""
    unet_in, latent = pipe.unet.config.in_channels, pipe.vae.config.latent_channels
    if unet_in != latent:
        raise SettingsError("model", f"a UNet with {unet_in} input channels",
                            f"a text-to-image model, whose UNet takes the {latent} latent channels alone "
                            "(an inpainting checkpoint also takes a mask and a masked image: use it for inpainting)")


def is_sdxl(pipe) -> bool:
    """Whether the UNet is SDXL's: conditioned also on a pooled text embedding and the image
    size (`added_cond_kwargs`, Podell et al. 2023, §2.2)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def _encode(pipe, prompt: str, negative_prompt: str, guidance: float, device, clip_skip: int):
    """(cond, uncond, pooled, negative_pooled) of one prompt, A1111-weighted: uncond None without
    guidance, the pooled ones None but for SDXL. SDXL takes its fixed penultimate layers, so
    Clip skip does not change it (as in A1111, whose `sdxl_clip_l_skip` is off by default)."""
    from .prompts import encode_prompts, encode_prompts_sdxl, encode_weighted, encode_weighted_sdxl

    if is_sdxl(pipe):
        if guidance > 1:
            return encode_prompts_sdxl(pipe, prompt, negative_prompt, device=device)
        cond, pooled = encode_weighted_sdxl(pipe, prompt, device=device)
        return cond, None, pooled, None
    if guidance > 1:  # classifier-free guidance needs the negative prompt too
        return (*encode_prompts(pipe, prompt, negative_prompt, device=device, clip_skip=clip_skip), None, None)
    cond = encode_weighted(pipe.tokenizer, pipe.text_encoder, prompt, device=device, clip_skip=clip_skip)
    return cond, None, None, None


def size_time_ids(width: int, height: int) -> list[int]:
    """SDXL's micro-conditioning (Podell et al. 2023, §2.2): original size, crop top-left, target
    size, each (height, width); we generate uncropped at the asked size, as A1111 and diffusers do."""
    return [height, width, 0, 0, height, width]


def _conditioning(pipe, prompts: list[str], negative_prompt: str, guidance: float, device, *,
                  clip_skip: int = 1, size: tuple[int, int] | None = None) -> dict:
    """The text conditioning of `samplers.sample` for a batch of prompts, A1111-weighted: cond,
    uncond (None without guidance), and for SDXL added_cond / added_uncond (the pooled
    embeddings as `text_embeds`, `size_time_ids(*size)` as `time_ids`, per CFG half; size
    (width, height) defaults to the native one).
    Each distinct prompt is encoded once; prompts of different lengths (in 77-token chunks) are
    padded with the empty prompt's chunk, as A1111 pads cond and uncond."""
    encoded = {p: _encode(pipe, p, negative_prompt, guidance, device, clip_skip) for p in dict.fromkeys(prompts)}
    longest = max(e[0].shape[1] for e in encoded.values())
    empty = None
    if any(e[0].shape[1] != longest for e in encoded.values()):
        empty = _encode(pipe, "", "", 1, device, clip_skip)[0]

    def batch(k):
        parts = [encoded[p][k] for p in prompts]
        if parts[0] is None:
            return None
        if k < 2 and empty is not None:
            parts = [torch.cat([z, empty.repeat(1, (longest - z.shape[1]) // empty.shape[1], 1)], dim=1)
                     for z in parts]
        return torch.cat(parts).to(pipe.unet.dtype)

    out = dict(cond=batch(0), uncond=batch(1), added_cond=None, added_uncond=None)
    if is_sdxl(pipe):
        time_ids = out["cond"].new_tensor([size_time_ids(*(size or native_size(pipe)))] * len(prompts))
        out["added_cond"] = {"text_embeds": batch(2), "time_ids": time_ids}
        if out["uncond"] is not None:
            out["added_uncond"] = {"text_embeds": batch(3), "time_ids": time_ids}
    return out


def latent_shape(pipe, s: GenerationSettings) -> tuple[int, int, int]:
    """(C, h, w) of one image's latents (C: the VAE's, also for a 9-channel inpainting UNet)."""
    f = vae_factor(pipe)
    return (pipe.vae.config.latent_channels, s.height // f, s.width // f)


@torch.no_grad()
def _sample_latents(pipe, s: GenerationSettings, prompts: list[str], seeds: list[int], *, noise=None,
                    callback=None, per_image: bool = False, unet=None, init_latents=None,
                    start_step=0) -> torch.Tensor:
    """Latents (N, C, h, w) for prompts[k] from seed seeds[k] (or noise[k]).
    per_image: image k exactly as made alone (the UNet runs image by image). img2img passes the
    clean latents to start from and its rung (`samplers.sample`), inpainting a UNet that sees the
    mask too (`image_to_image`)."""
    from .samplers import sample

    device = pipe._execution_device  # where the models run, also under CPU offload
    text = _conditioning(pipe, prompts, s.negative_prompt, s.guidance, device, clip_skip=s.clip_skip,
                         size=(s.width, s.height))
    # drawn also when `noise` is given, so that the generators stand where they would for the
    # stochastic samplers' fresh noise
    start, generators = initial_noise(seeds, latent_shape(pipe, s))
    if noise is not None:
        start = noise
    if init_latents is not None:
        init_latents = init_latents.to(device, pipe.unet.dtype)
    return sample(s.sampler, unet or pipe.unet, start.to(device, pipe.unet.dtype), pipe.scheduler.config,
                  steps=s.steps, guidance=float(s.guidance), generator=generators, callback=callback,
                  per_image=per_image, init_latents=init_latents, start_step=start_step, **text)


def decode_images(pipe, latents: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) of latents; per_image: each decoded alone (the decoder's
    batched convolutions round differently)."""
    if per_image:
        return torch.cat([decode(pipe, z[None]) for z in latents]).float()
    return decode(pipe, latents).float()


def _sample_and_decode(pipe, s: GenerationSettings, prompts: list[str], seeds: list[int], *,
                       per_image: bool = False, **kwargs) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) for prompts[k] from seed seeds[k] (or noise[k]).
    per_image: image k exactly as made alone (UNet and decoder run image by image)."""
    return decode_images(pipe, _sample_latents(pipe, s, prompts, seeds, per_image=per_image, **kwargs), per_image)


def generate(
    pipe,
    prompt: str,
    negative_prompt: str = "",
    *,
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
    hires_upscale: float | None = None,
    hires_steps: int | None = None,
    hires_upscaler: str | None = None,
    hires_denoising: float | None = None,
    clip_skip: int | None = None,
) -> GeneratedImages:
    """Generate `batch_size` images of one prompt; returns them with `.settings`, and each image
    has its settings in `image.info["parameters"]` (A1111 text).

    Image k of a batch is, pixel for pixel, the image `generate` makes alone at seed + k (on the
    same device with the same thread count), so every saved PNG regenerates exactly from its own
    settings, as A1111 promises: the UNet and the decoder run image by image for that (about 2×
    the CPU time of one batched call at batch 4; `generate_many` batches instead).

    None means the model's default (`tutorial_ldm.settings.defaults_for(pipe)`: A1111's for SD,
    what the model folder recommends otherwise, e.g. CFG 2 for the shipped tiny model).
    prompt, negative_prompt: A1111 syntax (`(word:1.3)`, `[word]`, `BREAK`), any length.
        An empty prompt is allowed: it is the unconditional prompt. `<lora:name:0.8>` in the
        prompt applies models/Lora/name.safetensors for these images, and a word that names a
        file in embeddings/ is that textual-inversion embedding (`tutorial_ldm.extra_networks`).
    steps: 1 … num_train_timesteps (1000 for SD).
    guidance: CFG scale, finite and ≥ 0; values ≤ 1 run the prompt alone (no guidance).
    seed: 0 … 2³²−1, or −1 for a random one (see `.settings`). Image k uses seed + k.
    sampler: ours ("euler_a", "ddim", …) or A1111's name ("Euler a", "DPM++ 2M Karras", …).
    width, height: multiples of the VAE factor (8 for SD); sizes far beyond the native one for
        this device are refused with an estimate of their cost (`settings.check_size`).
    callback(i, total, x, denoised): after every step, e.g. to drive a UI's progress bar or
        preview `denoised` (the current prediction of the clean latents).
    progress: a tqdm bar; None shows it only once sampling has taken more than 2 s.
    threads: torch threads on the CPU (default `devices.cpu_threads(pipe.unet)`: chosen for the model, never for the load); the last
        bit of a float, and so rarely one level of a pixel, can depend on it.
    hires_upscale, hires_steps, hires_upscaler, hires_denoising: A1111's hires fix
        (`image_to_image.hires_fix`): the image made at width×height is enlarged hires_upscale
        times ("Latent", "Latent (nearest)" or "Lanczos"; A1111's defaults "Latent" and 0.7) and
        denoised again by img2img; None: off.
    clip_skip: A1111's Clip skip, 1 (the last layer, default) or 2 (the penultimate layer, then
        the final layer norm; what many anime checkpoints are made for), …; SDXL ignores it, as A1111.
    Bad settings raise `SettingsError` (a ValueError naming the field) before any work.
    """
    check_callback(callback)
    check_txt2img(pipe)
    s = _settings(pipe, prompt, negative_prompt, steps, guidance, seed, sampler, width, height, batch_size,
                  clip_skip, hires_upscale=hires_upscale, hires_steps=hires_steps,
                  hires_upscaler=hires_upscaler, hires_denoising=hires_denoising)
    run, total = _sample_and_decode, s.steps
    if s.hires_upscale is not None:
        from .image_to_image import hires_fix, steps_run

        run, total = hires_fix, s.steps + steps_run(s.hires_steps, s.hires_denoising)
    return _generate(pipe, s, batch_size, run, total, callback=callback, progress=progress, threads=threads)


def _generate(pipe, s: GenerationSettings, batch_size: int, run, total: int, *, callback, progress,
              threads) -> GeneratedImages:
    """The front door's work for validated settings `s`: the seeds, a progress bar of `total`
    steps, and `run(pipe, s, prompts, seeds, callback=…, per_image=True)`'s images in [-1, 1] as
    PIL images with their settings (generate, and img2img/inpaint in `image_to_image`); image k
    is exactly the one made alone at seed + k. The prompt's LoRAs and embeddings
    (`extra_networks.applied`) hold for all of `run` and are recorded as `Lora hashes`/`TI hashes`."""
    if s.seed == -1:
        s.seed = secrets.randbelow(MAX_SEED - batch_size + 2)
    seeds = [s.seed + k for k in range(batch_size)]
    bar = tqdm(total=total, desc="sampling", unit="step", disable=progress is False,
               delay=PROGRESS_DELAY if progress is None else 0)

    def on_step(i, total, x, denoised):
        bar.update(1)
        if callback is not None:
            callback(i, total, x, denoised)

    try:
        with cpu_threads_for(pipe._execution_device, threads, pipe.unet), \
                extra_networks.applied(pipe, [s.prompt], s.negative_prompt) as (nets,):
            # the encoders see the prompts with the tags taken out and the embeddings' tokens in;
            # every pass of `run` (the hires fix's second, img2img's, inpainting's) under the LoRAs
            x = run(pipe, replace(s, negative_prompt=nets.negative_prompt), [nets.prompt] * batch_size,
                    seeds, callback=on_step, per_image=True)
    finally:
        bar.close()
    images = pipe.image_processor.postprocess(x, output_type="pil")
    used = [replace(s, seed=k_seed, extra=extra_networks.infotext_fields(nets)) for k_seed in seeds]
    for image, settings in zip(images, used):
        image.info["parameters"] = settings.to_text()
    return GeneratedImages(images, used)


def generate_many(
    pipe,
    prompts: list[str],
    *,
    negative_prompt: str = "",
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str | None = None,
    seed: int = 0,
    width: int | None = None,
    height: int | None = None,
    noise: torch.Tensor | None = None,
    batch_size: int = 16,
    output: str = "pil",
    progress: bool | None = None,
    threads: int | None = None,
    clip_skip: int | None = None,
) -> GeneratedImages:
    """One image per prompt, prompt i from the noise of seed + i (or from `noise[i]`), run
    `batch_size` prompts at a time, batched for speed: the same images as
    `generate(pipe, prompts[i], seed=seed + i)` up to float rounding (batched matrix products
    round differently: ≤ 1/255 per pixel, measured by bench/batch_determinism.py), not bit for bit.

    output: "pil" (images with their A1111 text, as `generate` gives) or "numpy" (uint8 H×W×3).
    noise: a fixed z_T of shape (len(prompts), C, h, w), standard normal (the samplers scale it);
        the seeds still feed the stochastic samplers' fresh noise, and the settings record them.
    Other settings as for `generate`; one negative prompt for all.
    """
    if output not in OUTPUTS:
        raise SettingsError("output", output, f"one of {', '.join(map(repr, OUTPUTS))}")
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise SettingsError("prompts", prompts, "a non-empty list of prompts")
    prompts = [check_text("prompts", p) for p in prompts]
    check_txt2img(pipe)
    s = _settings(pipe, prompts[0], negative_prompt, steps, guidance, seed, sampler, width, height,
                  len(prompts), clip_skip)
    if s.seed == -1:
        raise SettingsError("seed", seed, "an integer from 0 (generate_many's images use seed + i)")
    batch = check_batch_size(batch_size)
    shape = (len(prompts), *latent_shape(pipe, s))
    if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape):
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise SettingsError("noise", got, f"None or a tensor of shape {shape} (one latent per prompt)")

    used = [replace(s, prompt=p, seed=s.seed + i, extra={}) for i, p in enumerate(prompts)]
    images = []
    bar = tqdm(total=len(prompts), desc="generating", unit="image",
               disable=progress is False, delay=PROGRESS_DELAY if progress is None else 0)
    try:
        with cpu_threads_for(pipe._execution_device, threads, pipe.unet), \
                extra_networks.applied(pipe, prompts, s.negative_prompt) as nets:
            encoded = replace(s, negative_prompt=nets[0].negative_prompt)
            texts = [n.prompt for n in nets]
            for i in range(0, len(prompts), batch):
                part = slice(i, i + batch)
                x = _sample_and_decode(pipe, encoded, texts[part], [u.seed for u in used[part]],
                                       noise=None if noise is None else noise[part])
                bar.update(len(x))
                if output == "numpy":
                    arrays = pipe.image_processor.postprocess(x, output_type="np")
                    images += list((arrays * 255).round().astype(np.uint8))
                else:
                    images += pipe.image_processor.postprocess(x, output_type="pil")
    finally:
        bar.close()
    for settings, n in zip(used, nets):
        settings.extra = extra_networks.infotext_fields(n)
    if output == "pil":
        for image, settings in zip(images, used):
            image.info["parameters"] = settings.to_text()
    return GeneratedImages(images, used)


def sampler_for(scheduler) -> str:
    """Our sampler that samples exactly as this diffusers scheduler does (its config included)."""
    from .samplers import SAMPLERS, to_diffusers

    config = dict(scheduler.config)
    for name in SAMPLERS:
        twin = to_diffusers(name, config)
        if type(twin) is type(scheduler) and all(config.get(k) == v for k, v in twin.config.items()
                                                 if not k.startswith("_")):
            return name
    raise SettingsError("scheduler", type(scheduler).__name__,
                        "a scheduler one of our samplers reproduces: " + ", ".join(
                            sorted({type(to_diffusers(n, config)).__name__ for n in SAMPLERS})))
