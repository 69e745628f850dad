"""The studio's img2img and inpaint modes and Hires fix, driven like a student: clicks and values."""

import io
from datetime import datetime, timezone

import numpy as np
import pytest
from studio_driver import click, status
from tiny_sd import shipped_pipe

from tutorial_ldm import image_to_image as i2i
from tutorial_ldm.image_to_image import img2img, inpaint
from tutorial_ldm.parameters import read_parameters
from tutorial_ldm.studio import STRINGS, studio

STEPS = 6


@pytest.fixture
def app(tmp_path):
    app = studio(shipped_pipe(), models_dir=tmp_path / "models")
    app.steps.value, app.seed.value = STEPS, 3
    return app


def upload(widget, data: bytes, name: str):
    widget.value = ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
                     "last_modified": datetime.now(timezone.utc)},)  # as the browser sends it


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_txt2img_is_the_default_and_hires_fix_doubles_the_size(app):
    panel = app.image_panel
    assert panel.mode.value == "txt2img" and panel.hires_box.layout.display == "none"
    panel.hires.value = True
    assert panel.hires_box.layout.display is None and panel.image_box.layout.display == "none"
    panel.hires_upscale.value, panel.hires_steps.value, panel.hires_denoising.value = 2.0, 4, 0.5
    images = click(app)
    assert images[0].size == (128, 128), status(app)
    s = read_parameters(images[0])
    assert (s.width, s.hires_upscale, s.hires_steps, s.hires_upscaler, s.hires_denoising) == (64, 2, 4, "Latent", 0.5)
    assert "128×128" in status(app)


def test_send_a_gallery_image_to_img2img_and_get_what_img2img_gives(app):
    first = click(app)[0]
    send = app.gallery.children[0].children[-1].children  # the buttons under image 1
    assert [b.description for b in send] == ["→ img2img", "→ inpaint"]
    send[0].click()
    panel = app.image_panel
    assert panel.mode.value == "img2img" and panel.image_box.layout.display is None
    assert panel.thumbnail.value  # the input image is shown
    app.prompt.value, panel.strength.value = "a blue circle on the left", 0.6
    made = click(app)[0]
    s = read_parameters(made)
    assert s.strength == 0.6 and "Denoising strength: 0.6" in made.info["parameters"]
    again = img2img(shipped_pipe(), first, **s.generate_kwargs(), progress=False)[0]
    assert again.tobytes() == made.tobytes()
    assert app.progress.value == app.progress.max == int(STEPS * 0.6) == 3  # 3 of 6 steps run


def test_inpaint_with_the_rectangle_keeps_the_rest_exactly(app):
    panel = app.image_panel
    source = i2i.source_image()
    upload(panel.upload, png(source), "red.png")
    assert "ready" in status(app)
    panel.mode.value = "inpaint"
    assert panel.strength.value == 1.0 and panel.mask_box.layout.display is None  # A1111's default for inpaint
    panel.mask_x.value, panel.mask_y.value, panel.mask_w.value, panel.mask_h.value = 0, 16, 32, 32
    panel.mask_blur.value = 0
    app.prompt.value = "a green square on the left"
    made = click(app)[0]
    mask = panel.mask()
    assert mask.shape == (64, 64) and mask[16:48, :32].all() and mask.sum() == 255 * 32 * 32
    outside = mask == 0
    assert (np.asarray(made)[outside] == np.asarray(source)[outside]).all()
    expected = inpaint(shipped_pipe(), source, mask, **read_parameters(made).generate_kwargs(), progress=False)[0]
    assert expected.tobytes() == made.tobytes()


def test_use_last_image_and_nothing_to_use(app):
    app.image_panel.use_last_button.click()
    assert "No image yet" in status(app)
    click(app)
    app.image_panel.use_last_button.click()
    assert app.image_panel.image is not None and "ready" in status(app)


def test_img2img_without_an_image_says_what_to_do(app):
    app.image_panel.mode.value = "img2img"
    click(app)
    assert "upload one" in status(app) and app.last_images == []


def test_a_non_image_upload_is_refused_clearly(app):
    upload(app.image_panel.upload, b"%PDF-1.4 not an image", "notes.pdf")
    assert "bytes that are not an image" in status(app) and app.image_panel.image is None
    app.language = "zh"
    assert "输入图像" in status(app)


def test_an_image_off_the_vae_grid_is_rounded_down_and_said(app):
    upload(app.image_panel.upload, png(i2i.source_image().resize((70, 66))), "odd.png")
    assert "70×66" in status(app) and "68×64" in status(app)
    assert (app.width.value, app.height.value) == (68, 64)


def test_strength_outside_0_1_is_explained(app):
    click(app)
    app.image_panel.use_last_button.click()
    app.image_panel.mode.value = "img2img"
    app.image_panel.strength.value = 1.5
    click(app)
    assert "Denoising" in status(app) and "1.5" in status(app)
    app.language = "zh"
    assert "重绘幅度" in status(app) and "0 到 1" in status(app)


def test_the_language_switch_relabels_the_new_controls(app):
    app.language = "zh"
    panel = app.image_panel
    assert [label for label, _ in panel.mode.options] == ["文生图", "图生图", "局部重绘"]
    assert panel.hires.description == STRINGS["zh"]["hires"] and panel.strength.description == "重绘幅度"
    assert panel.mode.value == "txt2img"


def test_png_info_of_a_hires_image_fills_the_hires_fix_and_makes_it_again(app):
    panel = app.image_panel
    panel.hires.value, panel.hires_steps.value, panel.hires_denoising.value = True, 4, 0.5
    made = click(app)[0]
    other = studio(shipped_pipe())
    other.load_png(made)  # the PIL image with its parameters, as PNG Info reads it
    assert other.image_panel.hires.value and other.image_panel.hires_steps.value == 4
    assert "Hires steps" in status(other) and "Upscale by" in status(other)
    assert click(other)[0].tobytes() == made.tobytes()


def test_png_info_of_an_inpainted_image_switches_to_inpaint(app):
    upload(app.image_panel.upload, png(i2i.source_image()), "red.png")
    app.image_panel.mode.value = "inpaint"
    app.image_panel.mask_blur.value = 2
    made = click(app)[0]
    other = studio(shipped_pipe())
    other.load_png(made)  # the PIL image with its parameters, as PNG Info reads it
    assert other.image_panel.mode.value == "inpaint" and other.image_panel.mask_blur.value == 2
    assert other.image_panel.strength.value == 1.0


def test_an_empty_mask_rectangle_has_nothing_to_repaint(app):
    upload(app.image_panel.upload, png(i2i.source_image()), "red.png")
    app.image_panel.mode.value = "inpaint"
    app.image_panel.mask_w.value = 0
    click(app)
    assert "nothing to repaint" in status(app) and app.last_images == []
    app.language = "zh"
    assert "没有可重绘" in status(app)
