"""Where the models run, and with how many CPU threads (one home).

Thread count on the CPU: torch starts one thread per core and keeps them spinning, which is
fastest on an idle machine and very slow on a busy one: threads that wait for a core held by
another program stall every parallel operation (bench/threads.py measures it). `cpu_threads()`
therefore uses the cores that are free now, and `cpu_threads_for` applies it around a run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

MAX_CPU_THREADS = 4  # more gains little for our small models (bench/threads.py)


def default_device() -> torch.device:
    """CUDA if present, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Threads for CPU generation: $OMP_NUM_THREADS if set, else the cores not busy with other
    work, 1 … MAX_CPU_THREADS.

    "Busy" is the 1-minute load average (runnable processes) less one for this process itself,
    where the OS reports it; without it (Windows) every usable core counts as free. On a loaded
    machine this is 1: a single thread never waits for another (bench/threads.py).
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])  # the user's own choice
    cores = usable_cores()
    try:
        others = max(0.0, os.getloadavg()[0] - 1)
    except (AttributeError, OSError):
        others = 0.0
    free = int(cores - others + 0.5)
    return max(1, min(MAX_CPU_THREADS, cores, free))


@contextmanager
def cpu_threads_for(device, threads: int | None = None):
    """Run the block with `threads` (default `cpu_threads()`) torch threads if `device` is the CPU;
    torch's setting is restored afterwards. Other devices are left alone."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        from .settings import SettingsError

        raise SettingsError("threads", threads, "None (the free cores) or an integer ≥ 1")
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)
