"""The exercise checker says "right" to a right answer and names the fault in a wrong one."""

import numpy as np
import pytest
import torch

from tutorial_ldm.exercises import Case, check, check_q_sample
from tutorial_ldm.noise_schedule import q_sample


def per_sample(a, x):
    return a.reshape(-1, *[1] * (x.dim() - 1))


def student_right(x0, t, noise, alphas_cumprod):
    a = per_sample(alphas_cumprod[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def test_right_answers_pass(capsys):
    verdict = check_q_sample(student_right)
    assert verdict and verdict.passed
    assert "✅ q_sample: correct on all 5 cases" in capsys.readouterr().out
    assert check_q_sample(q_sample, quiet=True)  # the reference, of course
    assert capsys.readouterr().out == ""


def _fails_with(student, *fragments):
    verdict = check_q_sample(student, quiet=True)
    assert not verdict
    assert str(verdict).startswith("❌ q_sample: ")
    for fragment in fragments:
        assert fragment in verdict.message, verdict.message
    return verdict


def test_not_implemented_yet():
    def stub(x0, t, noise, alphas_cumprod):
        raise NotImplementedError

    _fails_with(stub, "not implemented yet")


def test_missing_square_roots_are_diagnosed():
    def student(x0, t, noise, alphas_cumprod):
        a = per_sample(alphas_cumprod[t], x0)
        return a * x0 + (1 - a) * noise

    _fails_with(student, "case 1 of 5", "values off in", "largest error", "Hint: the coefficients")


def test_swapped_and_off_by_one_are_diagnosed():
    def swapped(x0, t, noise, alphas_cumprod):
        return student_right(noise, t, x0, alphas_cumprod)

    def off_by_one(x0, t, noise, alphas_cumprod):
        return student_right(x0, torch.as_tensor(t) - 1, noise, alphas_cumprod)

    _fails_with(swapped, "Hint: x0 gets √ᾱ_t")
    _fails_with(off_by_one, "Hint: timesteps count from 0")


def test_an_unexplained_wrong_value_reports_the_error_size():
    def student(x0, t, noise, alphas_cumprod):
        return student_right(x0, t, noise, alphas_cumprod) + 0.01

    verdict = _fails_with(student, "largest error 0.01", "tolerance")
    assert "Hint" not in verdict.message


def test_exception_reports_type_and_line():
    def student(x0, t, noise, alphas_cumprod):
        a = alphas_cumprod[t]  # no reshape: breaks on one t per sample
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    _fails_with(
        student,
        "case 5 of 5 (batch of 4, t = [0, 10, 500, 999])",
        "raised RuntimeError",
        "return a.sqrt() * x0",
    )


def test_wrong_shape_type_none_and_in_place():
    def extra_dim(x0, t, noise, a):
        return student_right(x0, t, noise, a)[None]

    def numpy_answer(x0, t, noise, a):
        return student_right(x0, t, noise, a).numpy()

    def forgot_return(x0, t, noise, a):
        student_right(x0, t, noise, a)

    def in_place(x0, t, noise, a):
        b = per_sample(a[t], x0)
        return x0.mul_(b.sqrt()).add_((1 - b).sqrt() * noise)

    _fails_with(extra_dim, "shape (1, 3, 8, 8), expected (3, 8, 8)")
    _fails_with(numpy_answer, "returned numpy.ndarray, expected a torch.Tensor")
    _fails_with(forgot_return, "returned None")
    _fails_with(in_place, "changed its argument #1 in place")


def test_generic_check_on_numbers_sequences_and_arrays():
    cases = [Case("x = 2", (2.0,)), Case("x = -3", (-3.0,))]
    assert check(lambda x: x * x, lambda x: x**2, cases, name="square", quiet=True)
    wrong = check(lambda x: 2 * x, lambda x: x**2, cases, name="square", quiet=True)
    assert not wrong and "case 2 of 2 (x = -3): returned -6.0, expected 9.0" in wrong.message

    pair = [Case("x = 3", (3,))]
    assert check(lambda x: (x, x + 1), lambda x: (x, x + 1), pair, quiet=True)
    assert "item 1" in check(lambda x: (x, x), lambda x: (x, x + 1), pair, quiet=True).message

    arrays = [Case("ones", (np.ones(4),))]
    assert check(lambda a: a * 2, lambda a: a + a, arrays, quiet=True)
    nan = check(lambda a: a * np.nan, lambda a: a + a, arrays, quiet=True)
    assert "4 values are NaN" in nan.message


@pytest.mark.parametrize("atol", [1e-3, 1e-8])
def test_tolerance_is_respected(atol):
    cases = [Case("x", (torch.ones(3),))]
    verdict = check(lambda x: x + 1e-5, lambda x: x, cases, atol=atol, rtol=0, quiet=True)
    assert bool(verdict) == (atol > 1e-5)
