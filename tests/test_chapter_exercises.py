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
