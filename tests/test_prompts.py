"""A1111 prompt syntax and the weighted, chunked conditioning built from it."""

import copy

import pytest
import torch
from tiny_sd import shipped_pipe, tiny_sd_files

from tutorial_ldm.prompts import (
    encode_prompts,
    encode_weighted,
    parse_prompt_attention,
    tokenize_weighted,
)


# The examples of the issue (and of A1111's own docstring), to the last float digit.
@pytest.mark.parametrize("text, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
      ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_parse_examples_of_the_issue(text, expected):
    assert parse_prompt_attention(text) == expected


def test_parse_square_brackets_escapes_and_weights():
    assert parse_prompt_attention("[faint]") == [("faint", 1 / 1.1)]
    assert parse_prompt_attention("[[x]]") == [("x", (1 / 1.1) / 1.1)]
    assert parse_prompt_attention("(worst quality:2),(low quality:2),lowres") == [
        ("worst quality", 2.0), (",", 1.0), ("low quality", 2.0), (",lowres", 1.0)]
    assert parse_prompt_attention(r"a \\ b \[c\)") == [(r"a \ b [c)", 1.0)]
    assert parse_prompt_attention("(x : -0.5 )") == [("x ", -0.5)]


@pytest.mark.parametrize("text, expected", [
    ("unbalanced)", [("unbalanced)", 1.0)]),  # a stray closing bracket stays text
    ("((a) b", [("a", 1.2100000000000002), (" b", 1.1)]),
    ("[a", [("a", 1 / 1.1)]),
    ("a:1.2)", [("a:1.2)", 1.0)]),  # a weight with no open bracket is text
    ("", [("", 1.0)]),
])
def test_parse_unbalanced_brackets_are_forgiven(text, expected):
    assert parse_prompt_attention(text) == expected


def test_parse_break_marks_a_chunk_end_only_as_a_capitalised_word():
    assert parse_prompt_attention("a cat BREAK a dog") == [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]
    assert parse_prompt_attention("BREAKFAST break") == [("BREAKFAST break", 1.0)]


def test_parse_bad_weight_is_a_clear_error():
    """`(a:1.2.3)`: ValueError naming the weight (A1111 fails converting it to a float)."""
    with pytest.raises(ValueError, match=r"'1\.2\.3'.*not a number"):
        parse_prompt_attention("(a:1.2.3)")


# --- chunks -----------------------------------------------------------------------------------

def tiny_tokenizer():
    return shipped_pipe().tokenizer


def test_chunks_of_75_tokens_like_a1111():
    tok = tiny_tokenizer()
    assert [len(c.tokens) for c in tokenize_weighted(tok, " ".join(["red"] * 75))] == [75]
    assert [len(c.tokens) for c in tokenize_weighted(tok, " ".join(["red"] * 76))] == [75, 1]
    chunks = tokenize_weighted(tok, "a (red:1.5) circle")
    assert chunks[0].tokens == tok("a red circle", add_special_tokens=False).input_ids
    assert chunks[0].weights == [1.0, 1.5, 1.0]


def test_break_starts_a_new_chunk():
    tok = tiny_tokenizer()
    chunks = tokenize_weighted(tok, "a red circle BREAK on the left")
    assert [len(c.tokens) for c in chunks] == [3, 3]
    assert [len(c.tokens) for c in tokenize_weighted(tok, "")] == [0]


def test_a_full_chunk_is_cut_after_its_last_comma():
    tok = tiny_sd_files().pipe.tokenizer  # CLIP BPE: ',' is a token of its own
    chunks = tokenize_weighted(tok, " ".join(["x"] * 70) + ", " + " ".join(["y"] * 10))
    assert [len(c.tokens) for c in chunks] == [71, 10]
    assert tok.convert_ids_to_tokens(chunks[0].tokens[-1]) == ",</w>"


# --- conditioning ------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny-ldm", "tiny-sd (CLIP BPE)"])
def test_unweighted_prompt_encodes_as_diffusers_does(which):
    pipe = shipped_pipe() if which == "tiny-ldm" else tiny_sd_files().pipe
    prompt = "a red circle on the left"
    ours = encode_weighted(pipe.tokenizer, pipe.text_encoder, prompt)
    theirs, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    assert ours.shape == theirs.shape == (1, 77, pipe.text_encoder.config.hidden_size)
    torch.testing.assert_close(ours, theirs)


def with_mean(text_encoder, shift):
    """A copy of the encoder whose outputs average to about `shift` (its final LayerNorm's β)."""
    encoder = copy.deepcopy(text_encoder)
    norm = next(m for name, m in encoder.named_modules() if name.endswith("final_layer_norm"))
    torch.nn.init.constant_(norm.bias, shift)
    return encoder


@pytest.mark.parametrize("which", ["tiny-ldm", "tiny-sd (CLIP BPE)"])
def test_weights_scale_tokens_and_keep_the_mean(which):
    pipe = shipped_pipe() if which == "tiny-ldm" else tiny_sd_files().pipe
    encoder = with_mean(pipe.text_encoder, 0.3)  # trained encoders average away from 0, as CLIP does
    plain = encode_weighted(pipe.tokenizer, encoder, "a red circle")
    weighted = encode_weighted(pipe.tokenizer, encoder, "a (red:1.5) circle")
    n_red = len(pipe.tokenizer("red", add_special_tokens=False).input_ids)
    w = torch.ones(77)
    w[2:2 + n_red] = 1.5  # <bos> a red…
    expected = plain * w[None, :, None]
    expected = expected * plain.mean() / expected.mean()
    torch.testing.assert_close(weighted, expected)
    torch.testing.assert_close(weighted.mean(), plain.mean())
    assert not torch.allclose(weighted, plain)


def test_mean_too_close_to_zero_is_not_divided_by():
    """An untrained encoder's outputs average to ~0: A1111's rescale would be 0/0; plain scaling."""
    pipe = tiny_sd_files().pipe  # random weights: final LayerNorm β = 0
    plain = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red circle")
    weighted = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a (red:1.5) circle")
    assert abs(plain.mean()) < 1e-4 * plain.abs().mean()
    w = torch.ones(77)
    w[2] = 1.5
    torch.testing.assert_close(weighted, plain * w[None, :, None])


def test_long_prompt_is_encoded_in_chunks_and_concatenated():
    pipe = shipped_pipe()
    words = ("a large red circle on the left on a blue background".split() * 50)[:500]
    cond = encode_weighted(pipe.tokenizer, pipe.text_encoder, " ".join(words))
    assert cond.shape == (1, 77 * 7, 64)  # ⌈500 / 75⌉ chunks
    first = encode_weighted(pipe.tokenizer, pipe.text_encoder, " ".join(words[:75]))
    torch.testing.assert_close(cond[:, :77], first)


def test_cond_and_uncond_are_padded_with_the_empty_prompt():
    pipe = shipped_pipe()
    long = " ".join(["red"] * 100)
    cond, uncond = encode_prompts(pipe, long, "blue")
    assert cond.shape == uncond.shape == (1, 154, 64)
    empty = encode_weighted(pipe.tokenizer, pipe.text_encoder, "")
    torch.testing.assert_close(uncond[:, :77], encode_weighted(pipe.tokenizer, pipe.text_encoder, "blue"))
    torch.testing.assert_close(uncond[:, 77:], empty)
    cond2, uncond2 = encode_prompts(pipe, "red", long)  # and the other way round
    torch.testing.assert_close(cond2[:, 77:], empty)
    assert uncond2.shape == (1, 154, 64)


def test_an_overflowing_weight_gets_its_own_error():
    """Issue 14: "(red:999…9)" used to end in NaN latents and advice to load in float32."""
    from tiny_sd import shipped_pipe

    from tutorial_ldm.prompts import encode_prompts

    pipe = shipped_pipe()
    with pytest.raises(ValueError, match=r"prompt weight 1e\+41 is beyond what torch\.float32 can hold"):
        encode_prompts(pipe, "(red:" + "9" * 41 + ")")
    with pytest.raises(ValueError, match=r"prompt weight '9{400}' in .* too large to be a number"):
        parse_prompt_attention("(red:" + "9" * 400 + ")")


def test_a_weight_too_large_for_float16():
    from tutorial_ldm.prompts import check_weights

    check_weights(torch.tensor([[1.0, 60000.0]]), torch.float16)  # fits
    with pytest.raises(ValueError, match=r"prompt weight 70000 is beyond what torch\.float16 can hold \(±65504\)"):
        check_weights(torch.tensor([[1.0, 70000.0]]), torch.float16)


# ---------------------------------------------------------------------------------------------
# Clip skip and SDXL (issue 11)


def test_clip_skip_in_a1111_numbering_is_diffusers_plus_one():
    from tutorial_ldm.prompts import encode_weighted

    pipe = copy.deepcopy(tiny_sd_files().pipe)
    # diffusers 0.42.1 reaches the final layer norm as text_encoder.text_model.final_layer_norm,
    # the layout before transformers 5.6 flattened CLIPTextModel: give it that name (not as a
    # submodule, so nothing else changes)
    object.__setattr__(pipe.text_encoder, "text_model", pipe.text_encoder)
    for ours, theirs in ((2, 1), (3, 2)):
        cond = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red circle", clip_skip=ours)
        reference, _ = pipe.encode_prompt("a red circle", "cpu", 1, False, clip_skip=theirs)
        torch.testing.assert_close(cond, reference)
    last = encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red circle", clip_skip=1)
    torch.testing.assert_close(last, pipe.encode_prompt("a red circle", "cpu", 1, False)[0])
    assert not torch.allclose(last, encode_weighted(pipe.tokenizer, pipe.text_encoder, "a red circle", clip_skip=2))


def test_sdxl_encoding_equals_diffusers_with_unit_weights():
    from tiny_sd import tiny_single_file

    from tutorial_ldm.prompts import encode_prompts_sdxl

    pipe = tiny_single_file("sdxl").pipe
    # diffusers zeroes the negative prompt when it is None; A1111 (and we) when it is ""
    for negative, theirs_negative in (("", None), ("blurry, lowres", "blurry, lowres")):
        ours = encode_prompts_sdxl(pipe, "a photo of a cat", negative)
        theirs = pipe.encode_prompt("a photo of a cat", device="cpu", num_images_per_prompt=1,
                                    do_classifier_free_guidance=True, negative_prompt=theirs_negative)
        for a, b in zip(ours, theirs):  # cond, uncond, pooled, negative pooled
            torch.testing.assert_close(a, b)
    cond, uncond, pooled, negative_pooled = encode_prompts_sdxl(pipe, "a cat", "")
    assert cond.shape == (1, 77, 64 + 128) and pooled.shape == (1, 128)
    assert not uncond.any() and not negative_pooled.any()  # "" is all zeros, as in A1111


def test_sdxl_weighting_and_break_reach_both_encoders():
    from tiny_sd import tiny_single_file

    from tutorial_ldm.prompts import encode_prompts_sdxl, encode_weighted_sdxl

    pipe = tiny_single_file("sdxl").pipe
    plain, pooled = encode_weighted_sdxl(pipe, "a red cat")
    weighted, weighted_pooled = encode_weighted_sdxl(pipe, "a (red:1.5) cat")
    differs = (plain - weighted).abs().amax(dim=(0, 1))
    assert (differs[:64] > 0).any() and (differs[64:] > 0).any()  # both encoders' channels
    torch.testing.assert_close(pooled, weighted_pooled)  # the pooled embedding is not weighted
    two, _ = encode_weighted_sdxl(pipe, "a red cat BREAK a blue dog")
    assert two.shape[1] == 2 * 77
    cond, uncond, _, _ = encode_prompts_sdxl(pipe, "a red cat BREAK a blue dog", "")
    assert cond.shape == uncond.shape == (1, 154, 192)
