"""Text to image, the A1111 way: weighted prompts, our samplers, seeds you can reproduce.

    images = generate(pipe, "a red circle on the left", "(blue:1.3)", steps=25, seed=42)

What happens, in the paper's terms:

1. τ_θ(y): the prompt and the negative prompt are encoded with A1111's weighting
   (`tutorial_ldm.prompts`): the conditioning c and the unconditional c_∅ of guidance.
2. z_T ~ N(0, I) in latent space, drawn on the CPU from seed + k for image k of a batch, so a
   seed means the same starting noise on every device, as in A1111.
3. A sampler (`tutorial_ldm.samplers`) integrates the reverse process with ε_θ(z_t, t, c),
   mixed with ε_θ(z_t, t, c_∅) by classifier-free guidance.
4. The decoder D maps z_0 back to pixels: x = D(z_0 / scaling_factor).

Every image carries its settings in `image.info["parameters"]` (A1111's format), written into
the PNG by `save_image`; `read_parameters` gives them back to make the same image again.
"""

from __future__ import annotations

import math
import secrets
import warnings

import torch
from tqdm.auto import tqdm

from .parameters import GenerationSettings

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
DEFAULT_SAMPLER = "euler_a"
MAX_SEED = 2**32 - 1  # A1111's seeds are unsigned 32-bit
PROGRESS_DELAY = 2.0  # seconds before the default progress bar appears


def vae_factor(pipe) -> int:
    """f: how many pixels one latent cell covers along each side (8 for SD, 4 for the tiny model)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def native_size(pipe) -> tuple[int, int]:
    """(width, height) the UNet was built for, in pixels."""
    size = pipe.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else size
    return w * vae_factor(pipe), h * vae_factor(pipe)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_settings(pipe, s: GenerationSettings, batch_size: int) -> str:
    """Raise ValueError/TypeError for anything generate() cannot honour; return our sampler name."""
    from .samplers import sampler_name

    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(s, name), str):
            raise TypeError(f"{name} must be a string, got {type(getattr(s, name)).__name__}")
    T = pipe.scheduler.config.num_train_timesteps
    if not _is_int(s.steps) or not 1 <= s.steps <= T:
        raise ValueError(f"steps={s.steps!r} must be an integer from 1 to {T} (the model's training timesteps)")
    if not isinstance(s.guidance, (int, float)) or isinstance(s.guidance, bool) \
            or not math.isfinite(s.guidance) or s.guidance < 0:
        raise ValueError(f"guidance={s.guidance!r} must be a finite number ≥ 0 (CFG scale; ≤ 1 means no guidance)")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer ≥ 1")
    if not _is_int(s.seed) or not (s.seed == -1 or 0 <= s.seed <= MAX_SEED - batch_size + 1):
        raise ValueError(
            f"seed={s.seed!r} must be -1 (random) or an integer from 0 to {MAX_SEED - batch_size + 1} "
            f"(image k of a batch uses seed + k, at most 2**32 - 1)"
        )
    f = vae_factor(pipe)
    for name in ("width", "height"):
        value = getattr(s, name)
        if not _is_int(value) or value < f or value % f:
            raise ValueError(f"{name}={value!r} must be a positive multiple of {f} (the VAE's downsampling factor)")
    return sampler_name(s.sampler)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """z_T for each seed, drawn on the CPU in float32; the generators go on to feed the sampler."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    noise = torch.cat([torch.randn((1, *shape), generator=g) for g in generators])
    return noise, generators


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """x = D(z / scaling_factor), in [-1, 1], with A1111's guard against fp16 NaNs.

    A VAE in float16 can overflow to NaN on some latents; the image is then decoded again with
    the VAE in float32 (and the VAE put back), with a warning. NaN already in the latents comes
    from the UNet, which decoding cannot fix: that raises FloatingPointError.
    """
    vae = pipe.vae
    if torch.isnan(latents).any():
        raise FloatingPointError(
            f"the sampler produced NaN latents (the UNet overflowed in {pipe.unet.dtype}); "
            "load the model with dtype=torch.float32"
        )
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None) is not None:
        z = z + vae.config.shift_factor
    image = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    if torch.isnan(image).any() and vae.dtype != torch.float32:
        warnings.warn(f"NaN in the image decoded by the {vae.dtype} VAE; decoding again in float32",
                      RuntimeWarning, stacklevel=3)
        dtype = vae.dtype
        to = torch.nn.Module.to  # a plain cast; diffusers' .to() warns about casting
        to(vae, torch.float32)
        try:
            image = vae.decode(z.float(), return_dict=False)[0]
        finally:
            to(vae, dtype)
    if torch.isnan(image).any():
        raise FloatingPointError("the VAE decoded NaN even in float32: the checkpoint's VAE is broken")
    return image


def generate(
    pipe,
    prompt: str,
    negative_prompt: str = "",
    *,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = -1,
    sampler: str = DEFAULT_SAMPLER,
    width: int | None = None,
    height: int | None = None,
    batch_size: int = 1,
    callback=None,
    progress: bool | None = None,
) -> list:
    """Generate `batch_size` images; each has its settings in `image.info["parameters"]`.

    prompt, negative_prompt: A1111 syntax (`(word:1.3)`, `[word]`, `BREAK`), any length.
        An empty prompt is allowed: it is the unconditional prompt.
    steps: 1 … num_train_timesteps (1000 for SD).
    guidance: CFG scale, finite and ≥ 0; values ≤ 1 run the prompt alone (no guidance).
    seed: 0 … 2³²−1, or −1 for a random one (see the images' parameters). Image k uses seed + k.
    sampler: ours ("euler_a", "ddim", …) or A1111's name ("Euler a", "DPM++ 2M Karras", …).
    width, height: multiples of the VAE factor (8 for SD); default the model's native size.
    callback(i, total, x, denoised): after every step, e.g. to drive a UI's progress bar or
        preview `denoised` (the current prediction of the clean latents).
    progress: a tqdm bar; None shows it only once sampling has taken more than 2 s.
    """
    from .loading import model_name
    from .prompts import encode_prompts, encode_weighted
    from .samplers import sample

    native_w, native_h = native_size(pipe)
    s = GenerationSettings(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                           sampler=sampler, guidance=guidance, seed=seed,
                           width=native_w if width is None else width,
                           height=native_h if height is None else height, model=model_name(pipe))
    s.sampler = check_settings(pipe, s, batch_size)
    if s.seed == -1:
        s.seed = secrets.randbelow(MAX_SEED - batch_size + 2)
    seeds = [s.seed + k for k in range(batch_size)]

    device = pipe._execution_device  # where the models run, also under CPU offload
    with torch.no_grad():
        if s.guidance > 1:  # classifier-free guidance needs the negative prompt too
            cond, uncond = encode_prompts(pipe, s.prompt, s.negative_prompt, device=device)
        else:
            cond, uncond = encode_weighted(pipe.tokenizer, pipe.text_encoder, s.prompt, device=device), None
        dtype = pipe.unet.dtype
        cond = cond.to(dtype).expand(batch_size, -1, -1)
        uncond = None if uncond is None else uncond.to(dtype).expand(batch_size, -1, -1)

        f = vae_factor(pipe)
        shape = (pipe.unet.config.in_channels, s.height // f, s.width // f)
        noise, generators = initial_noise(seeds, shape)
        bar = tqdm(total=s.steps, desc="sampling", unit="step", disable=progress is False,
                   delay=PROGRESS_DELAY if progress is None else 0)

        def on_step(i, total, x, denoised):
            bar.update(1)
            if callback is not None:
                callback(i, total, x, denoised)

        try:
            latents = sample(s.sampler, pipe.unet, noise.to(device, dtype), pipe.scheduler.config,
                             steps=s.steps, cond=cond, uncond=uncond, guidance=float(s.guidance),
                             generator=generators, callback=on_step)
        finally:
            bar.close()
        images = pipe.image_processor.postprocess(decode(pipe, latents).float(), output_type="pil")

    for k, image in enumerate(images):
        settings = GenerationSettings(**{**s.__dict__, "seed": seeds[k], "extra": {}})
        image.info["parameters"] = settings.to_text()
    return images
