"""Where the models run, and with how many CPU threads (one home); how training runs on several
processes (`accelerator`).

Thread count on the CPU: torch starts one thread per core, which pays off for a large model
on an idle machine and not at all for a small one: the tiny model's 64×64 image is never faster
on two threads than on one, idle or loaded, and two threads on a busy machine were up to 2×
slower (bench/threads.py). The count depends only on the model and the machine, never on the
load of the moment: another thread count changes the last bits of the floating-point sums, and
a seed must give the same image every time on the same device.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

MAX_CPU_THREADS = 4  # more gains little for our models (bench/threads.py)
# Below this many UNet parameters one thread is fastest: the work per operation is too small to
# share (the tiny model has 4 M; SD 1.5 has 860 M).
SMALL_MODEL_PARAMETERS = 50_000_000


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def accelerator():
    """The `accelerate.Accelerator` a training run goes through (the field's engine for several GPUs
    and machines). Under `python -m tutorial_ldm …` it is one process on `default_device()`; under
    `accelerate launch …` (or torchrun) it is each of the processes started, one per GPU, and
    `accelerator.backward` averages their gradients. On a machine without a GPU its processes
    talk over gloo on the CPU (`cpu=True`: accelerate's own way to ask for that)."""
    from accelerate import Accelerator

    return Accelerator(cpu=default_device().type == "cpu")


def is_main_process() -> bool:
    """False only in the other processes of a run under `accelerate launch`: what prints or
    writes files asks this, so that it happens once."""
    from accelerate.state import PartialState, is_initialized

    return not is_initialized() or PartialState().is_main_process


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_threads(model: torch.nn.Module | None = None) -> int:
    """Threads for CPU generation with `model` (a UNet): $OMP_NUM_THREADS if set, else 1 for a
    small model (fewer than SMALL_MODEL_PARAMETERS), else the usable cores, at most
    MAX_CPU_THREADS. The same model on the same machine always gets the same count."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])  # the user's own choice
    if model is not None and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
        return 1
    return max(1, min(MAX_CPU_THREADS, usable_cores()))


@contextmanager
def cpu_threads_for(device, threads: int | None = None, model: torch.nn.Module | None = None):
    """Run the block with `threads` (default `cpu_threads(model)`) torch threads if `device` is the CPU;
    torch's setting is restored afterwards. Other devices are left alone."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        from .settings import SettingsError

        raise SettingsError("threads", threads, "None (chosen for the model) or an integer ≥ 1")
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_threads(model))
    try:
        yield
    finally:
        torch.set_num_threads(before)
