"""Speed and memory of our generate() against stock diffusers on Stable Diffusion 1.5's architecture.

    python bench/sd_gpu.py            # a CUDA GPU: 512×512, 50 steps, CFG 7.5, batch 1, fp16
    python bench/sd_gpu.py --tiny     # anywhere, on the CPU: the tiny twin at 64×64, 4 steps

The model is SD-1.5's architecture built from its configs with random weights
(`tutorial_ldm.sd_architecture`), so nothing is downloaded; speed and memory do not depend on
the weights' values. For each of normal and low_vram mode (attention slicing, VAE slicing and
tiling, model CPU offload), it times ours (`tutorial_ldm.generate`, our samplers) and the stock
`StableDiffusionPipeline.__call__` with the same sampler, and prints sampling iterations per
second (UNet steps with CFG, from per-step timestamps), the whole call's seconds and the peak
GPU memory.
"""

from __future__ import annotations

import argparse
import time

import torch

from tutorial_ldm.generation import generate
from tutorial_ldm.loading import configure_pipeline
from tutorial_ldm.samplers import to_diffusers
from tutorial_ldm.sd_architecture import build_sd15_pipeline

PROMPT = "a photo of an astronaut riding a horse on mars, (highly detailed:1.2)"
NEGATIVE = "(worst quality:2), lowres, watermark"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps after every sampling step; rate = steps per second between the first and last."""

    def __init__(self, device):
        self.device, self.times = device, []

    def tick(self):
        sync(self.device)
        self.times.append(time.perf_counter())

    def rate(self) -> float:
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def run_ours(pipe, args, device):
    clock = StepClock(device)
    start = time.perf_counter()
    try:
        generate(pipe, PROMPT, NEGATIVE, steps=args.steps, guidance=args.cfg, seed=0, sampler=args.sampler,
                 width=args.size, height=args.size, callback=lambda *_: clock.tick(), progress=False)
    except FloatingPointError as e:  # random fp16 weights may overflow; the timing still stands
        print(f"  (note: {e})")
    sync(device)
    return clock.rate(), time.perf_counter() - start


def run_stock(pipe, args, device):
    clock = StepClock(device)

    def on_step(_pipe, _step, _t, kwargs):
        clock.tick()
        return kwargs

    stock = type(pipe)(**{**pipe.components, "scheduler": to_diffusers(args.sampler, pipe.scheduler.config)},
                       requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    stock(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps, guidance_scale=args.cfg,
          width=args.size, height=args.size, generator=torch.Generator().manual_seed(0),
          callback_on_step_end=on_step)
    sync(device)
    return clock.rate(), time.perf_counter() - start


def measure(run, pipe, args, device):
    """(it/s, seconds, peak GiB or None) of one run, after a short warm-up run."""
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    run(pipe, warm, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rate, seconds = run(pipe, args, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return rate, seconds, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny twin at 64×64 on the CPU (a smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="default 50 (4 with --tiny)")
    parser.add_argument("--cfg", type=float, default=7.5)
    parser.add_argument("--sampler", default="euler_a")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    args = parser.parse_args(argv)
    args.steps = args.steps or (4 if args.tiny else 50)
    args.size = 64 if args.tiny else 512
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --tiny for the CPU smoke test")
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    arch = "tiny SD-1.5 twin" if args.tiny else "SD-1.5 architecture"
    print(f"{arch}, random weights, {args.size}x{args.size}, {args.steps} steps, CFG {args.cfg}, "
          f"batch 1, {args.sampler}, {str(dtype).removeprefix('torch.')} on {name}")
    print(f"{'':28}{'it/s':>8}{'seconds':>10}{'peak VRAM':>12}")
    for low_vram in (False, True):
        pipe = configure_pipeline(build_sd15_pipeline(tiny=args.tiny, dtype=dtype), device=device,
                                  low_vram=low_vram)
        for label, run in (("ours (generate)", run_ours), ("diffusers pipe()", run_stock)):
            rate, seconds, peak = measure(run, pipe, args, device)
            memory = f"{peak:.2f} GiB" if peak is not None else "n/a"
            mode = ", low_vram" if low_vram else ""
            print(f"{label + mode:28}{rate:8.2f}{seconds:10.2f}{memory:>12}", flush=True)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
