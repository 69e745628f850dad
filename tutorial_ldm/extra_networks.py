"""LoRA files and textual-inversion embeddings, used the AUTOMATIC1111 way (A1111's "extra networks").

    <lora:name:0.8>          in a prompt: apply models/Lora/name.safetensors with multiplier 0.8
    easynegative             a word that is the name of a file in embeddings/: its learned vectors
    (easynegative:1.2)       weights apply to an embedding as to any word

A LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") changes a frozen
weight W into W + m·(α/r)·B·A, with A (r × in) and B (out × r) of a small rank r, α the file's
`alpha` and m the multiplier of the tag. Files come in kohya's layout (`lora_unet_…`, `lora_te_…`,
`lora_te1_…`/`lora_te2_…` for SDXL's two encoders, `.lora_down` = A, `.lora_up` = B, `.alpha`),
as civitai ships them; diffusers' `load_lora_weights` (with peft) converts and applies them. The
tags are removed from the prompt before it is encoded, and the adapters are deleted again after
the images are made, so the next image without a tag is exactly what it was before.

A textual-inversion embedding (Gal et al. 2022, "An Image is Worth One Word") is one or more new
token vectors for the text encoder's input; its trigger is the file name without suffix. A1111
`.pt` files (`string_to_param`, read with `torch.load(weights_only=True)`: no code is unpickled),
civitai `.safetensors` (`emb_params`; SDXL: `clip_l` and `clip_g`) are read, added with diffusers'
`load_textual_inversion` for the generation that names them, and removed after it (tokenizer and
embedding matrix restored as they were).

Folders: models/Lora (or $TUTORIAL_LDM_LORA_DIR) and embeddings (or $TUTORIAL_LDM_EMBEDDINGS_DIR)
at the top of the course folder, A1111's layout (`paths.lora_dir`, `paths.embeddings_dir`).
Saved images record `Lora hashes` and `TI hashes` as A1111 writes them (`infotext_fields`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .paths import embeddings_dir, lora_dir

LORA_SUFFIXES = (".safetensors",)
EMBEDDING_SUFFIXES = (".pt", ".safetensors", ".bin")
_TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra-network tag <kind:arguments>
# keys of the LyCORIS family (LoHa, LoKr, (IA)³, OFT, full diffs): not plain LoRA
_LYCORIS = {"hada_w1_a": "LoHa", "hada_w2_a": "LoHa", "lokr_w1": "LoKr", "lokr_w2": "LoKr",
            "oft_blocks": "OFT", "oft_diag": "OFT", ".on_input": "(IA)³", ".diff": "LyCORIS (full diff)",
            ".w_norm": "LyCORIS (norm)"}
_LORA_KEY = re.compile(r"\.(lora_down|lora_up|lora_A|lora_B|lora_mid)\.weight$|\.alpha$|\.dora_scale$")


@dataclass(frozen=True)
class LoraTag:
    """One `<lora:name:multiplier>` of a prompt."""

    name: str
    multiplier: float = 1.0


# -- finding files -------------------------------------------------------------------------------

def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """name (file name without suffix) → path, in subfolders too (A1111 lists those as well)."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file() and not path.name.startswith("."):
            found.setdefault(path.stem, path)
    return found


def list_loras(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """The LoRA files a prompt can name: {name: path} in models/Lora (or $TUTORIAL_LDM_LORA_DIR)."""
    return _files(lora_dir(folder), LORA_SUFFIXES)


def list_embeddings(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """The embeddings a prompt can name: {trigger: path} in embeddings/ (or $TUTORIAL_LDM_EMBEDDINGS_DIR)."""
    return _files(embeddings_dir(folder), EMBEDDING_SUFFIXES)


def find_lora(name: str, folder=None) -> Path:
    """The file of `<lora:name>`; FileNotFoundError naming it and the folder when it is absent."""
    found = list_loras(folder)
    if name not in found:
        where = lora_dir(folder)
        known = ", ".join(sorted(found)) or "none"
        raise FileNotFoundError(f"LoRA {name!r} not found: no {name}.safetensors in {where} "
                                f"(LoRAs there: {known}); set $TUTORIAL_LDM_LORA_DIR to use another folder")
    return found[name]


# -- the prompt ------------------------------------------------------------------------------------

def parse_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """(the prompt without its tags, the tags) — A1111 removes each `<lora:…>` from the text.

    `<lora:name>` has multiplier 1, `<lora:name:0.8>` 0.8; the same name twice adds up (as two
    networks would). Other kinds of tag (`<hypernet:…>`, `<lyco:…>`) are refused by name.
    """
    tags: dict[str, float] = {}

    def take(match: re.Match) -> str:
        kind, args = match[1], match[2].split(":")
        if kind != "lora":
            raise ValueError(f"prompt tag {match[0]!r}: only <lora:name:multiplier> tags are supported "
                             f"(not {kind!r}; LyCORIS/LoHa/LoKr and hypernetworks are not supported)")
        if len(args) > 2 or not args[0].strip():
            raise ValueError(f"prompt tag {match[0]!r}: write <lora:name> or <lora:name:multiplier>, "
                             "e.g. <lora:cyan:0.8>")
        name = args[0].strip()
        try:
            m = float(args[1]) if len(args) == 2 else 1.0
        except ValueError:
            raise ValueError(f"prompt tag {match[0]!r}: the multiplier {args[1]!r} is not a number; "
                             "e.g. <lora:cyan:0.8>") from None
        if not torch.isfinite(torch.tensor(m)):
            raise ValueError(f"prompt tag {match[0]!r}: the multiplier must be a finite number")
        tags[name] = tags.get(name, 0.0) + m
        return ""

    text = _TAG.sub(take, prompt)
    return text, [LoraTag(n, m) for n, m in tags.items()]


def embeddings_in(text: str, known: dict[str, Path]) -> list[str]:
    """The embedding names that occur in `text` as words (case-insensitive, as CLIP lowercases)."""
    return [name for name in known if _word(name).search(text)]


def _word(name: str) -> re.Pattern:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.I)


# -- LoRA ---------------------------------------------------------------------------------------

def read_lora(path: Path) -> dict[str, torch.Tensor]:
    """A LoRA file's tensors; ValueError for a file that is not a plain LoRA (LoHa, LoKr, …)."""
    from safetensors.torch import load_file

    from .loading import check_safetensors

    check_safetensors(path)
    state = load_file(path)
    for key in state:
        kind = next((v for k, v in _LYCORIS.items() if k in key), None)
        if kind is not None:
            raise ValueError(f"{path.name} is a {kind} file (key {key!r}): not supported, only LoRA "
                             "(.lora_down/.lora_up/.alpha) files")
    odd = [k for k in state if not _LORA_KEY.search(k)]
    if odd or not state:
        raise ValueError(f"{path.name} is not a LoRA file: key {odd[0] if odd else '(none)'!r} is not "
                         "one of .lora_down.weight/.lora_up.weight/.alpha; not supported, only LoRA")
    return state


def _adapter_name(i: int) -> str:
    return f"a1111_lora_{i}"


# Notices that mean nothing here, not red boxes in every notebook cell: a LoRA for the UNet alone
# (chapter 8's, and many civitai files) has no text-encoder keys; the rows transformers adds for
# an embedding get the embedding's vectors at once, and are taken away after the generation.
_NOTICES = {"diffusers.loaders.lora_base": "No LoRA keys associated to",
            "diffusers.loaders.peft": "No LoRA keys associated to",
            "diffusers.loaders.lora_pipeline": "No LoRA keys associated to",
            "transformers.modeling_utils": "The new embeddings will be initialized from a multivariate"}


@contextlib.contextmanager
def _quiet():
    filters = []
    for name, notice in _NOTICES.items():
        def drop(record, notice=notice):
            return notice not in record.getMessage()

        logging.getLogger(name).addFilter(drop)
        filters.append((logging.getLogger(name), drop))
    try:
        yield
    finally:
        for logger, drop in filters:
            logger.removeFilter(drop)


@contextlib.contextmanager
def loras_applied(pipe, tags: list[LoraTag], folder=None):
    """Apply the tags' LoRAs for the duration of the block (diffusers `load_lora_weights` +
    `set_adapters` with the multipliers), then delete them: the pipeline's weights are never
    changed (peft keeps W and adds m·(α/r)·B·A beside it), so afterwards it is as before."""
    if not tags:
        yield
        return
    paths = [find_lora(t.name, folder) for t in tags]
    names = []
    # peft freezes the models it wraps (requires_grad False), and on the CPU frozen weights can take
    # other kernels whose last bits differ (seen on SDXL's UNet): the flags are put back too
    flags = [(p, p.requires_grad) for m in pipe.components.values() if isinstance(m, torch.nn.Module)
             for p in m.parameters()]
    try:
        for i, path in enumerate(paths):
            name = _adapter_name(i)
            try:
                with _quiet():
                    pipe.load_lora_weights(read_lora(path), adapter_name=name)
            except (KeyError, ValueError, RuntimeError) as e:
                if isinstance(e, ValueError) and "not supported, only LoRA" in str(e):
                    raise
                raise ValueError(f"LoRA {path.name} does not fit this model ({type(pipe).__name__}): "
                                 f"{' '.join(str(e).split())[:300]}") from None
            names.append(name)
        pipe.set_adapters(names, adapter_weights=[t.multiplier for t in tags])
        yield
    finally:
        if names:
            pipe.delete_adapters(names)
        if names and not any(pipe.get_list_adapters().values()):
            pipe.unload_lora_weights()  # the peft wrappers go too: the modules are the original ones
        for p, flag in flags:
            p.requires_grad_(flag)


# -- embeddings ----------------------------------------------------------------------------------

def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """An embedding file → {encoder: vectors (n, width)}: "clip_l" (SD 1.x/2.x's only encoder,
    SDXL's first) and, for SDXL files, "clip_g". Pickled files are read with weights_only=True."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unsafe or broken pickle: refuse, never run it
            raise ValueError(f"{path.name} cannot be read safely as an embedding (torch.load with "
                             f"weights_only=True refused it: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} is not an embedding file (no dictionary of tensors)")
    if "string_to_param" in state:  # A1111's .pt
        vectors = {"clip_l": next(iter(state["string_to_param"].values()))}
    elif "emb_params" in state:  # A1111's .safetensors
        vectors = {"clip_l": state["emb_params"]}
    elif "clip_l" in state or "clip_g" in state:  # SDXL
        vectors = {k: state[k] for k in ("clip_l", "clip_g") if k in state}
    elif len(state) == 1 and isinstance(next(iter(state.values())), torch.Tensor):  # diffusers' learned_embeds.bin
        vectors = {"clip_l": next(iter(state.values()))}
    else:
        raise ValueError(f"{path.name} is not an embedding file: expected string_to_param (A1111 .pt), "
                         f"emb_params or clip_l/clip_g (.safetensors); found keys {sorted(state)[:5]}")
    out = {}
    for k, v in vectors.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim not in (1, 2):
            raise ValueError(f"{path.name}: {k} is not a float tensor of shape (vectors, width)")
        out[k] = v.detach().float().reshape(-1, v.shape[-1])
    return out


def _encoders(pipe) -> list[tuple[str, object, object]]:
    pairs = [("clip_l", pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append(("clip_g", pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def token_names(name: str, n: int) -> list[str]:
    """The n tokens an n-vector embedding adds: <ti-name>, <ti-name-1>, …: never a word of the
    vocabulary (a file may well be called "xl" or "cat"), lower case as CLIP reads text."""
    return [f"<ti-{name.lower()}>"] + [f"<ti-{name.lower()}-{i}>" for i in range(1, n)]


def expand(text: str, name: str, n: int) -> str:
    """The prompt with each occurrence of the trigger replaced by the embedding's n tokens."""
    return _word(name).sub(" ".join(token_names(name, n)), text)


@contextlib.contextmanager
def embeddings_loaded(pipe, names: list[str], folder=None):
    """Add the named embeddings to the tokenizer(s) and text encoder(s) for the block
    (diffusers' `load_textual_inversion`), yield a function that rewrites a prompt for them,
    and restore tokenizer and embedding matrix afterwards exactly as they were."""
    if not names:
        yield lambda text: text
        return
    known = list_embeddings(folder)
    vectors = {name: read_embedding(known[name]) for name in names}
    # resizing changes the embedding matrix in place (transformers 5), so its values are kept
    saved = [(tok, copy.deepcopy(vars(tok)), enc, enc.get_input_embeddings(),
              enc.get_input_embeddings().weight.detach().clone(), enc.config.vocab_size)
             for _, tok, enc in _encoders(pipe)]
    try:
        for key, tok, enc in _encoders(pipe):
            width = enc.get_input_embeddings().weight.shape[-1]
            for name in names:
                v = vectors[name].get(key)
                if v is None or v.shape[-1] != width:
                    got = "none" if v is None else f"width {v.shape[-1]}"
                    raise ValueError(f"embedding {name!r} ({known[name].name}) does not fit this model: its "
                                     f"{key} vectors have {got}, the text encoder needs width {width}")
                with _quiet():
                    pipe.load_textual_inversion(v.to(enc.dtype), token=token_names(name, len(v)),
                                                tokenizer=tok, text_encoder=enc)
        sizes = {name: len(next(iter(vectors[name].values()))) for name in names}

        def rewrite(text: str) -> str:
            for name in names:
                text = expand(text, name, sizes[name])
            return text

        yield rewrite
    finally:
        for tok, state, enc, embedding, rows, vocab in saved:
            # the same objects, back to their state before loading: others may hold them
            vars(tok).clear()
            vars(tok).update(state)
            enc.set_input_embeddings(embedding)
            embedding.weight.data, embedding.num_embeddings = rows, len(rows)
            enc.config.vocab_size = vocab


# -- both, around one generation ------------------------------------------------------------------

@dataclass
class ExtraNetworks:
    """What a prompt pair asks for: its text without LoRA tags, the LoRAs and the embeddings."""

    prompt: str
    negative_prompt: str
    loras: list[LoraTag]
    embeddings: list[str]


def parse(prompt: str, negative_prompt: str = "", *, known: dict[str, Path] | None = None) -> ExtraNetworks:
    """Find the LoRA tags (removed from the text) and the embedding names of a prompt pair;
    `known`: the embeddings to look for (default: `list_embeddings()`)."""
    text, loras = parse_lora_tags(prompt)
    negative, negative_loras = parse_lora_tags(negative_prompt)
    if negative_loras:
        raise ValueError(f"<lora:{negative_loras[0].name}:…> is in the negative prompt; LoRA tags belong "
                         "in the prompt (they change the model for both)")
    known = list_embeddings() if known is None else known
    return ExtraNetworks(text, negative, loras, embeddings_in(text + "\n" + negative, known))


@contextlib.contextmanager
def applied(pipe, prompts: list[str], negative_prompt: str = ""):
    """For one batch: LoRAs applied, embeddings loaded; yields one ExtraNetworks per prompt with
    the text rewritten for the encoders (tags removed, multi-vector embeddings expanded).
    The prompts of one batch share one model, so they must name the same LoRAs."""
    known = list_embeddings()
    parsed = [parse(p, negative_prompt, known=known) for p in prompts]
    loras = parsed[0].loras
    for p, n in zip(prompts, parsed):
        if n.loras != loras:
            raise ValueError(f"prompt {p!r} names other LoRAs than {prompts[0]!r}; the prompts of one "
                             "batch share one model, so they must have the same <lora:…> tags")
    names = list(dict.fromkeys(e for n in parsed for e in n.embeddings))
    with loras_applied(pipe, loras), embeddings_loaded(pipe, names) as rewrite:
        yield [ExtraNetworks(rewrite(n.prompt), rewrite(n.negative_prompt), n.loras, n.embeddings)
               for n in parsed]


# -- hashes in the infotext ----------------------------------------------------------------------

_SHA: dict[tuple, str] = {}


def _sha256(path: Path, skip_header: bool) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, skip_header)
    if key not in _SHA:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            if skip_header:  # safetensors: 8 bytes of header length, the JSON header, then the data
                f.seek(8 + int.from_bytes(f.read(8), "little"))
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
        _SHA[key] = digest.hexdigest()
    return _SHA[key]


def lora_hash(path: Path) -> str:
    """A1111's LoRA short hash: 12 hex digits of the SHA-256 of a .safetensors file's tensor data
    (the header skipped: kohya's "addnet" hash, which metadata edits do not change)."""
    return _sha256(Path(path), skip_header=Path(path).suffix == ".safetensors")[:12]


def embedding_hash(path: Path) -> str:
    """A1111's embedding short hash: 12 hex digits of the file's SHA-256."""
    return _sha256(Path(path), skip_header=False)[:12]


def infotext_fields(nets: ExtraNetworks) -> dict[str, str]:
    """A1111's `Lora hashes` and `TI hashes` fields ("name: hash, name: hash") for an infotext."""
    fields = {}
    if nets.loras:
        fields["Lora hashes"] = ", ".join(f"{t.name}: {lora_hash(find_lora(t.name))}" for t in nets.loras)
    if nets.embeddings:
        known = list_embeddings()
        fields["TI hashes"] = ", ".join(f"{n}: {embedding_hash(known[n])}" for n in nets.embeddings)
    return fields


def _recorded(value: str) -> dict[str, str]:
    pairs = (part.rsplit(":", 1) for part in value.split(",") if ":" in part)
    return {name.strip(): h.strip() for name, h in pairs}


def check_available(settings) -> None:
    """Before regenerating an image from its infotext: every LoRA and embedding it records must
    be present with the same hash; FileNotFoundError / ValueError naming the file otherwise."""
    loras, embeddings = list_loras(), list_embeddings()
    for field, known, folder, hasher, suffix in (
            ("Lora hashes", loras, lora_dir(), lora_hash, ".safetensors"),
            ("TI hashes", embeddings, embeddings_dir(), embedding_hash, ".pt or .safetensors")):
        for name, recorded in _recorded(settings.extra.get(field, "")).items():
            if name not in known:
                raise FileNotFoundError(f"this image was made with {name!r} ({field}: {recorded}), but "
                                        f"{folder} has no {name}{suffix}; put the file there to regenerate it")
            if hasher(known[name]) != recorded:
                raise ValueError(f"{known[name]} has hash {hasher(known[name])}, but the image was made "
                                 f"with a {name} of hash {recorded} ({field}): another version of the file")
