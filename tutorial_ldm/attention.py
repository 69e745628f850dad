"""Cross-attention: how the text steers the UNet (LDM paper, Sec. 3.3, Eq. 4).

Each latent pixel asks a question (query) and every text token offers an answer (key, value):

    Attention(Q, K, V) = softmax(Q·Kᵀ / √d) · V
    Q = φ(z_t)·W_Q,   K = τ_θ(y)·W_K,   V = τ_θ(y)·W_V

Notation:

    x        image features φ(z_t), (B, n_pixels, C): one row per latent pixel, flattened
    context  text features τ_θ(y), (B, n_tokens, D): one row per token (77 for SD and for us)
    q, k, v  (B, heads, n, d): the projections, split into `heads` heads of width d
    weights  softmax(q·kᵀ/√d), (B, heads, n_pixels, n_tokens): each row sums to 1 over tokens

`record_cross_attention` swaps this from-scratch version into a diffusers UNet's cross-attention
layers, with the model's own weights, and keeps `weights` so they can be drawn as one map per
word.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d) over the keys. Dividing by √d keeps the logits' variance near 1 whatever
    the width d, so the softmax does not saturate into one-hot (Vaswani et al. 2017, Sec. 3.2.1)."""
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention: each query's output is an average of the values, weighted by
    how well the query matches each key."""
    return attention_weights(q, k) @ v


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, n, heads·d) → (B, heads, n, d): each head attends with its own slice of the features."""
    b, n, width = x.shape
    if width % heads:
        raise ValueError(f"feature width {width} is not divisible by heads={heads}")
    return x.reshape(b, n, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, d) → (B, n, heads·d)."""
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


def cross_attention(x: torch.Tensor, context: torch.Tensor, to_q, to_k, to_v, to_out,
                    heads: int, return_weights: bool = False):
    """Multi-head cross-attention from scratch: queries from the image features `x`, keys and
    values from the text `context`; `to_q`, `to_k`, `to_v`, `to_out` are the linear maps W_Q,
    W_K, W_V, W_O (e.g. a diffusers `Attention`'s layers). Returns (B, n_pixels, C), and the
    attention weights (B, heads, n_pixels, n_tokens) with `return_weights=True`."""
    q, k, v = (split_heads(proj(src), heads)
               for proj, src in ((to_q, x), (to_k, context), (to_v, context)))
    weights = attention_weights(q, k)
    out = to_out(merge_heads(weights @ v))
    return (out, weights) if return_weights else out


# ----------------------------------------------------------------------------- recording maps


class AttentionStore:
    """Cross-attention weights added up per layer over the denoising steps, averaged over heads.

    With classifier-free guidance the pipeline runs each UNet call on [unconditional batch,
    conditional batch]: with B prompts, image i's conditional maps are at index B + i (for one
    prompt: index 1, or -1)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}  # layer -> (batch, n_pixels, n_tokens)
        self.calls: dict[str, int] = {}

    def add(self, layer: str, weights: torch.Tensor) -> None:
        w = weights.detach().float().mean(1).cpu()
        if layer in self.sums and self.sums[layer].shape != w.shape:
            raise ValueError(f"layer {layer}: attention of shape {tuple(w.shape)} after "
                             f"{tuple(self.sums[layer].shape)}; use one store per generation")
        self.sums[layer] = self.sums.get(layer, 0) + w
        self.calls[layer] = self.calls.get(layer, 0) + 1

    def maps(self, index: int = -1, size: int = 64) -> torch.Tensor:
        """(n_tokens, size, size): for each token, the share of attention each pixel gives it,
        averaged over steps, heads and layers (each layer's map upsampled to size×size)."""
        if not self.sums:
            raise ValueError("no attention recorded: generate inside `record_cross_attention`")
        layers = []
        for layer, total in self.sums.items():
            per_pixel = total[index] / self.calls[layer]  # (n_pixels, n_tokens)
            side = math.isqrt(per_pixel.shape[0])
            grid = per_pixel.T.reshape(1, -1, side, side)
            layers.append(F.interpolate(grid, size=(size, size), mode="bilinear")[0])
        return torch.stack(layers).mean(0)

    def resolutions(self) -> dict[str, int]:
        """The side of the latent grid each recorded layer attends from."""
        return {layer: math.isqrt(total.shape[1]) for layer, total in self.sums.items()}


class AttentionRecorder:
    """A diffusers attention processor for one cross-attention layer: attention from scratch
    (`cross_attention`), with the weights handed to an `AttentionStore`."""

    def __init__(self, store: AttentionStore, layer: str):
        self.store, self.layer = store, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        extras = {
            "group_norm": attn.group_norm is not None,
            "spatial_norm": attn.spatial_norm is not None,
            "norm_cross": bool(attn.norm_cross),
            "residual_connection": attn.residual_connection,
            "attention_mask": attention_mask is not None,
            "rescale_output_factor": attn.rescale_output_factor != 1,
            "4-d input": hidden_states.ndim != 3,
        }
        if encoder_hidden_states is None or any(extras.values()):
            used = [k for k, v in extras.items() if v] or ["no text (self-attention)"]
            raise ValueError(f"layer {self.layer}: the recorder handles plain cross-attention as "
                             f"in SD's UNet; this layer uses {', '.join(used)}")
        out, weights = cross_attention(hidden_states, encoder_hidden_states, attn.to_q, attn.to_k,
                                       attn.to_v, attn.to_out[0], attn.heads, return_weights=True)
        self.store.add(self.layer, weights)
        return attn.to_out[1](out)  # dropout: identity at inference


@contextmanager
def record_cross_attention(unet):
    """Inside the `with`, every cross-attention layer of `unet` computes attention from scratch
    and records its weights in the yielded `AttentionStore`; the original processors come back
    afterwards, even on error."""
    original = unet.attn_processors
    processors, store = {}, AttentionStore()
    for name, processor in original.items():
        layer = name.removesuffix(".processor")
        if unet.get_submodule(layer).is_cross_attention:
            processor = AttentionRecorder(store, layer)
        processors[name] = processor
    if not any(isinstance(p, AttentionRecorder) for p in processors.values()):
        raise ValueError("this UNet has no cross-attention layers to record")
    unet.set_attn_processor(processors)
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The tokens the text encoder sees for `prompt`, <bos> and <eos> included (no padding)."""
    return tokenizer.convert_ids_to_tokens(tokenizer(prompt).input_ids)


def shape_mask(image) -> torch.Tensor:
    """Where the shape is in an image of the world (H×W×3, uint8 or float in [0, 1]): the pixels
    whose colour is far from the background's, read as the median colour of the border."""
    arr = np.asarray(image, dtype=np.float64)
    arr = arr / 255 if arr.max() > 1 else arr
    border = np.concatenate([arr[:2].reshape(-1, 3), arr[-2:].reshape(-1, 3),
                             arr[:, :2].reshape(-1, 3), arr[:, -2:].reshape(-1, 3)])
    return torch.from_numpy(np.linalg.norm(arr - np.median(border, axis=0), axis=-1) > 0.3)


def attention_on_shape(attention_map: torch.Tensor, image) -> float:
    """How much more a token's map attends to the shape than to the background: the mean of the
    map over `shape_mask(image)` divided by its mean elsewhere (1: no preference)."""
    mask = shape_mask(image)
    if attention_map.shape != mask.shape:
        raise ValueError(f"attention map of shape {tuple(attention_map.shape)} for an image of "
                         f"{tuple(mask.shape)} pixels; use AttentionStore.maps(size=...)")
    if mask.all() or not mask.any():
        raise ValueError("no shape to be seen in the image: its pixels are all foreground or all "
                         "background")
    return (attention_map[mask].mean() / attention_map[~mask].mean()).item()
