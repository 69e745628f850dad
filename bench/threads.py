"""CPU threads for generation: idle against loaded, 1 thread against more, and OpenMP's waiting
workers spinning against sleeping (OMP_WAIT_POLICY).

    python bench/threads.py [--busy 2] [--threads 1 2 0] [--steps 25] [--repeats 5]

Each case runs in a fresh process (OpenMP reads its settings once) that loads the shipped model
and times one 64×64 image (`generate`, seconds, median of --repeats) and a batch of 16 prompts
(`generate_many`, images/s), 25 Euler a steps with guidance. "loaded" starts --busy background
processes that each keep a core busy (a compiler, a browser tab, another notebook) and measures
while they run. --threads 0 means `tutorial_ldm.devices.cpu_threads()`, the automatic choice.
The 1-minute load average at the start of each case is printed with it: on a shared machine
"idle" is only as idle as the other users let it be.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from tutorial_ldm import metrics

PROMPT = "a red circle on the left"


def measure(threads: int, steps: int, repeats: int) -> dict:
    """One case, in this process: seconds for one image, images/s for a batch of 16."""
    from tutorial_ldm.devices import cpu_threads
    from tutorial_ldm.generation import generate, generate_many
    from tutorial_ldm.loading import load_pipeline

    load = os.getloadavg()[0]
    threads = threads or cpu_threads()
    pipe = load_pipeline(device="cpu")
    generate(pipe, PROMPT, seed=0, steps=2, threads=threads, progress=False)  # warm-up
    one = []
    for r in range(repeats):
        start = time.perf_counter()
        generate(pipe, PROMPT, seed=r, steps=steps, threads=threads, progress=False)
        one.append(time.perf_counter() - start)
    prompts = metrics.benchmark_prompts(1, seed=0)[:16]
    start = time.perf_counter()
    generate_many(pipe, prompts, seed=0, steps=steps, batch_size=16, output="numpy", threads=threads,
                  progress=False)
    batch = time.perf_counter() - start
    return {"threads": threads, "load": load, "one_image_s": statistics.median(one),
            "batch16_images_per_s": 16 / batch}


def run_case(threads: int, policy: str, steps: int, repeats: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(steps),
           "--repeats", str(repeats)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout
    except subprocess.TimeoutExpired:
        return {"threads": threads, "load": float("nan"), "one_image_s": float("inf"),
                "batch16_images_per_s": 0.0}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                        help="background processes that keep a core busy in the loaded case")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 0], help="0: cpu_threads()")
    parser.add_argument("--policies", nargs="+", default=["PASSIVE", "default"],
                        help="OMP_WAIT_POLICY values; 'default' leaves it unset (workers spin)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per case before giving up")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.threads[0], args.steps, args.repeats)))
        return

    rows = []
    for loaded in (False, True):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy if loaded else 0)]
        try:
            time.sleep(3 if loaded else 0)
            for policy in args.policies:
                for threads in args.threads:
                    r = run_case(threads, policy, args.steps, args.repeats, args.timeout)
                    r.update(case="loaded" if loaded else "idle", policy=policy, asked=threads or "auto")
                    rows.append(r)
                    print(f"{r['case']:>6} {policy:>8} threads {str(r['asked']):>4}→{r['threads']}: "
                          f"one image {r['one_image_s']:.2f} s, batch 16 {r['batch16_images_per_s']:.1f} images/s "
                          f"(load {r['load']:.1f})", flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()

    print(f"\n{os.cpu_count()} CPUs, {args.busy} busy processes when loaded, {args.steps} Euler a steps, CFG\n")
    print("| case | OMP_WAIT_POLICY | threads | one 64×64 image | batch 16 | load avg |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        threads = f"{r['threads']}" if r["asked"] != "auto" else f"auto ({r['threads']})"
        print(f"| {r['case']} | {r['policy']} | {threads} | {r['one_image_s']:.2f} s | "
              f"{r['batch16_images_per_s']:.1f} images/s | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
