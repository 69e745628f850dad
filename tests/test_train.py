"""The training recipe at toy size: it runs end to end through the lessons' own loss, checkpoints
are safetensors, every file is whole or absent, and a run resumed after a crash (a real kill -9
included) ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from tutorial_ldm import train as T
from tutorial_ldm.__main__ import main
from tutorial_ldm.noise_schedule import NoiseSchedule
from tutorial_ldm.tiny_model import build_text_encoder, build_tokenizer, build_unet, scheduler_config
from tutorial_ldm.unet import denoising_loss

ROOT = Path(__file__).resolve().parent.parent
TOY = dict(vae_steps=3, vae_batch=4, n_latents=32, unet_steps=4, unet_batch=4, warmup=2,
           checkpoint_every=2, threads=1)
TOY_MODEL = T.TinyLDMConfig(vae_channels=(8, 16, 16), unet_channels=(16, 16, 32), text_width=32,
                            unet_heads=2)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The toy recipe run once without interruption: the reference every resumed run must hit."""
    return T.train(tmp_path_factory.mktemp("straight"), T.TrainConfig(**TOY), TOY_MODEL)


def test_recipe_exports_a_stock_pipeline(tmp_path):
    pipe = T.train(tmp_path / "run", T.TrainConfig(**TOY), TOY_MODEL, export_to=tmp_path / "pipe")
    assert (tmp_path / "run" / "denoiser_state.safetensors").exists()
    scale = pipe.vae.config.scaling_factor
    assert scale != 1.0 and scale > 0  # measured from data, not the builder's placeholder
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.vae.config.scaling_factor == pytest.approx(scale)
    image = loaded("a red circle on the left", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_trainer_loss_is_the_diffusers_formulation(prediction_type):
    """The trainer's batch through chapter 3's `denoising_loss` on chapter 1's forward process
    gives what diffusers' `add_noise` + `get_velocity` + MSE gave before (to ~1e-6)."""
    model_cfg = T.TinyLDMConfig(**{**TOY_MODEL.__dict__, "prediction_type": prediction_type})
    cfg = T.TrainConfig(**{**TOY, "unet_batch": 8})
    g = torch.Generator().manual_seed(0)
    latents = {"means": torch.randn(32, 4, 16, 16, generator=g),
               "stds": torch.rand(32, 4, 16, 16, generator=g) * 0.1, "scaling_factor": 0.7}
    z0, noise, t, _ = T.denoiser_batch(cfg, model_cfg, latents, step=5)
    assert t.min() < 100 and t.max() > 900 or len(set(t.tolist())) == 8  # a real spread of t
    torch.manual_seed(0)
    unet = build_unet(model_cfg).eval()
    context = build_text_encoder(model_cfg, build_tokenizer(model_cfg))(
        torch.zeros(8, 5, dtype=torch.long))[0].detach()
    config = scheduler_config(model_cfg)
    scheduler = DDPMScheduler(**{k: v for k, v in config.items()
                                 if k not in ("set_alpha_to_one", "steps_offset")})
    with torch.no_grad():
        ours = denoising_loss(unet, z0, t, noise, context,
                              NoiseSchedule.from_config(config).alphas_cumprod,
                              prediction_type).mean()
        pred = unet(scheduler.add_noise(z0, noise, t), t, context).sample
    target = scheduler.get_velocity(z0, noise, t) if prediction_type == "v_prediction" else noise
    torch.testing.assert_close(ours, F.mse_loss(pred, target), rtol=1e-6, atol=1e-6)


def test_batches_are_a_function_of_the_step():
    cfg, latents = T.TrainConfig(**TOY), {"means": torch.randn(32, 4, 16, 16),
                                          "stds": torch.rand(32, 4, 16, 16), "scaling_factor": 1.0}
    a, b, c = (T.denoiser_batch(cfg, TOY_MODEL, latents, s) for s in (3, 3, 4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_posterior_mean_batches_keep_the_rest_of_the_draw():
    """posterior_sample=False: z0 is the scaled posterior mean of the chosen latents; the noise,
    the timesteps and the captions are the same draw as with samples."""
    latents = {"means": torch.randn(32, 4, 16, 16), "stds": torch.rand(32, 4, 16, 16) + 0.5,
               "scaling_factor": 0.5}
    cfg = T.TrainConfig(**TOY)
    sampled = T.denoiser_batch(cfg, TOY_MODEL, latents, step=3)
    mean = T.denoiser_batch(T.TrainConfig(**TOY, posterior_sample=False), TOY_MODEL, latents, step=3)
    chosen = latents["means"][T.step_rng(cfg.seed, 2, 3).integers(32, size=len(mean[0]))] * 0.5
    torch.testing.assert_close(mean[0], chosen)
    assert (sampled[0] - mean[0]).abs().mean() > 0.1  # the samples do carry the encoder's noise
    assert all(torch.equal(x, y) for x, y in zip(sampled[1:], mean[1:]))


def test_mid_timesteps_move_only_the_chosen_share_of_t_to_the_middle():
    """mid_timestep_fraction: that share of the batch's t comes from the logit-normal around
    T/2; z0, the noise, the captions and the other timesteps are the same draw as without it."""
    latents = {"means": torch.randn(32, 4, 16, 16), "stds": torch.rand(32, 4, 16, 16) + 0.5,
               "scaling_factor": 0.5}
    uniform = T.denoiser_batch(T.TrainConfig(**TOY), TOY_MODEL, latents, step=5, batch=4000)
    mixed = T.denoiser_batch(T.TrainConfig(**TOY, mid_timestep_fraction=0.5), TOY_MODEL, latents,
                             step=5, batch=4000)
    assert all(torch.equal(x, y) for x, y in zip(uniform[:2], mixed[:2]))
    assert torch.equal(uniform[3], mixed[3])
    moved = uniform[2] != mixed[2]
    assert 0.4 < moved.float().mean() < 0.55  # half were redrawn (a few land on the same t)
    T_ = TOY_MODEL.num_train_timesteps
    middle = ((mixed[2] >= 0.2 * T_) & (mixed[2] < 0.8 * T_))[moved].float().mean()
    assert middle > 0.78  # logit-normal: 83 % in the middle 60 % of the range; uniform: 60 %
    assert 0 <= mixed[2].min() and mixed[2].max() < T_


SCHEDULE = NoiseSchedule.from_config(scheduler_config(TOY_MODEL))
SOME_T = torch.tensor([0, 50, 200, 500, 800, 990])


def losses_and_x0_errors(prediction_type: str):
    """For a random guess at SOME_T: each sample's plain loss ‖guess − target‖², the squared error
    of the x0 the guess implies, and SNR_t."""
    abar = SCHEDULE.alphas_cumprod[SOME_T]
    a, s = abar.sqrt().view(-1, 1), (1 - abar).sqrt().view(-1, 1)
    z0, noise, guess = torch.randn(6, 16), torch.randn(6, 16), torch.randn(6, 16)
    z_t = a * z0 + s * noise
    if prediction_type == "v_prediction":
        target, x0_hat = a * noise - s * z0, a * z_t - s * guess
    else:
        target, x0_hat = noise, (z_t - s * guess) / a
    return (guess - target).pow(2).mean(1), (x0_hat - z0).pow(2).mean(1), abar / (1 - abar)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_min_snr_weight_is_min_snr_gamma_on_the_x0_error(prediction_type):
    """Hang et al.'s weighting is defined on the error of the implied x0: the weighted loss of
    either target must equal min(SNR_t, γ) · ‖x̂0 − x0‖², whatever the prediction."""
    loss, x0_error, snr = losses_and_x0_errors(prediction_type)
    torch.testing.assert_close(T.min_snr_weight(SCHEDULE, SOME_T, 5.0, prediction_type) * loss,
                               snr.clamp(max=5.0) * x0_error, rtol=1e-4, atol=1e-6)
    last = T.min_snr_weight(SCHEDULE, torch.tensor([999]), 5.0, prediction_type)  # zero SNR
    assert torch.isfinite(last).all() and last.item() == (0.0 if prediction_type == "v_prediction" else 1.0)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_capped_weight_caps_the_plain_losss_weight_on_the_x0_error(prediction_type):
    """The plain loss weighs the x0 error by SNR + 1 (v) or SNR (ε); capped, by min(that, cap):
    the same as Min-SNR for ε, and for v full weight where the image is mostly noise."""
    loss, x0_error, snr = losses_and_x0_errors(prediction_type)
    plain = snr + 1 if prediction_type == "v_prediction" else snr
    torch.testing.assert_close(T.capped_weight(SCHEDULE, SOME_T, 5.0, prediction_type) * loss,
                               plain.clamp(max=5.0) * x0_error, rtol=1e-4, atol=1e-6)
    if prediction_type == "epsilon":
        torch.testing.assert_close(T.capped_weight(SCHEDULE, SOME_T, 5.0, "epsilon"),
                                   T.min_snr_weight(SCHEDULE, SOME_T, 5.0, "epsilon"))
    else:
        assert T.capped_weight(SCHEDULE, torch.tensor([999]), 5.0, prediction_type).item() == 1.0


def test_min_snr_changes_the_denoiser_and_nothing_before_it(tmp_path):
    plain = T.train(tmp_path / "a", T.TrainConfig(**TOY), TOY_MODEL)
    weighted = T.train(tmp_path / "b", T.TrainConfig(**TOY, snr_gamma=5.0), TOY_MODEL)
    assert_same(params(plain.vae), params(weighted.vae))
    assert any(not torch.equal(x, y) for x, y in zip(params(plain.unet), params(weighted.unet)))


def test_plain_steps_restart_the_learning_rate_after_the_unet_steps():
    one_phase = T.TrainConfig(unet_steps=100, unet_lr=1e-3, warmup=10)
    two_phases = T.TrainConfig(unet_steps=100, unet_lr=1e-3, warmup=10, plain_steps=50, plain_lr=3e-4)
    lr = [T.denoiser_learning_rate(two_phases, step) for step in range(150)]
    assert lr[:100] == [T.denoiser_learning_rate(one_phase, step) for step in range(100)]
    assert max(lr[:100]) == pytest.approx(1e-3) and lr[99] < 1.2e-4  # decayed to near its floor
    assert lr[100] < lr[99] and lr[100] == pytest.approx(3e-5)  # warming up again from 1/10
    assert max(lr[100:]) == pytest.approx(3e-4) and lr[149] < 3.5e-5


def test_plain_steps_follow_the_weighted_ones_unweighted_and_resume_across_the_switch(
        tmp_path, monkeypatch):
    cfg = T.TrainConfig(**{**TOY, "unet_steps": 2}, snr_gamma=5.0, plain_steps=2)
    weighted_steps = []
    real_weight = T.min_snr_weight

    def counted(*args):
        weighted_steps.append(1)
        return real_weight(*args)

    monkeypatch.setattr(T, "min_snr_weight", counted)
    straight = T.train(tmp_path / "a", cfg, TOY_MODEL)
    assert len(weighted_steps) == 2  # of the 4 steps, only the first phase's are weighed
    assert T.state_meta(tmp_path / "a" / "denoiser_state.safetensors")["step"] == 4
    one_phase = T.train(tmp_path / "b", T.TrainConfig(**{**TOY, "unet_steps": 2}, snr_gamma=5.0),
                        TOY_MODEL)
    assert any(not torch.equal(x, y) for x, y in zip(params(one_phase.unet), params(straight.unet)))
    resumed = crash_then_resume(tmp_path / "c", cfg, monkeypatch)  # killed at the switch
    assert_same(params(straight.unet), params(resumed.unet))


def test_spatial_transforms_are_the_seven_non_identities_applied_alike_to_any_size():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    drawn = set()
    for step in range(200):
        transform = T.draw_spatial_transform(T.TrainConfig(**TOY), step)
        y = transform(x)
        drawn.add((y.shape[-1], tuple(y[0, 0, 0, :2].tolist())))  # size and top-left corner
    assert len(drawn) == 7 and (8, (0.0, 1.0)) not in drawn  # 4 rotations × {whole, halved}, less x
    half = T.spatial_transform(1, True)(x)
    torch.testing.assert_close(half, F.avg_pool2d(torch.rot90(x, 1, dims=(2, 3)), 2))
    assert T.spatial_transform(1, True)(torch.zeros(1, 4, 16, 16)).shape[-2:] == (8, 8)


def test_equivariance_term_trains_the_autoencoder_and_only_when_asked(tmp_path):
    plain = T.train(tmp_path / "a", T.TrainConfig(**TOY), TOY_MODEL)
    eq = T.train(tmp_path / "b", T.TrainConfig(**TOY, equivariance_weight=1.0), TOY_MODEL)
    assert any(not torch.equal(x, y) for x, y in zip(params(plain.vae), params(eq.vae)))
    off = T.train(tmp_path / "c", T.TrainConfig(**TOY, equivariance_weight=0.0), TOY_MODEL)
    assert_same(params(plain.vae), params(off.vae))


def crash_then_resume(run_dir, cfg, monkeypatch):
    """Train until the first denoiser checkpoint, crash there, then rerun: the resumed pipeline."""
    real_save = T.save_state

    def crash_after_first_denoiser_checkpoint(path, step, *args):
        real_save(path, step, *args)
        if path.name.startswith("denoiser") and step == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(T, "save_state", crash_after_first_denoiser_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        T.train(run_dir, cfg, TOY_MODEL)
    monkeypatch.setattr(T, "save_state", real_save)
    return T.train(run_dir, cfg, TOY_MODEL)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch, straight):
    cfg = T.TrainConfig(**TOY)
    resumed = crash_then_resume(tmp_path / "b", cfg, monkeypatch)
    assert_same(params(straight.unet), params(resumed.unet))
    # and the crash really cut the run short: step 2 weights differ from the final ones
    early = T.train(tmp_path / "c", T.TrainConfig(**{**TOY, "unet_steps": 2}), TOY_MODEL)
    assert any(not torch.equal(a, b) for a, b in zip(early.unet.parameters(),
                                                      straight.unet.parameters()))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (lambda r: truncate(r / "vae" / "diffusion_pytorch_model.safetensors"), "vae is damaged"),
    (lambda r: (r / "vae" / "diffusion_pytorch_model.safetensors").unlink(), "vae is damaged"),
    (lambda r: (r / "latents.json").unlink(), "damaged"),
    (lambda r: truncate(r / "latents.safetensors"), "damaged"),
    (lambda r: (r / "latents.json").write_text("{\"captions\": ["), "damaged"),
    (lambda r: truncate(r / "denoiser_state.safetensors"), "denoiser_state.safetensors is damaged"),
    (lambda r: truncate(r / "autoencoder_state.safetensors") or truncate(
        r / "vae" / "diffusion_pytorch_model.safetensors"), "autoencoder_state.safetensors is damaged"),
], ids=["vae-truncated", "vae-missing", "latents-json-missing", "latents-truncated",
        "latents-json-garbled", "denoiser-truncated", "vae-and-its-checkpoint-truncated"])
def test_damaged_cache_is_named_and_rebuilt(tmp_path, capsys, straight, damage, message):
    run = tmp_path / "run"
    T.train(run, T.TrainConfig(**TOY), TOY_MODEL)
    damage(run)
    capsys.readouterr()
    rebuilt = T.train(run, T.TrainConfig(**TOY), TOY_MODEL)
    notes = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert any(message in note for note in notes), notes
    assert_same(params(straight.unet), params(rebuilt.unet))
    assert_same(params(straight.vae), params(rebuilt.vae))


def test_changed_recipe_redoes_the_stages_it_touches(tmp_path, capsys):
    run = tmp_path / "run"
    T.train(run, T.TrainConfig(**TOY), TOY_MODEL)
    vae_bytes = (run / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()

    # a denoiser-only change keeps the autoencoder and the latents
    capsys.readouterr()
    longer = T.TrainConfig(**{**TOY, "unet_steps": 6})
    resumed = T.train(run, longer, TOY_MODEL)
    notes = [line for line in capsys.readouterr().err.splitlines() if "another recipe" in line]
    assert len(notes) == 1, notes
    assert notes[0].endswith("denoiser_state.safetensors: another recipe (unet_steps 4 → 6); "
                             "denoiser starts again")
    assert (run / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == vae_bytes
    assert_same(params(resumed.unet), params(T.train(tmp_path / "fresh6", longer, TOY_MODEL).unet))

    # an autoencoder change redoes everything, and config.json says what was done
    capsys.readouterr()
    changed = T.TrainConfig(**{**TOY, "vae_steps": 4, "n_latents": 40})
    redone = T.train(run, changed, TOY_MODEL)
    err = capsys.readouterr().err
    assert "vae: another recipe (vae_steps 3 → 4); training it again" in err
    assert "n_latents 32 → 40" in err
    fresh = T.train(tmp_path / "fresh", changed, TOY_MODEL)
    assert_same(params(redone.vae), params(fresh.vae))
    assert_same(params(redone.unet), params(fresh.unet))
    assert len(json.loads((run / "latents.json").read_text())["captions"]) == 40
    assert json.loads((run / "config.json").read_text())["train"]["vae_steps"] == 4


def test_settings_that_do_not_change_the_result_do_not_redo_anything(tmp_path, capsys, straight):
    run = tmp_path / "run"
    T.train(run, T.TrainConfig(**TOY), TOY_MODEL)
    capsys.readouterr()
    again = T.train(run, T.TrainConfig(**{**TOY, "checkpoint_every": 3, "log_every": 5}), TOY_MODEL)
    assert "another recipe" not in capsys.readouterr().err
    assert_same(params(straight.unet), params(again.unet))


@pytest.mark.parametrize("field, value, allowed", [
    ("vae_steps", -5, "an integer ≥ 1"), ("unet_steps", 0, "an integer ≥ 1"),
    ("n_latents", 0, "an integer ≥ 1"), ("threads", -1, "an integer ≥ 0 (0: every core)"),
    ("seed", -1, "an integer ≥ 0"), ("vae_steps", 2.5, "an integer ≥ 1"),
    ("caption_dropout", 1.5, "a number from 0 to 1"), ("unet_lr", float("nan"), "a finite number > 0"),
    ("ema_decay", 1.0, "a number from 0 (off) up to, not including, 1"),
    ("snr_gamma", -1.0, "a finite number ≥ 0"),
    ("equivariance_weight", float("inf"), "a finite number ≥ 0"),
    ("loss_weight_cap", -5, "a finite number ≥ 0"),
    ("plain_steps", -1, "an integer ≥ 0"), ("plain_lr", 0, "a finite number > 0"),
])
def test_bad_config_names_field_value_and_what_is_allowed(tmp_path, field, value, allowed):
    cfg = T.TrainConfig(**{**TOY, field: value})
    with pytest.raises(ValueError) as e:
        T.train(tmp_path / "run", cfg, TOY_MODEL)
    assert str(e.value) == f"{field}={value!r} must be {allowed}"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--vae-steps", "-5", "--unet-steps", "-5"], "error: vae_steps=-5 must be an integer ≥ 1"),
    (["--unet-steps", "-5"], "error: unet_steps=-5 must be an integer ≥ 1"),
    (["--threads", "-1"], "error: threads=-1 must be an integer ≥ 0 (0: every core)"),
    (["--n-latents", "0"], "error: n_latents=0 must be an integer ≥ 1"),
    (["--checkpoint-every", "0"], "error: checkpoint_every=0 must be an integer ≥ 1"),
    (["--run-dir", "a-file"], "error: run_dir='a-file' is a file; it must be a folder"),
    (["--export", "a-file"], "error: export_to='a-file' is a file; it must be a folder"),
    (["--vae-steps", "many"], "error: argument --vae-steps: invalid int value: 'many'"),
])
def test_cli_bad_values_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    try:
        code = main(["train", "--run-dir", "run", *args])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# ----------------------------------------------------------------------------- a real kill -9

CLI = ["--vae-steps", "4", "--unet-steps", "4", "--n-latents", "64", "--checkpoint-every", "1",
       "--threads", "1"]


def start_cli(run, export):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tutorial_ldm", "train", "--run-dir", str(run),
                             "--export", str(export), *CLI], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def run_cli(run, export):
    proc = start_cli(run, export)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    run_cli(base / "run", base / "pipe")
    return load_file(base / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("appears", ["autoencoder_state.safetensors", "latents.safetensors",
                                     "denoiser_state.safetensors"],
                         ids=["during-autoencoder", "right-after-latents", "during-denoiser"])
def test_kill_9_at_each_stage_then_rerun_finishes_the_same_model(tmp_path, cli_reference, appears):
    run, export = tmp_path / "run", tmp_path / "pipe"
    proc = start_cli(run, export)
    deadline = time.monotonic() + 240
    while not (run / appears).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished before the kill
    assert not export.exists()

    err = run_cli(run, export)
    assert "Traceback" not in err
    resumed = load_file(export / "unet" / "diffusion_pytorch_model.safetensors")
    assert resumed.keys() == cli_reference.keys()
    assert all(torch.equal(resumed[k], cli_reference[k]) for k in resumed)


def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    T.save_state(tmp_path / "s.safetensors", 1, {"m": model}, opt, [[0, 1.5]], {"seed": 0})
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    step, log = T.load_state(tmp_path / "s.safetensors", {"m": model2}, opt2)
    assert step == 1 and log == [[0, 1.5]]
    assert T.state_meta(tmp_path / "s.safetensors")["recipe"] == {"seed": 0}
    torch.testing.assert_close(model2.weight, model.weight)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"],
                               opt.state_dict()["state"][0]["exp_avg"])


def test_warmup_cosine_schedule():
    f = T.warmup_cosine(10, 110, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(110) == pytest.approx(0.1) and 0.1 < f(60) < 1.0


def test_bilingual_recipe_trains_on_both_languages_and_exports_a_stock_pipeline(tmp_path):
    from tutorial_ldm.prompts import encode_weighted

    model_cfg = T.TinyLDMConfig(**{**TOY_MODEL.__dict__, "languages": ("en", "zh")})
    cfg = T.TrainConfig(**TOY)
    pipe = T.train(tmp_path / "run", cfg, model_cfg, export_to=tmp_path / "pipe")
    latents = {"means": torch.zeros(32, 1), "stds": torch.zeros(32, 1), "scaling_factor": 1.0,
               "captions": json.loads((tmp_path / "run" / "latents.json").read_text())["captions"]}
    table = T.caption_table(cfg, model_cfg, latents)
    assert table[32:64] == T.world.chinese_captions(latents["captions"], cfg.seed)
    chosen = torch.cat([T.denoiser_batch(cfg, model_cfg, latents, s)[3] for s in range(50)])
    chinese = ((chosen >= 32) & (chosen < 64)).float().mean()
    assert 0.3 < chinese < 0.6  # about half of the captions (less the 10 % dropout) in Chinese

    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    prompt = "左边有一个红色的圆形"
    assert loaded.tokenizer.unk_token_id not in loaded.tokenizer(prompt).input_ids
    with torch.no_grad():  # diffusers' own path and ours segment the same way
        theirs = loaded.encode_prompt(prompt, "cpu", 1, False)[0]
        ours = encode_weighted(loaded.tokenizer, loaded.text_encoder, prompt)
    torch.testing.assert_close(ours, theirs)
    assert pipe.tokenizer(prompt).input_ids == loaded.tokenizer(prompt).input_ids


def test_every_setting_belongs_to_one_stage_or_to_none():
    from dataclasses import fields

    recipes = T.stage_recipes(T.TrainConfig(), T.TinyLDMConfig())
    names = [f.name for f in (*fields(T.TrainConfig), *fields(T.TinyLDMConfig))]
    for name in names:
        assert (name in T.NOT_RECIPE) != (name in recipes["denoiser"]), name
    # what the autoencoder reads is in its recipe, and what only the denoiser reads is not
    assert {"vae_steps", "edge_weight", "kl_weight", "vae_channels", "seed"} <= set(recipes["autoencoder"])
    assert not {"unet_steps", "languages", "n_latents"} & set(recipes["autoencoder"])
    assert recipes["latents"] == {**recipes["autoencoder"], "n_latents": 24_000}


def test_edge_loss_is_zero_for_a_perfect_copy_and_sees_a_blurred_corner():
    x = torch.from_numpy(T.world.render_batch(T.world.sample_scenes(2, seed=0)))
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert T.edge_loss(x, x) == 0
    assert T.edge_loss(blurred, x) > 0.01


def test_contrast_weighting_favours_low_contrast_scenes_and_is_off_by_default():
    low = T.world.Scene("triangle", "orange", "on the left", "small", "red")
    high = T.world.Scene("triangle", "orange", "on the left", "small", "black")
    assert T.contrast_weight(low) > 1.5 > 0.8 > T.contrast_weight(high)
    photos = [torch.zeros(3, 96, 96)]
    eight = {**TOY, "vae_batch": 8}  # 7 scenes and 1 photo crop
    _, plain = T.autoencoder_batch(T.TrainConfig(**eight), 0, photos, "cpu")
    assert torch.equal(plain, torch.ones(8))
    _, weighted = T.autoencoder_batch(T.TrainConfig(**eight, contrast_weighting=True), 0, photos,
                                      "cpu")
    assert weighted[-1] == 1.0 and not torch.equal(weighted, plain)  # photos keep weight 1


def test_hard_fraction_redraws_that_share_of_scenes_small_on_a_coloured_background():
    photos = [torch.zeros(3, 96, 96)]
    eight = {**TOY, "vae_batch": 8}  # 7 scenes and 1 photo crop
    plain, _ = T.autoencoder_batch(T.TrainConfig(**eight), 0, photos, "cpu")
    again, _ = T.autoencoder_batch(T.TrainConfig(**eight, hard_fraction=0.0), 0, photos, "cpu")
    assert torch.equal(plain, again)  # off by default: the first edition's batches
    rng = np.random.default_rng(0)
    for scene in T.world.sample_scenes(50, seed=1):
        hard = T.hard_scene(scene, rng)
        assert hard.size == "small" and hard.background not in ("white", hard.colour)
        assert (hard.shape, hard.colour, hard.position) == (scene.shape, scene.colour, scene.position)
    mixed, _ = T.autoencoder_batch(T.TrainConfig(**eight, hard_fraction=0.5), 0, photos, "cpu")
    assert torch.equal(mixed[4:], plain[4:]) and not torch.equal(mixed[:4], plain[:4])
    with pytest.raises(ValueError, match="hard_fraction=1.5 must be a number from 0 to 1"):
        T.check_config(T.TrainConfig(hard_fraction=1.5))


def test_encoder_only_training_leaves_the_decoder_as_it_was(tmp_path):
    start = T.build_autoencoder(TOY_MODEL)
    vae, _ = T.train_autoencoder(T.TrainConfig(**TOY), TOY_MODEL, tmp_path, start_from=start,
                                 encoder_only=True)
    before, after = start.state_dict(), vae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("encoder.", "quant_conv.")) for k in changed), changed


def test_weight_average_warms_up_then_keeps_its_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    average = T.weight_average(model, decay=0.2)
    expected = None
    for n, value in enumerate([4.0, 0.0, 8.0, 2.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        average.update_parameters(model)
        keep = min(0.2, (1 + n) / (10 + n))  # after n updates; the cap from the third on
        expected = value if expected is None else keep * expected + (1 - keep) * value
        torch.testing.assert_close(average.module.weight, torch.full((1, 2), expected))
    assert expected not in (4.0, 2.0)  # an average, neither the first nor the last weights


def test_ema_run_exports_the_average_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = T.TrainConfig(**{**TOY, "ema_decay": 0.9})
    straight = T.train(tmp_path / "a", cfg, TOY_MODEL, export_to=tmp_path / "pipe")
    state = load_file(tmp_path / "a" / "denoiser_state.safetensors")
    last = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    averaged = {k[len("ema_unet.module."):]: v for k, v in state.items()
                if k.startswith("ema_unet.module.")}
    assert last.keys() == averaged.keys() and state["ema_unet.n_averaged"] == TOY["unet_steps"]
    exported = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe").unet.state_dict()
    assert all(torch.equal(exported[k], averaged[k]) for k in averaged)  # the average is shipped
    assert any(not torch.equal(last[k], averaged[k]) for k in last)
    assert_same(params(straight.unet), params(crash_then_resume(tmp_path / "b", cfg, monkeypatch).unet))


def test_chinese_words_can_start_from_their_english_translations():
    model_cfg = T.TinyLDMConfig(**{**TOY_MODEL.__dict__, "languages": ("en", "zh")})
    tokenizer = T.build_tokenizer(model_cfg)
    encoder = T.build_text_encoder(model_cfg, tokenizer)
    before = encoder.get_input_embeddings().weight.detach().clone()
    assert T.start_chinese_from_english(encoder, tokenizer) == len(T.world.translations())
    table = encoder.get_input_embeddings().weight
    row = tokenizer.convert_tokens_to_ids
    assert torch.equal(table[row("圆形")], before[row("circle")])
    assert torch.equal(table[row("左侧")], table[row("左边")])  # synonyms start as one word
    assert torch.equal(table[row("有")], before[row("有")])  # glue words keep their random start
    assert torch.equal(table[row("circle")], before[row("circle")])  # English is untouched
    # every Chinese word of the vocabulary is translated, except the sentence forms' glue
    chinese = {w for w in T.world.vocabulary(("en", "zh")) if not w.isascii()}
    assert chinese - set(T.world.translations()) == set(T.world.ZH_GLUE) - {"背景"}


def test_tied_chinese_words_stay_their_english_translations_through_training(tmp_path):
    """tie_chinese_to_english: after a bilingual run each Chinese word's embedding still equals
    its translation's, which moved (both were trained, as one token), and glue words moved alone."""
    model_cfg = T.TinyLDMConfig(**{**TOY_MODEL.__dict__, "languages": ("en", "zh")})
    cfg = T.TrainConfig(**TOY, tie_chinese_to_english=True)
    tokenizer = T.build_tokenizer(model_cfg)
    torch.manual_seed(cfg.seed)
    start = T.build_text_encoder(model_cfg, tokenizer).get_input_embeddings().weight.detach().clone()
    pipe = T.train(tmp_path / "run", cfg, model_cfg)
    table = pipe.text_encoder.get_input_embeddings().weight
    row = tokenizer.convert_tokens_to_ids
    for zh, en in T.world.translations().items():
        assert torch.equal(table[row(zh)], table[row(en)]), (zh, en)
    assert not torch.equal(table[row("circle")], start[row("circle")])
    assert not torch.equal(table[row("有")], table[row("a")])
