"""The forward process against diffusers' DDPMScheduler, the chain against the closed form, and
the errors a student sees for bad arguments."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from tutorial_ldm.noise_schedule import (
    SCHEDULES,
    NoiseSchedule,
    forward_chain,
    make_betas,
    q_sample,
    q_step,
    snr,
)
from tutorial_ldm.tiny_model import TinyLDMConfig, scheduler_config

# The beta ranges each schedule is used with: DDPM in pixels, SD in latents (cosine has none).
RANGES = {
    "linear": (1e-4, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "squaredcos_cap_v2": (1e-4, 0.02),
}
TOL = 1e-6


def both(name, rescale):
    start, end = RANGES[name]
    kwargs = dict(
        beta_schedule=name, beta_start=start, beta_end=end, rescale_betas_zero_snr=rescale
    )
    return NoiseSchedule(**kwargs), DDPMScheduler(num_train_timesteps=1000, **kwargs)


@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "zero-snr"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_betas_and_alphas_cumprod_match_diffusers(name, rescale):
    ours, ref = both(name, rescale)
    torch.testing.assert_close(ours.betas, ref.betas, atol=TOL, rtol=0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=TOL, rtol=0)


@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "zero-snr"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_add_noise_matches_diffusers(name, rescale):
    ours, ref = both(name, rescale)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 4, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    timesteps = torch.tensor([0, 1, 250, 500, 998, 999])
    expected = ref.add_noise(x0, noise, timesteps)
    torch.testing.assert_close(ours.add_noise(x0, noise, timesteps), expected, atol=TOL, rtol=0)
    # the teaching form, one t at a time, is the same equation
    for i, t in enumerate(timesteps.tolist()):
        torch.testing.assert_close(ours.q_sample(x0[i], t, noise[i]), expected[i], atol=TOL, rtol=0)


def test_cosine_is_an_alias_and_default_ranges_are_the_papers():
    torch.testing.assert_close(make_betas("cosine"), make_betas("squaredcos_cap_v2"))
    assert NoiseSchedule("cosine").beta_schedule == "squaredcos_cap_v2"
    sd = make_betas("scaled_linear")
    assert sd[0].item() == pytest.approx(0.00085) and sd[-1].item() == pytest.approx(0.012)
    ddpm = make_betas("linear")
    assert ddpm[0].item() == pytest.approx(1e-4) and ddpm[-1].item() == pytest.approx(0.02)


def test_zero_terminal_snr():
    for name in SCHEDULES:
        plain = NoiseSchedule(name)
        rescaled = NoiseSchedule(name, rescale_betas_zero_snr=True)
        assert plain.alphas_cumprod[-1] > 0 and plain.snr[-1] > 0  # some signal left at T
        assert rescaled.alphas_cumprod[-1] == 0 and rescaled.snr[-1] == 0  # none left
        # Alg. 1 keeps ᾱ_0 and the schedule stays strictly decreasing
        assert rescaled.alphas_cumprod[0] == pytest.approx(plain.alphas_cumprod[0].item(), abs=1e-6)
        assert (rescaled.alphas_cumprod.diff() < 0).all()
    # SD's schedule leaves √ᾱ_T ≈ 0.068 of the image in x_T: the flaw Lin et al. point out
    assert NoiseSchedule("scaled_linear").alphas_cumprod[-1].sqrt().item() == pytest.approx(
        0.068, abs=1e-3
    )


def test_snr_definition():
    a = torch.tensor([0.99, 0.5, 0.01])
    torch.testing.assert_close(snr(a), torch.tensor([99.0, 1.0, 1 / 99]))


def test_from_config_reads_the_tiny_models_schedule():
    cfg = scheduler_config(TinyLDMConfig())
    ours = NoiseSchedule.from_config(cfg)
    ref = DDPMScheduler(
        **{
            k: cfg[k]
            for k in (
                "num_train_timesteps",
                "beta_start",
                "beta_end",
                "beta_schedule",
                "rescale_betas_zero_snr",
            )
        }
    )
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, atol=TOL, rtol=0)
    assert ours.alphas_cumprod[-1] == 0


@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "zero-snr"])
@pytest.mark.parametrize("name", SCHEDULES)
def test_chain_and_closed_form_agree_in_distribution(name, rescale):
    """Eq. 2 applied t+1 times gives the distribution of Eq. 4: N(√ᾱ_t x_0, (1-ᾱ_t) I).

    n = 20000 independent chains per pixel; the sample mean has standard error σ/√n and the
    sample std about σ/√(2n). Tolerance: 5 standard errors (a correct chain fails with
    probability < 1e-5 per pixel; the seed is fixed anyway). Independent closed-form samples are
    held to the same tolerance, so the check is two-sided, not just against the formula.
    """
    schedule = NoiseSchedule(name, rescale_betas_zero_snr=rescale)
    n = 20_000
    x0 = torch.tensor([-1.0, -0.3, 0.0, 0.5, 1.0])
    g = torch.Generator().manual_seed(1234)
    for t in (0, 9, 300, 999):
        a_bar = schedule.alphas_cumprod[t].double()
        mean, std = a_bar.sqrt() * x0.double(), (1 - a_bar).sqrt()
        chain = forward_chain(x0.expand(n, -1).clone(), t, schedule.betas, generator=g).double()
        noise = torch.randn(n, len(x0), generator=g)
        closed = q_sample(x0.expand(n, -1), t, noise, schedule.alphas_cumprod).double()
        for samples in (chain, closed):
            mean_tol = 5 * std / n**0.5 + 1e-6
            std_tol = 5 * std / (2 * n) ** 0.5 + 1e-6
            assert (samples.mean(0) - mean).abs().max() < mean_tol, (t, samples.mean(0), mean)
            assert (samples.std(0) - std).abs().max() < std_tol, (t, samples.std(0), std)


def test_chain_differs_from_a_wrong_chain():
    """The statistical test has teeth: forgetting the √(1-β) shrink makes the mean visibly wrong."""
    schedule = NoiseSchedule("linear")
    x0 = torch.ones(20_000, 1)
    g = torch.Generator().manual_seed(0)
    x = x0
    for s in range(301):
        x = x + schedule.betas[s].sqrt() * torch.randn(x.shape, generator=g)  # no shrink
    a_bar = schedule.alphas_cumprod[300]
    std_err = (1 - a_bar).sqrt() / 20_000**0.5
    assert (x.mean() - a_bar.sqrt()).abs() > 50 * std_err


def test_q_step_is_eq_2():
    schedule = NoiseSchedule("linear")
    x, noise = torch.full((2, 3), 0.5), torch.ones(2, 3)
    beta = schedule.betas[10]
    expected = (1 - beta).sqrt() * 0.5 + beta.sqrt()
    torch.testing.assert_close(
        q_step(x, 10, noise, schedule.betas), torch.full((2, 3), expected.item())
    )


# --- bad arguments: a ValueError that names the bad value and what is allowed ------------------


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match=r"'quadratic'.*linear, scaled_linear, squaredcos_cap_v2"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="'sqrt'"):
        make_betas("sqrt")


@pytest.mark.parametrize("t", [-1, 1000, 5000])
def test_timestep_outside_range(t):
    schedule = NoiseSchedule()
    x0 = torch.zeros(3, 4, 4)
    with pytest.raises(ValueError, match=rf"timestep {t} is outside \[0, 1000\)"):
        schedule.q_sample(x0, t, torch.zeros_like(x0))
    with pytest.raises(ValueError, match=rf"{t}.*\[0, 1000\)"):
        schedule.forward_chain(x0, t)
    with pytest.raises(ValueError, match=rf"{t}.*\[0, 1000\)"):
        schedule.add_noise(x0[None], torch.zeros(1, 3, 4, 4), torch.tensor([t]))


def test_float_timesteps_are_refused():
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="integers in \\[0, 1000\\).*float32"):
        NoiseSchedule().add_noise(x0, torch.zeros_like(x0), torch.tensor([1.0, 2.0]))


def test_mismatched_shapes():
    schedule = NoiseSchedule()
    x0 = torch.zeros(2, 3, 8, 8)
    with pytest.raises(
        ValueError, match=r"noise has shape \(2, 3, 4, 4\) but x0 has shape \(2, 3, 8, 8\)"
    ):
        schedule.q_sample(x0, 5, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"noise has shape \(3, 8, 8\) but x_prev"):
        schedule.q_step(x0, 5, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"one per sample \(shape \(2,\)\), got shape \(3,\)"):
        schedule.add_noise(x0, torch.zeros_like(x0), torch.tensor([1, 2, 3]))


def test_non_float_samples_are_refused():
    schedule = NoiseSchedule()
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)  # an unscaled image: would come out all zero
    with pytest.raises(ValueError, match="x0 must be a floating-point torch.Tensor.*torch.uint8"):
        schedule.q_sample(image, 5, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="x0 must be a floating-point torch.Tensor.*got ndarray"):
        schedule.q_sample(np.zeros((3, 8, 8), np.float32), 5, torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="noise must be"):
        schedule.q_step(torch.zeros(3), 5, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_train_timesteps=1), "num_train_timesteps must be an integer ≥ 2, got 1"),
        (dict(num_train_timesteps=10.0), "got 10.0"),
        (dict(beta_start=0.02, beta_end=0.01), "beta_start=0.02, beta_end=0.01"),
        (dict(beta_end=1.5), "beta_end=1.5"),
    ],
)
def test_bad_schedule_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule("linear", **kwargs)
