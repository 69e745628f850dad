"""bench/sd_gpu.py runs end to end (on the CPU, at tiny size; the GPU figures need a GPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sd_gpu_bench_tiny_on_cpu():
    result = subprocess.run([sys.executable, "bench/sd_gpu.py", "--tiny", "--steps", "3"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("tiny SD-1.5 twin, random weights, 64x64, 3 steps, CFG 7.5")
    rows = {m["label"]: float(m["rate"]) for m in re.finditer(
        r"^(?P<label>\S.*?)\s+(?P<rate>\d+\.\d+)\s+\d+\.\d+\s+n/a$", result.stdout, re.M)}
    assert set(rows) == {"ours (generate)", "diffusers pipe()", "ours (generate), low_vram",
                         "diffusers pipe(), low_vram"}
    assert all(rate > 0 for rate in rows.values())
