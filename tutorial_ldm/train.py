"""Training the tiny LDM the way the paper trains its text-to-image model, in two stages.

1. The autoencoder (paper Sec. 3.1): reconstruction loss plus a small KL pull towards N(0, I),
   on the world's images and crops of scikit-image's bundled photos.
2. The text encoder τ_θ and the UNet ε_θ jointly (paper Eq. 3) on latents cached once from the
   frozen autoencoder, with caption dropout so that one model is both conditional and
   unconditional (classifier-free guidance).

Every batch is a pure function of (seed, stage, step), so a run resumed from its last checkpoint
continues exactly as if it had never stopped. Checkpoints are safetensors files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import world
from .devices import default_device
from .tiny_model import (
    TinyLDMConfig,
    build_autoencoder,
    build_pipeline,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    scheduler_config,
)

# scikit-image photos mixed into the autoencoder's data; astronaut is held out for chapter 2.
TRAINING_PHOTOS = ("coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                   "retina", "colorwheel")


@dataclass
class TrainConfig:
    seed: int = 0
    # stage 1: autoencoder
    vae_steps: int = 2400
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # "tiny KL": keeps the latent space smooth without blurring it
    photo_fraction: float = 0.125  # share of each autoencoder batch that is photo crops
    # latents cached from the frozen autoencoder
    n_latents: int = 24_000
    # stage 2: text encoder + UNet
    unet_steps: int = 8000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
    checkpoint_every: int = 250
    log_every: int = 10
    threads: int = 0  # CPU threads for torch; 0 = every core


def step_rng(seed: int, stage: int, step: int) -> np.random.Generator:
    """The random stream of one training step: the same whether or not the run was resumed."""
    return np.random.default_rng([seed, stage, step])


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stage, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    """Learning-rate multiplier: linear warm-up, then cosine decay to `floor`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ----------------------------------------------------------------------------- checkpoints


def save_state(path: Path, step: int, modules: dict, optimizer, log: list) -> None:
    """Models, optimizer and loss log in one safetensors file, written atomically."""
    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    opt = optimizer.state_dict()
    tensors |= {f"optim.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
    meta = {"step": step, "param_groups": opt["param_groups"], "log": log}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu() for k, v in tensors.items()}, tmp,
              metadata={"state": json.dumps(meta)})
    tmp.replace(path)


def load_state(path: Path, modules: dict, optimizer) -> tuple[int, list]:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(path)
    for name, m in modules.items():
        prefix = name + "."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["log"]


def _run_loop(stage: str, run_dir: Path, modules: dict, optimizer, lr_at_step, steps: int,
              cfg: TrainConfig, loss_at_step) -> list:
    """The shared training loop: resume, step, log, checkpoint. Returns the loss log."""
    ckpt = run_dir / f"{stage}_state.safetensors"
    start, log = 0, []
    if ckpt.exists():
        start, log = load_state(ckpt, modules, optimizer)
    for m in modules.values():
        m.train()
    bar = tqdm(range(start, steps), desc=stage, initial=start, total=steps)
    running = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(step)
        loss = loss_at_step(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % cfg.log_every == 0:
            log.append([step, loss.item()])
            bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            save_state(ckpt, step + 1, modules, optimizer, log)
    for m in modules.values():
        m.eval()
    return log


# ----------------------------------------------------------------------------- stage 1


def photo_bank(device) -> list[torch.Tensor]:
    """scikit-image's bundled photos at two scales, as (3, H, W) tensors in [-1, 1]."""
    import skimage.data

    bank = []
    for name in TRAINING_PHOTOS:
        img = torch.from_numpy(getattr(skimage.data, name)()[..., :3].copy())
        img = img.permute(2, 0, 1)[None].float() / 127.5 - 1
        for short_side in (96, 192):
            scale = short_side / min(img.shape[-2:])
            bank.append(F.interpolate(img, scale_factor=scale, mode="bilinear",
                                      antialias=True)[0].to(device))
    return bank


def autoencoder_batch(cfg: TrainConfig, step: int, photos: list, device) -> torch.Tensor:
    rng = step_rng(cfg.seed, 1, step)
    n_photos = round(cfg.photo_fraction * cfg.vae_batch)
    scenes = world.sample_scenes(cfg.vae_batch - n_photos, int(rng.integers(2**31)))
    batch = [torch.from_numpy(world.render_batch(scenes)).to(device)]
    for _ in range(n_photos):
        img = photos[rng.integers(len(photos))]
        y = rng.integers(img.shape[1] - world.IMAGE_SIZE + 1)
        x = rng.integers(img.shape[2] - world.IMAGE_SIZE + 1)
        batch.append(img[None, :, y:y + world.IMAGE_SIZE, x:x + world.IMAGE_SIZE])
    return torch.cat(batch)


def train_autoencoder(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path):
    device = default_device()
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(model_cfg).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr)
    schedule = warmup_cosine(100, cfg.vae_steps)
    photos = photo_bank(device)

    def loss_at_step(step):
        x = autoencoder_batch(cfg, step, photos, device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=step_generator(cfg.seed, 1, step)).to(device)
        recon = vae.decode(z).sample
        kl = posterior.kl().mean()  # summed over latent elements, averaged over the batch
        return F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg.kl_weight * kl

    log = _run_loop("autoencoder", run_dir, {"vae": vae}, optimizer,
                    lambda step: cfg.vae_lr * schedule(step), cfg.vae_steps, cfg, loss_at_step)
    return vae.cpu(), log


# ----------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_world(vae, n: int, seed: int, batch: int = 256):
    """Encode `n` world scenes once: posterior means and stds, with their captions."""
    scenes = world.sample_scenes(n, seed)
    device = next(vae.parameters()).device
    means, stds = [], []
    for i in tqdm(range(0, n, batch), desc="encoding latents"):
        x = torch.from_numpy(world.render_batch(scenes[i:i + batch])).to(device)
        posterior = vae.encode(x).latent_dist
        means.append(posterior.mean.cpu().contiguous())
        stds.append(posterior.std.cpu().contiguous())
    return torch.cat(means), torch.cat(stds), [s.caption for s in scenes]


def measure_scaling_factor(means: torch.Tensor, stds: torch.Tensor, seed: int = 0) -> float:
    """1 / std of posterior samples: scales latents to unit variance (SD 1.x measured 0.18215)."""
    samples = means + stds * torch.randn(means.shape, generator=torch.Generator().manual_seed(seed))
    return float(1.0 / samples.std())


# ----------------------------------------------------------------------------- stage 2


def train_denoiser(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path, latents: dict,
                   stage: str = "denoiser"):
    """Text encoder + UNet from scratch on cached latents (paper Eq. 3, v-prediction)."""
    from diffusers import DDPMScheduler

    device = default_device()
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(model_cfg)
    text_encoder = build_text_encoder(model_cfg, tokenizer).to(device)
    unet = build_unet(model_cfg).to(device)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in scheduler_config(model_cfg).items()
                                       if k not in ("set_alpha_to_one", "steps_offset")})
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    schedule = warmup_cosine(cfg.warmup, cfg.unet_steps)

    def token_ids(captions):
        return tokenizer(captions, padding="max_length", max_length=model_cfg.max_tokens,
                         truncation=True, return_tensors="pt").input_ids

    all_ids = token_ids(latents["captions"])
    empty_ids = token_ids([""])[0]
    means, stds, scale = latents["means"], latents["stds"], latents["scaling_factor"]

    def loss_at_step(step):
        rng = step_rng(cfg.seed, 2, step)
        gen = step_generator(cfg.seed, 2, step)
        idx = torch.from_numpy(rng.integers(len(means), size=cfg.unet_batch))
        ids = all_ids[idx].clone()
        ids[torch.from_numpy(rng.random(cfg.unet_batch) < cfg.caption_dropout)] = empty_ids
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, model_cfg.num_train_timesteps, (cfg.unet_batch,), generator=gen)
        z_t = noise_scheduler.add_noise(z0, noise, t)
        if model_cfg.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(z0, noise, t)
        else:
            target = noise
        context = text_encoder(ids.to(device))[0]
        pred = unet(z_t.to(device), t.to(device), context).sample
        return F.mse_loss(pred, target.to(device))

    log = _run_loop(stage, run_dir, {"text_encoder": text_encoder, "unet": unet}, optimizer,
                    lambda step: cfg.unet_lr * schedule(step), cfg.unet_steps, cfg, loss_at_step)
    return tokenizer, text_encoder.cpu(), unet.cpu(), log


# ----------------------------------------------------------------------------- the recipe


def train(run_dir: str | Path, cfg: TrainConfig | None = None,
          model_cfg: TinyLDMConfig | None = None, export_to: str | Path | None = None):
    """The whole recipe, resumable: re-running with the same `run_dir` continues where it stopped.

    Returns the assembled `StableDiffusionPipeline`; `export_to` also saves it there.
    """
    from diffusers import AutoencoderKL

    cfg, model_cfg = cfg or TrainConfig(), model_cfg or TinyLDMConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    (run_dir / "config.json").write_text(json.dumps(
        {"train": asdict(cfg), "model": asdict(model_cfg)}, indent=2))

    vae_dir = run_dir / "vae"
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
    else:
        vae, _ = train_autoencoder(cfg, model_cfg, run_dir)
        vae.save_pretrained(vae_dir)

    cache = run_dir / "latents.safetensors"
    if cache.exists():
        tensors = load_file(cache)
        meta = json.loads((run_dir / "latents.json").read_text())
    else:
        means, stds, captions = encode_world(vae.to(default_device()).eval(), cfg.n_latents,
                                             seed=cfg.seed + 1)
        vae.cpu()
        tensors = {"means": means.contiguous(), "stds": stds.contiguous()}
        meta = {"captions": captions, "scaling_factor": measure_scaling_factor(means, stds)}
        save_file(tensors, cache)
        (run_dir / "latents.json").write_text(json.dumps(meta))
    latents = {**tensors, **meta}
    vae.register_to_config(scaling_factor=meta["scaling_factor"])

    tokenizer, text_encoder, unet, _ = train_denoiser(cfg, model_cfg, run_dir, latents)
    pipe = build_pipeline(model_cfg, vae.eval(), text_encoder.eval(), tokenizer, unet.eval())
    if export_to is not None:
        pipe.save_pretrained(export_to, safe_serialization=True)
    return pipe


# ----------------------------------------------------------------------------- live recipe

# Chapter 3 trains a text encoder + UNet from scratch in a notebook cell, on the shipped
# autoencoder's latents: a smaller UNet, fewer latents, a short warm-up, no checkpoints.
LIVE_TRAIN = TrainConfig(n_latents=4000, unet_steps=1000, unet_lr=2e-3, warmup=50,
                         checkpoint_every=10**9)
LIVE_MODEL = TinyLDMConfig(unet_channels=(32, 64, 64))


def train_live(vae, run_dir: str | Path, cfg: TrainConfig = LIVE_TRAIN,
               model_cfg: TinyLDMConfig = LIVE_MODEL):
    """Text encoder + UNet from scratch on `vae`'s latents; returns a ready pipeline and the
    loss log [(step, loss), ...]. With the defaults it takes a few CPU minutes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    means, stds, captions = encode_world(vae.eval(), cfg.n_latents, seed=cfg.seed + 1)
    latents = {"means": means, "stds": stds, "captions": captions,
               "scaling_factor": vae.config.scaling_factor}
    tokenizer, text_encoder, unet, log = train_denoiser(cfg, model_cfg, run_dir, latents,
                                                        stage="live")
    return build_pipeline(model_cfg, vae, text_encoder.eval(), tokenizer, unet.eval()), log
