"""A CJK font for the Chinese figures: found, and used where DejaVu Sans has no glyph.

matplotlib's default font (DejaVu Sans) has no Chinese characters; without help a Chinese title
comes out as boxes ("tofu") and a warning "Glyph … missing from font(s) DejaVu Sans". Since
matplotlib 3.6 a list of families in `font.family` falls back glyph by glyph, so `use_cjk_font()`
makes it ["sans-serif", <CJK font>]: the usual sans-serif font first (Latin letters, digits and
math look as in the English edition), the CJK font for what it lacks. The set-up installs Noto Sans CJK (Debian/Ubuntu: `apt-get install fonts-noto-cjk`);
macOS and Windows ship PingFang SC and Microsoft YaHei, which are found too.
"""

from __future__ import annotations

import re
import warnings

# Simplified-Chinese families, best first: Noto/Source Han (Linux), then the systems' own.
CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "Noto Sans SC", "WenQuanYi Zen Hei",
                "PingFang SC", "Microsoft YaHei", "SimHei", "Heiti SC")
# File names of those families, to add a font installed after matplotlib built its font cache.
_CJK_FILES = re.compile(r"NotoSans(CJK|SC)|SourceHanSans|wqy-zenhei|PingFang|msyh|simhei|STHeiti", re.I)
INSTALL_HINT = ("install one: Debian/Ubuntu `sudo apt-get install fonts-noto-cjk`, conda "
                "`conda install -c conda-forge font-ttf-noto-cjk`; macOS and Windows have one already")


def cjk_font() -> str | None:
    """The name of the first CJK family in CJK_FAMILIES that matplotlib can use, else None."""
    from matplotlib import font_manager

    def known() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((family for family in CJK_FAMILIES if family in names), None)

    if (found := known()) is None:  # maybe installed after matplotlib's font cache was written
        for path in font_manager.findSystemFonts():
            if _CJK_FILES.search(path):
                font_manager.fontManager.addfont(path)
        found = known()
    return found


def use_cjk_font() -> str | None:
    """Let matplotlib draw Chinese: the CJK font becomes the fallback after the sans-serif font.
    Returns its name; warns, saying what to install, when there is none."""
    import matplotlib

    family = cjk_font()
    if family is None:
        warnings.warn(f"no Chinese font found for the figures, so their Chinese text would show as "
                      f"boxes; {INSTALL_HINT}", stacklevel=2)
        return None
    matplotlib.rcParams["font.family"] = ["sans-serif", family]
    return family
