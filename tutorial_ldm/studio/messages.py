"""What the studio says about errors and doubtful settings, in the student's language.

Errors (`explain`, `explain_load`, `settings_message`) turn an exception into a sentence a
student can act on; a `SettingsError` is worded from its field, value and limits
(`tutorial_ldm.settings`), so the studio and `generate` refuse exactly the same values.
Warnings (`warnings_for`) name settings that will run but probably not draw what the student
expects: words the model's tokenizer does not know, a size the model was not trained at.
"""

from __future__ import annotations

import re

from ..prompts import BREAK, parse_prompt_attention
from ..settings import SettingsError
from .strings import ALLOWED, FIELD_LABELS, STRINGS


def settings_message(error: SettingsError, lang: str) -> str:
    """"Width 65 is not allowed: expected a positive multiple of 4 (…). For example 64."."""
    t, limits, value = STRINGS[lang], error.limits, error.value
    name = t[FIELD_LABELS[error.field]] if error.field in FIELD_LABELS else error.field
    table = ALLOWED[lang]
    template = table.get(f"{error.field}_max" if "max" in limits else error.field, table.get(error.field))
    try:
        allowed = template.format(**limits) if template else error.allowed
    except (KeyError, IndexError):  # limits without the numbers the template words
        allowed = error.allowed
    if lang == "en" and error.note:
        allowed += f" ({error.note})"
    shown = t["quoted"].format(value=value) if isinstance(value, str) else value
    text = t["bad_value"].format(name=name[:1].upper() + name[1:], value=shown, allowed=allowed)
    multiple = limits.get("multiple")
    if multiple and isinstance(value, int):
        example = min(max(multiple, round(value / multiple) * multiple), limits.get("max", float("inf")))
        text += t["example"].format(example=example)
    return text


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or any(
        words in str(error).lower() for words in ("out of memory", "can't allocate memory"))


def explain(error: BaseException, lang: str) -> str:
    """An exception raised while generating → a sentence a student can act on."""
    t = STRINGS[lang]
    detail = str(error).strip() or type(error).__name__
    if isinstance(error, SettingsError):
        return settings_message(error, lang)
    if _is_out_of_memory(error):
        return t["oom"]
    if isinstance(error, FloatingPointError):
        return t["nan"]
    if isinstance(error, FileNotFoundError):
        return t["missing_file"].format(detail=detail)
    if isinstance(error, (ValueError, TypeError)):
        return t["bad_setting"].format(detail=detail)
    return t["unexpected"].format(kind=type(error).__name__, detail=detail)


def explain_load(error: BaseException, lang: str) -> str:
    """An exception raised while loading a checkpoint → why the checkpoint cannot be used."""
    t = STRINGS[lang]
    detail = str(error).strip() or type(error).__name__
    if _is_out_of_memory(error):
        return t["oom"]
    if isinstance(error, FileNotFoundError):
        return t["missing_file"].format(detail=detail)
    return t["bad_checkpoint"].format(detail=detail)


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words of `prompt` (weights syntax removed) that `tokenizer` maps to its unknown token.

    A word-level tokenizer like the tiny model's knows only its training words: "一个红色的圆形"
    or "purple" become <unk>. CLIP's byte-level BPE has no unknown words, so SD never warns.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    found = []
    for piece in parse_prompt_attention(prompt):
        if piece == BREAK:
            continue
        for word in re.findall(r"\w+", piece[0]):
            if word not in found and unk in tokenizer(word, add_special_tokens=False)["input_ids"]:
                found.append(word)
    return found


def warnings_for(pipe, settings, lang: str) -> list[str]:
    """Warnings for settings that run but may not draw what was asked (empty if none)."""
    from ..autoencoder import native_size

    t, said = STRINGS[lang], []
    words = unknown_words(pipe.tokenizer, settings.prompt)
    if words:
        said.append(t["unknown_words"].format(words=t["list_separator"].join(words)))
    native_w, native_h = native_size(pipe)
    if (settings.width, settings.height) != (native_w, native_h):
        said.append(t["not_native"].format(width=settings.width, height=settings.height,
                                           native_w=native_w, native_h=native_h))
    return said
