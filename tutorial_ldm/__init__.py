"""tutorial-ldm: from the Latent Diffusion Models paper to working text-to-image generation.

The public names below are imported on first use, so `import tutorial_ldm` stays quick and a
chapter that only needs the noise schedule never loads diffusers.
"""

import os
from importlib import import_module

# Before torch loads OpenMP (where it has not been imported yet): waiting worker threads sleep
# instead of spinning. On a busy 2-core machine two spinning threads took 16 s for an image that
# sleeping ones made in 1.8 s and one thread in 0.9 s (bench/threads.py; see devices.cpu_threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# A kernel started in Chinese (TUTORIAL_LDM_LANG=zh, e.g. by `make lab LAB_LANG=zh`) draws its
# figures with a CJK font from the start, as `set_language("zh")` would arrange.
if os.environ.get("TUTORIAL_LDM_LANG", "").strip() == "zh":
    from .fonts import use_cjk_font

    use_cjk_font()

# public name -> module that defines it
_EXPORTS = {
    "TinyLDMConfig": "tiny_model",
    "studio": "studio",
    "analyze": "metrics",
    "adherence": "metrics",
    "NoiseSchedule": "noise_schedule",
    "SCHEDULES": "noise_schedule",
    "make_betas": "noise_schedule",
    "rescale_zero_terminal_snr": "noise_schedule",
    "q_sample": "noise_schedule",
    "q_step": "noise_schedule",
    "forward_chain": "noise_schedule",
    "snr": "noise_schedule",
    "check": "exercises",
    "check_q_sample": "exercises",
    "SAMPLERS": "samplers",
    "A1111_NAMES": "samplers",
    "sample": "samplers",
    "sampler_name": "samplers",
    "to_diffusers": "samplers",
    "load_pipeline": "loading",
    "list_models": "loading",
    "generate": "generation",
    "generate_many": "generation",
    "img2img": "image_to_image",
    "inpaint": "image_to_image",
    "read_parameters": "parameters",
    "save_image": "parameters",
    "GenerationSettings": "settings",
    "SettingsError": "settings",
    "defaults_for": "settings",
    "validate": "settings",
    "default_device": "devices",
    "cpu_threads": "devices",
    "parse_prompt_attention": "prompts",
    "encode_prompts": "prompts",
    "build_sd15_pipeline": "sd_architecture",
    "psnr": "autoencoder",
    "kl_divergence": "autoencoder",
    "slerp": "autoencoder",
    "interpolate": "autoencoder",
    "f_config": "autoencoder",
    "f_tradeoff": "autoencoder",
    "load_f_autoencoders": "autoencoder",
    "unet_flops": "autoencoder",
    "timestep_embedding": "unet",
    "denoising_loss": "unet",
    "unet_anatomy": "unet",
    "cross_attention": "attention",
    "record_cross_attention": "attention",
    "AttentionStore": "attention",
    "classifier_free_guidance": "guidance",
    "guidance_sweep": "guidance",
    "check_kl_divergence": "exercises",
    "check_timestep_embedding": "exercises",
    "check_attention": "exercises",
    "check_ddim_step": "exercises",
    "check_emphasize": "exercises",
    "check_inpaint_blend": "exercises",
    "check_merge_lora": "exercises",
    "set_language": "language",
    "current_language": "language",
    "say": "language",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'tutorial_ldm' has no attribute {name!r}")
