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


# --- chapters 6-8 ------------------------------------------------------------------------------


def per_chunk_mean(x):
    return x.mean(dim=(1, 2), keepdim=True)


def emphasize_student(z, w):
    zw = z * w[..., None]
    return zw * (per_chunk_mean(z) / per_chunk_mean(zw))


def blend_student(x, z0, noise, mask, ab):
    return (1 - mask) * (torch.sqrt(ab) * z0 + torch.sqrt(1 - ab) * noise) + mask * x


def merge_student(W, A, B, alpha, multiplier=1.0):
    return W + multiplier * alpha / A.shape[0] * (B @ A)


def test_chapter_6_to_8_references_and_right_answers_pass():
    from tutorial_ldm.finetune import lora_formula
    from tutorial_ldm.prompts import emphasize

    for checker, answers in [(E.check_emphasize, [emphasize, emphasize_student]),
                             (E.check_inpaint_blend, [E.reference_inpaint_blend, blend_student]),
                             (E.check_merge_lora, [lora_formula, merge_student])]:
        for answer in answers:
            verdict = checker(answer, quiet=True)
            assert verdict and verdict.attempted, verdict.message


@pytest.mark.parametrize("checker, student, hint", [
    (E.check_emphasize, lambda z, w: z * w[..., None], "mean(z) / mean(z·w)"),
    (E.check_emphasize, lambda z, w: z * w[..., None] * (z.mean() / (z * w[..., None]).mean()), "whole batch"),
    (E.check_emphasize, lambda z, w: z * w[..., None] * (per_chunk_mean(z * w[..., None]) / per_chunk_mean(z)),
     "not the other way round"),
    (E.check_emphasize,
     lambda z, w: z * w[..., None] * (per_chunk_mean(z.abs()) / per_chunk_mean((z * w[..., None]).abs())),
     "not the mean size"),
    (E.check_inpaint_blend, lambda x, z0, n, m, ab: blend_student(x, z0, n, 1 - m, ab), "white (mask = 1)"),
    (E.check_inpaint_blend, lambda x, z0, n, m, ab: (1 - m) * z0 + m * x, "not the clean z0"),
    (E.check_inpaint_blend, lambda x, z0, n, m, ab: (1 - m) * (ab * z0 + (1 - ab) * n) + m * x, "not ᾱ and 1−ᾱ"),
    (E.check_inpaint_blend, lambda x, z0, n, m, ab: blend_student(x, z0, n, m, ab) + (1 - m) * x,
     "x needs its weight"),
    (E.check_merge_lora, lambda W, A, B, a, m=1.0: W + m * a * B @ A, "not by α alone"),
    (E.check_merge_lora, lambda W, A, B, a, m=1.0: W + m * A.shape[0] / a * B @ A, "not r / α"),
    (E.check_merge_lora, lambda W, A, B, a, m=1.0: W + a / A.shape[0] * B @ A, "multiplier m"),
    (E.check_merge_lora, lambda W, A, B, a, m=1.0: W + m * a / A.shape[1] * B @ A, "A's rows"),
])
def test_chapter_6_to_8_mistakes_get_their_hint(checker, student, hint):
    verdict = checker(student, quiet=True)
    assert not verdict and verdict.attempted
    assert "Hint" in verdict.message and hint in verdict.message, verdict.message


def test_a_lora_merged_the_wrong_way_round_is_a_shape_error_with_its_line():
    verdict = E.check_merge_lora(lambda W, A, B, alpha, multiplier=1.0: W + alpha / 2 * A @ B, quiet=True)
    assert not verdict and "raised RuntimeError" in verdict.message and "A @ B" in verdict.message


def test_the_inpainting_reference_is_diffusers_blend():
    """StableDiffusionInpaintPipeline (4-channel UNet): init_latents_proper = add_noise(z0, ε, t),
    latents = (1 − mask)·init_latents_proper + mask·latents — our reference at ᾱ = ᾱ_t."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(1)
    x, z0, noise = torch.randn(3, 1, 4, 8, 8, generator=g)
    mask = (torch.rand(1, 1, 8, 8, generator=g) > 0.5).float()
    t = torch.tensor([621])
    expected = (1 - mask) * scheduler.add_noise(z0, noise, t) + mask * x
    torch.testing.assert_close(E.reference_inpaint_blend(x, z0, noise, mask, scheduler.alphas_cumprod[t]),
                               expected)


ALL_CHECKERS = [E.check_q_sample, E.check_kl_divergence, E.check_timestep_embedding, E.check_attention,
                E.check_ddim_step, E.check_emphasize, E.check_inpaint_blend, E.check_merge_lora]


@pytest.mark.parametrize("checker", ALL_CHECKERS, ids=lambda c: c.__name__)
def test_an_unfinished_exercise_is_your_turn_on_stderr_in_one_line(checker, capsys):
    def stub(*args):
        # YOUR CODE HERE
        raise NotImplementedError()

    verdict = checker(stub)
    out, err = capsys.readouterr()
    assert not verdict and not verdict.attempted and "your turn" in verdict.message
    assert out == "" and err.strip() == str(verdict) and "\n" not in err.strip()


def test_right_answers_go_to_stdout_wrong_ones_to_stderr(capsys):
    assert E.check_merge_lora(merge_student)
    out, err = capsys.readouterr()
    assert out.startswith("✅ merge_lora") and err == ""
    assert not E.check_merge_lora(lambda W, A, B, a, m=1.0: W)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("❌ merge_lora")


@pytest.fixture
def chinese():
    from tutorial_ldm import language

    before = language._current
    language.set_language("zh")
    yield
    language._current = before


@pytest.mark.parametrize("checker, student, words", [
    (E.check_q_sample, lambda x0, t, n, a: a[t].reshape(-1, *[1] * (x0.dim() - 1)) * x0, "用例"),
    (E.check_attention, lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v, "提示：在 softmax 之前"),
    (E.check_ddim_step, lambda z, v, ab, abp: ab.sqrt() * z - (1 - ab).sqrt() * v, "提示：要返回下一级的潜变量"),
    (E.check_emphasize, lambda z, w: z * w[..., None], "提示：加权之后"),
    (E.check_inpaint_blend, lambda x, z0, n, m, ab: (1 - m) * z0 + m * x, "提示：放回的原图要加噪"),
    (E.check_merge_lora, lambda W, A, B, a, m=1.0: W + m * a * B @ A, "提示：B·A 要乘 α / r"),
])
def test_hints_speak_the_chapter_language(chinese, checker, student, words):
    verdict = checker(student, quiet=True)
    assert not verdict and words in verdict.message, verdict.message
    assert "Hint" not in verdict.message and "case" not in verdict.message


def test_your_turn_and_success_in_chinese(chinese):
    def stub(*args):
        raise NotImplementedError()

    assert "轮到你了" in E.check_merge_lora(stub, quiet=True).message
    assert E.check_merge_lora(merge_student, quiet=True).message == "全部 3 个用例都正确"
