"""What the studio shows, as pure functions: values in, HTML (or PNG bytes) out.

Small images are sent at their own size and enlarged by the browser with sharp pixels
(`image-rendering: pixelated`, class `PIXELATED`): a 64×64 image or a 16×16 latent preview is
shown as crisp 3× or 12× blocks, not blurred. Images of the previous run are dimmed (class
`STALE`) while a new one runs. `STYLE` is the stylesheet for both, shown once in the studio.
"""

from __future__ import annotations

import html
import io

DISPLAY_SIZE = 192  # small images are enlarged by an integer factor to about this many pixels
PIXELATED, STALE = "tldm-pixelated", "tldm-stale"
STYLE = (f"<style>.{PIXELATED} {{image-rendering: pixelated;}} "
         f".{STALE} {{opacity: 0.35; filter: grayscale(1);}}</style>")
ERROR_COLOUR, WARNING_COLOUR = "#c62828", "#8a5a00"
_PRE = "white-space:pre-wrap;word-break:normal;overflow-wrap:break-word"  # wrap settings text at words


def display_size(width: int, height: int) -> tuple[int, int]:
    """The on-screen size of a width×height image: enlarged by a whole factor to ~DISPLAY_SIZE."""
    k = max(1, DISPLAY_SIZE // max(width, height))
    return width * k, height * k


def png(image) -> bytes:
    """PNG bytes of a PIL image (or a uint8 (h, w, 3) array), at its own size."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def coloured(text: str, colour: str) -> str:
    return f'<span style="color:{colour};font-weight:bold">{html.escape(text)}</span>'


def status(message: str, t: dict, *, kind: str = "info", detail: str | None = None,
           warnings: tuple[str, ...] = ()) -> str:
    """The status line: `message` (kind "info", "warning" or "error"), the run's warnings
    under it, and the technical `detail` folded away."""
    if kind == "error":
        text = coloured(t["error_line"].format(message=message), ERROR_COLOUR)
    elif kind == "warning":
        text = coloured(t["warning_line"].format(message=message), WARNING_COLOUR)
    else:
        text = html.escape(message)
    for warning in warnings:
        text += "<br>" + coloured(f"⚠️ {warning}", WARNING_COLOUR)
    if detail and detail not in message:
        text += (f'<details><summary>{html.escape(t["details"])}</summary>'
                 f'<pre style="{_PRE};font-size:11px">{html.escape(detail)}</pre></details>')
    return text


def caption(title: str, parameters: str, *, stale: str | None = None) -> str:
    """An image's settings text (A1111's format) under a title; `stale` marks an old run's."""
    note = f'<div style="color:{WARNING_COLOUR};font-size:11px">{html.escape(stale)}</div>' if stale else ""
    return (f"{note}<details open><summary>{html.escape(title)}</summary>"
            f'<pre style="{_PRE};font-size:11px;line-height:1.3;margin:0">'
            f"{html.escape(parameters)}</pre></details>")


def preview_caption(text: str) -> str:
    """The caption under the live preview ("step 5/25")."""
    return f'<div style="font-size:12px;font-weight:bold">{html.escape(text)}</div>'


def weights_table(title: str, pieces, break_text: str, error: str | None = None) -> str:
    """A prompt's pieces and their attention weights (`prompts.parse_prompt_attention`'s
    output, BREAK marks included), or the reason it cannot be parsed."""
    from ..prompts import BREAK

    head = f"<b>{html.escape(title)}</b>"
    if error is not None:
        return f"{head}<br>{coloured(error, ERROR_COLOUR)}"
    rows = "".join(
        f"<tr><td colspan=2><i>{html.escape(break_text)}</i></td></tr>" if piece == BREAK
        else f"<tr><td><code>{html.escape(repr(piece[0]))}</code></td><td>{piece[1]:.3g}</td></tr>"
        for piece in pieces
    )
    return f"{head}<table>{rows}</table>"
