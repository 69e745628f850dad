"""Chapter 1's non-zero-SNR demonstration: `train.train_on_schedule` really trains on SD 1.x's
schedule, and the cached result it made (assets/zero-snr/, written by `bench/zero_snr.py
--write-cache`) is whole and agrees with itself. The figures themselves are the bench's."""

import dataclasses
import json
import re
from datetime import date

import pytest
import torch
from PIL import Image

from tutorial_ldm import load_pipeline, world
from tutorial_ldm import train as T
from tutorial_ldm.noise_schedule import NoiseSchedule
from tutorial_ldm.paths import ASSETS
from tutorial_ldm.tiny_model import SD_SCHEDULE, TinyLDMConfig, scheduler_config
from tutorial_ldm.unet import denoising_loss

CACHE = ASSETS / "zero-snr"
MODELS = ("sd_schedule", "zero_snr")
CONDITIONS = ("pure", "leaning", "pure_unconditional", "leaning_unconditional",
              "first_guess", "first_guess_unconditional")
SHARES = ("position_as_prompt", "position_as_lean", "colour_as_prompt", "shape_found",
          "black_background", "white_background", "brightness")


def test_train_on_schedule_trains_on_sds_alpha_bar_and_samples_with_sds_spacing(tmp_path):
    pipe = load_pipeline(device="cpu")
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cfg = dataclasses.replace(T.SCHEDULE_TRAIN, n_latents=16, unet_steps=2, unet_batch=4, log_every=1,
                              threads=1)
    variant, log = T.train_on_schedule(pipe, tmp_path, cfg=cfg)

    # the loss of step 0 (before any update) is Eq. 3 on SD's ᾱ, not on ours
    means, stds, captions = T.encode_world(pipe.vae, cfg.n_latents, seed=cfg.seed + 1)
    latents = {"means": means, "stds": stds, "captions": captions, "scaling_factor": pipe.vae.config.scaling_factor}
    z0, noise, t, caption = T.denoiser_batch(cfg, TinyLDMConfig(), latents, 0)
    ids = pipe.tokenizer(T.caption_table(cfg, TinyLDMConfig(), latents), padding="max_length",
                         max_length=77, return_tensors="pt").input_ids[caption]
    with torch.no_grad():
        context = pipe.text_encoder(ids)[0]

        def loss_on(config):
            ab = NoiseSchedule.from_config(config).alphas_cumprod
            return denoising_loss(pipe.unet, z0, t, noise, context, ab, "v_prediction").mean().item()

        sd_loss, our_loss = loss_on(scheduler_config(TinyLDMConfig(), SD_SCHEDULE)), loss_on(pipe.scheduler.config)
    assert log[0][1] == pytest.approx(sd_loss, rel=1e-4)
    assert abs(sd_loss - our_loss) > 1e-3  # the check can tell the two schedules apart

    config = variant.scheduler.config
    assert not config.rescale_betas_zero_snr and config.timestep_spacing == "leading"
    assert config.prediction_type == "v_prediction" and config.beta_schedule == "scaled_linear"
    assert 0.004 < float(variant.scheduler.alphas_cumprod[-1]) < 0.005  # SD's ᾱ_T
    variant.scheduler.set_timesteps(20)
    assert int(variant.scheduler.timesteps[0]) == 951  # SD's DDIM never starts at T
    assert any(not torch.equal(before[k], v) for k, v in variant.unet.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())  # pipe unchanged
    assert pipe.scheduler.config.rescale_betas_zero_snr


def test_scheduler_changes_name_an_unknown_setting():
    with pytest.raises(ValueError, match="'rescale_zero_snr'.*allowed: .*rescale_betas_zero_snr"):
        scheduler_config(TinyLDMConfig(), {"rescale_zero_snr": False})


def test_cached_result_is_whole_and_consistent():
    result = json.loads((CACHE / "figures.json").read_text())
    assert set(result) >= {"figures", "settings", "grid_prompts", "command", "date", "grid"}
    assert result["command"].startswith("python bench/zero_snr.py") and "--write-cache" in result["command"]
    assert date.fromisoformat(result["date"]) <= date.today()
    s = result["settings"]
    schedules = s["schedules"]
    assert schedules["sd_schedule"]["rescale_betas_zero_snr"] is False
    assert schedules["sd_schedule"]["timestep_spacing"] == "leading"
    assert schedules["zero_snr"]["rescale_betas_zero_snr"] is True
    assert schedules["zero_snr"]["timestep_spacing"] == "trailing"
    assert s["lean_amount_alpha_bar"] == pytest.approx(float(NoiseSchedule().alphas_cumprod[-1]), rel=1e-4)
    assert s["training"]["function"] == "tutorial_ldm.train.train_on_schedule"
    for m in MODELS:
        for c in CONDITIONS:
            figures = result["figures"][m][c]
            assert figures["images"] == s["prompts"] * s["seeds"] == 90 * s["seeds"]
            assert all(0 <= figures[k] <= 1 for k in SHARES), (m, c)

    grid = Image.open(CACHE / "grid.png")
    tile, columns = result["grid"]["tile"], result["grid"]["columns"]
    assert grid.size == (tile * len(columns), tile * len(result["grid_prompts"]))
    assert all(re.fullmatch(r"lean_scene|(sd_schedule|zero_snr)/\w+", c) for c in columns)
    assert all(c.split("/")[1] in CONDITIONS for c in columns[1:])
    assert all(world.parse_caption(p).position for p in result["grid_prompts"])
    assert sum(f.stat().st_size for f in CACHE.iterdir()) <= 300 * 1024
