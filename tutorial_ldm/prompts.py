"""Prompt weighting in AUTOMATIC1111's syntax, and the text conditioning it produces.

The syntax (the same as the Stable Diffusion web UI's):

    (word)       attention × 1.1 per level      ((word)) → 1.21
    [word]       attention ÷ 1.1 per level
    (word:1.5)   attention × 1.5                 (worst quality:2)
    \\( \\) \\[ \\] \\\\  literal brackets and backslash
    BREAK        start a new 75-token chunk

Unbalanced brackets are forgiven: a bracket left open applies to the end of the prompt, a
stray closing bracket is kept as text.

How the weights reach the model (A1111's method): the prompt is tokenized piece by piece, cut
into chunks of 75 tokens, each chunk wrapped as <bos> … <eos> <pad>… to the encoder's 77-token
window and encoded on its own. Each token's output embedding is then multiplied by its weight,
and the whole chunk rescaled so its mean is what it was before weighting: emphasis changes the
balance between words, not the overall size of the conditioning. (Where the mean is too close
to 0 to divide by, as for an untrained encoder, the rescaling is skipped.) The chunks are concatenated
along the token axis, so the UNet's cross-attention sees 77·k tokens; it does not mind the
length. Cond and uncond are padded to the same number of chunks with encodings of the empty
prompt (A1111's "pad prompt/negative prompt to be same length"), so they can share a batch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

ROUND = 1.1  # (x): attention × 1.1
SQUARE = 1 / 1.1  # [x]: attention ÷ 1.1
BREAK = ("BREAK", -1.0)  # marker that parse_prompt_attention leaves where a chunk must end
COMMA_BACKTRACK = 20  # a full chunk is cut after its last comma if it lies this close to the end
MEAN_EPS = 1e-2  # |mean z| below this share of mean |z| is too close to 0 to divide by

# One token of the prompt language; tried in this order (A1111's grammar).
_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]?                        # an escape, or a lone backslash
    | [(\[]                                # an opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)     # ':1.5)' closes a round bracket with a weight
    | [)\]]                                # a closing bracket
    | [^\\()\[\]:]+                        # plain text
    | :                                    # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) pieces, exactly as AUTOMATIC1111's web UI does.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]

    Neighbours with equal weights are merged; `BREAK` (a word of its own, in capitals) becomes
    the piece ('BREAK', -1.0). Brackets multiply in the order they close, so floats come out
    exactly as in A1111 (`((x:1.3))` → 1.5730000000000004). A bad explicit weight, as in
    `(a:1.2.3)`, raises ValueError (A1111 stops with a float-conversion error).
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    pieces: list[list] = []  # [text, weight], mutable while brackets close
    round_open: list[int] = []  # index in `pieces` where each open bracket starts
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match["weight"]
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:
                raise ValueError(
                    f"prompt weight {weight!r} in {token!r} is not a number; "
                    "write e.g. (word:1.2)"
                ) from None
            if not math.isfinite(factor):
                raise ValueError(f"prompt weight {weight!r} in {token!r} is too large to be a "
                                 "number; weights are usually between 0 and 2, e.g. (word:1.2)")
            multiply_from(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply_from(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE)
        else:  # text, or a bracket with nothing to close
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])

    # brackets left open apply to the end of the prompt: round ones first, then square
    for start in round_open:
        multiply_from(start, ROUND)
    for start in square_open:
        multiply_from(start, SQUARE)

    if not pieces:
        pieces = [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return [(t, float(w)) for t, w in merged]


@dataclass
class Chunk:
    """One window of the text encoder: token ids and their weights, before wrapping."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no bos/eos token")
    pad = tokenizer.pad_token_id
    return bos, eos, eos if pad is None else pad


def _comma_id(tokenizer) -> int | None:
    ids = tokenizer(",", add_special_tokens=False).input_ids
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return None


def window_length(tokenizer, text_encoder=None) -> int:
    """Tokens per encoder call, <bos> and <eos> included (77 for SD and the tiny model)."""
    n = tokenizer.model_max_length
    if text_encoder is not None:
        n = min(n, text_encoder.config.max_position_embeddings)
    return n


def tokenize_weighted(tokenizer, prompt: str, window: int | None = None) -> list[Chunk]:
    """Cut a weighted prompt into chunks of `window - 2` tokens (75), as A1111 does.

    `BREAK` ends the current chunk (padding it); a chunk that fills up is cut after its last
    comma when that comma is among the last 20 tokens, so phrases are not split across chunks.
    An empty prompt gives one empty chunk. Chunks are not yet wrapped in <bos>/<eos>/<pad>.
    """
    size = (window or window_length(tokenizer)) - 2
    comma = _comma_id(tokenizer)
    pieces = parse_prompt_attention(prompt)
    texts = [t for t, _ in pieces]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False).input_ids

    chunks: list[Chunk] = []
    chunk, last_comma = Chunk(), -1

    def close_chunk() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for (text, weight), piece_ids in zip(pieces, ids):
        if (text, weight) == BREAK:
            close_chunk()
            continue
        for token in piece_ids:
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == size and last_comma != -1 and size - last_comma <= COMMA_BACKTRACK:
                # move the words after the last comma to the next chunk
                cut = last_comma + 1
                rest = Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                del chunk.tokens[cut:], chunk.weights[cut:]
                close_chunk()
                chunk = rest
            if len(chunk.tokens) == size:
                close_chunk()
            chunk.tokens.append(token)
            chunk.weights.append(weight)
    if chunk.tokens or not chunks:
        close_chunk()
    return chunks


def _wrap(chunk: Chunk, window: int, bos: int, eos: int, pad: int) -> tuple[list[int], list[float]]:
    """<bos> tokens <eos> <pad>… to the window; special tokens have weight 1."""
    n_pad = window - 2 - len(chunk.tokens)
    return [bos, *chunk.tokens, eos, *[pad] * n_pad], [1.0, *chunk.weights, 1.0, *[1.0] * n_pad]


def _encoder_input(tokenizer, text_encoder, prompt: str, device=None):
    """Token ids (chunks, window) on `device` (default: the encoder's; with model CPU offload,
    the device it runs on) and their float64 weights (on the CPU, checked before rounding to
    the encoder's dtype)."""
    window = window_length(tokenizer, text_encoder)
    special = _special_ids(tokenizer)
    wrapped = [_wrap(c, window, *special) for c in tokenize_weighted(tokenizer, prompt, window)]
    ids = torch.tensor([w[0] for w in wrapped], device=device if device is not None else text_encoder.device)
    return ids, torch.tensor([w[1] for w in wrapped], dtype=torch.float64)


def _weighted(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    check_weights(weights, z.dtype)
    out = emphasize(z, weights.to(device=z.device, dtype=z.dtype))
    if not torch.isfinite(out).all():
        raise ValueError(f"prompt weight {_largest(weights):g} is too large: the weighted conditioning "
                         f"overflows {z.dtype}; weights are usually between 0 and 2, e.g. (word:1.2)")
    return out


def _final_layer_norm(text_encoder):
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


@torch.no_grad()
def encode_weighted(tokenizer, text_encoder, prompt: str, *, device=None, clip_skip: int = 1) -> torch.Tensor:
    """A weighted prompt → conditioning of shape (1, 77·chunks, width).

    Each chunk is encoded on its own, its token embeddings scaled by their weights, and the
    chunk rescaled to its original mean (A1111's emphasis). With all weights 1 and one chunk
    this is exactly what `pipe.encode_prompt` gives.

    clip_skip: A1111's "Clip skip": 1 = the last layer's output (the default); k > 1 = the
    output k−1 layers before the last, passed through the final layer norm, as A1111 does (it
    equals diffusers' `clip_skip=k-1`).
    """
    ids, weights = _encoder_input(tokenizer, text_encoder, prompt, device)
    if clip_skip == 1:
        z = text_encoder(ids)[0]  # (chunks, window, width): the last hidden state, as SD uses
    else:
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states
        z = _final_layer_norm(text_encoder)(hidden[-clip_skip])
    z = _weighted(z, weights)
    return z.reshape(1, -1, z.shape[-1])


@torch.no_grad()
def encode_weighted_sdxl(pipe, prompt: str, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning for a weighted prompt: (c of shape (1, 77·chunks, 768 + 1280), the
    pooled embedding of shape (1, 1280)), as A1111 builds them.

    The prompt is cut into the same chunks for both encoders (one vocabulary); each encoder
    encodes each chunk and takes its penultimate layer (no final layer norm), and the emphasis
    is applied to each encoder's output on its own; the two are concatenated along the
    channels. The pooled embedding (OpenCLIP's projected <eos> token) is the first chunk's and
    is not weighted. With all weights 1 and one chunk this is what diffusers'
    `StableDiffusionXLPipeline.encode_prompt` gives.
    """
    parts, pooled = [], None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids, weights = _encoder_input(tokenizer, encoder, prompt, device)
        out = encoder(ids, output_hidden_states=True)
        parts.append(_weighted(out.hidden_states[-2], weights))
        if encoder is pipe.text_encoder_2:
            pooled = out.text_embeds[:1]
    z = torch.cat(parts, dim=-1)
    return z.reshape(1, -1, z.shape[-1]), pooled


def _largest(weights: torch.Tensor) -> float:
    return weights.flatten()[weights.abs().argmax()].item()


def check_weights(weights: torch.Tensor, dtype: torch.dtype) -> None:
    """ValueError naming a prompt weight that the encoder's dtype cannot hold (float16: 65504)."""
    limit = torch.finfo(dtype).max
    if (weights.abs() > limit).any():
        raise ValueError(f"prompt weight {_largest(weights):g} is beyond what {dtype} can hold "
                         f"(±{limit:g}); weights are usually between 0 and 2, e.g. (word:1.2)")


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's emphasis: z (chunks, tokens, width) × weights (chunks, tokens), mean restored.

    The restoring factor is mean(z) / mean(z·w). An encoder whose outputs average to ~0 (an
    untrained final LayerNorm, as in random test models) would make it 0/0, so there, and for
    chunks without weights, z·w is left as it is.
    """
    mean = z.mean(dim=(1, 2), keepdim=True)
    scale = z.abs().mean(dim=(1, 2), keepdim=True)
    z = z * weights[..., None]
    new_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted = (weights != 1).any(dim=1)[:, None, None]
    safe = (mean.abs() > MEAN_EPS * scale) & (new_mean.abs() > MEAN_EPS * scale)
    return torch.where(weighted & safe, z * (mean / new_mean), z)


def pad_to_same_length(cond: torch.Tensor, uncond: torch.Tensor, empty: torch.Tensor):
    """Append encodings of the empty prompt to the shorter of cond/uncond (whole chunks)."""
    window = empty.shape[1]
    n_cond, n_uncond = cond.shape[1] // window, uncond.shape[1] // window
    if n_cond < n_uncond:
        cond = torch.cat([cond, empty.repeat(1, n_uncond - n_cond, 1)], dim=1)
    elif n_uncond < n_cond:
        uncond = torch.cat([uncond, empty.repeat(1, n_cond - n_uncond, 1)], dim=1)
    return cond, uncond


def encode_prompts(pipe, prompt: str, negative_prompt: str = "", *, device=None, clip_skip: int = 1):
    """(cond, uncond) for a pipeline, weighted and padded to the same length.

    Both have shape (1, 77·k, width) and can be passed to a stock diffusers pipeline as
    `prompt_embeds` / `negative_prompt_embeds`, or to `tutorial_ldm.samplers.sample`.
    clip_skip: A1111's numbering (see `encode_weighted`). For SDXL use `encode_prompts_sdxl`.
    """
    tok, enc = pipe.tokenizer, pipe.text_encoder
    cond = encode_weighted(tok, enc, prompt, device=device, clip_skip=clip_skip)
    uncond = encode_weighted(tok, enc, negative_prompt, device=device, clip_skip=clip_skip)
    if cond.shape[1] != uncond.shape[1]:
        empty = encode_weighted(tok, enc, "", device=device, clip_skip=clip_skip)
        cond, uncond = pad_to_same_length(cond, uncond, empty)
    return cond, uncond


def encode_prompts_sdxl(pipe, prompt: str, negative_prompt: str = "", *, device=None):
    """(cond, uncond, pooled, negative_pooled) for an SDXL pipeline, weighted, BREAK applied to
    both encoders, cond/uncond padded to the same length with encodings of "".

    An empty negative prompt is all zeros, both its conditioning and its pooled embedding (A1111's
    force-zero negative prompt, diffusers' `force_zeros_for_empty_prompt`). The four can be
    passed to diffusers' SDXL pipeline as prompt_embeds, negative_prompt_embeds,
    pooled_prompt_embeds and negative_pooled_prompt_embeds; the UNet takes the pooled ones as
    `added_cond_kwargs["text_embeds"]`, beside the size/crop `time_ids`.
    """
    cond, pooled = encode_weighted_sdxl(pipe, prompt, device=device)
    if negative_prompt == "" and pipe.config.get("force_zeros_for_empty_prompt", True):
        window = window_length(pipe.tokenizer, pipe.text_encoder)
        uncond = cond.new_zeros(1, window, cond.shape[-1])
        negative_pooled = torch.zeros_like(pooled)
    else:
        uncond, negative_pooled = encode_weighted_sdxl(pipe, negative_prompt, device=device)
    if cond.shape[1] != uncond.shape[1]:
        empty, _ = encode_weighted_sdxl(pipe, "", device=device)
        cond, uncond = pad_to_same_length(cond, uncond, empty)
    return cond, uncond, pooled, negative_pooled
