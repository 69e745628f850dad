"""The chapters' figures: what they draw, checked on the Figure (Agg backend, nothing shown)."""

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tutorial_ldm import plotting as P  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_as_image_takes_every_kind_the_chapters_use():
    tensor = torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1).expand(3, 2, 2)
    assert P.as_image(tensor)[0, 0].tolist() == [0, 128, 255]
    pil = Image.new("RGB", (4, 2), (10, 20, 30))
    assert P.as_image(pil).shape == (2, 4, 3)
    with pytest.raises(ValueError, match=r"H×W×3.*\(4, 4\)"):
        P.as_image(np.zeros((4, 4)))


def test_rows_and_grids_carry_titles_labels_and_sharp_pixels():
    image = np.zeros((8, 8, 3), np.uint8)
    fig = P.show_grid([[image, image], [image]], ["a", "b"], row_labels=["top", "bottom"],
                      xlabels=[["red circle", ""], ["blue"]], show=False)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["a", "b", "", ""]
    assert axes[0].get_ylabel() == "top" and axes[2].get_ylabel() == "bottom"
    assert axes[0].get_xlabel() == "red circle" and not axes[3].axison  # the empty slot
    assert axes[0].images[0].get_interpolation() == "nearest"
    row = P.show_images([image] * 3, ["1", "2", "3"], label="seed", show=False)
    assert [ax.get_title() for ax in row.axes] == ["1", "2", "3"] and row.axes[0].get_ylabel() == "seed"
    plt.close("all")


def test_curves_have_labelled_axes_and_a_legend():
    fig = P.plot_curves({"DDIM": ([10, 20], [0.5, 0.6]), "Euler": ([10, 20], [0.4, 0.7])},
                        xlabel="steps", ylabel="adherence", logx=True, styles={"DDIM": "o--"},
                        show=False)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("steps", "adherence", "log")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DDIM", "Euler"]
    assert ax.lines[0].get_linestyle() == "--"
    with pytest.raises(TypeError):
        P.plot_curves({"x": ([1], [1])}, show=False)  # axes must be labelled
    plt.close("all")


def test_attention_maps_share_one_perceptual_scale_and_a_colour_bar():
    image = np.full((4, 4, 3), 200, np.uint8)
    maps = {"red": np.full((4, 4), 0.1), "circle": np.eye(4) * 0.8}
    fig = P.show_attention(image, maps, show=False)
    overlays = [ax.images[-1] for ax in fig.axes[1:3]]
    assert all(o.get_clim() == (0, 0.8) for o in overlays)  # one scale for every word
    assert all(o.get_cmap().name == P.ATTENTION_CMAP for o in overlays)
    assert fig.axes[1].images[0].get_cmap().name == "gray"  # the picture underneath, in grey
    assert len(fig.axes) == 4 and fig.axes[-1].get_ylabel() == "attention weight"  # the colour bar
    assert "“circle”" in texts(fig)
    plt.close("all")


def test_heatmap_is_centred_and_labelled():
    fig = P.show_heatmap(np.array([[-2.0, 1.0]]), xlabel="feature", ylabel="token", title="τ(y)",
                         colorbar="value", yticks=["red"], show=False)
    assert fig.axes[0].images[0].get_clim() == (-2.0, 2.0)
    assert fig.axes[1].get_ylabel() == "value"
    plt.close("all")


def test_the_unet_diagram_is_drawn_from_the_config():
    config = json.loads((ROOT / "assets" / "tiny-ldm" / "unet" / "config.json").read_text())
    words = " ".join(texts(P.draw_unet(config, show=False)))
    assert "down 0: 16×16×32" in words and "down 2: 4×4×128" in words
    assert "middle: 4×4×128" in words
    assert "down 1: 8×8×64\n1× ResNet + cross-attn" in words and "down 0: 16×16×32\n1× ResNet\n" not in words
    wider = {**config, "block_out_channels": [8, 16, 24, 32], "layers_per_block": 2,
             "down_block_types": ["DownBlock2D"] * 4, "up_block_types": ["UpBlock2D"] * 4}
    assert "down 3: 2×2×32\n2× ResNet" in " ".join(texts(P.draw_unet(wider, show=False)))
    plt.close("all")


def test_flow_draws_every_box_and_its_side_inputs():
    fig = P.draw_flow(["norm", "conv", "out"], inputs={1: "t-emb"}, residual=[(0, 2)], vertical=True,
                      title="ResNet block", show=False)
    assert {"norm", "conv", "out", "t-emb", "ResNet block"} <= set(texts(fig))
    plt.close("all")


def test_showing_under_agg_closes_the_figure():
    before = len(plt.get_fignums())
    assert P.show_images([np.zeros((2, 2, 3), np.uint8)], ["x"]) is None
    assert len(plt.get_fignums()) == before


def test_explorer_redraws_when_a_control_moves():
    import ipywidgets as widgets

    slider = widgets.IntSlider(value=0, min=0, max=255)
    menu = widgets.Dropdown(options=["grey", "red"], value="grey")

    def render(level, colour):
        image = np.full((4, 4, 3), level, np.uint8)
        if colour == "red":
            image[..., 1:] = 0
        return image, f"level {level}, {colour}"

    box = P.explorer(render, {"level": slider, "colour": menu}, size=16)
    first = box.view.value
    assert box.caption.value == "level 0, grey" and Image.open(io.BytesIO(first)).size == (16, 16)
    slider.value = 200
    assert box.view.value != first and box.caption.value == "level 200, grey"
    menu.value = "red"
    assert box.caption.value == "level 200, red"
    assert list(box.children[:2]) == [slider, menu]
