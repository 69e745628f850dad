"""Seconds per image in the studio against `generate` on the same model and settings.

    python bench/studio_speed.py [--runs 3] [--steps 25]

The studio runs `generate` in a background thread; this checks that the thread costs nothing
(a student once saw ~10 s per 64×64 image in the studio against 0.4–0.7 s for `generate` on a
busy 2-core machine: torch's thread pool oversubscribed the cores). Prints the machine's load
average too, since both figures depend on it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

import torch

from tutorial_ldm.generation import generate
from tutorial_ldm.studio import studio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    app = studio()
    app.seed.value, app.steps.value = 1, args.steps
    studio_s, generate_s = [], []
    for _ in range(args.runs):
        app.generate_button.click()
        app.wait(600)
        studio_s.append(float(re.search(r"in ([\d.]+) s", app.status.value).group(1)))
        start = time.perf_counter()
        generate(app.pipe, app.prompt.value, steps=args.steps, seed=1, progress=False)
        generate_s.append(time.perf_counter() - start)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    print(f"one {app.width.value}×{app.height.value} image, {args.steps} steps, {app.sampler.value}:")
    for name, seconds in (("studio", studio_s), ("generate", generate_s)):
        runs = " ".join(f"{s:.2f}" for s in seconds)
        print(f"  {name:<9} {runs} s (median {statistics.median(seconds):.2f})")


if __name__ == "__main__":
    main()
