"""Exercise checks: run a student's function against the reference on fixed inputs and say what
is wrong — the exception and its line, the shape, or how far the values are off and where.

Every chapter's exercise is one `check_*` function built on `check`:

    verdict = check_q_sample(my_q_sample)   # prints ✅ or ❌ with the reason, returns a Verdict
    assert verdict                          # a Verdict is truthy when the answer is right
"""

from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Case:
    """One fixed input: what the student is shown (`label`) and the arguments."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class Verdict:
    name: str
    passed: bool
    message: str

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
        where = f"case {i} of {len(cases)} ({case.label})"
        expected = reference_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = student_fn(*args, **kwargs)
        except NotImplementedError:
            return _verdict(
                name,
                False,
                "not implemented yet: replace `raise NotImplementedError` with your code",
                quiet,
            )
        except Exception as e:  # the student's bug, reported rather than raised
            return _verdict(
                name, False, f"{where}: raised {_describe_exception(e, student_fn)}", quiet
            )
        problem = _difference(got, expected, atol, rtol) or _mutated_input(case.args, args)
        if problem:
            for explanation, mistake in (known_mistakes or {}).items():
                wrong = mistake(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
                if _difference(got, wrong, atol, rtol) is None:
                    problem += f". Hint: {explanation}"
                    break
            return _verdict(name, False, f"{where}: {problem}", quiet)
    return _verdict(name, True, f"correct on all {len(cases)} cases", quiet)


def _verdict(name: str, passed: bool, message: str, quiet: bool) -> Verdict:
    verdict = Verdict(name, passed, message)
    if not quiet:
        print(verdict)
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
        text += f" (at line {frames[-1].lineno}{line})"
    return text


def _difference(got, expected, atol: float, rtol: float) -> str | None:
    """None when `got` matches `expected`, else what differs, in a student's words."""
    if got is None and expected is not None:
        return "returned None — did you forget the `return`?"
    if isinstance(expected, (torch.Tensor, np.ndarray)):
        return _array_difference(got, expected, atol, rtol)
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"returned {_kind(got)}, expected a sequence of {len(expected)} values"
        for k, (g, e) in enumerate(zip(got, expected, strict=True)):
            if (problem := _difference(g, e, atol, rtol)) is not None:
                return f"item {k}: {problem}"
        return None
    if isinstance(expected, (int, float)):
        if not isinstance(got, (int, float)) or not math.isclose(
            got, expected, rel_tol=rtol, abs_tol=atol
        ):
            return f"returned {got!r}, expected {expected!r}"
        return None
    return None if got == expected else f"returned {got!r}, expected {expected!r}"


def _array_difference(got, expected, atol: float, rtol: float) -> str | None:
    if type(got) is not type(expected):
        return f"returned {_kind(got)}, expected a {_kind(expected)}"
    got_t, exp_t = torch.as_tensor(got), torch.as_tensor(expected)
    if got_t.shape != exp_t.shape:
        return f"shape {tuple(got_t.shape)}, expected {tuple(exp_t.shape)}"
    if got_t.dtype.is_floating_point != exp_t.dtype.is_floating_point:
        return f"dtype {got_t.dtype}, expected {exp_t.dtype}"
    got_t, exp_t = got_t.detach().cpu().double(), exp_t.detach().cpu().double()
    if (bad_nan := torch.isnan(got_t) & ~torch.isnan(exp_t)).any():
        return f"{int(bad_nan.sum())} values are NaN (first at index {_index(bad_nan)})"
    wrong = ~torch.isclose(got_t, exp_t, rtol=rtol, atol=atol, equal_nan=True)
    if not wrong.any():
        return None
    error = torch.where(wrong, (got_t - exp_t).abs(), torch.zeros_like(got_t))
    at = _index(error == error.max())
    return (
        f"values off in {int(wrong.sum())} of {wrong.numel()} elements; largest error "
        f"{error.max().item():.3g} at index {at}: got {got_t[at].item():.6g}, "
        f"expected {exp_t[at].item():.6g} (tolerance {atol:g} + {rtol:g}·|expected|)"
    )


def _mutated_input(original: tuple, passed: tuple) -> str | None:
    for k, (before, after) in enumerate(zip(original, passed, strict=True)):
        if isinstance(before, torch.Tensor) and not torch.equal(before, after):
            return f"changed its argument #{k + 1} in place; leave the inputs as they are"
        if isinstance(before, np.ndarray) and not np.array_equal(before, after):
            return f"changed its argument #{k + 1} in place; leave the inputs as they are"
    return None


def _index(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def _kind(x) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}".replace("builtins.", "")


# --- the chapters' exercises ---------------------------------------------------------------


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
        Case("one image, t = 500", (image, 500, noise, sd)),
        Case("one image, t = 0", (image, 0, noise, sd)),
        Case("one image, t = 999, zero-terminal-SNR schedule", (image, 999, noise, zero_snr)),
        Case("batch of 4, one t = 250 for all", (batch, 250, batch_noise, sd)),
        Case(
            "batch of 4, t = [0, 10, 500, 999]",
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
            "the coefficients are √ᾱ_t and √(1-ᾱ_t), not ᾱ_t and 1-ᾱ_t": no_square_roots,
            "x0 gets √ᾱ_t (the signal fades) and the noise gets √(1-ᾱ_t)": swapped,
            "timesteps count from 0 here: x_t uses alphas_cumprod[t], not [t-1]": off_by_one,
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
        Case("μ = 0, log σ² = 0: the prior itself", (torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))),
        Case("μ = 1, log σ² = 0", (torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2))),
        Case("batch of 2 random 4×4×4 posteriors", (mean, logvar)),
        Case("one 4×16×16 latent, tiny σ as in our autoencoder",
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
            "don't forget the ½ in front of the sum": no_half,
            "σ² is logvar.exp(); logvar.exp() ** 0.5 is σ": sigma_not_variance,
            "sum over the latent's elements (C, H, W), don't average them": averaged,
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
        Case("fractional t = [0.5, 250.25], dim = 6", (torch.tensor([0.5, 250.25]), 6)),
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
            "SD's UNet puts the cosines first: torch.cat([cos, sin])": sin_first,
            "divide the exponent by dim // 2 (here), not dim // 2 − 1 (DDPM's original code)":
                ddpm_frequencies,
            "the exponent runs over k / (dim // 2), not k / dim": full_dim_frequencies,
        },
        quiet=quiet,
    )


def check_attention(student_attention: Callable, *, quiet: bool = False) -> Verdict:
    """Chapter 4: `attention(q, k, v)` = softmax(q·kᵀ/√d)·v, over the last two dimensions
    (queries × features), for any leading batch and head dimensions."""
    from .attention import attention

    g = torch.Generator().manual_seed(4)
    cases = [
        Case("1 query, 3 keys, d = 4", (torch.randn(1, 1, 4, generator=g),
                                        torch.randn(1, 3, 4, generator=g),
                                        torch.randn(1, 3, 4, generator=g))),
        Case("64 pixels attend to 77 tokens, d = 16",
             (torch.randn(2, 64, 16, generator=g), torch.randn(2, 77, 16, generator=g),
              torch.randn(2, 77, 16, generator=g))),
        Case("4 heads: (B, heads, n, d) = (2, 4, 16, 8), 77 tokens, values of width 8",
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
            "divide the scores by √d before the softmax": unscaled,
            "divide by √d, not by d": divided_by_d,
            "the softmax runs over the keys (dim=-1): each query's weights sum to 1":
                softmax_over_queries,
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
        Case("the first step of a zero-terminal-SNR ladder: ᾱ = 0 → ᾱ' = 0.05", (z, v, *level(0.0, 0.05))),
        Case("the last step: ᾱ = 0.9 → ᾱ' = 1 (clean)", (z, v, *level(0.9, 1.0))),
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
            "the model predicts v, not ε: x̂₀ = √ᾱ·z − √(1−ᾱ)·v and ε̂ = √(1−ᾱ)·z + √ᾱ·v": v_as_eps,
            "v = √ᾱ·ε − √(1−ᾱ)·x₀, so x̂₀ = √ᾱ·z − √(1−ᾱ)·v (minus) and ε̂ = √(1−ᾱ)·z + √ᾱ·v (plus)": plus_sign,
            "you re-mixed at the current level and got z back: use ab_prev, the next level's ᾱ": same_level,
            "the re-mix uses √ᾱ' and √(1−ᾱ'), not ᾱ' and 1−ᾱ'": no_square_roots,
            "return the latent at the next level, z' = √ᾱ'·x̂₀ + √(1−ᾱ')·ε̂, not x̂₀ itself": returns_x0,
        },
        quiet=quiet,
    )
