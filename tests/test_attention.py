"""Chapter 4: cross-attention from scratch equals diffusers' `Attention`, and the recorder sees
what the UNet attends to without changing what it computes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from toy_models import TOY, toy_pipeline

from tutorial_ldm import attention as X


def test_attention_equals_torch_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) * 2 for n in (10, 7, 7))
    torch.testing.assert_close(X.attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    w = X.attention_weights(q, k)
    assert w.shape == (2, 3, 10, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 10))


def test_heads_split_and_merge_back():
    x = torch.arange(2 * 5 * 12.0).reshape(2, 5, 12)
    heads = X.split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])  # head 1 owns features 4…7
    torch.testing.assert_close(X.merge_heads(heads), x)
    with pytest.raises(ValueError, match="divisible"):
        X.split_heads(x, 5)


@pytest.mark.parametrize("heads, dim_head", [(1, 16), (4, 8), (8, 4)])
def test_cross_attention_from_scratch_equals_diffusers(heads, dim_head):
    torch.manual_seed(heads)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=heads, dim_head=dim_head).eval()
    for p in attn.parameters():  # random, not init-shaped, weights
        torch.nn.init.normal_(p, std=0.3)
    x, context = torch.randn(2, 64, 32), torch.randn(2, 77, 24)
    with torch.no_grad():
        ours, weights = X.cross_attention(x, context, attn.to_q, attn.to_k, attn.to_v,
                                          attn.to_out[0], heads, return_weights=True)
        theirs = attn(x, encoder_hidden_states=context)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert weights.shape == (2, heads, 64, 77)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, 64))


@pytest.fixture(scope="module")
def pipe():
    return toy_pipeline()


def test_recording_changes_nothing_and_restores_the_processors(pipe):
    before = {k: type(p) for k, p in pipe.unet.attn_processors.items()}
    kwargs = dict(num_inference_steps=3, guidance_scale=4.0, output_type="np")
    plain = pipe("a red circle on the left", generator=torch.Generator().manual_seed(0), **kwargs)
    with X.record_cross_attention(pipe.unet) as store:
        recorded = pipe("a red circle on the left", generator=torch.Generator().manual_seed(0),
                        **kwargs)
    assert {k: type(p) for k, p in pipe.unet.attn_processors.items()} == before
    assert AttnProcessor2_0 in before.values()
    assert abs(plain.images - recorded.images).max() < 1e-5

    cross = [n for n, m in pipe.unet.named_modules()
             if isinstance(m, Attention) and m.is_cross_attention]
    assert sorted(store.sums) == sorted(cross) and len(cross) > 0
    assert set(store.calls.values()) == {3}  # once per denoising step
    # cross-attention sits at the 8×8 and 4×4 levels and in the middle, never at 16×16
    assert set(store.resolutions().values()) == {8, 4}
    maps = store.maps(index=-1, size=64)  # the conditional half of the CFG batch
    assert maps.shape == (TOY.max_tokens, 64, 64)
    # each pixel's attention is shared out over the tokens: it sums to one
    torch.testing.assert_close(maps.sum(0), torch.ones(64, 64))
    assert not torch.allclose(store.maps(index=0), maps)  # "" and the prompt attend differently


def test_processors_come_back_after_an_error(pipe):
    before = {k: type(p) for k, p in pipe.unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with X.record_cross_attention(pipe.unet):
            raise RuntimeError("boom")
    assert {k: type(p) for k, p in pipe.unet.attn_processors.items()} == before


def test_recorder_refuses_what_it_does_not_compute():
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    recorder = X.AttentionRecorder(X.AttentionStore(), "self")
    with pytest.raises(ValueError, match="self-attention"):
        recorder(attn, torch.zeros(1, 4, 8))
    normed = Attention(query_dim=8, cross_attention_dim=8, heads=2, dim_head=4, residual_connection=True)
    with pytest.raises(ValueError, match="residual_connection"):
        X.AttentionRecorder(X.AttentionStore(), "res")(normed, torch.zeros(1, 4, 8), torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="no attention recorded"):
        X.AttentionStore().maps()


def test_prompt_tokens(pipe):
    tokens = X.prompt_tokens(pipe.tokenizer, "A red  circle, wow")
    assert tokens[0] == "<bos>" and tokens[-1] == "<eos>"
    assert tokens[1:4] == ["a", "red", "circle"] and "<unk>" in tokens


def test_attention_on_shape_compares_inside_with_outside():
    from tutorial_ldm import world

    image = world.render(world.Scene("square", "red", "in the center"))
    mask = X.shape_mask(image)
    assert mask.sum() == pytest.approx(24 * 24, rel=0.1)  # the 24-pixel square, not its background
    assert torch.equal(mask, X.shape_mask(image / 255.0))  # uint8 or float in [0, 1]
    attention_map = torch.where(mask, 3.0, 1.0)
    assert X.attention_on_shape(attention_map, image) == pytest.approx(3.0)
    assert X.attention_on_shape(torch.ones(64, 64), image) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="maps\\(size"):
        X.attention_on_shape(torch.ones(16, 16), image)
    with pytest.raises(ValueError, match="no shape"):
        X.attention_on_shape(torch.ones(64, 64), np.full((64, 64, 3), 255, np.uint8))
