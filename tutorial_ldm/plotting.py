"""The figures the chapters repeat, so that a chapter's cell is the lesson and not matplotlib.

    show_images(images, titles)          a row of images with a title above (and a label under) each
    show_grid(rows, row_labels=...)      rows of images, a label left of each row
    plot_curves({name: (x, y)}, ...)     lines with labelled axes, a legend and a grid
    show_heatmap(matrix, ...)            a matrix with labelled axes and a colour bar
    show_attention(image, maps)          attention maps over a greyscale copy of the image: one
                                         perceptual colour map, one shared scale, one colour bar
    draw_unet(config)                    the UNet's levels and skip connections, from its config
    draw_flow(boxes)                     a flow of labelled boxes: blocks, training vs. sampling
    explorer(render, controls)           an image that redraws when a slider or menu moves

Images may be PIL images, uint8 H×W×3 arrays, float H×W×3 arrays in [0, 1], or torch tensors
3×H×W in [−1, 1] (the range diffusion works in). Small images are drawn with sharp pixels.

Every function draws one figure and shows it; with `show=False` it returns the Figure instead
(to save it, or to add to it). A cell that ends in a call shows the figure once. The words the
functions add themselves ("image", "attention weight", the UNet's labels) follow the course's
language (`tutorial_ldm.language.say`); Chinese is drawn with a CJK font (`tutorial_ldm.fonts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from io import BytesIO

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import NullFormatter

from .language import say

ATTENTION_CMAP = "magma"  # perceptually uniform, dark = little attention


def as_image(image) -> np.ndarray:
    """Any of the image kinds above → an H×W×3 array imshow draws as intended."""
    if hasattr(image, "detach"):  # a torch tensor, C×H×W in [−1, 1]
        x = image.detach().float().cpu().clamp(-1, 1)
        return ((x + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image must be H×W×3 (or a 3×H×W tensor); got shape {array.shape}")
    return array


def png(image, size: int) -> bytes:
    """An image as PNG bytes, enlarged to size×size with sharp pixels (for an ipywidgets.Image)."""
    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(as_image(image)).resize((size, size), Image.NEAREST).save(buffer, format="png")
    return buffer.getvalue()


def explorer(render: Callable, controls: Mapping, *, size: int = 256):
    """An interactive picture: `controls` are ipywidgets (sliders, menus) by name; whenever one
    moves, `render(**values)` is called and its image — or (image, caption) — is shown.
    Returns the widget box; its `.view` and `.caption` are the image and the caption widgets."""
    import ipywidgets as widgets

    view = widgets.Image(format="png", width=size, height=size)
    caption = widgets.HTML()

    def redraw(_=None):
        out = render(**{name: control.value for name, control in controls.items()})
        image, text = out if isinstance(out, tuple) else (out, "")
        view.value, caption.value = png(image, size), text

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    box = widgets.VBox([*controls.values(), view, caption])
    box.view, box.caption = view, caption
    return box


def _finish(fig, show: bool):
    if not show:
        return fig
    plt.show()
    if plt.get_backend().lower() == "agg":  # nothing to show to: do not pile figures up
        plt.close(fig)
    return None


def _bare(ax) -> None:
    """No ticks or frame, but keep the axis labels (row labels, readings under images)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def show_grid(rows: Sequence[Sequence], titles=None, *, row_labels: Sequence[str] | None = None,
              xlabels=None, size: float = 1.8, suptitle: str | None = None, fontsize: int = 8,
              show: bool = True):
    """Rows of images. `titles`: one per column (shared by all rows) or one list per row;
    `xlabels`: one list per row, written under the images (e.g. what the analyzer reads)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    extra = 0.35 * (xlabels is not None) + 0.3 * (titles is not None)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols + 0.6 * bool(row_labels),
                                                      (size + extra) * n_rows + 0.4 * bool(suptitle)),
                             squeeze=False)
    per_row = titles is not None and len(titles) and not isinstance(titles[0], str)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            _bare(ax)
            if c >= len(row):
                ax.axis("off")
                continue
            picture = as_image(row[c])
            small = max(picture.shape[:2]) < 256
            ax.imshow(picture, interpolation="nearest" if small else "antialiased")
            title = (titles[r][c] if per_row else titles[c] if r == 0 else None) if titles is not None else None
            if title:
                ax.set_title(title, fontsize=fontsize)
            if xlabels is not None and xlabels[r][c]:
                ax.set_xlabel(xlabels[r][c], fontsize=fontsize)
        if row_labels:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=fontsize + 1)
    if suptitle:
        fig.suptitle(suptitle, fontsize=fontsize + 2)
    fig.tight_layout()
    return _finish(fig, show)


def show_images(images: Sequence, titles: Sequence[str] | None = None, *, xlabels=None,
                label: str | None = None, size: float = 1.8, suptitle: str | None = None,
                fontsize: int = 8, show: bool = True):
    """One row of images, a title above each (and `xlabels` under each); `label` left of the row."""
    return show_grid([list(images)], titles, row_labels=[label] if label else None,
                     xlabels=[list(xlabels)] if xlabels is not None else None, size=size,
                     suptitle=suptitle, fontsize=fontsize, show=show)


def plot_curves(curves: Mapping[str, tuple], *, xlabel: str, ylabel: str, title: str | None = None,
                logx: bool = False, logy: bool = False, xticks: Sequence | None = None,
                ylim: tuple | None = None, styles: Mapping[str, str] | None = None,
                band: tuple | None = None, ax=None, figsize=(6.5, 3.6), show: bool = True):
    """Lines `{name: (x, y)}` with labelled axes, a legend and a light grid. `styles` gives a
    matplotlib format per name (e.g. "o-"); `band` = (low, high, label) shades a horizontal band.
    With `ax`, draws into it and returns it (for figures of several panels)."""
    own = ax is None
    fig, ax = plt.subplots(figsize=figsize) if own else (ax.figure, ax)
    for name, (x, y) in curves.items():
        ax.plot(np.asarray(x), np.asarray(y), (styles or {}).get(name, "-"), label=name)
    if band is not None:
        ax.axhspan(band[0], band[1], color="grey", alpha=0.15, label=band[2])
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded labels between the decades
    if logy:
        ax.set_yscale("log")
    if xticks is not None:
        ax.set_xticks(list(xticks), [str(v) for v in xticks])
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if not own:
        return ax
    fig.tight_layout()
    return _finish(fig, show)


def show_heatmap(matrix, *, xlabel: str, ylabel: str, title: str, colorbar: str,
                 xticks: Sequence[str] | None = None, yticks: Sequence[str] | None = None,
                 cmap: str = "RdBu_r", symmetric: bool = True, extent=None, ax=None,
                 figsize=(8, 3), show: bool = True):
    """A matrix with labelled axes and a colour bar; `symmetric` centres a diverging colour map
    on 0 so that the sign reads off the colour."""
    own = ax is None
    fig, ax = plt.subplots(figsize=figsize) if own else (ax.figure, ax)
    m = np.asarray(matrix, dtype=float)
    limit = np.abs(m).max() if symmetric else None
    im = ax.imshow(m, aspect="auto", cmap=cmap, interpolation="nearest", extent=extent,
                   vmin=-limit if symmetric else None, vmax=limit)
    if xticks is not None:
        ax.set_xticks(range(len(xticks)), xticks, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    if yticks is not None:
        ax.set_yticks(range(len(yticks)), yticks, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, label=colorbar)
    if not own:
        return ax
    fig.tight_layout()
    return _finish(fig, show)


def show_attention(image, maps: Mapping[str, np.ndarray], *, title: str | None = None,
                   size: float = 1.9, alpha: float = 0.75, show: bool = True):
    """The image, then one panel per word: its attention map (same size as the image) in a
    perceptual colour map over a greyscale copy of the image, all on one shared scale, with one
    colour bar, so that brighter means more attention in every panel alike."""
    picture = as_image(image)
    grey = picture[..., :3].astype(float).mean(-1)
    values = {w: np.asarray(m, dtype=float) for w, m in maps.items()}
    vmax = max(m.max() for m in values.values())
    fig, axes = plt.subplots(1, len(values) + 1, figsize=(size * (len(values) + 1) + 0.8, size + 0.5),
                             squeeze=False)
    axes = axes[0]
    axes[0].imshow(picture, interpolation="nearest")
    axes[0].set_title(say("image", "图像"), fontsize=8)
    for ax, (word, m) in zip(axes[1:], values.items()):
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        im = ax.imshow(m, cmap=ATTENTION_CMAP, vmin=0, vmax=vmax, alpha=alpha, interpolation="nearest")
        ax.set_title(f"“{word}”", fontsize=8)
    for ax in axes:
        _bare(ax)
    fig.colorbar(im, ax=list(axes), fraction=0.02, pad=0.01, label=say("attention weight", "注意力权重"))
    if title:
        fig.suptitle(title, fontsize=9)
    return _finish(fig, show)


def _box(ax, x, y, text, *, width=2.6, height=0.8, colour="#dbe9f6", fontsize=8):
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.05", facecolor=colour, edgecolor="0.3"))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, *, colour="0.3", style="-|>", dashed=False, text=None):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=colour,
                                 linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center",
                va="bottom", fontsize=7, color=colour)


def draw_unet(config: Mapping, *, title: str | None = None, show: bool = True):
    """The UNet of a diffusers `UNet2DConditionModel` config: each level's resolution and
    channels on the way down (left) and up (right), the middle block, the skip connections
    across, and where cross-attention to the text sits (orange). Drawn from the config, so the
    picture is always the model's."""
    channels = list(config["block_out_channels"])
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    size, layers = int(config["sample_size"]), int(config["layers_per_block"])
    levels = len(channels)
    fig, ax = plt.subplots(figsize=(9, 1.25 * levels + 1.6))
    attn, plain = "#f8d3a7", "#dbe9f6"
    for i, c in enumerate(channels):
        side = size // 2**i
        y = levels - i
        d_attn, u_attn = "CrossAttn" in down[i], "CrossAttn" in up[levels - 1 - i]
        cross = say(" + cross-attn", " + 交叉注意力")
        _box(ax, 0, y, say("down {i}", "下行 {i}", i=i) + f": {side}×{side}×{c}\n{layers}× ResNet"
             + (cross if d_attn else ""), colour=attn if d_attn else plain)
        _box(ax, 7, y, say("up {i}", "上行 {i}", i=levels - 1 - i) + f": {side}×{side}×{c}\n{layers + 1}× ResNet"
             + (cross if u_attn else ""), colour=attn if u_attn else plain)
        _arrow(ax, (1.35, y), (5.65, y), colour="tab:green", dashed=True,
               text=say("skips ({n} tensors)", "跳跃连接（{n} 个张量）", n=layers + 1))
        if i < levels - 1:
            _arrow(ax, (0, y - 0.42), (0, y - 0.58), text=None)
            _arrow(ax, (7, y - 0.58), (7, y - 0.42))
    bottom = size // 2 ** (levels - 1)
    mid_attn = "CrossAttn" in str(config.get("mid_block_type", "UNetMidBlock2DCrossAttn"))
    _box(ax, 3.5, 0.2, say("middle", "中间块") + f": {bottom}×{bottom}×{channels[-1]}\nResNet"
         + (say(" + cross-attn + ResNet", " + 交叉注意力 + ResNet") if mid_attn else ""),
         colour=attn if mid_attn else plain, width=3.2)
    _arrow(ax, (0, 1 - 0.42), (1.9, 0.2))
    _arrow(ax, (5.1, 0.2), (7, 1 - 0.42))
    _box(ax, 0, levels + 1.1, f"z_t: {size}×{size}×{config['in_channels']}", colour="white", width=2.0, height=0.5)
    _box(ax, 7, levels + 1.1, say("prediction", "预测") + f": {size}×{size}×{config['out_channels']}", colour="white",
         width=2.4, height=0.5)
    _arrow(ax, (0, levels + 0.85), (0, levels + 0.42))
    _arrow(ax, (7, levels + 0.42), (7, levels + 0.85))
    ax.text(3.5, levels + 1.1, say("t → sinusoidal embedding → MLP → every ResNet block\n"
                                   "τθ(y) → keys and values of every cross-attention",
                                   "t → 正弦嵌入 → MLP → 每个 ResNet 块\n"
                                   "τθ(y) → 每个交叉注意力的键和值"), ha="center", va="center", fontsize=7.5)
    ax.set_xlim(-1.6, 8.6)
    ax.set_ylim(-0.5, levels + 1.5)
    ax.axis("off")
    ax.set_title(title or say("the UNet: down (left), middle, up (right); green: skip connections; "
                              "orange: cross-attention to the text",
                              "UNet：下行（左）、中间块、上行（右）；绿色：跳跃连接；橙色：对文本的交叉注意力"),
                 fontsize=9)
    fig.tight_layout()
    return _finish(fig, show)


def draw_flow(boxes: Sequence[str], *, inputs: Mapping[int, str] | None = None,
              residual: Sequence[tuple[int, int]] = (), title: str | None = None,
              highlight: Sequence[int] = (), vertical: bool = False, show: bool = True, ax=None):
    """A flow of boxes joined by arrows (left to right, or top to bottom). `inputs` maps a box's
    index to a side input drawn entering it (e.g. the time embedding); `residual` draws a
    skip-around arrow from the input of box i to the output of box j (an added residual);
    `highlight` colours boxes orange."""
    own = ax is None
    n = len(boxes)
    if own:
        fig, ax = plt.subplots(figsize=(4.4, 1.05 * n + 0.6) if vertical else (2.2 * n + 0.4, 2.2))
    else:
        fig = ax.figure
    where = (lambda i: (0.0, -1.3 * i)) if vertical else (lambda i: (2.2 * i, 0.0))
    for i, text in enumerate(boxes):
        x, y = where(i)
        _box(ax, x, y, text, width=3.1 if vertical else 1.9, height=0.7,
             colour="#f8d3a7" if i in highlight else "#dbe9f6")
        if i:
            px, py = where(i - 1)
            start, end = ((px, py - 0.38), (x, y + 0.38)) if vertical else ((px + 0.98, py), (x - 0.98, y))
            _arrow(ax, start, end)
    for i, text in (inputs or {}).items():
        x, y = where(i)
        start, end = ((x + 2.3, y), (x + 1.6, y)) if vertical else ((x, y - 1.0), (x, y - 0.38))
        ax.text(*start, text, ha="left" if vertical else "center", va="center" if vertical else "top",
                fontsize=7.5, color="tab:purple")
        _arrow(ax, (start[0] - 0.05, start[1]) if vertical else (start[0], start[1] - 0.02), end,
               colour="tab:purple")
    for i, j in residual:
        (xi, yi), (xj, yj) = where(i), where(j)
        if vertical:
            ax.add_patch(FancyArrowPatch((xi - 1.6, yi + 0.3), (xj - 1.6, yj - 0.3),
                                         connectionstyle="arc3,rad=0.3", arrowstyle="-|>",
                                         mutation_scale=10, color="tab:green"))
            ax.text(min(xi, xj) - 2.1, (yi + yj) / 2, "+", color="tab:green", fontsize=11, ha="center")
        else:
            ax.add_patch(FancyArrowPatch((xi - 0.8, yi + 0.38), (xj + 0.8, yj + 0.38),
                                         connectionstyle="arc3,rad=-0.35", arrowstyle="-|>",
                                         mutation_scale=10, color="tab:green"))
    xs, ys = zip(*(where(i) for i in range(n)))
    ax.set_xlim(min(xs) - 2.4, max(xs) + (3.6 if vertical and inputs else 1.3))
    ax.set_ylim(min(ys) - (0.6 if vertical else 1.3), max(ys) + (0.6 if vertical else 1.1))
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    if not own:
        return ax
    fig.tight_layout()
    return _finish(fig, show)
