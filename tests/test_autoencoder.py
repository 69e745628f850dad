"""Chapter 2's helpers: pixels ↔ tensors, E and D, PSNR, the KL term, interpolation, the f family."""

import math

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from skimage.metrics import peak_signal_noise_ratio
from toy_models import TOY

from tutorial_ldm import autoencoder as A
from tutorial_ldm import world
from tutorial_ldm.tiny_model import build_autoencoder


@pytest.fixture(scope="module")
def toy_vae():
    torch.manual_seed(0)
    return build_autoencoder(TOY).eval()


def test_pixels_round_trip_exactly():
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = A.to_tensor(images)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(A.to_images(x), images)
    assert A.to_tensor(images[0]).shape == (1, 3, 8, 8)
    assert np.array_equal(A.to_images(A.to_tensor(list(images))), images)
    assert A.to_images(torch.full((1, 3, 2, 2), 5.0)).max() == 255  # clipped, not wrapped


def test_to_tensor_names_bad_input():
    with pytest.raises(ValueError, match="uint8 RGB"):
        A.to_tensor(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="float64"):
        A.to_tensor(np.zeros((8, 8, 3)))


def test_psnr_matches_scikit_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    ours = A.psnr(y, x)
    for i in range(3):
        theirs = peak_signal_noise_ratio(x[i].numpy(), y[i].numpy(), data_range=2.0)
        assert ours[i].item() == pytest.approx(theirs, rel=1e-6)
    assert math.isinf(A.psnr(x, x)[0].item())
    with pytest.raises(ValueError, match="same shape"):
        A.psnr(x, x[:, :, :8])


def test_kl_matches_diffusers_posterior():
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g) - 2
    posterior = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    torch.testing.assert_close(A.kl_divergence(mean, logvar), posterior.kl())
    assert A.kl_divergence(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)).item() == 0


def test_encode_decode_use_the_posterior(toy_vae):
    x = torch.from_numpy(world.render_batch(world.sample_scenes(2, 0)))
    posterior = toy_vae.encode(x).latent_dist
    z = A.encode(toy_vae, x)
    assert z.shape == (2, 4, 16, 16) and A.downsampling_factor(toy_vae) == 4
    torch.testing.assert_close(z, posterior.mean)
    s1 = A.encode(toy_vae, x, sample=True, generator=torch.Generator().manual_seed(3))
    s2 = A.encode(toy_vae, x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and not torch.equal(s1, z)
    # a sample is the mean plus std-sized noise: standardised, it is N(0, 1)
    r = (s1 - posterior.mean) / posterior.std
    assert abs(r.mean().item()) < 0.1 and abs(r.std().item() - 1) < 0.1
    recon = A.decode(toy_vae, z)
    assert recon.shape == x.shape and recon.min() >= -1 and recon.max() <= 1
    torch.testing.assert_close(recon, toy_vae.decode(z).sample.clamp(-1, 1))


def test_slerp_keeps_the_norm_of_gaussian_noise_and_lerp_does_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, 16, generator=g), torch.randn(4, 16, 16, generator=g)
    for path in (A.lerp, A.slerp):
        torch.testing.assert_close(path(a, b, 0.0), a)
        torch.testing.assert_close(path(a, b, 1.0), b)
    assert A.slerp(a, b, 0.5).norm() / a.norm() == pytest.approx(1, abs=0.05)
    assert A.lerp(a, b, 0.5).norm() / a.norm() == pytest.approx(math.sqrt(0.5), abs=0.05)
    torch.testing.assert_close(A.slerp(a, 2 * a, 0.5), 1.5 * a)  # parallel: the straight line


def test_interpolate_path():
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    path = A.interpolate(a, b, 5)
    assert path.shape == (5, 2, 3)
    torch.testing.assert_close(path[:, 0, 0], torch.tensor([0, 0.25, 0.5, 0.75, 1.0]))
    assert A.interpolate(a, b, 3, spherical=True).shape == (3, 2, 3)
    with pytest.raises(ValueError, match="at least 2"):
        A.interpolate(a, b, 1)


@pytest.mark.parametrize("f", [2, 4, 8, 16])
def test_f_config_builds_an_autoencoder_with_that_factor(f):
    cfg = A.f_config(f)
    assert len(cfg.vae_channels) == int(math.log2(f)) + 1 and cfg.latent_size == 64 // f
    vae = build_autoencoder(cfg)
    assert A.downsampling_factor(vae) == f
    assert A.encode(vae, torch.zeros(1, 3, 64, 64)).shape == (1, 4, 64 // f, 64 // f)


@pytest.mark.parametrize("f", [0, 1, 3, 12, 128])
def test_f_config_refuses_other_factors(f):
    with pytest.raises(ValueError, match="power of 2"):
        A.f_config(f)


def test_unet_flops_grow_with_the_latent_and_count_attention():
    small, large = A.unet_flops(8, 4), A.unet_flops(16, 4)
    assert 3 < large / small < 4.5  # convolutions scale with the area, attention to text too
    # the 8×8 and 4×4 levels attend: dropping the attention must lower the count
    from dataclasses import replace

    from tutorial_ldm.tiny_model import TinyLDMConfig
    no_attention = A.unet_flops(16, 4, replace(TinyLDMConfig(), unet_attention=(False,) * 3))
    assert no_attention < large


def test_load_f_autoencoders_names_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="bench/f_tradeoff.py"):
        A.load_f_autoencoders(tmp_path)


def test_shipped_f_autoencoders_trade_quality_for_size():
    """The small autoencoders chapter 2 loads: each has its f, and quality falls as f grows."""
    vaes = A.load_f_autoencoders()
    assert sorted(vaes) == [2, 4, 8, 16]
    x = torch.from_numpy(world.render_batch(world.sample_scenes(16, 99)))
    quality = {}
    for f, vae in vaes.items():
        assert next(vae.parameters()).dtype == torch.float32
        z = A.encode(vae, x)
        assert z.shape[-1] == 64 // f
        quality[f] = A.psnr(A.decode(vae, z), x).mean().item()
    assert quality[2] > quality[4] > quality[8] > quality[16]
    assert quality[4] > 18 and quality[16] < quality[2] - 5, quality
