"""The exercise checks of chapters 2-4 accept the reference and name each classic mistake."""

import math

import pytest
import torch

from tutorial_ldm import exercises as E
from tutorial_ldm.attention import attention
from tutorial_ldm.autoencoder import kl_divergence
from tutorial_ldm.unet import timestep_embedding


def test_references_pass(capsys):
    assert E.check_kl_divergence(kl_divergence)
    assert E.check_timestep_embedding(timestep_embedding)
    assert E.check_attention(attention)
    out = capsys.readouterr().out
    assert out.count("✅") == 3


def embedding_with(frequency_divisor, order):
    def student(t, dim):
        half = dim // 2
        w = torch.exp(-math.log(10_000) * torch.arange(half) / frequency_divisor(dim))
        a = t.float()[:, None] * w[None]
        return torch.cat([a.cos(), a.sin()] if order == "cos" else [a.sin(), a.cos()], -1)
    return student


@pytest.mark.parametrize("checker, student, hint", [
    (E.check_kl_divergence, lambda m, lv: (m**2 + lv.exp() - 1 - lv).flatten(1).sum(1), "½"),
    (E.check_kl_divergence, lambda m, lv: 0.5 * (m**2 + (lv / 2).exp() - 1 - lv).flatten(1).sum(1),
     "σ² is logvar.exp()"),
    (E.check_kl_divergence, lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).flatten(1).mean(1),
     "don't average"),
    (E.check_timestep_embedding, embedding_with(lambda d: d // 2, "sin"), "cosines first"),
    (E.check_timestep_embedding, embedding_with(lambda d: d // 2 - 1, "cos"), "DDPM's original"),
    (E.check_timestep_embedding, embedding_with(lambda d: d, "cos"), "not k / dim"),
    (E.check_attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, "√d before"),
    (E.check_attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v,
     "not by d"),
    (E.check_attention,
     lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -2) @ v, "dim=-1"),
])
def test_classic_mistakes_get_their_hint(checker, student, hint):
    verdict = checker(student, quiet=True)
    assert not verdict
    assert "Hint" in verdict.message and hint in verdict.message, verdict.message


def test_unfinished_exercises_say_so():
    def stub(*args):
        raise NotImplementedError

    for checker in (E.check_kl_divergence, E.check_timestep_embedding, E.check_attention):
        assert "not implemented yet" in checker(stub, quiet=True).message


def test_the_ddim_reference_is_diffusers_ddim_step():
    """The chapter-5 exercise's reference equals diffusers' DDIMScheduler.step, v-prediction, η = 0,
    on the tiny model's zero-terminal-SNR schedule, every step of a 10-step trailing ladder."""
    from diffusers import DDIMScheduler

    from tutorial_ldm.tiny_model import TinyLDMConfig, scheduler_config

    scheduler = DDIMScheduler.from_config(scheduler_config(TinyLDMConfig()))
    assert scheduler.config.prediction_type == "v_prediction"
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 8, 8, generator=g)
    ab_all = scheduler.alphas_cumprod
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(z.shape, generator=g)
        prev = scheduler.timesteps[i + 1] if i + 1 < len(scheduler.timesteps) else None
        ab_prev = ab_all[prev] if prev is not None else scheduler.final_alpha_cumprod
        expected = scheduler.step(v, t, z).prev_sample
        torch.testing.assert_close(E.reference_ddim_step(z, v, ab_all[t], ab_prev), expected,
                                   atol=1e-5, rtol=1e-5)
        z = expected


def test_ddim_exercise_accepts_the_reference_and_names_each_mistake():
    assert E.check_ddim_step(E.reference_ddim_step, quiet=True)
    sq = lambda a: a.sqrt()  # noqa: E731
    x0 = lambda z, v, ab: sq(ab) * z - sq(1 - ab) * v  # noqa: E731
    eps = lambda z, v, ab: sq(1 - ab) * z + sq(ab) * v  # noqa: E731
    students = {
        "not ε": lambda z, v, ab, abp: sq(abp) * (z - sq(1 - ab) * v) / sq(ab).clamp(min=1e-12) + sq(1 - abp) * v,
        "(minus)": lambda z, v, ab, abp: sq(abp) * (sq(ab) * z + sq(1 - ab) * v) + sq(1 - abp) * (sq(1 - ab) * z - sq(ab) * v),
        "use ab_prev": lambda z, v, ab, abp: sq(ab) * x0(z, v, ab) + sq(1 - ab) * eps(z, v, ab),
        "not ᾱ' and 1−ᾱ'": lambda z, v, ab, abp: abp * x0(z, v, ab) + (1 - abp) * eps(z, v, ab),
        "not x̂₀ itself": lambda z, v, ab, abp: x0(z, v, ab),
    }
    for hint, student in students.items():
        verdict = E.check_ddim_step(student, quiet=True)
        assert not verdict and "Hint" in verdict.message and hint in verdict.message, (hint, verdict.message)

    def stub(*args):
        raise NotImplementedError

    assert "not implemented yet" in E.check_ddim_step(stub, quiet=True).message
