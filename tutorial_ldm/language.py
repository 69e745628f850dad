"""The course's language: English or Chinese, chosen once per kernel.

A Chinese chapter (notebooks/zh/) differs from its English twin only in its first code cell,
`set_language("zh")`; every other code cell is the same, so the words a cell shows come from here:
`say("Noise level", "噪声水平")` in a cell, or the package's own catalogues (the studio's
`studio.strings`) keyed by `current_language()`. The default is English, or the environment
variable TUTORIAL_LDM_LANG ("en" or "zh"), so a kernel started by `make lab LAB_LANG=zh` opens in
Chinese (importing tutorial_ldm then sets up the Chinese font too).
"""

from __future__ import annotations

import os

LANGUAGES = ("en", "zh")
ENV_VAR = "TUTORIAL_LDM_LANG"

_current: str | None = None


def check_language(lang: str) -> str:
    """`lang` if it is one of LANGUAGES, else a ValueError naming it and what is allowed."""
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r} is not available; allowed: {', '.join(LANGUAGES)}")
    return lang


def current_language() -> str:
    """"en" or "zh": set_language's choice, else $TUTORIAL_LDM_LANG, else "en"."""
    if _current is not None:
        return _current
    env = os.environ.get(ENV_VAR, "").strip()
    if not env:
        return "en"
    try:
        return check_language(env)
    except ValueError as e:
        raise ValueError(f"${ENV_VAR}: {e}") from None


def set_language(lang: str) -> str:
    """Make `lang` ("en" or "zh") the language of figures, messages, hints and the studio.
    Chinese also gives matplotlib a CJK font (`fonts.use_cjk_font`)."""
    global _current
    _current = check_language(lang)
    if _current == "zh":
        from .fonts import use_cjk_font

        use_cjk_font()
    return _current


def say(en: str, zh: str, /, **fields) -> str:
    """The text in the current language, `str.format`-ed with `fields` when any are given."""
    text = zh if current_language() == "zh" else en
    return text.format(**fields) if fields else text
