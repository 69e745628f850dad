"""The training recipe at toy size: it runs end to end, checkpoints are safetensors, and a run
resumed after a crash ends exactly where an uninterrupted run ends."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from tutorial_ldm import train as T
from tutorial_ldm.tiny_model import TinyLDMConfig

TOY = dict(vae_steps=3, vae_batch=4, n_latents=32, unet_steps=4, unet_batch=4, warmup=2,
           checkpoint_every=2, threads=1)
TOY_MODEL = TinyLDMConfig(vae_channels=(8, 16, 16), unet_channels=(16, 16, 32), text_width=32,
                          unet_heads=2)


def test_recipe_exports_a_stock_pipeline(tmp_path):
    pipe = T.train(tmp_path / "run", T.TrainConfig(**TOY), TOY_MODEL, export_to=tmp_path / "pipe")
    assert (tmp_path / "run" / "denoiser_state.safetensors").exists()
    scale = pipe.vae.config.scaling_factor
    assert scale != 1.0 and scale > 0  # measured from data, not the builder's placeholder
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.vae.config.scaling_factor == pytest.approx(scale)
    image = loaded("a red circle on the left", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 64, 64, 3)


def test_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch):
    cfg = T.TrainConfig(**TOY)
    straight = T.train(tmp_path / "a", cfg, TOY_MODEL)

    real_save = T.save_state

    def crash_after_first_denoiser_checkpoint(path, step, *args):
        real_save(path, step, *args)
        if path.name.startswith("denoiser") and step == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(T, "save_state", crash_after_first_denoiser_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        T.train(tmp_path / "b", cfg, TOY_MODEL)
    monkeypatch.setattr(T, "save_state", real_save)
    resumed = T.train(tmp_path / "b", cfg, TOY_MODEL)

    for a, b in zip(straight.unet.parameters(), resumed.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the crash really cut the run short: step 2 weights differ from the final ones
    half = T.TrainConfig(**{**TOY, "unet_steps": 2})
    early = T.train(tmp_path / "c", half, TOY_MODEL)
    assert any(not torch.equal(a, b) for a, b in zip(early.unet.parameters(),
                                                      straight.unet.parameters()))


def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    T.save_state(tmp_path / "s.safetensors", 1, {"m": model}, opt, [[0, 1.5]])
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    step, log = T.load_state(tmp_path / "s.safetensors", {"m": model2}, opt2)
    assert step == 1 and log == [[0, 1.5]]
    torch.testing.assert_close(model2.weight, model.weight)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"],
                               opt.state_dict()["state"][0]["exp_avg"])


def test_warmup_cosine_schedule():
    f = T.warmup_cosine(10, 110, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(110) == pytest.approx(0.1) and 0.1 < f(60) < 1.0
