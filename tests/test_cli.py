"""`python -m tutorial_ldm generate`: an image with its settings, or one line of error and no file."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_sd import shipped_pipe

from tutorial_ldm.__main__ import main
from tutorial_ldm.generation import generate
from tutorial_ldm.parameters import read_parameters

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tutorial_ldm", "generate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_generate_writes_the_png_with_its_settings(tmp_path):
    result = run_cli("a red circle on the left", "--negative", "(blue:1.2)", "--steps", "2", "--cfg", "5",
                     "--seed", "42", "--sampler", "euler_a", "--width", "64", "--height", "64",
                     "--out", "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "out.png  (seed 42)"
    assert "sampling" in result.stderr  # the progress bar
    settings = read_parameters(tmp_path / "out.png")
    assert (settings.prompt, settings.negative_prompt, settings.steps, settings.guidance) == (
        "a red circle on the left", "(blue:1.2)", 2, 5.0)
    assert (settings.seed, settings.sampler, settings.width, settings.height) == (42, "euler_a", 64, 64)
    same = generate(shipped_pipe(), **settings.generate_kwargs(), progress=False)[0]
    assert np.array_equal(np.asarray(same), np.asarray(read_image(tmp_path / "out.png")))


def read_image(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.mark.parametrize("args, message", [
    (["--width", "63"], "error: width=63 must be a positive multiple of 4"),
    (["--model", "models/Stable-diffusion/missing.safetensors"], "error: no such file or folder: "),
])
def test_bad_input_one_line_no_traceback_no_file(tmp_path, args, message):
    result = run_cli("a red circle", "--steps", "1", *args, "--out", "out.png", cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--steps", "abc"], "error: argument --steps: invalid int value: 'abc'"),
    (["--steps", "0"], "error: steps=0 must be an integer from 1 to 1000"),
    (["--cfg", "nan"], "error: guidance=nan must be a finite number ≥ 0"),
    (["--seed", str(2**32)], "error: seed=4294967296 must be -1 (random)"),
    (["--batch-size", "0"], "error: batch_size=0 must be an integer ≥ 1"),
    (["--sampler", "magic"], "error: sampler='magic' must be one of ddpm, ddim"),
    (["--width", "4096", "--height", "4096"], "error: size='4096x4096' must be at most 16× the model's native"),
    (["--device", "meta"], "error: device 'meta' is not supported here; allowed: 'cpu', 'cuda'"),
    (["--device", "xla"], "error: "),
    (["--out", "out.jpg"], "error: --out out.jpg: images are saved as .png"),
])
def test_more_bad_inputs_in_process(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["generate", "a red circle", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert list(tmp_path.iterdir()) == []


def test_batch_gets_numbered_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a blue square", "--steps", "1", "--seed", "9", "--batch-size", "2",
                 "--out", "shapes/sq.png"]) == 0
    assert sorted(p.name for p in (tmp_path / "shapes").iterdir()) == ["sq-0.png", "sq-1.png"]
    assert [read_parameters(tmp_path / "shapes" / f"sq-{k}.png").seed for k in (0, 1)] == [9, 10]


def test_existing_out_is_refused_unless_overwrite(tmp_path, monkeypatch, capsys):
    """Was: replaced silently."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out.png").write_bytes(b"my earlier image")
    assert main(["generate", "a blue square", "--steps", "1", "--out", "out.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --out: out.png exists; pass --overwrite to replace it"]
    assert (tmp_path / "out.png").read_bytes() == b"my earlier image"
    (tmp_path / "b-1.png").write_bytes(b"")
    assert main(["generate", "a blue square", "--steps", "1", "--batch-size", "2", "--out", "b.png"]) == 2
    assert "b-1.png exists" in capsys.readouterr().err and not (tmp_path / "b-0.png").exists()
    assert main(["generate", "a blue square", "--steps", "1", "--seed", "3", "--out", "out.png", "--overwrite"]) == 0
    assert read_parameters(tmp_path / "out.png").seed == 3


def test_cli_generate_and_studio_defaults_agree(tmp_path, monkeypatch, capsys):
    """No option given: the model's own defaults (CFG 2 for the shipped model), as generate() uses."""
    from tutorial_ldm.settings import defaults_for

    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a blue square", "--seed", "4", "--steps", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    cli = read_parameters(tmp_path / "out.png")
    d = defaults_for(shipped_pipe())
    assert printed == "out.png  (seed 4)"
    assert (cli.guidance, cli.sampler, cli.width, cli.height) == (d.guidance, d.sampler, d.width, d.height)
    assert generate(shipped_pipe(), "a blue square", seed=4, steps=2, progress=False).settings[0] == cli


def test_train_with_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    """Was a FileExistsError traceback."""
    run_dir = tmp_path / "a-file"
    run_dir.write_text("not a folder")
    assert main(["train", "--run-dir", str(run_dir), "--vae-steps", "1", "--unet-steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "a-file" in err[0], err


def test_vae_clip_skip_and_prediction_type_options(tmp_path, capsys, monkeypatch):
    """--vae, --clip-skip and --prediction-type reach load_pipeline and generate; the PNG records
    the checkpoint's and the VAE's names and A1111 short hashes, and the clip skip."""
    import hashlib
    import shutil

    from tiny_sd import a_vae_file, tiny_single_file

    monkeypatch.setenv("TUTORIAL_LDM_CACHE", str(tmp_path / "cache"))  # hashes cached here
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(tiny_single_file("sd1").file, checkpoint)
    a_vae_file(tmp_path / "other-vae.safetensors")
    out = tmp_path / "out.png"
    vae = tmp_path / "other-vae.safetensors"
    code = main(["generate", "a red circle", "--model", str(checkpoint), "--vae", str(vae),
                 "--clip-skip", "2", "--prediction-type", "epsilon", "--steps", "1", "--seed", "3",
                 "--width", "64", "--height", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    s = read_parameters(out)
    short = {p: hashlib.sha256(p.read_bytes()).hexdigest()[:10] for p in (checkpoint, vae)}
    assert (s.model, s.model_hash, s.vae, s.vae_hash, s.clip_skip) == (
        "model", short[checkpoint], "other-vae.safetensors", short[vae], 2)
    assert main(["generate", "x", "--model", str(checkpoint), "--vae", "None", "--steps", "1",
                 "--out", str(tmp_path / "own.png")]) == 0
    assert read_parameters(tmp_path / "own.png").vae == ""
    bad = tmp_path / "bad.png"
    assert main(["generate", "x", "--model", str(checkpoint), "--clip-skip", "0", "--out", str(bad)]) == 2
    assert "clip_skip=0 must be an integer from 1" in capsys.readouterr().err
