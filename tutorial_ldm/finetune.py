"""Chapter 8: teach the tiny model a colour it has never seen, three ways.

The shipped model was trained on six colours; `world.UNSEEN_COLOURS` has a seventh ("pink") that
no training caption contained (its tokenizer does not even know the word: it reads <unk>).
Three ways to teach it, each on the same few hundred rendered pink scenes:

- textual inversion (Gal et al. 2022): one new token embedding v* for "pink" is learned, every
  weight of the model frozen; the result is an A1111 embedding file of 64 numbers.
- LoRA (Hu et al. 2021) on the UNet's attention projections: each frozen W (out × in) becomes
  W + (α/r)·B·A with A (r × in) and B (out × r) trained; r ≪ in, out, so the file is small.
  Saved in kohya's layout, used with `<lora:pink>` like any civitai LoRA.
- full fine-tuning of the UNet, for comparison: every weight moves, a full model file.

The objective is the one the model was trained with (paper Eq. 3, v-prediction): the UNet
predicts v = α_t ε − σ_t z_0 from z_t = α_t z_0 + σ_t ε. Half of each batch is scenes of the old
colours (DreamBooth's prior preservation, Ruiz et al. 2023), so the model does not forget them.

Under `accelerate launch` each process draws the whole batch of a step (the same random stream)
and trains on its share; accelerate averages the gradients, so n processes with `batch` b each
take the steps that one process takes with n·b. The main process measures, prints and saves.

Notation: W frozen weight, A (lora_down) r × in, B (lora_up) out × r, r rank, α alpha,
m the multiplier of `<lora:name:m>`; v* the learned embedding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import world
from .devices import accelerator
from .language import say
from .noise_schedule import NoiseSchedule
from .train import write_atomic
from .unet import denoising_loss

NEW_COLOUR = "pink"
METHODS = ("textual_inversion", "lora", "full")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the UNet's attention projections


@dataclass
class FinetuneConfig:
    """One fine-tuning run; the defaults are bench/finetune.py's (each ≤ 5 CPU minutes)."""

    method: str = "lora"
    steps: int = 500
    batch: int = 32  # per process under accelerate launch
    lr: float | None = None  # None: the method's (LEARNING_RATES)
    rank: int = 4  # LoRA r
    alpha: float = 4.0  # LoRA α; the update is scaled by α/r
    n_concept: int = 400  # rendered scenes of the new colour
    n_prior: int = 400  # scenes of the old colours, mixed in half and half
    caption_dropout: float = 0.1  # keeps the unconditional model (classifier-free guidance)
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = every core


LEARNING_RATES = {"textual_inversion": 5e-2, "lora": 3e-3, "full": 2e-4}
# chapter 8's shorter recipes (the notebook must run in the course's time budget)
NOTEBOOK_STEPS = {"textual_inversion": 80, "lora": 120, "full": 60}


def check_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """ValueError naming a bad field and what is allowed."""
    if cfg.method not in METHODS:
        raise ValueError(f"method {cfg.method!r} is not one of {', '.join(METHODS)}")
    for name in ("steps", "batch", "rank", "n_concept", "n_prior"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "n_prior" else 1):
            raise ValueError(f"{name} = {value!r}: expected a positive integer")
    if cfg.lr is not None and not (isinstance(cfg.lr, (int, float)) and 0 < cfg.lr < 1):
        raise ValueError(f"lr = {cfg.lr!r}: expected a number between 0 and 1, e.g. 1e-3")
    if not (isinstance(cfg.alpha, (int, float)) and cfg.alpha > 0):
        raise ValueError(f"alpha = {cfg.alpha!r}: expected a positive number (the update is scaled by α/r)")
    return cfg


# -- data ---------------------------------------------------------------------------------------

def held_out(shape: str, position: str) -> bool:
    """The shape × position pairs never shown in the new colour (a third of them): the test of
    whether the model learned the colour rather than the pictures."""
    return (world.SHAPES.index(shape) + list(world.POSITIONS).index(position)) % 3 == 0


def concept_scenes(n: int, seed: int, colour: str = NEW_COLOUR) -> list[world.Scene]:
    """`n` scenes of the new colour, none of a held-out shape × position pair."""
    scenes, k = [], 0
    while len(scenes) < n:
        for s in world.sample_scenes(n, seed + 1000 * k):
            if not held_out(s.shape, s.position) and len(scenes) < n:
                scenes.append(dataclasses.replace(s, colour=colour))
        k += 1
    return scenes


def concept_prompts(colour: str = NEW_COLOUR, variants: int = 2, seed: int = 0) -> list[str]:
    """The held-out prompts of the new colour: every held-out shape × position, plain and then
    with a random size and background (5 × variants prompts)."""
    rng = np.random.default_rng(seed)
    prompts = []
    for v in range(variants):
        for shape in world.SHAPES:
            for position in world.POSITIONS:
                if held_out(shape, position):
                    size = str(rng.choice(list(world.SIZES))) if v else ""
                    background = str(rng.choice(list(world.BACKGROUNDS))) if v else "white"
                    prompts.append(world.Scene(shape, colour, position, size, background).caption)
    return prompts


@torch.no_grad()
def encode_scenes(vae, scenes: list[world.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and stds of the scenes under the frozen autoencoder (on the CPU)."""
    x = torch.from_numpy(world.render_batch(scenes)).to(vae.device)
    posterior = vae.encode(x).latent_dist
    return posterior.mean.cpu(), posterior.std.cpu()


# -- the objective ---------------------------------------------------------------------------------

def draw_noise(schedule, z0: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of (ε, t) per latent: Gaussian noise like z0, a timestep of `schedule`."""
    noise = torch.randn(z0.shape, generator=generator)
    t = torch.randint(0, len(schedule.alphas_cumprod), (len(z0),), generator=generator)
    return noise, t


def v_loss(unet, schedule, z0: torch.Tensor, context: torch.Tensor, generator=None, *,
           noise: torch.Tensor | None = None, t: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 of the paper in v-prediction form, ‖v_θ(z_t, t, c) − (α_t ε − σ_t z_0)‖², for one draw
    of (ε, t) per latent (from `generator`, or given): chapter 3's `unet.denoising_loss` (which
    training runs) on `schedule`'s ᾱ (a `noise_schedule.NoiseSchedule`, or anything with
    `alphas_cumprod`), averaged."""
    if noise is None:
        noise, t = draw_noise(schedule, z0, generator)
    return denoising_loss(unet, z0, t, noise, context, schedule.alphas_cumprod, "v_prediction").mean()


# -- the three methods ---------------------------------------------------------------------------------

def add_token(pipe, word: str = NEW_COLOUR) -> int:
    """Give the tokenizer a new word and the encoder a row for it, initialised as the mean of the
    old colours' embeddings (a neutral start); returns its id."""
    pipe.tokenizer.add_tokens([word])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    table = pipe.text_encoder.get_input_embeddings().weight
    token = pipe.tokenizer.convert_tokens_to_ids(word)
    colours = pipe.tokenizer.convert_tokens_to_ids(list(world.COLOURS))
    with torch.no_grad():
        table[token] = table[colours].mean(0)
    return token


def add_lora(unet, rank: int, alpha: float):
    """peft LoRA adapters on the attention projections (B starts at 0: the model is unchanged)."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS),
                                init_lora_weights=True))
    return [p for n, p in unet.named_parameters() if "lora_" in n]


def lora_formula(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, multiplier: float = 1.0):
    """The weight a LoRA layer computes with: W + m·(α/r)·B·A (r = A's rows)."""
    return W + multiplier * (alpha / A.shape[0]) * B @ A


def finetune(pipe, cfg: FinetuneConfig) -> dict:
    """Fine-tune `pipe` (in place) on the new colour with `cfg.method`; returns the log:
    losses, seconds, trainable parameter count, processes. Only the method's parameters receive
    gradients. Trains on the accelerator's device (`devices.accelerator`: the CPU, a GPU, or one
    GPU per process under `accelerate launch`), where `pipe` is left."""
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    acc = accelerator()
    pipe.to(acc.device)
    torch.manual_seed(cfg.seed)
    vae, unet, encoder = pipe.vae.eval(), pipe.unet, pipe.text_encoder
    for p in [*vae.parameters(), *unet.parameters(), *encoder.parameters()]:
        p.requires_grad_(False)

    if cfg.method == "textual_inversion":
        token = add_token(pipe)
        table = encoder.get_input_embeddings().weight
        table.requires_grad_(True)
        params = [table]
    elif cfg.method == "lora":
        params = add_lora(unet, cfg.rank, cfg.alpha)
    else:
        params = [p.requires_grad_(True) for p in unet.parameters()]

    scenes = concept_scenes(cfg.n_concept, cfg.seed) + world.sample_scenes(cfg.n_prior, cfg.seed + 7)
    means, stds = encode_scenes(vae, scenes)
    scale = vae.config.scaling_factor
    ids = pipe.tokenizer([s.caption for s in scenes] + [""], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    ids, empty = ids[:-1], ids[-1]
    is_concept = torch.arange(len(scenes)) < cfg.n_concept
    schedule = NoiseSchedule.from_config(pipe.scheduler.config)  # the pipeline's ᾱ, as train.py
    schedule.alphas_cumprod = schedule.alphas_cumprod.to(acc.device)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr or LEARNING_RATES[cfg.method],
                                  weight_decay=0.0 if cfg.method == "textual_inversion" else 1e-2)
    # the model that trains goes through accelerate (gradients averaged between processes);
    # `pipe` keeps the bare modules, which is what is saved
    if cfg.method == "textual_inversion":
        encoder, optimizer = acc.prepare(encoder, optimizer)
    else:
        unet, optimizer = acc.prepare(unet, optimizer)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    batch = cfg.batch * acc.num_processes  # every process draws all of it, and trains on its share
    unet.train()
    losses, start = [], time.process_time()
    for _ in tqdm(range(cfg.steps), desc=f"fine-tuning ({cfg.method})", unit="step",
                  disable=not acc.is_local_main_process):
        half = batch // 2 if cfg.n_prior else batch  # half new colour, half old ones
        pick = np.concatenate([rng.choice(np.flatnonzero(is_concept), half),
                               rng.choice(np.flatnonzero(~is_concept), batch - half) if cfg.n_prior
                               else np.zeros(0, int)])
        idx = torch.from_numpy(pick)
        batch_ids = ids[idx].clone()
        batch_ids[torch.from_numpy(rng.random(len(idx)) < cfg.caption_dropout)] = empty
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise, t = draw_noise(schedule, z0, gen)
        draw = {"z0": z0, "noise": noise, "t": t, "ids": batch_ids}
        with acc.split_between_processes(draw) as mine:
            mine = {k: v.to(acc.device) for k, v in mine.items()}
            loss = v_loss(unet, schedule, mine["z0"], encoder(mine["ids"])[0],
                          noise=mine["noise"], t=mine["t"])
        optimizer.zero_grad()
        acc.backward(loss)
        if cfg.method == "textual_inversion":  # only v*: the other rows keep their values
            keep = torch.ones(len(table), dtype=torch.bool, device=table.device)
            keep[token] = False
            table.grad[keep] = 0
        optimizer.step()
        losses.append(acc.reduce(loss.detach(), "mean").item())  # the whole batch's loss
    unet.eval()
    for p in params:
        p.requires_grad_(False)
    trainable = (table.shape[-1] if cfg.method == "textual_inversion" else sum(p.numel() for p in params))
    return {"method": cfg.method, "losses": losses, "cpu_seconds": time.process_time() - start,
            "trainable": trainable, "steps": cfg.steps, "batch": cfg.batch,
            "processes": acc.num_processes}


# -- files --------------------------------------------------------------------------------------------

def save_embedding(pipe, path: str | os.PathLike, word: str = NEW_COLOUR, step: int = 0) -> Path:
    """The learned v* as A1111 writes it: `.pt` (string_to_param) or `.safetensors` (emb_params);
    the file name is the trigger."""
    path = Path(path)
    vector = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(word)]
    vector = vector.detach().cpu().clone()[None]
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        def write(tmp):
            save_file({"emb_params": vector}, tmp)
    elif path.suffix == ".pt":
        def write(tmp):
            torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vector}, "name": path.stem,
                        "step": step}, tmp)
    else:
        raise ValueError(f"{path}: an embedding is saved as .pt or .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)
    return path


def kohya_state_dict(unet, alpha: float) -> dict[str, torch.Tensor]:
    """The UNet's peft LoRA in kohya's layout: lora_unet_<module path with _>.lora_down (A),
    .lora_up (B), .alpha — what civitai files hold and A1111 loads."""
    state = {}
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            key = "lora_unet_" + name.replace(".", "_")
            state[key + ".lora_down.weight"] = module.lora_A["default"].weight.detach().clone().contiguous()
            state[key + ".lora_up.weight"] = module.lora_B["default"].weight.detach().clone().contiguous()
            state[key + ".alpha"] = torch.tensor(float(alpha))
    return state


def save_lora(unet, path: str | os.PathLike, alpha: float) -> Path:
    """The trained LoRA as a kohya `.safetensors` (use it as `<lora:stem>`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = kohya_state_dict(unet, alpha)
    rank = next(v for k, v in state.items() if k.endswith(".lora_down.weight")).shape[0]
    write_atomic(path, lambda tmp: save_file(
        state, tmp, metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}))
    return path


def save_unet(unet, path: str | os.PathLike) -> Path:
    """The fully fine-tuned UNet's weights as one .safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, tmp))
    return path


# -- measuring -------------------------------------------------------------------------------------------

def measure(pipe, prompts: list[str], *, steps: int = 20, seed: int = 0, files: bool = False) -> dict[str, float]:
    """Adherence (`metrics.adherence`) of one image per prompt: share with the right colour, and
    colour + shape + position all right ("all3"). files=False measures the model in hand: the
    LoRA and embedding folders are not looked in (a pink.pt lying there would take over "pink")."""
    from .generation import generate_many
    from .metrics import adherence
    from .paths import EMBEDDINGS_DIR_ENV, LORA_DIR_ENV

    with contextlib.ExitStack() as stack:
        if not files:
            empty = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(_environment({LORA_DIR_ENV: empty, EMBEDDINGS_DIR_ENV: empty}))
        images = generate_many(pipe, prompts, steps=steps, seed=seed, output="numpy", progress=False)
    return adherence(images, [p.split(" <lora:")[0] for p in prompts])


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def chance() -> float:
    """The share a model that picks colours at random would get right: 1 / palette size."""
    return 1 / (len(world.COLOURS) + len(world.UNSEEN_COLOURS))


def run(method: str, out_dir: str | os.PathLike, *, variants: int = 2, original: int = 90,
        eval_steps: int = 20, before: dict | None = None, **settings) -> dict | None:
    """Fine-tune a fresh copy of the shipped model with `method`, save its file in `out_dir`
    (Lora/pink.safetensors, embeddings/pink.pt, or unet-pink.safetensors) and measure it: the
    new colour on its held-out prompts (5 × variants) before and after, and `original` of the
    90 original benchmark prompts before and after. `before`: a previous run's result, whose
    "before" figures are reused (the same shipped model, the same prompts). `settings`:
    `FinetuneConfig` fields (steps, batch, seed, threads, n_concept, …); None keeps the default.
    Under `accelerate launch` every process trains (`batch` is per process); the main one
    measures, saves and returns the result, the others None."""
    from .loading import load_pipeline

    out_dir = Path(out_dir)
    cfg = FinetuneConfig(method=method, **{k: v for k, v in settings.items() if v is not None})
    check_config(cfg)
    acc = accelerator()
    pipe = load_pipeline(device=str(acc.device), dtype="float32")
    new, old = concept_prompts(variants=variants), original_prompts(original)
    if before is None and acc.is_main_process:
        before = {"before_new": measure(pipe, new, steps=eval_steps),
                  "before_old": measure(pipe, old, steps=eval_steps)}
    log = finetune(pipe, cfg)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    result = {"before_new": before["before_new"], "before_old": before["before_old"], "chance": chance()}
    if method == "textual_inversion":
        path = save_embedding(pipe, out_dir / "embeddings" / f"{NEW_COLOUR}.pt", step=cfg.steps)
    elif method == "lora":
        path = save_lora(pipe.unet, out_dir / "Lora" / f"{NEW_COLOUR}.safetensors", cfg.alpha)
    else:
        path = save_unet(pipe.unet, out_dir / f"unet-{NEW_COLOUR}.safetensors")
    result.update(log, file=str(path), file_bytes=path.stat().st_size,
                  after_new=measure(pipe, new, steps=eval_steps), after_old=measure(pipe, old, steps=eval_steps))
    return result


def original_prompts(n: int = 90) -> list[str]:
    """`n` of the 90 plain benchmark prompts (every colour × shape × position), evenly spread."""
    from .metrics import benchmark_prompts

    prompts = benchmark_prompts(variants=1)
    if not isinstance(n, int) or not 1 <= n <= len(prompts):
        raise ValueError(f"original = {n!r}: expected an integer from 1 to {len(prompts)}")
    return prompts[:: len(prompts) // n][:n]


def report(result: dict) -> str:
    """A run's figures in a few lines (what bench/finetune.py and the CLI print), in the course's language."""
    b, a, o0, o = result["before_new"], result["after_new"], result["before_old"], result["after_old"]
    processes = result.get("processes", 1)
    fields = dict(method=result["method"], steps=result["steps"], minutes=result["cpu_seconds"] / 60,
                  trainable=result["trainable"], file=result["file"], kib=result["file_bytes"] / 1024,
                  a=a, b=b, chance=result["chance"], o=o, o0=o0, lost=100 * (o0["all3"] - o["all3"]),
                  processes=processes, batch=result.get("batch"))
    shared = say(" on {processes} processes × batch {batch}", "（{processes} 个进程 × 批次 {batch}）", **fields) if processes > 1 else ""
    return "\n".join([
        say("{method}: {steps} steps{shared}, {minutes:.1f} CPU min, {trainable:,} trained parameters, file {file} ({kib:.1f} KiB)",
            "{method}：{steps} 步{shared}，CPU {minutes:.1f} 分钟，训练了 {trainable:,} 个参数，文件 {file}（{kib:.1f} KiB）",
            shared=shared, **fields),
        say("  new colour on held-out prompts: {a[colour]:.0%} (before {b[colour]:.0%}, chance {chance:.0%}); "
            "colour+shape+position {a[all3]:.0%} (before {b[all3]:.0%})",
            "  留出提示词上的新颜色：{a[colour]:.0%}（之前 {b[colour]:.0%}，随机水平 {chance:.0%}）；"
            "颜色+形状+位置 {a[all3]:.0%}（之前 {b[all3]:.0%}）", **fields),
        say("  original prompts, all three right: {o[all3]:.0%} (before {o0[all3]:.0%}, {lost:+.1f} points lost)",
            "  原有提示词三项全对：{o[all3]:.0%}（之前 {o0[all3]:.0%}，损失 {lost:+.1f} 个百分点）", **fields),
    ])
