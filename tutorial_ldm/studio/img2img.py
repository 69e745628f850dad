"""The studio's img2img and inpaint modes and txt2img's Hires fix section (A1111's tabs).

    app.image_panel.mode.value = "img2img"        # or "inpaint"; "txt2img" is the default
    app.image_panel.use_last_button.click()       # start from the last generated image
    app.image_panel.strength.value = 0.6
    app.image_panel.mask_x.value = 0              # inpaint: the white rectangle to repaint
    app.image_panel.hires.value = True            # txt2img: Hires fix (upscale, upscaler, steps, denoising)

Each gallery image has "→ img2img" and "→ inpaint" buttons that send it here. An image can also
be uploaded (any format PIL reads). The mask is a rectangle set with four sliders, shown over
the image; pixels outside it are kept exactly (`tutorial_ldm.image_to_image.inpaint`).
"""

from __future__ import annotations

import ipywidgets as w
import numpy as np

from ..autoencoder import vae_factor
from ..image_to_image import UPSCALERS, img2img, inpaint, load_image, steps_run
from ..settings import SettingsError
from . import render
from .controls import NumberBox, labelled, paired

MODES = ("txt2img", "img2img", "inpaint")
DEFAULTS = {"strength": 0.75, "inpaint_strength": 1.0, "mask_blur": 4, "hires_upscale": 2.0,
            "hires_denoising": 0.7}  # A1111's
THUMBNAIL = 160  # px, the shown side of the input image
MASK_TINT = np.array([255, 0, 255])  # the rectangle to repaint, over the image
# (attribute, label key, tooltip key) of every label the language switch rewrites
LABELS = (("mode", "mode", "mode_tip"), ("upload", "upload_image", "upload_image_tip"),
          ("use_last_button", "use_last", "use_last_tip"), ("strength", "strength", "strength_tip"),
          ("mask_x", "mask_x", None), ("mask_y", "mask_y", None), ("mask_w", "mask_w", None),
          ("mask_h", "mask_h", None), ("mask_blur", "mask_blur", "mask_blur_tip"), ("hires", "hires", "hires_tip"),
          ("hires_upscale", "hires_upscale", None), ("hires_upscaler", "hires_upscaler", None),
          ("hires_steps", "hires_steps", "hires_steps_tip"), ("hires_denoising", "hires_denoising", None))


class ImagePanel(w.VBox):
    """The mode switch, the input image and its mask, and the Hires fix controls."""

    def __init__(self, app):
        super().__init__()
        self.app = app
        self.image = None  # the PIL image img2img and inpaint start from
        self.mode = labelled(w.ToggleButtons(options=[(m, m) for m in MODES], value="txt2img"))
        self.upload = w.FileUpload(accept="image/*", multiple=False, icon="upload")
        self.use_last_button = w.Button(icon="arrow-down")
        self.thumbnail = w.Image(format="png", layout=w.Layout(width=f"{THUMBNAIL}px", height="auto"))
        self.thumbnail.add_class(render.PIXELATED)
        self.strength = labelled(NumberBox(DEFAULTS["strength"], float), "14em")
        self.strength_slider = w.FloatSlider(DEFAULTS["strength"], min=0.0, max=1.0, step=0.05)
        self.mask_x, self.mask_y, self.mask_w, self.mask_h = (labelled(w.IntSlider(0, min=0, max=64)) for _ in range(4))
        self.mask_blur = labelled(NumberBox(DEFAULTS["mask_blur"]), "14em")
        self.hires = w.Checkbox(False, indent=False)
        self.hires_upscale = labelled(NumberBox(DEFAULTS["hires_upscale"], float), "14em")
        self.hires_upscale_slider = w.FloatSlider(DEFAULTS["hires_upscale"], min=1.0, max=4.0, step=0.25)
        self.hires_upscaler = labelled(w.Dropdown(options=list(UPSCALERS), value="Latent"))
        self.hires_steps = labelled(NumberBox(0), "14em")
        self.hires_denoising = labelled(NumberBox(DEFAULTS["hires_denoising"], float), "14em")
        self.hires_denoising_slider = w.FloatSlider(DEFAULTS["hires_denoising"], min=0.0, max=1.0, step=0.05)

        self.image_box = w.VBox([w.HBox([self.upload, self.use_last_button]), self.thumbnail,
                                 paired(self.strength, self.strength_slider)])
        self.mask_box = w.VBox([self.mask_x, self.mask_y, self.mask_w, self.mask_h, self.mask_blur])
        self.hires_box = w.VBox([self.hires_upscale, self.hires_upscale_slider, self.hires_upscaler,
                                 self.hires_steps, self.hires_denoising, self.hires_denoising_slider])
        self.children = [self.mode, self.hires, self.hires_box, self.image_box, self.mask_box]
        paired(self.hires_upscale, self.hires_upscale_slider)
        paired(self.hires_denoising, self.hires_denoising_slider)

        self.mode.observe(self._on_mode, names="value")
        self.hires.observe(lambda _: self._show_sections(), names="value")
        self.upload.observe(self._on_upload, names="value")
        self.use_last_button.on_click(lambda _: self.use_last())
        for slider in (self.mask_x, self.mask_y, self.mask_w, self.mask_h):
            slider.observe(lambda _: self._show_thumbnail(), names="value")
        self._show_sections()

    # ----- the input image -----

    def set_image(self, image) -> None:
        """Start img2img / inpaint from `image`: the size boxes take its size (rounded down to the
        VAE factor, as A1111 does, and said) and the mask covers its middle."""
        self.image = load_image(image)
        f = vae_factor(self.app.pipe)
        width, height = (max(side // f * f, f) for side in self.image.size)
        self.app.width.value, self.app.height.value = width, height
        for slider, side in ((self.mask_x, width), (self.mask_w, width), (self.mask_y, height), (self.mask_h, height)):
            slider.max = side
        self.mask_x.value, self.mask_y.value = width // 4, height // 4
        self.mask_w.value, self.mask_h.value = width // 2, height // 2
        self._show_thumbnail()
        if (width, height) == self.image.size:
            self.app._say("image_set", width=width, height=height)
        else:
            self.app._say("image_resized", w0=self.image.width, h0=self.image.height, width=width, height=height, f=f)

    def use_last(self) -> None:
        if self.app.last_images:
            self.set_image(self.app.last_images[0])
        else:
            self.app._say("nothing_to_use", kind="error")

    def send_to(self, image, mode: str) -> None:
        """A gallery image's "→ img2img" / "→ inpaint": the image in, the mode switched."""
        self.set_image(image)
        self.mode.value = mode

    def send_buttons(self, image) -> w.HBox:
        """The buttons under a gallery image that send it here."""
        buttons = []
        for mode in ("img2img", "inpaint"):
            button = w.Button(description=self.app.t[f"send_{mode}"], layout=w.Layout(width="auto"))
            button.on_click(lambda _, mode=mode: self.send_to(image, mode))
            buttons.append(button)
        return w.HBox(buttons)

    def mask(self) -> np.ndarray:
        """The mask at the image's size (the size boxes'): white = repaint."""
        width, height = self.app.width.value, self.app.height.value
        mask = np.zeros((height, width), np.uint8)
        x, y = self.mask_x.value, self.mask_y.value
        mask[y: y + self.mask_h.value, x: x + self.mask_w.value] = 255
        return mask

    def load_settings(self, s) -> list[str]:
        """PNG Info: the image-to-image fields of settings `s` into these controls (the mode too:
        inpaint for a mask blur, img2img for a strength alone, txt2img for a hires fix); the
        names of the fields filled."""
        if s.hires_upscale is not None:
            self.mode.value, self.hires.value = "txt2img", True
            self.hires_upscale.value, self.hires_steps.value = s.hires_upscale, s.hires_steps or 0
            self.hires_upscaler.value = s.hires_upscaler if s.hires_upscaler in UPSCALERS else "Latent"
            self.hires_denoising.value = s.hires_denoising if s.hires_denoising is not None else DEFAULTS["hires_denoising"]
            return ["hires_upscale", "hires_steps", "hires_upscaler", "hires_denoising"]
        if s.strength is None:
            return []
        self.mode.value = "img2img" if s.mask_blur is None else "inpaint"
        self.strength.value = s.strength
        if s.mask_blur is None:
            return ["strength"]
        self.mask_blur.value = s.mask_blur
        return ["strength", "mask_blur"]

    # ----- what Generate does in each mode -----

    def fields(self) -> dict:
        """The GenerationSettings fields of this mode (strength, mask blur, hires fix)."""
        mode = self.mode.value
        if mode == "txt2img":
            if not self.hires.value:
                return {}
            return {"hires_upscale": self.hires_upscale.value, "hires_upscaler": self.hires_upscaler.value,
                    "hires_steps": self.hires_steps.value, "hires_denoising": self.hires_denoising.value}
        if self.image is None:
            raise SettingsError("image", "none", "an image: upload one, use the last image or send one from the "
                                "gallery", limits={})
        return {"strength": self.strength.value} | ({"mask_blur": self.mask_blur.value} if mode == "inpaint" else {})

    def runner(self):
        """What makes the images: None for txt2img (the studio's `generate`), else img2img or
        inpaint from the input image (resized to the size boxes, A1111's "Just resize")."""
        mode = self.mode.value
        if mode == "txt2img":
            return None
        image = self.image.resize((self.app.width.value, self.app.height.value))
        if mode == "img2img":
            return lambda pipe, **kwargs: img2img(pipe, image, **kwargs)
        mask = self.mask()
        return lambda pipe, **kwargs: inpaint(pipe, image, mask, **kwargs)

    def steps_run(self, settings) -> int:
        """The steps a run of `settings` takes (for the progress bar)."""
        if settings.strength is not None:
            return steps_run(settings.steps, settings.strength)
        if settings.hires_upscale is not None:
            return settings.steps + steps_run(settings.hires_steps, settings.hires_denoising)
        return settings.steps

    # ----- showing -----

    def relabel(self, t: dict) -> None:
        for name, key, tip in LABELS:
            widget = getattr(self, name)
            widget.description = t[key]
            if tip:
                widget.tooltip = t[tip]
        mode = self.mode.value
        with self.mode.hold_trait_notifications():
            self.mode.options = [(t[f"mode_{m}"], m) for m in MODES]
            self.mode.value = mode

    def _on_mode(self, change) -> None:
        if change["new"] == "inpaint" and change["old"] != "inpaint" and self.strength.value == DEFAULTS["strength"]:
            self.strength.value = DEFAULTS["inpaint_strength"]  # A1111's default for inpainting
        self._show_sections()
        self._show_thumbnail()

    def _show_sections(self) -> None:
        mode = self.mode.value
        show = lambda box, on: setattr(box.layout, "display", None if on else "none")  # noqa: E731
        show(self.hires, mode == "txt2img")
        show(self.hires_box, mode == "txt2img" and self.hires.value)
        show(self.image_box, mode != "txt2img")
        show(self.mask_box, mode == "inpaint")

    def _show_thumbnail(self) -> None:
        if self.image is None:
            return
        arr = np.asarray(self.image.resize((self.app.width.value, self.app.height.value))).copy()
        if self.mode.value == "inpaint":
            white = self.mask() > 0
            arr[white] = (0.5 * arr[white] + 0.5 * MASK_TINT).astype(np.uint8)
        self.thumbnail.value = render.png(arr)

    def _on_upload(self, change) -> None:
        for file in change["new"]:
            try:
                self.set_image(bytes(file["content"]))
            except SettingsError as e:
                from .messages import settings_message

                self.app._say(lambda lang, e=e: settings_message(e, lang), kind="error")

