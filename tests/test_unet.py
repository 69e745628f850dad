"""Chapter 3's helpers: the sinusoidal embedding, the training objective, the UNet's anatomy."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from toy_models import TOY

from tutorial_ldm import unet as U
from tutorial_ldm.noise_schedule import NoiseSchedule
from tutorial_ldm.tiny_model import build_unet, scheduler_config


@pytest.fixture(scope="module")
def toy_unet():
    torch.manual_seed(0)
    return build_unet(TOY).eval()


@pytest.mark.parametrize("dim", [2, 32, 320])
def test_timestep_embedding_equals_diffusers(dim):
    t = torch.tensor([0, 1, 7, 250, 999])
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(U.timestep_embedding(t, dim), theirs, rtol=0, atol=1e-6)
    fractional = torch.tensor([0.5, 333.25])
    torch.testing.assert_close(
        U.timestep_embedding(fractional, dim),
        get_timestep_embedding(fractional, dim, flip_sin_to_cos=True, downscale_freq_shift=0))


def test_timestep_embedding_is_what_the_unet_uses(toy_unet):
    t = torch.tensor([3, 500, 998])
    torch.testing.assert_close(U.timestep_embedding(t, toy_unet.config.block_out_channels[0]),
                               toy_unet.time_proj(t))


def test_timestep_embedding_names_bad_input():
    with pytest.raises(ValueError, match="1-d"):
        U.timestep_embedding(torch.tensor(5), 8)
    with pytest.raises(ValueError, match="even"):
        U.timestep_embedding(torch.tensor([5]), 7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoising_loss_is_the_diffusers_training_loss(toy_unet, prediction_type):
    config = scheduler_config(TOY)
    scheduler = DDPMScheduler(**{k: v for k, v in config.items()
                                 if k not in ("set_alpha_to_one", "steps_offset")})
    schedule = NoiseSchedule.from_config(config)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    context = torch.randn(3, 5, TOY.text_width, generator=g)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        ours = U.denoising_loss(toy_unet, z0, t, noise, context, schedule.alphas_cumprod,
                                prediction_type)
        pred = toy_unet(scheduler.add_noise(z0, noise, t), t, context).sample
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, (pred - target).pow(2).flatten(1).mean(1),
                               rtol=1e-5, atol=1e-6)


def test_velocity_at_zero_snr_is_minus_the_sample():
    z0, noise = torch.randn(2, 4), torch.randn(2, 4)
    torch.testing.assert_close(U.velocity(z0, noise, torch.tensor(0.0)), -z0)
    torch.testing.assert_close(U.velocity(z0, noise, torch.tensor(1.0)), noise)


def test_denoising_loss_names_a_bad_prediction_type(toy_unet):
    with pytest.raises(ValueError, match="sample"):
        U.denoising_loss(toy_unet, torch.zeros(1, 4, 8, 8), torch.tensor([0]),
                         torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 32), torch.ones(1000), "sample")


def test_anatomy_follows_the_latent_through_the_unet(toy_unet):
    blocks = U.unet_anatomy(toy_unet)
    names = [b.name for b in blocks]
    assert names[:3] == ["time_embedding", "conv_in", "down_blocks.0"]
    assert names[-2:] == ["conv_norm_out", "conv_out"]
    assert sum(b.parameters for b in blocks) == sum(p.numel() for p in toy_unet.parameters())
    path = blocks[1:]
    assert path[0].shape_in == (4, 16, 16) and path[-1].shape_out == (4, 16, 16)
    for before, after in zip(path, path[1:]):
        assert before.shape_out == after.shape_in, (before.name, after.name)
    # the skip connections: what the way down hands across, the way up takes
    down = [b for b in blocks if b.name == "conv_in" or b.name.startswith("down")]
    up = [b for b in blocks if b.name.startswith("up")]
    assert sum(b.skips for b in down) == sum(b.skips for b in up) > 0
    # cross-attention exactly where the config puts it
    assert [b.cross_attention for b in blocks if b.name.startswith("down")] == list(TOY.unet_attention)
    assert [b.cross_attention for b in up] == list(reversed(TOY.unet_attention))
    assert next(b for b in blocks if b.name == "mid_block").cross_attention
    assert "CrossAttnDownBlock2D" in U.format_anatomy(blocks)
