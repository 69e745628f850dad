"""Exercise checks: run a student's function against the reference on fixed inputs and say what
is wrong — the exception and its line, the shape, or how far the values are off and where.

Every chapter's exercise is one `check_*` function built on `check`:

    verdict = check_q_sample(my_q_sample)   # prints ✅ or ❌ with the reason, returns a Verdict
    assert verdict                          # a Verdict is truthy when the answer is right

A right answer is printed on stdout, a wrong or unfinished one on stderr: Jupyter shows it in red,
one line, no traceback, and the rest of the chapter still runs; nbgrader, which scores a test cell
with stderr output as failed, grades the same cell (see `tutorial_ldm.classroom`). Every word a
student reads comes in the course's language (`tutorial_ldm.language.say`): the Chinese chapters
get Chinese hints.
"""

from __future__ import annotations

import copy
import math
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .language import say


@dataclass
class Case:
    """One fixed input: what the student is shown (`label`) and the arguments."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Verdict:
    """What `check` found: `passed`, and the `message` a student reads. `attempted` is False while
    the exercise still raises NotImplementedError (the cell as a student copy hands it out)."""

    name: str
    passed: bool
    message: str
    attempted: bool = True

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✅' if self.passed else '❌'} {self.name}: {self.message}"


def check(
    student_fn: Callable,
    reference_fn: Callable,
    cases: Sequence[Case],
    *,
    name: str | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    known_mistakes: Mapping[str, Callable] | None = None,
    quiet: bool = False,
) -> Verdict:
    """Compare `student_fn` with `reference_fn` on every case; stop at the first difference.

    `known_mistakes` maps an explanation to a function that makes that mistake: when the student's
    output matches one of them, the explanation is added to the verdict.
    """
    name = name or getattr(reference_fn, "__name__", "exercise")
    for i, case in enumerate(cases, 1):
        where = say("case {i} of {n} ({label})", "第 {i} 个用例（共 {n} 个，{label}）", i=i, n=len(cases),
                    label=case.label)
        expected = reference_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = student_fn(*args, **kwargs)
        except NotImplementedError:
            return _verdict(Verdict(name, False, say(
                "not implemented yet — your turn: replace `raise NotImplementedError()` with your code "
                "and run the cell again",
                "还没有实现——轮到你了：把 `raise NotImplementedError()` 换成你的代码，再运行这个单元格"),
                attempted=False), quiet)
        except Exception as e:  # the student's bug, reported rather than raised
            raised = say("raised", "抛出了异常")
            return _verdict(
                Verdict(name, False, f"{where}: {raised} {_describe_exception(e, student_fn)}"), quiet
            )
        problem = _difference(got, expected, atol, rtol) or _mutated_input(case.args, args)
        if problem:
            for explanation, mistake in (known_mistakes or {}).items():
                wrong = mistake(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
                if _difference(got, wrong, atol, rtol) is None:
                    problem += say(". Hint: {hint}", "。提示：{hint}", hint=explanation)
                    break
            return _verdict(Verdict(name, False, f"{where}: {problem}"), quiet)
    return _verdict(Verdict(name, True, say("correct on all {n} cases", "全部 {n} 个用例都正确",
                                            n=len(cases))), quiet)


def _verdict(verdict: Verdict, quiet: bool) -> Verdict:
    if not quiet:  # stderr for a wrong answer: red in Jupyter, and a failed test to nbgrader
        stream = sys.stdout if verdict else sys.stderr
        stream.write(f"{verdict}\n")  # one write: ipykernel may flush between print's two
        stream.flush()
    return verdict


def _describe_exception(e: Exception, student_fn: Callable) -> str:
    """`TypeError: ...`, plus the line of the student's own code it came from."""
    text = f"{type(e).__name__}: {e}"
    code = getattr(student_fn, "__code__", None)
    frames = [
        f for f in traceback.extract_tb(e.__traceback__) if code and f.filename == code.co_filename
    ]
    if frames:
        line = f": `{frames[-1].line}`" if frames[-1].line else ""
        text += say(" (at line {n}{line})", "（在第 {n} 行{line}）", n=frames[-1].lineno, line=line)
    return text


def _difference(got, expected, atol: float, rtol: float) -> str | None:
    """None when `got` matches `expected`, else what differs, in a student's words."""
    if got is None and expected is not None:
        return say("returned None — did you forget the `return`?", "返回了 None——是不是忘了写 `return`？")
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        return _array_difference(got, expected, atol, rtol)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return say("returned {got}, expected a sequence of {n} values", "返回了 {got}，应为含 {n} 个值的序列",
                       got=_kind(got), n=len(expected))
        for k, (g, e) in enumerate(zip(got, expected, strict=True)):
            if (problem := _difference(g, e, atol, rtol)) is not None:
                return say("item {k}: {problem}", "第 {k} 项：{problem}", k=k, problem=problem)
        return None
    if isinstance(expected, (int, float)):
        if not isinstance(got, (int, float)) or not math.isclose(
            got, expected, rel_tol=rtol, abs_tol=atol
        ):
            return _returned(got, expected)
        return None
    return None if got == expected else _returned(got, expected)


def _returned(got, expected) -> str:
    return say("returned {got!r}, expected {expected!r}", "返回了 {got!r}，应为 {expected!r}",
               got=got, expected=expected)


def _array_difference(got, expected, atol: float, rtol: float) -> str | None:
    if type(got) is not type(expected):
        return say("returned {got}, expected a {expected}", "返回了 {got}，应为 {expected}",
                   got=_kind(got), expected=_kind(expected))
    got_t, exp_t = torch.as_tensor(got), torch.as_tensor(expected)
    if got_t.shape != exp_t.shape:
        return say("shape {got}, expected {expected}", "形状是 {got}，应为 {expected}",
                   got=tuple(got_t.shape), expected=tuple(exp_t.shape))
    if got_t.dtype.is_floating_point != exp_t.dtype.is_floating_point:
        return say("dtype {got}, expected {expected}", "dtype 是 {got}，应为 {expected}",
                   got=got_t.dtype, expected=exp_t.dtype)
    got_t, exp_t = got_t.detach().cpu().double(), exp_t.detach().cpu().double()
    if (bad_nan := torch.isnan(got_t) & ~torch.isnan(exp_t)).any():
        return say("{n} values are NaN (first at index {at})", "有 {n} 个值是 NaN（第一个在索引 {at}）",
                   n=int(bad_nan.sum()), at=_index(bad_nan))
    wrong = ~torch.isclose(got_t, exp_t, rtol=rtol, atol=atol, equal_nan=True)
    if not wrong.any():
        return None
    error = torch.where(wrong, (got_t - exp_t).abs(), torch.zeros_like(got_t))
    at = _index(error == error.max())
    return say(
        "values off in {n} of {total} elements; largest error {err:.3g} at index {at}: got {got:.6g}, "
        "expected {exp:.6g} (tolerance {atol:g} + {rtol:g}·|expected|)",
        "{total} 个元素中有 {n} 个不对；最大误差 {err:.3g}，在索引 {at}：得到 {got:.6g}，"
        "应为 {exp:.6g}（容差 {atol:g} + {rtol:g}·|应有值|）",
        n=int(wrong.sum()), total=wrong.numel(), err=error.max().item(), at=at, got=got_t[at].item(),
        exp=exp_t[at].item(), atol=atol, rtol=rtol,
    )


def _mutated_input(original: tuple, passed: tuple) -> str | None:
    for k, (before, after) in enumerate(zip(original, passed, strict=True)):
        changed = (isinstance(before, torch.Tensor) and not torch.equal(before, after)) or (
            isinstance(before, np.ndarray) and not np.array_equal(before, after))
        if changed:
            return say("changed its argument #{k} in place; leave the inputs as they are",
                       "原地修改了第 {k} 个参数；请不要改动输入", k=k + 1)
    return None


def _index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def _kind(x) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}".replace("builtins.", "")


# --- the chapters' exercises ---------------------------------------------------------------
# One form for every chapter: fixed cases (labels in the student's language), the reference, and
# the classic mistakes written out as functions, each with its hint in English and Chinese.


def check_q_sample(student_q_sample: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 1: `q_sample(x0, t, noise, alphas_cumprod)` = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε (DDPM Eq. 4)."""
    from .noise_schedule import NoiseSchedule, q_sample

    sd = NoiseSchedule("scaled_linear").alphas_cumprod
    zero_snr = NoiseSchedule("scaled_linear", rescale_betas_zero_snr=True).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    image, noise = torch.rand(3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 8, 8, generator=g)
    batch, batch_noise = (
        torch.rand(4, 3, 8, 8, generator=g) * 2 - 1,
        torch.randn(4, 3, 8, 8, generator=g),
    )
    cases = [
        Case(say("one image, t = 500", "一张图，t = 500"), (image, 500, noise, sd)),
        Case(say("one image, t = 0", "一张图，t = 0"), (image, 0, noise, sd)),
        Case(say("one image, t = 999, zero-terminal-SNR schedule", "一张图，t = 999，零终端信噪比调度"),
             (image, 999, noise, zero_snr)),
        Case(say("batch of 4, one t = 250 for all", "4 张一批，共用 t = 250"), (batch, 250, batch_noise, sd)),
        Case(
            say("batch of 4, t = [0, 10, 500, 999]", "4 张一批，t = [0, 10, 500, 999]"),
            (batch, torch.tensor([0, 10, 500, 999]), batch_noise, sd),
        ),
    ]

    def per_sample(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return a.reshape(-1, *[1] * (x.dim() - 1))

    def no_square_roots(x0, t, noise, a):
        a_t = per_sample(a[t], x0)
        return a_t * x0 + (1 - a_t) * noise

    def swapped(x0, t, noise, a):
        a_t = per_sample(a[t], x0)
        return (1 - a_t).sqrt() * x0 + a_t.sqrt() * noise

    def off_by_one(x0, t, noise, a):
        a_t = per_sample(a[torch.as_tensor(t) - 1], x0)
        return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise

    return check(
        student_q_sample,
        q_sample,
        cases,
        name="q_sample",
        known_mistakes={
            say("the coefficients are √ᾱ_t and √(1-ᾱ_t), not ᾱ_t and 1-ᾱ_t",
                "系数是 √ᾱ_t 和 √(1-ᾱ_t)，不是 ᾱ_t 和 1-ᾱ_t"): no_square_roots,
            say("x0 gets √ᾱ_t (the signal fades) and the noise gets √(1-ᾱ_t)",
                "x0 乘 √ᾱ_t（信号逐渐消退），噪声乘 √(1-ᾱ_t)"): swapped,
            say("timesteps count from 0 here: x_t uses alphas_cumprod[t], not [t-1]",
                "这里的时间步从 0 开始数：x_t 用 alphas_cumprod[t]，不是 [t-1]"): off_by_one,
        },
        quiet=quiet,
    )


def check_kl_divergence(student_kl: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 2: `kl_divergence(mean, logvar)` = ½ Σ (μ² + σ² − 1 − log σ²) per latent, summed
    over (C, H, W): the autoencoder's KL regulariser towards N(0, I)."""
    from .autoencoder import kl_divergence

    g = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g) - 3
    cases = [
        Case(say("μ = 0, log σ² = 0: the prior itself", "μ = 0，log σ² = 0：就是先验本身"),
             (torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))),
        Case("μ = 1, log σ² = 0", (torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))),
        Case(say("batch of 2 random 4×4×4 posteriors", "2 个随机的 4×4×4 后验组成一批"), (mean, logvar)),
        Case(say("one 4×16×16 latent, tiny σ as in our autoencoder", "一个 4×16×16 潜变量，σ 很小，和我们的自编码器一样"),
             (mean.repeat(1, 1, 4, 4)[:1], torch.full((1, 4, 16, 16), -12.0))),
    ]

    def no_half(mean, logvar):
        return 2 * kl_divergence(mean, logvar)

    def sigma_not_variance(mean, logvar):
        return 0.5 * (mean**2 + (0.5 * logvar).exp() - 1 - logvar).flatten(1).sum(1)

    def averaged(mean, logvar):
        return kl_divergence(mean, logvar) / mean[0].numel()

    return check(
        student_kl,
        kl_divergence,
        cases,
        name="kl_divergence",
        rtol=1e-4,
        known_mistakes={
            say("don't forget the ½ in front of the sum", "别忘了求和前面的 ½"): no_half,
            say("σ² is logvar.exp(); logvar.exp() ** 0.5 is σ", "σ² 是 logvar.exp()；logvar.exp() ** 0.5 是 σ"):
                sigma_not_variance,
            say("sum over the latent's elements (C, H, W), don't average them",
                "对潜变量的所有元素 (C, H, W) 求和，不要取平均"): averaged,
        },
        quiet=quiet,
    )


def check_timestep_embedding(student_embedding: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 3: `timestep_embedding(t, dim)` = [cos(t·ω_k), sin(t·ω_k)] with
    ω_k = 10000^(−k/(dim/2)), k = 0 … dim/2 − 1, as diffusers' `get_timestep_embedding` with
    `flip_sin_to_cos=True, downscale_freq_shift=0` (SD's UNet)."""
    from .unet import timestep_embedding

    cases = [
        Case("t = [0], dim = 8", (torch.tensor([0]), 8)),
        Case("t = [1], dim = 8", (torch.tensor([1]), 8)),
        Case("t = [0, 10, 500, 999], dim = 32", (torch.tensor([0, 10, 500, 999]), 32)),
        Case(say("fractional t = [0.5, 250.25], dim = 6", "非整数 t = [0.5, 250.25]，dim = 6"),
             (torch.tensor([0.5, 250.25]), 6)),
    ]

    def sin_first(t, dim):
        return timestep_embedding(t, dim).roll(dim // 2, dims=-1)

    def ddpm_frequencies(t, dim):
        half = dim // 2
        w = torch.exp(-math.log(10_000) * torch.arange(half) / (half - 1))
        angles = t.float()[:, None] * w[None]
        return torch.cat([angles.cos(), angles.sin()], -1)

    def full_dim_frequencies(t, dim):
        w = torch.exp(-math.log(10_000) * torch.arange(dim // 2) / dim)
        angles = t.float()[:, None] * w[None]
        return torch.cat([angles.cos(), angles.sin()], -1)

    return check(
        student_embedding,
        timestep_embedding,
        cases,
        name="timestep_embedding",
        atol=1e-4,
        known_mistakes={
            say("SD's UNet puts the cosines first: torch.cat([cos, sin])",
                "SD 的 UNet 把余弦放在前面：torch.cat([cos, sin])"): sin_first,
            say("divide the exponent by dim // 2 (here), not dim // 2 − 1 (DDPM's original code)",
                "指数要除以 dim // 2（这里的约定），不是 dim // 2 − 1（DDPM 原始代码的写法）"): ddpm_frequencies,
            say("the exponent runs over k / (dim // 2), not k / dim", "指数是 k / (dim // 2)，不是 k / dim"):
                full_dim_frequencies,
        },
        quiet=quiet,
    )


def check_attention(student_attention: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 4: `attention(q, k, v)` = softmax(q·kᵀ/√d)·v, over the last two dimensions
    (queries × features), for any leading batch and head dimensions."""
    from .attention import attention

    g = torch.Generator().manual_seed(4)
    cases = [
        Case(say("1 query, 3 keys, d = 4", "1 个查询，3 个键，d = 4"),
             (torch.randn(1, 1, 4, generator=g), torch.randn(1, 3, 4, generator=g),
              torch.randn(1, 3, 4, generator=g))),
        Case(say("64 pixels attend to 77 tokens, d = 16", "64 个像素关注 77 个词元，d = 16"),
             (torch.randn(2, 64, 16, generator=g), torch.randn(2, 77, 16, generator=g),
              torch.randn(2, 77, 16, generator=g))),
        Case(say("4 heads: (B, heads, n, d) = (2, 4, 16, 8), 77 tokens, values of width 8",
                 "4 个头：(B, heads, n, d) = (2, 4, 16, 8)，77 个词元，值的宽度为 8"),
             (torch.randn(2, 4, 16, 8, generator=g) * 3, torch.randn(2, 4, 77, 8, generator=g) * 3,
              torch.randn(2, 4, 77, 8, generator=g))),
    ]

    def unscaled(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v

    def divided_by_d(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1], -1) @ v

    def softmax_over_queries(q, k, v):
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -2) @ v

    return check(
        student_attention,
        attention,
        cases,
        name="attention",
        known_mistakes={
            say("divide the scores by √d before the softmax", "在 softmax 之前把分数除以 √d"): unscaled,
            say("divide by √d, not by d", "除以 √d，不是除以 d"): divided_by_d,
            say("the softmax runs over the keys (dim=-1): each query's weights sum to 1",
                "softmax 沿键的维度（dim=-1）计算：每个查询的权重之和为 1"): softmax_over_queries,
        },
        quiet=quiet,
    )


def reference_ddim_step(z: torch.Tensor, v: torch.Tensor, ab: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12, η = 0) for a v-prediction model (Salimans & Ho
    2022): read x̂₀ = √ᾱ·z − √(1−ᾱ)·v and ε̂ = √(1−ᾱ)·z + √ᾱ·v, then re-mix them at the next
    level ᾱ': z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂. Equal to diffusers' `DDIMScheduler.step` (the tests check)."""
    x0 = ab.sqrt() * z - (1 - ab).sqrt() * v
    eps = (1 - ab).sqrt() * z + ab.sqrt() * v
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


def check_ddim_step(student_step: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 5: `ddim_step(z, v, ab, ab_prev)` → z at the next, lower noise level (η = 0), for a
    v-prediction model; ab = ᾱ at the current level, ab_prev = ᾱ at the next one."""
    g = torch.Generator().manual_seed(5)
    z, v = torch.randn(2, 1, 4, 4, 4, generator=g)
    level = lambda *values: tuple(torch.tensor(x) for x in values)  # noqa: E731
    cases = [
        Case("ᾱ = 0.5 → ᾱ' = 0.8", (z, v, *level(0.5, 0.8))),
        Case(say("the first step of a zero-terminal-SNR ladder: ᾱ = 0 → ᾱ' = 0.05",
                 "零终端信噪比阶梯的第一步：ᾱ = 0 → ᾱ' = 0.05"), (z, v, *level(0.0, 0.05))),
        Case(say("the last step: ᾱ = 0.9 → ᾱ' = 1 (clean)", "最后一步：ᾱ = 0.9 → ᾱ' = 1（无噪声）"),
             (z, v, *level(0.9, 1.0))),
    ]

    def v_as_eps(z, v, ab, ab_prev):
        x0 = (z - (1 - ab).sqrt() * v) / ab.clamp(min=1e-12).sqrt()
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * v

    def plus_sign(z, v, ab, ab_prev):
        x0, eps = ab.sqrt() * z + (1 - ab).sqrt() * v, (1 - ab).sqrt() * z - ab.sqrt() * v
        return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps

    def same_level(z, v, ab, ab_prev):
        return reference_ddim_step(z, v, ab, ab)

    def no_square_roots(z, v, ab, ab_prev):
        x0, eps = ab.sqrt() * z - (1 - ab).sqrt() * v, (1 - ab).sqrt() * z + ab.sqrt() * v
        return ab_prev * x0 + (1 - ab_prev) * eps

    def returns_x0(z, v, ab, ab_prev):
        return ab.sqrt() * z - (1 - ab).sqrt() * v

    return check(
        student_step,
        reference_ddim_step,
        cases,
        name="ddim_step",
        known_mistakes={
            say("the model predicts v, not ε: x̂₀ = √ᾱ·z − √(1−ᾱ)·v and ε̂ = √(1−ᾱ)·z + √ᾱ·v",
                "模型预测的是 v，不是 ε：x̂₀ = √ᾱ·z − √(1−ᾱ)·v，ε̂ = √(1−ᾱ)·z + √ᾱ·v"): v_as_eps,
            say("v = √ᾱ·ε − √(1−ᾱ)·x₀, so x̂₀ = √ᾱ·z − √(1−ᾱ)·v (minus) and ε̂ = √(1−ᾱ)·z + √ᾱ·v (plus)",
                "v = √ᾱ·ε − √(1−ᾱ)·x₀，所以 x̂₀ = √ᾱ·z − √(1−ᾱ)·v（减号），ε̂ = √(1−ᾱ)·z + √ᾱ·v（加号）"): plus_sign,
            say("you re-mixed at the current level and got z back: use ab_prev, the next level's ᾱ",
                "你在当前噪声水平上重新混合，结果又得到了 z：要用 ab_prev，即下一级的 ᾱ"): same_level,
            say("the re-mix uses √ᾱ' and √(1−ᾱ'), not ᾱ' and 1−ᾱ'",
                "重新混合用的是 √ᾱ' 和 √(1−ᾱ')，不是 ᾱ' 和 1−ᾱ'"): no_square_roots,
            say("return the latent at the next level, z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂, not x̂₀ itself",
                "要返回下一级的潜变量 z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂，而不是 x̂₀ 本身"): returns_x0,
        },
        quiet=quiet,
    )


def check_emphasize(student_emphasize: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 6: A1111's prompt weights, `emphasize(z, weights)`: each token's embedding
    z (chunks, tokens, width) times its weight (chunks, tokens), then each chunk rescaled by
    mean(z) / mean(z·w) so its mean is what it was (`tutorial_ldm.prompts.emphasize`)."""
    from .prompts import emphasize

    g = torch.Generator().manual_seed(6)
    z = torch.randn(2, 6, 8, generator=g) + torch.tensor([0.5, -0.8])[:, None, None]  # clear means
    ones = torch.ones(2, 6)
    red_2 = ones.clone()
    red_2[:, 2] = 2.0  # "a (red:2) circle"
    mixed = torch.tensor([[1, 1.1, 1.21, 1, 1, 1], [1, 1, 1, 0.5, 1, 1]])
    cases = [
        Case(say("no weights: all 1", "没有权重：全是 1"), (z[:1], ones[:1])),
        Case(say("one chunk, token 2 weighted 2 — 'a (red:2) circle'", "一个分块，第 2 个词元权重为 2——'a (red:2) circle'"),
             (z[:1], red_2[:1])),
        Case(say("two chunks with different means and weights", "两个分块，均值和权重各不相同"), (z, mixed)),
    ]

    def no_rescale(z, w):
        return z * w[..., None]

    def batch_mean(z, w):
        zw = z * w[..., None]
        return zw * (z.mean() / zw.mean())

    def inverted_factor(z, w):
        zw = z * w[..., None]
        return zw * (zw.mean(dim=(1, 2), keepdim=True) / z.mean(dim=(1, 2), keepdim=True))

    def size_not_mean(z, w):
        zw = z * w[..., None]
        return zw * (z.abs().mean(dim=(1, 2), keepdim=True) / zw.abs().mean(dim=(1, 2), keepdim=True))

    return check(
        student_emphasize,
        emphasize,
        cases,
        name="emphasize",
        known_mistakes={
            say("after weighting, rescale each chunk by mean(z) / mean(z·w): emphasis changes the balance "
                "between words, not the overall size",
                "加权之后，要把每个分块乘以 mean(z) / mean(z·w)：强调改变的是词与词之间的比重，而不是整体大小"):
                no_rescale,
            say("restore the mean of each chunk (dim=(1, 2), keepdim=True), not of the whole batch",
                "要恢复的是每个分块各自的均值（dim=(1, 2), keepdim=True），不是整批的均值"): batch_mean,
            say("the factor is mean(z) / mean(z·w) — the old mean over the new one, not the other way round",
                "系数是 mean(z) / mean(z·w)——旧均值除以新均值，不要反过来"): inverted_factor,
            say("A1111 restores the mean, z.mean(), not the mean size z.abs().mean()",
                "A1111 恢复的是均值 z.mean()，不是平均幅度 z.abs().mean()"): size_not_mean,
        },
        quiet=quiet,
    )


def reference_inpaint_blend(x: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                            ab: torch.Tensor) -> torch.Tensor:
    """Inpainting with an ordinary model (Lugmayr et al. 2022's RePaint idea, diffusers'
    `StableDiffusionInpaintPipeline` for a 4-channel UNet): after a step that left the latent `x`
    at noise level ᾱ, keep `x` where the mask is 1 (white: repaint) and put back the source
    latent noised to that level, √ᾱ·z₀ + √(1−ᾱ)·ε (DDPM eq. 4), where it is 0. The tests check
    it against diffusers' `add_noise` and blend."""
    known = ab.sqrt() * z0 + (1 - ab).sqrt() * noise
    return (1 - mask) * known + mask * x


def check_inpaint_blend(student_blend: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 7: `inpaint_blend(x, z0, noise, mask, ab)` = (1 − m)·(√ᾱ·z₀ + √(1−ᾱ)·ε) + m·x."""
    g = torch.Generator().manual_seed(7)
    x, z0, noise = torch.randn(3, 1, 4, 8, 8, generator=g)
    box = torch.zeros(1, 1, 8, 8)
    box[..., 2:6, 1:5] = 1  # repaint a box, keep the rest
    level = torch.tensor
    cases = [
        Case(say("a box mask, ᾱ = 0.3 (early, noisy)", "方框蒙版，ᾱ = 0.3（早期，噪声大）"), (x, z0, noise, box, level(0.3))),
        Case(say("the same box, ᾱ = 0.95 (late, nearly clean)", "同一个方框，ᾱ = 0.95（后期，几乎无噪声）"),
             (x, z0, noise, box, level(0.95))),
        Case(say("a soft mask of values between 0 and 1, ᾱ = 0.6", "取值在 0 到 1 之间的软蒙版，ᾱ = 0.6"),
             (x, z0, noise, torch.rand(1, 1, 8, 8, generator=g), level(0.6))),
    ]

    def inverted_mask(x, z0, noise, m, ab):
        return reference_inpaint_blend(x, z0, noise, 1 - m, ab)

    def clean_source(x, z0, noise, m, ab):
        return (1 - m) * z0 + m * x

    def no_square_roots(x, z0, noise, m, ab):
        return (1 - m) * (ab * z0 + (1 - ab) * noise) + m * x

    def mask_only_multiplied(x, z0, noise, m, ab):
        return (1 - m) * (ab.sqrt() * z0 + (1 - ab).sqrt() * noise) + x

    return check(
        student_blend,
        reference_inpaint_blend,
        cases,
        name="inpaint_blend",
        known_mistakes={
            say("white (mask = 1) is the region to repaint: keep x there, put the source back where mask = 0",
                "白色（mask = 1）是要重画的区域：那里保留 x，mask = 0 的地方放回原图"): inverted_mask,
            say("put back the source noised to the current level, √ᾱ·z0 + √(1−ᾱ)·noise, not the clean z0: "
                "x is still noisy",
                "放回的原图要加噪到当前水平，即 √ᾱ·z0 + √(1−ᾱ)·noise，而不是干净的 z0：x 此时还带着噪声"): clean_source,
            say("noising uses √ᾱ and √(1−ᾱ), not ᾱ and 1−ᾱ (chapter 1)",
                "加噪用的是 √ᾱ 和 √(1−ᾱ)，不是 ᾱ 和 1−ᾱ（见第 1 章）"): no_square_roots,
            say("x needs its weight too: (1 − mask)·known + mask·x", "x 也要乘上权重：(1 − mask)·known + mask·x"):
                mask_only_multiplied,
        },
        quiet=quiet,
    )


def check_merge_lora(student_merge: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 8: `merge_lora(W, A, B, alpha, multiplier)` = W + m·(α/r)·B·A (Hu et al. 2021, with
    kohya's and A1111's multiplier m, `<lora:name:m>`); r = A's rows (`finetune.lora_formula`)."""
    from .finetune import lora_formula

    g = torch.Generator().manual_seed(8)
    W, A, B = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    W4, A4, B4 = torch.randn(8, 12, generator=g), torch.randn(4, 12, generator=g), torch.randn(8, 4, generator=g)
    cases = [
        Case(say("rank 2, α = 2, multiplier 1", "秩 2，α = 2，强度 1"), (W, A, B, 2.0, 1.0)),
        Case(say("rank 4, α = 8, multiplier 1", "秩 4，α = 8，强度 1"), (W4, A4, B4, 8.0, 1.0)),
        Case(say("rank 4, α = 1, multiplier 0.8 — '<lora:name:0.8>'", "秩 4，α = 1，强度 0.8——'<lora:name:0.8>'"),
             (W4, A4, B4, 1.0, 0.8)),
    ]

    def alpha_not_over_r(W, A, B, alpha, m):
        return W + m * alpha * B @ A

    def r_over_alpha(W, A, B, alpha, m):
        return W + m * (A.shape[0] / alpha) * B @ A

    def no_multiplier(W, A, B, alpha, m):
        return lora_formula(W, A, B, alpha)

    def wrong_r(W, A, B, alpha, m):
        return W + m * (alpha / A.shape[1]) * B @ A

    return check(
        student_merge,
        lora_formula,
        cases,
        name="merge_lora",
        known_mistakes={
            say("scale B·A by α / r, not by α alone", "B·A 要乘 α / r，不是只乘 α"): alpha_not_over_r,
            say("the scale is α / r, not r / α", "缩放系数是 α / r，不是 r / α"): r_over_alpha,
            say("the multiplier m (<lora:name:m>) scales the update too: W + m·(α/r)·B·A",
                "强度 m（<lora:name:m>）也要乘在增量上：W + m·(α/r)·B·A"): no_multiplier,
            say("r is the rank, A's rows (A.shape[0]), not its columns",
                "r 是秩，即 A 的行数（A.shape[0]），不是列数"): wrong_r,
        },
        quiet=quiet,
    )
