"""Loading a full-size SD 1.5 single file offline: our `load_pipeline` against diffusers' own.

    nice -n 19 python bench/load_single_file.py              # builds /tmp/sd1-random.safetensors once
    nice -n 19 python bench/load_single_file.py --arch sdxl  # SDXL base: a 6.5 GB file, ~16 GB of memory
    nice -n 19 python bench/load_single_file.py --file my.safetensors --repeats 2

The file is the architecture's shipped configs (tutorial_ldm/configs) with random weights, saved as
A1111/civitai ship checkpoints: the original CompVis key layout, float16 ("pruned fp16"; SD 1.5:
about 2 GB, needs ~5 GB of memory to build). Each load runs in a fresh process with
HF_HUB_OFFLINE=1 and an empty Hugging Face cache, and reports its wall time and the process's
peak resident memory (ru_maxrss):

- ours: `load_pipeline(file)`: architecture from the keys, shipped configs, CLIP's vocabulary;
- diffusers: `StableDiffusionPipeline.from_single_file(file, config=folder)`, where `folder` is a
  diffusers config folder of the same architecture (what a user with hub access would have).

Both end with the same float32 pipeline on the CPU; the difference is our detection and config
writing. Ours then generates one image (1 step, 64×64: that it runs, not how fast at full size),
after computing A1111's model hash of the file, and prints the image's A1111 text. Timings
depend on the disk cache: the first run reads the file from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's tutorial_ldm, whichever is installed

PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}
CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
kind, path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if kind == "ours":
    from tutorial_ldm.loading import load_pipeline
    pipe = load_pipeline(path, device="cpu", dtype="float32")
else:
    import diffusers
    pipeline = getattr(diffusers, sys.argv[5])
    pipe = pipeline.from_single_file(path, config=sys.argv[4], local_files_only=True, dtype=torch.float32)
seconds = time.perf_counter() - start
models = [pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
params = sum(p.numel() for m in models if m is not None for p in m.parameters())
made = {}
if kind == "ours":  # and it generates: one step, at the smallest size the VAE allows
    from tutorial_ldm.generation import generate
    start = time.perf_counter()
    made["hash"] = pipe.model_info.hash
    made["hash_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    image = generate(pipe, "a red circle", steps=1, seed=1, width=64, height=64, progress=False)[0]
    made["generate_seconds"] = time.perf_counter() - start
    made["parameters"] = image.info["parameters"].splitlines()[-1]
print(json.dumps({"seconds": seconds, "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "params": params, **made}))
"""


def build(path: Path, arch: str) -> None:
    """`arch` at full size, random weights, saved in the single-file layout as float16."""
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_sd import build_tiny, ldm_state_dict  # random models, renamed back to CompVis names

    print(f"building {path} ({arch} architecture, random weights, float16)…", flush=True)
    torch.set_default_dtype(torch.float16)  # built in float16: half the memory
    try:
        pipe = build_tiny(arch, seed=0, tiny=False)
    finally:
        torch.set_default_dtype(torch.float32)
    state = ldm_state_dict(pipe, arch)
    del pipe
    tmp = path.with_suffix(".partial")
    save_file(state, tmp)
    os.replace(tmp, path)  # whole or absent


def config_folder(path: Path, folder: Path) -> Path:
    """A diffusers config folder for the file (configs + tokenizer, no weights)."""
    from tutorial_ldm.loading import checkpoint_shapes
    from tutorial_ldm.sd_architecture import configs_for, describe, write_config_folder

    shapes = checkpoint_shapes(path)
    return write_config_folder(folder, configs_for(describe(shapes), shapes))


def describe_file(path: Path) -> str:
    from tutorial_ldm.loading import checkpoint_shapes
    from tutorial_ldm.sd_architecture import describe

    return describe(checkpoint_shapes(path))


def run(kind: str, path: Path, threads: int, config: Path, pipeline: str) -> dict:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": home, "PYTHONPATH": str(ROOT),
               "TUTORIAL_LDM_CACHE": home}  # the model hash computed afresh too
        out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path), str(threads), str(config), pipeline],
                             env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=list(PIPELINES), default="sd1")
    p.add_argument("--file", type=Path, default=None, help="default: <tmp>/<arch>-random.safetensors")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    args.file = args.file or Path(tempfile.gettempdir()) / f"{args.arch}-random.safetensors"
    if not args.file.is_file():
        build(args.file, args.arch)
    print(f"{args.file}: {args.file.stat().st_size / 2**30:.2f} GiB")
    with tempfile.TemporaryDirectory() as tmp:
        config = config_folder(args.file, Path(tmp) / "config")
        pipeline = PIPELINES[describe_file(args.file).split("-")[0]]
        rows = [(kind, run(kind, args.file, args.threads, config, pipeline))
                for _ in range(args.repeats) for kind in ("diffusers", "ours")]
    print(f"{'loader':<28}{'seconds':>9}{'peak RSS GiB':>14}{'parameters':>14}")
    for kind, r in rows:
        name = "load_pipeline (offline)" if kind == "ours" else "from_single_file(config=)"
        print(f"{name:<28}{r['seconds']:>9.1f}{r['peak_gib']:>14.2f}{r['params']:>14,}")
    for kind, r in rows:
        if kind == "ours":
            print(f"then generate(steps=1, 64×64): {r['generate_seconds']:.1f} s, after hashing the file in "
                  f"{r['hash_seconds']:.1f} s (Model hash {r['hash']}); its PNG text: {r['parameters']}")


if __name__ == "__main__":
    main()
