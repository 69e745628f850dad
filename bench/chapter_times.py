"""Minutes per chapter: each notebook run once, top to bottom, in a fresh kernel (nbclient), on the
CPU — the figures of docs/teaching.md's lesson plan.

    python bench/chapter_times.py                       # every chapter in notebooks/
    python bench/chapter_times.py 01 05 --threads 1     # some chapters; OMP_NUM_THREADS for the kernel
    python bench/chapter_times.py --student             # the student copies (solutions removed)

Prints one line per chapter as it finishes (minutes, the slowest cell and its seconds, the
kernel's peak memory (resident set, sampled every 0.2 s), the 1-minute load average before and after: on a shared machine the figure is only as good as the
load lets it be), then a Markdown table. A chapter that fails is reported with its error and the
run goes on. The kernel sees this checkout first on its PYTHONPATH and draws with Agg, as
tests/test_notebooks.py runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import nbformat
import psutil
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tutorial_ldm.classroom import student_copy  # noqa: E402

CELL_TIMEOUT = 1800  # s: chapter 3's live training is one cell


def run(path: Path, *, student: bool, threads: int | None) -> dict:
    """Seconds for the whole notebook and for its slowest cell; the error, if a cell failed."""
    nb = nbformat.read(path, as_version=4)
    if student:
        nb = student_copy(nb)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               MPLBACKEND="Agg")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    starts: dict[int, float] = {}
    cells: dict[int, float] = {}
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, startup_timeout=300,
                            resources={"metadata": {"path": str(path.parent)}})
    client.on_cell_execute = lambda cell, cell_index: starts.__setitem__(cell_index, time.perf_counter())
    client.on_cell_executed = lambda cell, cell_index, execute_reply: cells.__setitem__(
        cell_index, time.perf_counter() - starts[cell_index])
    load_before, t0, error = os.getloadavg()[0], time.perf_counter(), None
    peak, done = [0], threading.Event()

    def sample():  # the kernel's resident memory, children included
        while not done.wait(0.2):
            process = getattr(km.provisioner, "process", None) if km.has_kernel else None
            try:
                tree = [psutil.Process(process.pid)] if process else []
                tree += tree[0].children(recursive=True) if tree else []
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        client.execute(env=env)
    except Exception as e:  # reported, and the other chapters still run
        error = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    finally:
        done.set()
        sampler.join()
        if km.has_kernel:
            from jupyter_core.utils import run_sync

            run_sync(km.shutdown_kernel)(now=True)
    slowest = max(cells, key=cells.get) if cells else None
    return dict(chapter=path.stem, minutes=(time.perf_counter() - t0) / 60, slowest_cell=slowest,
                slowest_s=cells.get(slowest, 0.0), peak_gb=peak[0] / 2**30, load=(load_before, os.getloadavg()[0]), error=error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers or names (default: all)")
    parser.add_argument("--student", action="store_true", help="time the student copies instead")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernel")
    args = parser.parse_args()
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.chapters:
        notebooks = [p for p in notebooks if any(p.name.startswith(c) for c in args.chapters)]
        if not notebooks:
            parser.error(f"no chapter matches {args.chapters}")
    print(f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS={args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{'student copies' if args.student else 'teacher notebooks'}", flush=True)
    rows = []
    for path in notebooks:
        r = run(path, student=args.student, threads=args.threads)
        rows.append(r)
        print(f"{r['chapter']:<32} {r['minutes']:5.1f} min  slowest cell {r['slowest_cell']} "
              f"({r['slowest_s']:.0f} s)  peak {r['peak_gb']:.2f} GB  load {r['load'][0]:.1f} → {r['load'][1]:.1f}"
              + (f"  FAILED: {r['error']}" if r["error"] else ""), flush=True)
    print("\n| chapter | minutes | slowest cell (s) | peak memory | load before → after |\n|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['chapter']} | {r['minutes']:.1f}{' (failed)' if r['error'] else ''} | {r['slowest_s']:.0f} | "
              f"{r['peak_gb']:.2f} GB | {r['load'][0]:.1f} → {r['load'][1]:.1f} |")
    print(f"| total | {sum(r['minutes'] for r in rows):.1f} | | | |")


if __name__ == "__main__":
    main()
