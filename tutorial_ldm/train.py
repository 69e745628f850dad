"""Training the tiny LDM the way the paper trains its text-to-image model, in two stages.

1. The autoencoder (paper Sec. 3.1): reconstruction loss plus a small KL pull towards N(0, I),
   on the world's images and crops of scikit-image's bundled photos.
2. The text encoder τ_θ and the UNet ε_θ jointly (paper Eq. 3) on latents cached once from the
   frozen autoencoder, with caption dropout so that one model is both conditional and
   unconditional (classifier-free guidance).

Stage 2's loss is the lessons' own: the forward process q(z_t | z_0) of chapter 1
(`noise_schedule`, DDPM Eq. 4) inside the LDM objective of chapter 3 (`unet.denoising_loss`, paper
Eq. 3), on the schedule the pipeline samples with.

A run folder holds, per stage, one artefact that is whole or absent (written to a temporary name,
then renamed) and records the recipe it was made with:

    autoencoder_state.safetensors   vae/   latents.safetensors + latents.json   denoiser_state.safetensors

Rerunning resumes from them; an artefact that is damaged, or was made with another recipe, is
reported in one line and rebuilt, with everything downstream of it. Every batch is a pure function
of (seed, stage, step), so a run resumed from its last checkpoint continues exactly as if it had
never stopped. Checkpoints are safetensors files.

Several processes (`accelerate launch`, one per GPU or machine): every process draws the whole
batch of a step, as above, and trains on its share of it (`split_between_processes`); accelerate
averages the gradients, so n processes with batch b each take the steps one process takes with
batch n·b. Only the main process prints, and writes files (after `wait_for_everyone`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import world
from .devices import accelerator, default_device, is_main_process
from .noise_schedule import NoiseSchedule
from .tiny_model import (
    TinyLDMConfig,
    build_autoencoder,
    build_pipeline,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    scheduler_config,
)
from .unet import denoising_loss

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
    # L1 between the images' finite differences: keeps edges and corners (a triangle's apex)
    # sharp; 0 in the first edition, whose blurred small triangles read as circles
    edge_weight: float = 0.0
    # weigh each world image's reconstruction error by 1 / (shape-background colour distance),
    # so that low-contrast pairs (orange on red) are reconstructed as sharply as high-contrast ones
    contrast_weighting: bool = False
    # share of the world scenes in each autoencoder batch redrawn as hard cases: small (16 px)
    # shapes on a coloured or black background, the scenes whose round trip loses their shape
    hard_fraction: float = 0.0
    # EQ-VAE (Kouzelis et al. 2025): weight of a second reconstruction each step, of the images
    # rotated by a multiple of 90° and/or halved, decoded from their latents transformed alike, so
    # that the latent space follows the image's geometry, which the paper finds makes it easier
    # for the denoiser to learn; 0 = off
    equivariance_weight: float = 0.0
    # latents cached from the frozen autoencoder
    n_latents: int = 24_000
    # stage 2: text encoder + UNet
    unet_steps: int = 8000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup: int = 200
    caption_dropout: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
    # z0 is a fresh sample of q(z | x) each step, as SD trains; False: the posterior mean, the
    # latent without the encoder's noise (bench/README.md: 72.2 % shape against 77.8 % with samples)
    posterior_sample: bool = True
    # share of each batch whose t is drawn around the middle of the trajectory instead of
    # uniformly: t = T·sigmoid(u), u ~ N(0, 1), SD3's logit-normal density (Esser et al. 2024).
    # The middle (t ≈ 400-600) is where a blob's corners are drawn (bench/shape_by_noise_level.py),
    # but half of t there taught no more shape (bench/README.md, fourth round)
    mid_timestep_fraction: float = 0.0
    # Min-SNR-γ loss weighting (Hang et al. 2023, diffusers' `--snr_gamma`): each sample's loss
    # weighed by min(SNR_t, γ) / (SNR_t + 1) for v-prediction: the plain loss weighs the picture's
    # error by SNR_t + 1, most on the nearly noise-free steps; 0 = off (plain loss). bench/README.md,
    # sixth round: shape 93 % but position 19 %, and with 2,000 plain steps after it 98 % and 82 %
    snr_gamma: float = 0.0
    # a cap on the weight the plain loss already gives the picture's error (SNR_t + 1 for a v
    # target, SNR_t for ε): each sample's loss × min(1, cap / that weight). The nearly noise-free
    # steps are weighed down as by Min-SNR, while the noisy ones, where the layout is decided, keep
    # theirs (Min-SNR's v weight falls to 0 there); 0 = off. bench/README.md, sixth round: position
    # kept, and no shape gained
    loss_weight_cap: float = 0.0
    # a second phase of stage 2 after the `unet_steps`: this many steps of the plain loss (neither
    # weighting above), the learning rate warmed up again to `plain_lr` and decayed (a warm restart,
    # Loshchilov & Hutter 2017). Min-SNR leaves the layout, decided on the noisiest steps, untrained;
    # these steps relearn it and keep the shapes (bench/README.md, sixth round); 0 = none
    plain_steps: int = 0
    plain_lr: float = 3e-4
    # with Chinese captions: each Chinese word's embedding starts as its English translation's
    # (`world.translations`), as textual inversion starts a new word at an initializer token, so
    # that the UNet learns each attribute once for both languages instead of once for each
    # (bench/README.md: 77.8 % shape after 8,000 steps, 51 % from random Chinese embeddings)
    chinese_from_english: bool = True
    # with Chinese captions: each Chinese word and its English translation share one embedding
    # for the whole run (their gradients summed), as if they were one token; implies the start above
    # (bench/README.md, fourth round: 74.1 % shape on 540 prompts, 71.5 % without)
    tie_chinese_to_english: bool = False
    # exponential moving average of the text encoder's and UNet's weights, exported instead of the
    # last ones (the paper's models use 0.9999); 0 = off. Its first steps average over fewer
    # (decay (1 + n) / (10 + n) after n updates, as diffusers' EMAModel), so it never remembers
    # the random initialisation
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    log_every: int = 10
    threads: int = 0  # CPU threads for torch; 0 = every core


# What each stage's result depends on besides the stages before it; everything else in the two
# configs belongs to the denoiser. These settings change how a run goes, not what it makes.
NOT_RECIPE = ("checkpoint_every", "log_every", "threads")
AUTOENCODER_FIELDS = ("seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "photo_fraction",
                      "edge_weight", "contrast_weighting", "hard_fraction", "equivariance_weight",
                      "vae_channels", "vae_layers_per_block", "latent_channels")
LATENT_FIELDS = ("n_latents",)

# field -> (smallest allowed value, what is allowed): one home for the recipe's bounds
INTEGER_BOUNDS = {
    "seed": (0, "an integer ≥ 0"),
    "vae_steps": (1, "an integer ≥ 1"),
    "vae_batch": (1, "an integer ≥ 1"),
    "n_latents": (1, "an integer ≥ 1"),
    "unet_steps": (1, "an integer ≥ 1"),
    "unet_batch": (1, "an integer ≥ 1"),
    "warmup": (0, "an integer ≥ 0"),
    "plain_steps": (0, "an integer ≥ 0"),
    "checkpoint_every": (1, "an integer ≥ 1"),
    "log_every": (1, "an integer ≥ 1"),
    "threads": (0, "an integer ≥ 0 (0: every core)"),
}
FRACTIONS = ("photo_fraction", "caption_dropout", "hard_fraction", "mid_timestep_fraction")
POSITIVE = ("vae_lr", "unet_lr", "plain_lr")
NON_NEGATIVE = ("kl_weight", "edge_weight", "equivariance_weight", "snr_gamma", "loss_weight_cap")


def check_config(cfg: TrainConfig) -> TrainConfig:
    """`cfg` if every value is usable; otherwise ValueError naming the field, its value and what
    is allowed (one line: the CLI prints it as it is)."""
    for name, (low, allowed) in INTEGER_BOUNDS.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be {allowed}")
    for name in (*FRACTIONS, *POSITIVE, *NON_NEGATIVE, "ema_decay"):
        value = getattr(cfg, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if name in FRACTIONS and not (ok and 0 <= value <= 1):
            raise ValueError(f"{name}={value!r} must be a number from 0 to 1")
        if name in POSITIVE and not (ok and value > 0):
            raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if name in NON_NEGATIVE and not (ok and value >= 0):
            raise ValueError(f"{name}={value!r} must be a finite number ≥ 0")
        if name == "ema_decay" and not (ok and 0 <= value < 1):
            raise ValueError(f"{name}={value!r} must be a number from 0 (off) up to, not including, 1")
    return cfg


def stage_recipes(cfg: TrainConfig, model_cfg: TinyLDMConfig) -> dict[str, dict]:
    """Per stage, the settings its result depends on, its upstream stages' included (JSON form)."""
    settings = json.loads(json.dumps({**asdict(cfg), **asdict(model_cfg)}))
    for name in NOT_RECIPE:
        settings.pop(name)
    autoencoder = {k: settings.pop(k) for k in AUTOENCODER_FIELDS}
    latents = {**autoencoder, **{k: settings.pop(k) for k in LATENT_FIELDS}}
    return {"autoencoder": autoencoder, "latents": latents, "denoiser": {**latents, **settings}}


def recipe_changes(old: dict | None, new: dict) -> str:
    """"vae_steps 400 → 2400, n_latents 512 → 1024": what differs between two recipes."""
    if old is None:
        return "no recipe recorded"

    def short(value):  # a sha256 is recognisable by its first digits
        text = "(unset)" if value is None else str(value)
        return text[:12] + "…" if len(text) > 24 else text

    keys = list(dict.fromkeys([*new, *old]))
    return ", ".join(f"{k} {short(old.get(k))} → {short(new.get(k))}"
                     for k in keys if old.get(k) != new.get(k))


def _note(message: str) -> None:
    """One line about the run folder, between the progress bars (from the main process)."""
    if is_main_process():
        tqdm.write(message, file=sys.stderr)


# ----------------------------------------------------------------------------- files


def write_atomic(path: Path, write) -> None:
    """`write(tmp)` to a temporary sibling, then rename it to `path` (a file or a folder), so a
    kill at any moment leaves `path` whole or absent, never half-written."""
    tmp = path.with_name(path.name + ".tmp")
    _remove(tmp)
    write(tmp)
    if path.is_dir():
        _remove(path)  # os.replace cannot rename over a non-empty folder
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    """Delete a file, a folder or a link (not what it points to), if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def file_digest(path: Path) -> str:
    """sha256 of a file: ties a cache to the exact weights it was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A cache that fails to load with one of these is damaged (truncated, missing a part, not JSON).
DAMAGED = (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


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


def save_state(path: Path, step: int, modules: dict, optimizer, log: list,
               recipe: dict | None = None) -> None:
    """Models, optimizer, loss log and the recipe in one safetensors file, written atomically."""
    tensors = {f"{name}.{k}": v.contiguous() for name, m in modules.items()
               for k, v in m.state_dict().items()}
    opt = optimizer.state_dict()
    tensors |= {f"optim.{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
    meta = {"step": step, "param_groups": opt["param_groups"], "log": log, "recipe": recipe}
    write_atomic(path, lambda tmp: save_file({k: v.detach().cpu() for k, v in tensors.items()},
                                             tmp, metadata={"state": json.dumps(meta)}))


def state_meta(path: Path) -> dict:
    """A checkpoint's step, optimizer groups, loss log and recipe, without its tensors."""
    with safe_open(path, "pt") as f:
        return json.loads(f.metadata()["state"])


def load_state(path: Path, modules: dict, optimizer) -> tuple[int, list]:
    meta = state_meta(path)
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


def _resume(ckpt: Path, stage: str, modules: dict, optimizer, recipe: dict) -> tuple[int, list]:
    """Where a stage starts: its checkpoint's step if that is whole and of this recipe, else 0."""
    if not ckpt.exists():
        return 0, []
    try:
        old = state_meta(ckpt).get("recipe")
        if old == recipe:
            return load_state(ckpt, modules, optimizer)
        _note(f"{ckpt}: another recipe ({recipe_changes(old, recipe)}); {stage} starts again")
    except DAMAGED as e:
        _note(f"{ckpt} is damaged ({_one_line(e)}); {stage} starts again")
    return 0, []


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _run_loop(stage: str, run_dir: Path, modules: dict, optimizer, lr_at_step, steps: int,
              cfg: TrainConfig, loss_at_step, recipe: dict, acc, after_step=None) -> list:
    """The shared training loop: resume, step, log, checkpoint. Returns the loss log.
    `modules` are the bare models a checkpoint holds, `optimizer` the one `acc` prepared;
    `after_step()` runs after each optimizer step (the weight average's update)."""
    ckpt = run_dir / f"{stage}_state.safetensors"
    start, log = _resume(ckpt, stage, modules, optimizer, recipe)
    for m in modules.values():
        m.train()
    bar = tqdm(range(start, steps), desc=stage, initial=start, total=steps,
               disable=not acc.is_local_main_process)
    running = None
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(step)
        loss = loss_at_step(step)
        optimizer.zero_grad(set_to_none=True)
        acc.backward(loss)
        optimizer.step()
        if after_step is not None:
            after_step()
        loss = acc.reduce(loss.detach(), "mean").item()  # the whole batch's: every share's mean
        running = loss if running is None else 0.95 * running + 0.05 * loss
        if step % cfg.log_every == 0:
            log.append([step, loss])
            bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_state(ckpt, step + 1, modules, optimizer, log, recipe)
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


# Contrast weighting: weight = CONTRAST_REFERENCE / (RGB distance of shape and background), at most
# MAX_CONTRAST_WEIGHT; white and black backgrounds are ~250-350 away, orange on red ~110.
CONTRAST_REFERENCE = 200.0
MAX_CONTRAST_WEIGHT = 4.0


def contrast_weight(scene: world.Scene) -> float:
    distance = np.linalg.norm(np.subtract(world.COLOURS[scene.colour],
                                          world.BACKGROUNDS[scene.background]))
    return float(min(MAX_CONTRAST_WEIGHT, CONTRAST_REFERENCE / distance))


def hard_scene(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """`scene` made small, on a background drawn from the colours and black (never white, never
    the shape's own colour): the low-contrast, sub-latent-cell detail an f = 4 autoencoder blurs."""
    backgrounds = [b for b in world.BACKGROUNDS if b not in ("white", scene.colour)]
    return replace(scene, size="small", background=str(rng.choice(backgrounds)))


def autoencoder_batch(cfg: TrainConfig, step: int, photos: list, device, batch: int | None = None):
    """Step `step`'s `batch` images (default `cfg.vae_batch`; world scenes, then photo crops)
    and each one's loss weight."""
    rng = step_rng(cfg.seed, 1, step)
    batch = batch or cfg.vae_batch
    n_photos = round(cfg.photo_fraction * batch)
    scenes = world.sample_scenes(batch - n_photos, int(rng.integers(2**31)))
    if cfg.hard_fraction:
        n_hard = round(cfg.hard_fraction * len(scenes))
        scenes = [hard_scene(s, rng) for s in scenes[:n_hard]] + scenes[n_hard:]
    batch = [torch.from_numpy(world.render_batch(scenes)).to(device)]
    for _ in range(n_photos):
        img = photos[rng.integers(len(photos))]
        y = rng.integers(img.shape[1] - world.IMAGE_SIZE + 1)
        x = rng.integers(img.shape[2] - world.IMAGE_SIZE + 1)
        batch.append(img[None, :, y:y + world.IMAGE_SIZE, x:x + world.IMAGE_SIZE])
    weights = [contrast_weight(s) if cfg.contrast_weighting else 1.0 for s in scenes]
    return torch.cat(batch), torch.tensor(weights + [1.0] * n_photos, device=device)


def edge_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between horizontal and vertical finite differences: an edge-aware reconstruction term."""
    return (F.l1_loss(recon.diff(dim=-1), x.diff(dim=-1))
            + F.l1_loss(recon.diff(dim=-2), x.diff(dim=-2)))


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Stage 1's pixel loss, L1 + MSE, one value per image."""
    error = (recon - x).flatten(1)
    return error.abs().mean(1) + error.pow(2).mean(1)


def spatial_transform(rotations: int, halve: bool):
    """τ for EQ-VAE: a rotation by `rotations` × 90°, then with `halve` a 2 × 2 average pool,
    the same function for images and latents (f = 4 either way: a halved 64 × 64 image is the
    size the decoder draws from a halved 16 × 16 latent)."""
    def apply(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, rotations, dims=(-2, -1))
        return F.avg_pool2d(t, 2) if halve else t
    return apply


def draw_spatial_transform(cfg: TrainConfig, step: int):
    """Step `step`'s τ, one of the seven that are not the identity (its own random stream, so
    that every other draw of the step is the same as without it)."""
    rotations, halve = divmod(int(step_rng(cfg.seed, 3, step).integers(1, 8)), 2)
    return spatial_transform(rotations, bool(halve))


class AutoencoderPass(torch.nn.Module):
    """The autoencoder's training pass as one `forward`: encode, sample z = μ + σ·ε, decode.
    (A model's gradients are averaged between processes for what its `forward` computed, so
    encode and decode go through one.) Returns the reconstruction, each image's KL term, and
    with `transform` also D(τ(z)), what EQ-VAE compares with τ(x) (else None)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, noise: torch.Tensor, transform=None):
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * noise
        recon = self.vae.decode(z).sample
        transformed = None if transform is None else self.vae.decode(transform(z)).sample
        return recon, posterior.kl(), transformed  # KL summed over latent elements, one per image


def train_autoencoder(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path, start_from=None,
                      encoder_only: bool = False):
    """Stage 1 from scratch, or (for experiments) on from the weights of `start_from`, with
    `encoder_only` the decoder frozen (the encoder learns the latents the decoder draws best)."""
    acc = accelerator()
    device = acc.device
    torch.manual_seed(cfg.seed)
    vae = build_autoencoder(model_cfg).to(device)
    if start_from is not None:
        vae.load_state_dict(start_from.state_dict())
    if encoder_only:
        vae.decoder.requires_grad_(False)
        vae.post_quant_conv.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in vae.parameters() if p.requires_grad], lr=cfg.vae_lr)
    autoencoder_pass, optimizer = acc.prepare(AutoencoderPass(vae), optimizer)
    schedule = warmup_cosine(100, cfg.vae_steps)
    photos = photo_bank(device)
    latent_shape = (model_cfg.latent_channels, model_cfg.latent_size, model_cfg.latent_size)

    def loss_at_step(step):
        x, weights = autoencoder_batch(cfg, step, photos, device, cfg.vae_batch * acc.num_processes)
        noise = torch.randn((len(x), *latent_shape), generator=step_generator(cfg.seed, 1, step))
        with acc.split_between_processes({"x": x, "weights": weights, "noise": noise}) as mine:
            x, weights = mine["x"], mine["weights"]
            transform = draw_spatial_transform(cfg, step) if cfg.equivariance_weight else None
            recon, kl, transformed = autoencoder_pass(x, mine["noise"].to(device), transform)
        loss = (weights * reconstruction_loss(recon, x)).mean() + cfg.kl_weight * kl.mean()
        if cfg.edge_weight:
            loss = loss + cfg.edge_weight * edge_loss(recon, x)
        if transformed is not None:
            loss = loss + cfg.equivariance_weight * (
                weights * reconstruction_loss(transformed, transform(x))).mean()
        return loss

    log = _run_loop("autoencoder", run_dir, {"vae": vae}, optimizer,
                    lambda step: cfg.vae_lr * schedule(step), cfg.vae_steps, cfg, loss_at_step,
                    stage_recipes(cfg, model_cfg)["autoencoder"], acc)
    return acc.unwrap_model(autoencoder_pass).vae.cpu(), log


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


def denoiser_batch(cfg: TrainConfig, model_cfg: TinyLDMConfig, latents: dict, step: int,
                   batch: int | None = None):
    """Step `step`'s draw for Eq. 3: (z0, ε, t, caption) for each of `batch` samples (default
    `cfg.unet_batch`). z0 is a posterior sample (with `posterior_sample=False` the mean), scaled
    to unit variance; the caption is an index into `caption_table`: the latent's English caption,
    or (with "zh", half the time) its Chinese one, or -1, the empty prompt (dropout)."""
    rng = step_rng(cfg.seed, 2, step)
    gen = step_generator(cfg.seed, 2, step)
    batch = batch or cfg.unet_batch
    means, stds, scale = latents["means"], latents["stds"], latents["scaling_factor"]
    idx = torch.from_numpy(rng.integers(len(means), size=batch))
    dropped = torch.from_numpy(rng.random(batch) < cfg.caption_dropout)
    mean = means[idx]
    spread = torch.randn(mean.shape, generator=gen)  # drawn either way: the same ε and t follow
    z0 = (mean + stds[idx] * spread if cfg.posterior_sample else mean) * scale
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.randint(0, model_cfg.num_train_timesteps, (batch,), generator=gen)
    captions = idx
    if "zh" in model_cfg.languages:
        captions = idx + len(means) * torch.from_numpy(rng.random(batch) < 0.5)
    if cfg.mid_timestep_fraction:  # drawn last, so that every other draw stays as without it
        mid = (torch.sigmoid(torch.randn(batch, generator=gen)) * model_cfg.num_train_timesteps).long()
        chosen = torch.from_numpy(rng.random(batch) < cfg.mid_timestep_fraction)
        t = torch.where(chosen, mid.clamp(max=model_cfg.num_train_timesteps - 1), t)
    return z0, noise, t, torch.where(dropped, -1, captions)


def caption_table(cfg: TrainConfig, model_cfg: TinyLDMConfig, latents: dict) -> list[str]:
    """The captions `denoiser_batch` indexes: English, then Chinese (with "zh"), then ""."""
    chinese = []
    if "zh" in model_cfg.languages:
        chinese = world.chinese_captions(latents["captions"], cfg.seed)
    return [*latents["captions"], *chinese, ""]


def start_chinese_from_english(text_encoder, tokenizer) -> int:
    """Copy each Chinese content word's token embedding from its English translation's
    (`world.translations`); returns how many words were set."""
    table = text_encoder.get_input_embeddings().weight
    pairs = [(tokenizer.convert_tokens_to_ids(zh), tokenizer.convert_tokens_to_ids(en))
             for zh, en in world.translations().items()]
    with torch.no_grad():
        for zh, en in pairs:
            table[zh] = table[en]
    return len(pairs)


def tie_chinese_to_english(text_encoder, tokenizer) -> None:
    """Make each Chinese word's token embedding move with its English translation's: the rows
    start equal (`start_chinese_from_english`) and every gradient is summed over each group of
    tied rows, so that AdamW gives them the same update and they stay equal."""
    table = text_encoder.get_input_embeddings().weight
    start_chinese_from_english(text_encoder, tokenizer)
    group = torch.arange(len(table))
    for zh, en in world.translations().items():
        group[tokenizer.convert_tokens_to_ids(zh)] = tokenizer.convert_tokens_to_ids(en)
    group = group.to(table.device)

    def summed_over_groups(grad):
        return torch.zeros_like(grad).index_add_(0, group, grad)[group]

    table.register_hook(summed_over_groups)


def snr_and_plain_weight(noise_schedule, t: torch.Tensor, prediction_type: str):
    """SNR_t, and the weight the plain loss already puts on the x0 error: SNR_t + 1 for a v
    target, SNR_t for ε (‖x̂0 − x0‖² is ‖v̂ − v‖² / (SNR_t + 1), or ‖ε̂ − ε‖² / SNR_t)."""
    snr = compute_snr(noise_schedule, t)
    return snr, snr + 1 if prediction_type == "v_prediction" else snr


def min_snr_weight(noise_schedule, t: torch.Tensor, gamma: float,
                   prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): the weight min(SNR_t, γ) on the x0 error, expressed for the
    loss actually trained, ÷ the plain loss's own weight (as diffusers' training scripts do).
    At zero terminal SNR the v weight is 0 at t = T; for ε it is `capped_weight`, min(γ / SNR_t, 1),
    so that it stays 1 there instead of 0 / 0."""
    if prediction_type != "v_prediction":
        return capped_weight(noise_schedule, t, gamma, prediction_type)
    snr, plain = snr_and_plain_weight(noise_schedule, t, prediction_type)
    return snr.clamp(max=gamma) / plain


def capped_weight(noise_schedule, t: torch.Tensor, cap: float,
                  prediction_type: str) -> torch.Tensor:
    """min(1, cap / w_t), w_t the plain loss's weight on the x0 error: the x0 error is then weighed
    by min(w_t, cap). For ε this is Min-SNR-γ with γ = cap. For v they differ where SNR_t + 1 < cap:
    Min-SNR's weight there is SNR_t / (SNR_t + 1), down to 0 at t = T, and this one stays 1."""
    _, plain = snr_and_plain_weight(noise_schedule, t, prediction_type)
    return (cap / plain).clamp(max=1)


def denoiser_learning_rate(cfg: TrainConfig, step: int) -> float:
    """Stage 2's learning rate at `step`: warm-up and cosine decay over the `unet_steps` from
    `unet_lr`, then over the `plain_steps` the same again from `plain_lr`."""
    if step < cfg.unet_steps:
        return cfg.unet_lr * warmup_cosine(cfg.warmup, cfg.unet_steps)(step)
    return cfg.plain_lr * warmup_cosine(cfg.warmup, cfg.plain_steps)(step - cfg.unet_steps)


def weight_average(model: torch.nn.Module, decay: float):
    """An exponential moving average of `model`'s weights (torch's `AveragedModel`), with the
    warm-up of diffusers' EMAModel: after n updates it keeps min(decay, (1 + n) / (10 + n))."""
    from torch.optim.swa_utils import AveragedModel

    def average(averaged, current, n):
        keep = min(decay, (1 + int(n)) / (10 + int(n)))
        return keep * averaged + (1 - keep) * current

    return AveragedModel(model, avg_fn=average)


def train_denoiser(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path, latents: dict,
                   stage: str = "denoiser", schedule: dict | None = None, start_from=None):
    """Text encoder + UNet from scratch on cached latents: `unet.denoising_loss` (paper Eq. 3,
    v-prediction) on the forward process of `noise_schedule`, with the pipeline's own schedule
    (`scheduler_config(model_cfg)`, with `schedule`'s changes: e.g. `tiny_model.SD_SCHEDULE`).
    `start_from`: a pipeline of this architecture whose text encoder and UNet weights to continue
    from instead (for experiments, as `train_autoencoder`'s)."""
    acc = accelerator()
    device = acc.device
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(model_cfg)
    text_encoder = build_text_encoder(model_cfg, tokenizer).to(device)
    unet = build_unet(model_cfg).to(device)
    if start_from is not None:
        text_encoder.load_state_dict(start_from.text_encoder.state_dict())
        unet.load_state_dict(start_from.unet.state_dict())
    elif cfg.tie_chinese_to_english and "zh" in model_cfg.languages:
        tie_chinese_to_english(text_encoder, tokenizer)
    elif cfg.chinese_from_english and "zh" in model_cfg.languages:
        start_chinese_from_english(text_encoder, tokenizer)
    noise_schedule = NoiseSchedule.from_config(scheduler_config(model_cfg, schedule))
    alphas_cumprod = noise_schedule.alphas_cumprod.to(device)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    modules = {"text_encoder": text_encoder, "unet": unet}
    averages = {}
    if cfg.ema_decay:
        averages = {f"ema_{name}": weight_average(m, cfg.ema_decay) for name, m in modules.items()}

    def update_averages():
        for name, average in averages.items():
            average.update_parameters(modules[name.removeprefix("ema_")])

    text_encoder, unet, optimizer = acc.prepare(text_encoder, unet, optimizer)
    all_ids = tokenizer(caption_table(cfg, model_cfg, latents), padding="max_length",
                        max_length=model_cfg.max_tokens, truncation=True,
                        return_tensors="pt").input_ids

    def loss_at_step(step):
        draw = denoiser_batch(cfg, model_cfg, latents, step, cfg.unet_batch * acc.num_processes)
        with acc.split_between_processes(dict(zip(("z0", "noise", "t", "captions"), draw))) as mine:
            context = text_encoder(all_ids[mine["captions"]].to(device))[0]
            t = mine["t"].to(device)
            losses = denoising_loss(unet, mine["z0"].to(device), t, mine["noise"].to(device),
                                    context, alphas_cumprod, model_cfg.prediction_type)
            weighted = step < cfg.unet_steps  # the plain phase after them is not
            if cfg.snr_gamma and weighted:
                losses = losses * min_snr_weight(noise_schedule, t, cfg.snr_gamma,
                                                 model_cfg.prediction_type)
            if cfg.loss_weight_cap and weighted:
                losses = losses * capped_weight(noise_schedule, t, cfg.loss_weight_cap,
                                                model_cfg.prediction_type)
            return losses.mean()

    recipe = {**stage_recipes(cfg, model_cfg)["denoiser"],
              "vae_sha256": latents.get("recipe", {}).get("vae_sha256"),
              **({"schedule": schedule} if schedule else {})}
    log = _run_loop(stage, run_dir, {**modules, **averages}, optimizer,
                    lambda step: denoiser_learning_rate(cfg, step),
                    cfg.unet_steps + cfg.plain_steps, cfg, loss_at_step, recipe, acc,
                    update_averages if averages else None)
    if averages:
        text_encoder, unet = averages["ema_text_encoder"].module, averages["ema_unet"].module
        return tokenizer, text_encoder.cpu(), unet.cpu(), log
    return tokenizer, acc.unwrap_model(text_encoder).cpu(), acc.unwrap_model(unet).cpu(), log


# ----------------------------------------------------------------------------- the recipe


def check_run(run_dir: str | Path, cfg: TrainConfig, export_to: str | Path | None = None):
    """Everything `train` is given, checked before any work: ValueError in one line naming the
    bad value. Creates the run folder; returns (run_dir, export_to) as paths."""
    check_config(cfg)
    run_dir = Path(run_dir)
    for name, path in (("run_dir", run_dir), ("export_to", export_to)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise ValueError(f"{name}={str(path)!r} is a file; it must be a folder (or not exist yet)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, None if export_to is None else Path(export_to)


def cached_autoencoder(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path):
    """Stage 1's result, `run_dir/vae`: loaded if whole and of this recipe, else trained and saved
    (the folder with its `recipe.json` renamed into place in one step)."""
    from diffusers import AutoencoderKL

    vae_dir, recipe = run_dir / "vae", stage_recipes(cfg, model_cfg)["autoencoder"]
    if vae_dir.exists():
        try:
            old = json.loads((vae_dir / "recipe.json").read_text())
            if old == recipe:
                return AutoencoderKL.from_pretrained(vae_dir)
            _note(f"{vae_dir}: another recipe ({recipe_changes(old, recipe)}); training it again")
        except DAMAGED as e:
            _note(f"{vae_dir} is damaged ({_one_line(e)}); rebuilding it")
    vae, _ = train_autoencoder(cfg, model_cfg, run_dir)

    def save(tmp):
        vae.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))

    if is_main_process():
        write_atomic(vae_dir, save)
    return vae


def cached_latents(cfg: TrainConfig, model_cfg: TinyLDMConfig, run_dir: Path, vae) -> dict:
    """The world encoded once by the frozen autoencoder: `latents.safetensors` (posterior means
    and stds) and `latents.json` (captions, scaling factor), both recording the recipe and the
    sha256 of the autoencoder weights they came from. Rebuilt unless both are whole and agree."""
    cache, meta_path = run_dir / "latents.safetensors", run_dir / "latents.json"
    recipe = {**stage_recipes(cfg, model_cfg)["latents"],
              "vae_sha256": file_digest(run_dir / "vae" / "diffusion_pytorch_model.safetensors")}
    if cache.exists() or meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            with safe_open(cache, "pt") as f:
                tensor_recipe = json.loads(f.metadata()["recipe"])
            if meta["recipe"] == tensor_recipe == recipe:
                tensors = load_file(cache)
                if not len(tensors["means"]) == len(tensors["stds"]) == len(meta["captions"]):
                    raise ValueError("its latents and captions differ in number")
                return {**tensors, **meta}
            _note(f"{cache}: another recipe ({recipe_changes(meta['recipe'], recipe)}); "
                  "encoding the latents again")
        except DAMAGED as e:
            _note(f"{cache} or {meta_path.name} is damaged ({_one_line(e)}); rebuilding them")
    means, stds, captions = encode_world(vae.to(default_device()).eval(), cfg.n_latents,
                                         seed=cfg.seed + 1)
    vae.cpu()
    tensors = {"means": means.contiguous(), "stds": stds.contiguous()}
    meta = {"captions": captions, "scaling_factor": measure_scaling_factor(means, stds),
            "recipe": recipe}
    # the JSON first: a kill between the two renames leaves a pair that disagrees, and is rebuilt
    if is_main_process():
        write_atomic(meta_path, lambda tmp: tmp.write_text(json.dumps(meta)))
        write_atomic(cache, lambda tmp: save_file(tensors, tmp, metadata={"recipe": json.dumps(recipe)}))
    return {**tensors, **meta}


def train(run_dir: str | Path, cfg: TrainConfig | None = None,
          model_cfg: TinyLDMConfig | None = None, export_to: str | Path | None = None):
    """The whole recipe, resumable: re-running with the same `run_dir` continues where it stopped.

    A changed recipe is honoured: each stage whose settings differ from what its saved result
    records is redone (one line says which settings changed), and the stages after it.
    `run_dir/config.json` records the recipe, and the processes it ran on. Returns the
    assembled `StableDiffusionPipeline`; `export_to` also saves it there (renamed into place when
    complete). Under `accelerate launch` every process trains its share of each batch
    (`TrainConfig`'s batch sizes are per process) and the main one writes the files.
    """
    cfg, model_cfg = cfg or TrainConfig(), model_cfg or TinyLDMConfig()
    run_dir, export_to = check_run(run_dir, cfg, export_to)
    acc = accelerator()
    # every core, shared between the processes on this machine
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local_processes))
    if acc.is_main_process:
        write_atomic(run_dir / "config.json", lambda tmp: tmp.write_text(json.dumps(
            {"train": asdict(cfg), "model": asdict(model_cfg),
             "processes": acc.num_processes}, indent=2)))

    vae = cached_autoencoder(cfg, model_cfg, run_dir)
    with acc.main_process_first():  # the main process encodes and writes; the others read
        latents = cached_latents(cfg, model_cfg, run_dir, vae)
    vae.register_to_config(scaling_factor=latents["scaling_factor"])

    tokenizer, text_encoder, unet, _ = train_denoiser(cfg, model_cfg, run_dir, latents)
    pipe = build_pipeline(model_cfg, vae.eval(), text_encoder.eval(), tokenizer, unet.eval())
    acc.wait_for_everyone()
    if export_to is not None and acc.is_main_process:
        write_atomic(export_to, lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))
    return pipe


# ----------------------------------------------------------------------------- live recipe

# Chapter 3 trains a text encoder + UNet from scratch in a notebook cell, on the shipped
# autoencoder's latents: a smaller UNet, fewer latents, a short warm-up, no checkpoints.
LIVE_TRAIN = TrainConfig(n_latents=4000, unet_steps=1000, unet_lr=2e-3, warmup=50,
                         checkpoint_every=10**9)
LIVE_MODEL = TinyLDMConfig(unet_channels=(32, 64, 64))


def train_live(vae, run_dir: str | Path, cfg: TrainConfig = LIVE_TRAIN,
               model_cfg: TinyLDMConfig = LIVE_MODEL, schedule: dict | None = None):
    """Text encoder + UNet from scratch on `vae`'s latents; returns a ready pipeline and the
    loss log [(step, loss), ...]. With the defaults it takes a few CPU minutes.
    `schedule`: changes to the model's noise schedule, trained on and sampled with (e.g.
    `tiny_model.SD_SCHEDULE`: chapter 1's demonstration of what SD's schedule does)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    means, stds, captions = encode_world(vae.eval(), cfg.n_latents, seed=cfg.seed + 1)
    latents = {"means": means, "stds": stds, "captions": captions,
               "scaling_factor": vae.config.scaling_factor}
    tokenizer, text_encoder, unet, log = train_denoiser(cfg, model_cfg, run_dir, latents,
                                                        stage="live", schedule=schedule)
    return build_pipeline(model_cfg, vae, text_encoder.eval(), tokenizer, unet.eval(), schedule), log


# ----------------------------------------------------------------------------- another schedule

# Chapter 1's demonstration (bench/zero_snr.py): the shipped model trained on a few CPU minutes
# more on SD 1.x's schedule (`tiny_model.SD_SCHEDULE`), at a tenth of stage 2's peak rate.
SCHEDULE_TRAIN = TrainConfig(n_latents=4000, unet_steps=600, unet_lr=3e-4, warmup=20,
                             checkpoint_every=10**9)


def train_on_schedule(pipe, run_dir: str | Path, schedule: dict | None = None,
                      cfg: TrainConfig = SCHEDULE_TRAIN, model_cfg: TinyLDMConfig | None = None):
    """`pipe`'s text encoder + UNet trained on by stage 2 (`train_denoiser`, `start_from=pipe`) on
    another noise schedule, by default SD 1.x's (`tiny_model.SD_SCHEDULE`: no zero terminal SNR,
    "leading" spacing), on `cfg.n_latents` scenes encoded by `pipe.vae`. Returns a new pipeline
    (`pipe` is unchanged) that samples with that schedule, and the loss log.

    Lin et al. 2024 fine-tuned SD 2.1 *onto* zero terminal SNR; this goes the other way, to show
    what SD's schedule teaches a model (chapter 1)."""
    from .tiny_model import SD_SCHEDULE

    schedule = SD_SCHEDULE if schedule is None else schedule
    model_cfg = model_cfg or TinyLDMConfig()
    check_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    means, stds, captions = encode_world(pipe.vae.eval(), cfg.n_latents, seed=cfg.seed + 1)
    latents = {"means": means, "stds": stds, "captions": captions,
               "scaling_factor": pipe.vae.config.scaling_factor}
    tokenizer, text_encoder, unet, log = train_denoiser(cfg, model_cfg, run_dir, latents,
                                                        stage="schedule", schedule=schedule,
                                                        start_from=pipe)
    return build_pipeline(model_cfg, pipe.vae, text_encoder.eval(), tokenizer, unet.eval(),
                          schedule), log
