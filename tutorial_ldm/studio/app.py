"""The studio's controller: the controls, and what each click does.

Layout and behaviour only; the words are in `strings`, the HTML in `render`, the background
thread in `job`, the error and warning sentences in `messages`. Settings are checked by
`tutorial_ldm.settings.validate` (the one validator `generate` uses too) and start from
`defaults_for(pipe)`, so the studio, `generate` and the CLI agree for the same model.
Numbers are typed into boxes that keep what was typed (`controls`): Generate says in the
status line what is allowed instead of a browser widget silently changing the value.
"""

from __future__ import annotations

import gc
import io
import re
import secrets
import time
from dataclasses import replace
from pathlib import Path

import ipywidgets as w

from ..autoencoder import vae_factor
from ..extra_networks import check_available
from ..generation import generate
from ..language import current_language
from ..loading import list_models, list_vaes, load_pipeline, model_info, model_name, models_dir, vae_dir
from ..parameters import read_parameters, save_image
from ..paths import SHIPPED_MODEL
from ..preview import latent_rgb_for, project
from ..prompts import parse_prompt_attention
from ..samplers import A1111_NAMES, SAMPLERS
from ..settings import MAX_SEED, GenerationSettings, SettingsError, defaults_for, validate
from ..tiny_model import speaks_chinese
from . import render
from .controls import NumberBox, labelled, paired
from .img2img import ImagePanel
from .job import Job
from .messages import explain, explain_load, settings_message, warnings_for
from .networks import NetworksRow
from .strings import FIELD_LABELS, LANGUAGE_NAMES, STRINGS

MAX_STEPS_SLIDER = 150  # the sliders' ranges, as in A1111; the boxes take whatever validate allows
MAX_CFG_SLIDER = 30.0
MAX_BATCH = 8  # the studio's own limits (A1111's)
MAX_COUNT = 100
PREVIEW_EVERY = 5  # steps between live previews (A1111 shows one every 10 by default)
SAVE_DIR = Path("outputs") / "txt2img-images"  # A1111's folder, relative to the notebook
DEFAULT_PROMPT = "a red circle on the left"
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_SHIPPED, _GIVEN = "shipped", "given"  # model-list values besides checkpoint paths
_AUTOMATIC, _NO_VAE = "Automatic", "None"  # VAE-list values besides VAE files (load_pipeline's vae=)
_NUMBERED = re.compile(r"(\d{5,})-.*\.png")  # A1111's file names: a running number, then the seed
# (attribute, label key, tooltip key): every label the language switch rewrites
_LABELS = (
    ("language_button", "language", None), ("model", "model", "model_tip"),
    ("refresh_button", "refresh", "refresh_tip"), ("vae", "vae", "vae_tip"), ("prompt", "prompt", None),
    ("negative_prompt", "negative_prompt", None), ("weights_button", "show_weights", "weights_tip"),
    ("sampler", "sampler", None), ("steps", "steps", None), ("cfg", "cfg", "cfg_tip"),
    ("clip_skip", "clip_skip", "clip_skip_tip"), ("seed", "seed", "seed_tip"),
    ("random_seed_button", "random_seed", "random_seed_tip"),
    ("reuse_seed_button", "reuse_seed", "reuse_seed_tip"), ("width", "width", None),
    ("height", "height", None), ("batch_size", "batch_size", "batch_size_tip"),
    ("batch_count", "batch_count", "batch_count_tip"), ("generate_button", "generate", None),
    ("stop_button", "stop", None), ("save_button", "save", "save_tip"),
    ("png_info", "png_info", "png_info_tip"), ("progress", "progress", None),
)


class BadPrompt(ValueError):
    """A prompt whose weights cannot be parsed: (STRINGS key of which prompt, the parser's error)."""


class Interrupted(Exception):
    """Raised from the sampler's callback when Stop is clicked: (steps done, steps in all)."""


class Studio(w.VBox):
    """The studio app. Build it with `studio()`; see `tutorial_ldm.studio`'s docstring for driving it."""

    def __init__(self, pipe=None, *, models_dir=None, lang: str | None = None):
        lang = current_language() if lang is None else lang  # the chapter's language
        if lang not in STRINGS:
            raise ValueError(f"lang={lang!r} is not available; allowed: {', '.join(STRINGS)}")
        if pipe is not None and not all(hasattr(pipe, part) for part in PIPELINE_PARTS):
            raise TypeError(f"studio(pipe) expects a pipeline from tutorial_ldm.load_pipeline() (with "
                            f"{', '.join(PIPELINE_PARTS)}), or None for the shipped tiny model; got "
                            f"{type(pipe).__name__} {pipe!r:.60}")
        super().__init__()
        self.models_dir = models_dir
        self.save_dir = SAVE_DIR
        self.load_options: dict = {}  # passed to load_pipeline, e.g. dict(low_vram=True)
        self.preview_every = PREVIEW_EVERY
        self.pipe = None
        self.last_images: list = []
        self.last_settings: list[GenerationSettings] = []  # one per image of last_images
        self.last_seed: int | None = None
        self.job = Job(on_busy=self._lock_controls)
        self._lang = lang
        self._given = pipe
        self._loaded = None  # the model-list value of self.pipe
        self._filling = False  # True while the code, not the student, changes the model list
        self._said = None  # the last status message, to say it again in another language
        self._build()
        self._connect()
        self.language = lang
        skipped = self._fill_model_list()
        self._load(self.model.value)  # the first model is loaded now, before the app is shown
        if self.pipe is not None:
            label = self._model_label(self._loaded)
            self._say("ready", model=label, warnings=_warning("skipped", names=", ".join(skipped)) if skipped else None)

    def _build(self) -> None:
        self.language_button = labelled(w.ToggleButtons(options=[(LANGUAGE_NAMES[k], k) for k in STRINGS],
                                                         value=self._lang))
        self.language_button.style.button_width = "6em"
        self.model = labelled(w.Dropdown(layout=w.Layout(width="auto", flex="1")))
        self.refresh_button = w.Button(layout=w.Layout(width="3em"))
        self.vae = labelled(w.Dropdown(layout=w.Layout(width="auto", flex="1")))
        self.prompt = labelled(w.Textarea(DEFAULT_PROMPT, rows=3), "100%")
        self.negative_prompt = labelled(w.Textarea("", rows=2), "100%")
        self.networks = NetworksRow(self.prompt, self.negative_prompt, self._lang)  # LoRAs, embeddings
        self.weights_button = w.ToggleButton(False)
        self.weights = w.HTML(layout=w.Layout(display="none"))
        self.sampler = labelled(w.Dropdown(options=[(A1111_NAMES.get(k, k), k) for k in SAMPLERS]))
        box = "13em"
        self.steps, self.steps_slider = labelled(NumberBox(25), box), w.IntSlider(25, min=1, max=MAX_STEPS_SLIDER)
        self.cfg = labelled(NumberBox(7.0, float), box)
        self.cfg_slider = w.FloatSlider(7.0, min=0.0, max=MAX_CFG_SLIDER, step=0.5)
        self.clip_skip = labelled(NumberBox(1), box)
        self.seed = labelled(NumberBox(-1), "16em")
        self.random_seed_button = w.Button(layout=w.Layout(width="3em"))
        self.reuse_seed_button = w.Button(layout=w.Layout(width="3em"), disabled=True)
        self.width, self.width_slider = labelled(NumberBox(64), box), w.IntSlider(64, min=8, max=2048, step=8)
        self.height, self.height_slider = labelled(NumberBox(64), box), w.IntSlider(64, min=8, max=2048, step=8)
        self.batch_size, self.batch_size_slider = labelled(NumberBox(1), box), w.IntSlider(1, min=1, max=MAX_BATCH)
        self.batch_count, self.batch_count_slider = labelled(NumberBox(1), box), w.IntSlider(1, min=1, max=MAX_COUNT)
        for slider in (self.steps_slider, self.cfg_slider, self.width_slider, self.height_slider,
                       self.batch_size_slider, self.batch_count_slider):
            slider.readout = False
            slider.layout.flex = "1"
        self.generate_button = w.Button(button_style="primary", icon="play", layout=w.Layout(width="10em"))
        self.stop_button = w.Button(icon="stop", disabled=True)
        self.save_button = w.Button(icon="save", disabled=True)
        self.png_info = w.FileUpload(accept=".png,image/png", multiple=False, icon="image")
        self.progress = labelled(w.IntProgress(0, min=0, max=1), "100%")
        self.status = w.HTML()
        self.preview = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto"))
        self.preview.add_class(render.PIXELATED)
        self.preview_caption = w.HTML()
        self.image_panel = ImagePanel(self)  # img2img, inpaint, Hires fix (studio/img2img.py)
        self.gallery = w.GridBox(layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(200px, 1fr))",
                                                 grid_gap="8px"))
        controls = w.VBox([
            self.language_button, w.HBox([self.model, self.refresh_button]), self.vae,
            self.prompt, self.negative_prompt, self.networks, w.HBox([self.weights_button, self.png_info]), self.weights,
            self.sampler, paired(self.steps, self.steps_slider), paired(self.cfg, self.cfg_slider), self.clip_skip,
            w.HBox([self.seed, self.random_seed_button, self.reuse_seed_button]),
            paired(self.width, self.width_slider), paired(self.height, self.height_slider),
            paired(self.batch_size, self.batch_size_slider), paired(self.batch_count, self.batch_count_slider),
            self.image_panel,
            w.HBox([self.generate_button, self.stop_button, self.save_button]),
            self.progress, self.status,
        ], layout=w.Layout(width="460px", min_width="360px"))
        results = w.VBox([self.gallery], layout=w.Layout(flex="1", padding="0 0 0 12px"))
        self.children = [w.HTML(render.STYLE), w.HBox([controls, results], layout=w.Layout(flex_flow="row wrap"))]

    def _connect(self) -> None:
        self.language_button.observe(lambda change: setattr(self, "language", change["new"]), names="value")
        self.model.observe(self._on_model_change, names="value")
        self.vae.observe(self._on_vae_change, names="value")
        self.refresh_button.on_click(self._on_refresh)
        for widget in (self.weights_button, self.prompt, self.negative_prompt):
            widget.observe(lambda _: self._show_weights(), names="value")
        self.random_seed_button.on_click(lambda _: setattr(self.seed, "value", -1))
        self.reuse_seed_button.on_click(lambda _: setattr(self.seed, "value", self.last_seed))
        self.generate_button.on_click(self._on_generate)
        self.stop_button.on_click(lambda _: self.job.stop())
        self.save_button.on_click(lambda _: self.save())
        self.png_info.observe(self._on_upload, names="value")

    # ----- public -----

    @property
    def language(self) -> str:
        """"en" or "zh": the language of every label and message; set it to switch."""
        return self._lang

    @language.setter
    def language(self, lang: str) -> None:
        if lang not in STRINGS:
            raise ValueError(f"language {lang!r} is not available; allowed: {', '.join(STRINGS)}")
        self._lang = lang
        if self.language_button.value != lang:
            self.language_button.value = lang  # its observer sets the language again, with the labels
            return
        t = self.t
        for name, key, tip in _LABELS:
            widget = getattr(self, name)
            widget.description = t[key]
            if tip:
                widget.tooltip = t[tip].format(folder=self._tip_folder(name))
        self._show_placeholders()
        self.networks.language = lang
        self.image_panel.relabel(t)
        if self.model.options:
            self._fill_model_list()
        self._show_weights()
        if self._said is not None:
            self._say(*self._said[0], **self._said[1])
        if not self.job.busy:
            self._show_gallery(self.last_images)

    lang = language  # the keyword studio(lang=...) takes

    def _show_placeholders(self) -> None:
        """The prompt boxes' examples, in the language of the labels if the model reads it:
        a Chinese example only for a model whose tokenizer speaks Chinese."""
        t = self.t
        example = t["example_prompt"]
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if self._lang != "en" and (tokenizer is None or not speaks_chinese(tokenizer)):
            example = STRINGS["en"]["example_prompt"] + t["english_only"]
        self.prompt.placeholder = t["prompt_placeholder"].format(example=example)
        self.negative_prompt.placeholder = t["negative_placeholder"]

    def _tip_folder(self, name: str) -> Path:
        """The folder a tooltip names: the models folder, the VAE folder, or where images are saved."""
        return {"refresh_button": self._folder(), "vae": vae_dir()}.get(name, self.save_dir)

    @property
    def t(self) -> dict:
        """The strings of the current language."""
        return STRINGS[self._lang]

    @property
    def busy(self) -> bool:
        """True while a generation or a model load runs."""
        return self.job.busy

    def wait(self, timeout: float | None = None) -> list:
        """Block until the current run (generation or model loading) ends; return `last_images`."""
        self.job.wait(timeout)
        return self.last_images

    def save(self, folder=None) -> list[Path]:
        """Write `last_images` as PNGs with their settings (`folder`, default `save_dir`).

        Files are numbered like A1111's, `00012-1234.png` (a running number, then the seed);
        the number goes on past 99999 (`100000-…`), so an existing file is never overwritten.
        """
        if not self.last_images:
            self._say("nothing_to_save", kind="error")
            return []
        folder = Path(self.save_dir if folder is None else folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            numbers = (int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.fullmatch(p.name)))
            number = 1 + max(numbers, default=-1)
            paths = [save_image(image, folder / f"{number + k:05d}-{s.seed}.png")
                     for k, (image, s) in enumerate(zip(self.last_images, self.last_settings))]
        except (OSError, ValueError) as e:
            self._say("save_failed", kind="error", reason=str(e))
            return []
        self._say(lambda lang: STRINGS[lang]["saved"].format(
            n=len(paths), folder=folder, names=STRINGS[lang]["list_separator"].join(p.name for p in paths)))
        return paths

    def load_png(self, png, name: str | None = None) -> GenerationSettings | None:
        """PNG Info: fill the controls with the settings stored in a PNG (ours or A1111's).

        png: a path, PNG bytes or a PIL image. Returns the settings read, or None (with the
        reason in the status) if there are none."""
        from PIL import Image

        name = name or (Path(png).name if isinstance(png, (str, Path)) else "PNG")
        try:
            source = Image.open(io.BytesIO(png)) if isinstance(png, (bytes, bytearray)) else png
            s = read_parameters(source)
        except (OSError, ValueError) as e:
            self._say("png_unreadable", kind="error", name=name, reason=str(e))
            return None
        fields = ["prompt", "negative_prompt", "steps", "guidance", "seed", "clip_skip"]
        self.prompt.value, self.negative_prompt.value = s.prompt, s.negative_prompt
        self.steps.value, self.cfg.value, self.seed.value = s.steps, s.guidance, s.seed
        self.clip_skip.value = s.clip_skip
        if s.width and s.height:
            self.width.value, self.height.value = s.width, s.height
            fields += ["width", "height"]
        notes = []
        if s.sampler in SAMPLERS:
            self.sampler.value = s.sampler
            fields.append("sampler")
        else:
            notes.append(lambda t: t["png_unknown_sampler"].format(sampler=s.sampler))
        fields += self.image_panel.load_settings(s)  # strength, mask blur, hires fix
        if s.model and self.pipe is not None and s.model != model_name(self.pipe):
            notes.append(lambda t: t["png_model"].format(model=s.model, current=model_name(self.pipe)))
        try:  # the LoRAs and embeddings it records must be here to make it again
            check_available(s)
        except (OSError, ValueError) as e:
            notes.append(lambda t, e=e: str(e))
        vae = (model_info(self.pipe).vae_name or "") if self.pipe is not None else ""
        if s.vae != vae:
            notes.append(lambda t: t["png_vae"].format(vae=s.vae or t["vae_own"], current=vae or t["vae_own"]))
        def read(lang):
            t = STRINGS[lang]
            return t["png_read"].format(name=name, fields=t["list_separator"].join(t[FIELD_LABELS[f]] for f in fields))

        self._say(read, warnings=lambda lang: [note(STRINGS[lang]) for note in notes], detail=s.to_text())
        return s

    # ----- models -----

    def _folder(self) -> Path:
        return models_dir(self.models_dir)

    def _model_label(self, value) -> str:
        return next((label for label, v in self.model.options if v == value), str(value))

    def _fill_model_list(self) -> list:
        """List the given pipeline, the shipped model and the models folder; return what was skipped."""
        t = self.t
        options = []
        if self._given is not None:
            options.append((model_name(self._given) or t["unnamed_model"], _GIVEN))
        if self._given is None or not _is_shipped(self._given):
            options.append((t["shipped"], _SHIPPED))
        folder = self._folder()
        found = list_models(folder)
        options += [(str(p.relative_to(folder)), str(p)) for p in found]
        current, values = self.model.value, [v for _, v in options]
        self._filling = True
        try:
            self.model.options = options
            self.model.value = current if current in values else values[0]
        finally:
            self._filling = False
        skipped = self._fill_vae_list()
        if self._loaded is not None and self.model.value != self._loaded:  # the loaded one is gone
            self._start(self._load, self.model.value)
        return [f"{_relative(path, folder)} ({reason})" for path, reason in found.skipped] + skipped

    def _fill_vae_list(self) -> list:
        """Automatic, None and the VAE folder's files (`list_vaes`), as A1111's VAE setting; return
        what was skipped. A file that is gone falls back to Automatic."""
        t, folder = self.t, vae_dir()
        found = list_vaes(folder)
        options = [(t["vae_automatic"], _AUTOMATIC), (t["vae_none"], _NO_VAE)]
        options += [(str(p.relative_to(folder)), str(p)) for p in found]
        current, values = self.vae.value, [v for _, v in options]
        self._filling = True
        try:
            self.vae.options = options
            self.vae.value = current if current in values else _AUTOMATIC
        finally:
            self._filling = False
        if current is not None and current != self.vae.value and self._loaded not in (None, _GIVEN):
            self._start(self._load, self._loaded)  # the VAE in use is gone: load the model again
        return [f"{_relative(path, folder)} ({reason})" for path, reason in found.skipped]

    def _on_refresh(self, _button=None) -> None:
        skipped = self._fill_model_list()
        if skipped:
            self._say("skipped", kind="warning", names=", ".join(skipped))

    def _on_model_change(self, change) -> None:
        if self._filling or change["new"] is None or change["new"] == self._loaded:
            return
        if not self._start(self._load, change["new"]):  # busy: the choice cannot be honoured now
            self._filling = True
            try:
                self.model.value = change["old"]
            finally:
                self._filling = False

    def _on_vae_change(self, change) -> None:
        """Another VAE: the current checkpoint is loaded again with it (A1111 swaps it in place)."""
        if self._filling or change["new"] is None or self._loaded in (None, _GIVEN):
            return
        if not self._start(self._load, self._loaded):
            self._filling = True
            try:
                self.vae.value = change["old"]
            finally:
                self._filling = False

    def _load(self, value) -> None:
        """Load the model-list entry `value` (with the chosen VAE) and make it current; on failure
        keep the old one. The given pipeline is used as it is, its VAE included."""
        label = self._model_label(value)
        self._say("loading", model=label)
        try:
            options = {"vae": self.vae.value or _AUTOMATIC, **self.load_options}
            pipe = self._given if value == _GIVEN else load_pipeline(None if value == _SHIPPED else value, **options)
        except Exception as e:  # any failure to load is shown; the app keeps its model
            current = self._model_label(self._loaded) if self.pipe is not None else "—"
            self._say(lambda lang, e=e: STRINGS[lang]["load_failed"].format(
                          model=label, reason=explain_load(e, lang), current=current),
                      kind="error", detail=f"{type(e).__name__}: {e}")
            if self._loaded is not None:
                self.model.value = self._loaded  # _on_model_change sees it is loaded: no reload
            return
        old, self.pipe, self._loaded = self.pipe, pipe, value
        self.vae.disabled = value == _GIVEN or self.job.busy
        if old is not None and old is not self._given:  # free the previous model's memory now
            del old
            gc.collect()
            _empty_cuda_cache()
        defaults = self._apply_defaults()
        self._show_placeholders()
        self._say("loaded", model=label, width=defaults.width, height=defaults.height, cfg=defaults.guidance)

    def _apply_defaults(self) -> GenerationSettings:
        """The loaded model's defaults (`settings.defaults_for`) into the controls, sliders sized to it."""
        s = defaults_for(self.pipe)
        f = vae_factor(self.pipe)
        for slider, box, native in ((self.width_slider, self.width, s.width),
                                    (self.height_slider, self.height, s.height)):
            with slider.hold_trait_notifications():
                slider.min, slider.step, slider.max = f, f, max(4 * native, native)  # the studio's own cap
            box.value = native
        self.steps.value, self.cfg.value, self.sampler.value = s.steps, s.guidance, s.sampler
        self.clip_skip.value = s.clip_skip
        return s

    # ----- generation -----

    def _read_settings(self) -> tuple[GenerationSettings, int, int]:
        """The controls' values as checked settings (seed drawn if -1), batch size and count.
        Raises SettingsError, or BadPrompt for a prompt whose weights cannot be parsed."""
        size, count = self.batch_size.value, self.batch_count.value
        for field, value, top in (("batch_size", size, MAX_BATCH), ("batch_count", count, MAX_COUNT)):
            if not (isinstance(value, int) and 1 <= value <= top):
                raise SettingsError(field, value, f"an integer from 1 to {top} (the studio's limit)",
                                    limits={"min": 1, "max": top})
        for widget, which in ((self.prompt, "which_prompt"), (self.negative_prompt, "which_negative")):
            try:
                parse_prompt_attention(widget.value)
            except ValueError as e:
                raise BadPrompt(which, e) from None
        s = GenerationSettings(prompt=self.prompt.value, negative_prompt=self.negative_prompt.value,
                               steps=self.steps.value, sampler=self.sampler.value, guidance=self.cfg.value,
                               seed=self.seed.value, width=self.width.value, height=self.height.value,
                               clip_skip=self.clip_skip.value, **self.image_panel.fields())
        s = validate(s, self.pipe, batch_size=size * count)  # image k of the whole run uses seed + k
        for field, slider in (("width", self.width_slider), ("height", self.height_slider)):
            if getattr(s, field) > slider.max:  # the studio's own cap: 4× the native side
                raise SettingsError(field, getattr(s, field), f"a multiple of {slider.step} from {slider.min} to "
                                    f"{slider.max} (the studio's limit, 4× the model's native size)",
                                    limits={"multiple": slider.step, "max": slider.max})
        if s.seed == -1:
            s.seed = secrets.randbelow(MAX_SEED - size * count + 2)
        return s, size, count

    def _on_generate(self, _button=None) -> None:
        if self.job.busy:  # a click that arrives during a run starts nothing
            return
        if self.pipe is None:
            self._say("no_model", kind="error")
            return
        try:
            settings, size, count = self._read_settings()
        except SettingsError as e:
            self._say(lambda lang, e=e: settings_message(e, lang), kind="error")
            return
        except BadPrompt as e:
            which, detail = e.args
            self._say(lambda lang: STRINGS[lang]["bad_prompt"].format(which=STRINGS[lang][which], detail=detail),
                      kind="error")
            return
        self._start(self._generate, settings, size, count)

    def _generate(self, settings: GenerationSettings, size: int, count: int) -> None:
        pipe, steps = self.pipe, self.image_panel.steps_run(settings)
        run = self.image_panel.runner() or generate  # img2img / inpaint, or text to image

        def warnings(lang):  # a function of the language: said again after a language switch
            return warnings_for(pipe, settings, lang)

        self._say("generating", n=size * count, steps=steps, warnings=warnings)
        self.progress.max, self.progress.value = steps * count, 0
        self._show_gallery(self.last_images, stale=True)
        preview_failed: list = []
        images, used, start = [], [], time.perf_counter()
        try:
            for b in range(count):
                def on_step(i, total, x, denoised, b=b):
                    self._on_step(b, count, i, total, denoised, settings, preview_failed)

                batch = replace(settings, seed=settings.seed + b * size)
                made = run(pipe, **batch.generate_kwargs(), batch_size=size, callback=on_step, progress=False)
                images += made
                used += made.settings
        except Interrupted as e:
            if images:
                self.last_images, self.last_settings = images, used
            self._show_gallery(self.last_images)
            self._say("stopped", i=e.args[0], total=e.args[1])
            return
        except BaseException:
            self._show_gallery(self.last_images)
            raise
        seconds = time.perf_counter() - start
        self.last_images, self.last_settings, self.last_seed = images, used, settings.seed
        self.reuse_seed_button.disabled = False
        self._show_gallery(images)
        last = settings.seed + len(images) - 1
        seeds = str(settings.seed) if last == settings.seed else f"{settings.seed}–{last}"

        def done(lang):
            t = STRINGS[lang]
            text = t["done"].format(n=len(images), width=images[0].width, height=images[0].height,
                                    seeds=seeds, seconds=seconds)
            if preview_failed:
                e = preview_failed[0]
                text += " " + t["no_preview"].format(detail=f"{type(e).__name__}: {e}")
            return text

        self._say(done, warnings=warnings)

    def _on_step(self, b, count, i, total, denoised, settings, preview_failed) -> None:
        done = b * total + i + 1
        self.progress.value = done
        if self.job.stopping:
            raise Interrupted(done, total * count)
        if self.preview_every and (i + 1) % self.preview_every == 0 and i + 1 < total and not preview_failed:
            try:
                self._show_preview(denoised, settings, b, count, i, total)
            except Exception as e:  # a preview is a nicety: it never stops the images
                preview_failed.append(e)

    def _show_preview(self, denoised, settings, b, count, i, total) -> None:
        """The first image's x̂₀, through the cheap latent → RGB map, in the first image's place."""
        thumb = project(denoised[:1], latent_rgb_for(self.pipe.vae))[0]
        width, height = render.display_size(settings.width, settings.height)
        t = self.t
        text = (t["preview_caption"].format(i=i + 1, total=total) if count == 1
                else t["preview_caption_batch"].format(b=b + 1, count=count, i=i + 1, total=total))
        self.preview_caption.value = render.preview_caption(text)
        cells = self.gallery.children
        if not cells or cells[0].children[0] is not self.preview:
            self.gallery.children = (w.VBox([self.preview, self.preview_caption]), *cells[1:])
        self.preview.width, self.preview.height = str(width), str(height)
        self.preview.value = render.png(thumb)

    def _show_gallery(self, images, *, stale: bool = False) -> None:
        t, cells = self.t, []
        for k, image in enumerate(images, 1):
            width, height = render.display_size(*image.size)
            picture = w.Image(value=render.png(image), format="png", width=str(width), height=str(height),
                              layout=w.Layout(max_width="100%", height="auto"))
            picture.add_class(render.PIXELATED)
            if stale:
                picture.add_class(render.STALE)
            caption = render.caption(t["settings_of"].format(k=k), image.info.get("parameters", ""),
                                     stale=t["stale"] if stale else None)
            cells.append(w.VBox([picture, w.HTML(caption), self.image_panel.send_buttons(image)]))
        self.gallery.children = cells

    def _show_weights(self) -> None:
        t = self.t
        if not self.weights_button.value:
            self.weights.layout.display = "none"
            return
        parts = []
        for widget, which in ((self.prompt, "which_prompt"), (self.negative_prompt, "which_negative")):
            title = t["weights_title"].format(which=t[which])
            try:
                parts.append(render.weights_table(title, parse_prompt_attention(widget.value), t["weights_break"]))
            except ValueError as e:
                parts.append(render.weights_table(title, [], t["weights_break"],
                                                  error=t["bad_prompt"].format(which=t[which], detail=e)))
        self.weights.value = "".join(parts)
        self.weights.layout.display = None

    # ----- running in the background, and saying so -----

    def _on_upload(self, change) -> None:
        for file in change["new"]:
            self.load_png(bytes(file["content"]), name=file["name"])

    def _start(self, job, *args) -> bool:
        """Run job(*args) in the background; False if a run is going on."""
        return self.job.start(self._run, job, *args)

    def _run(self, job, *args) -> None:
        try:
            job(*args)
        except Exception as e:  # every failure is shown in status; the app stays usable
            self._say(lambda lang, e=e: explain(e, lang), kind="error", detail=f"{type(e).__name__}: {e}")
            _empty_cuda_cache()

    def _lock_controls(self, busy: bool) -> None:
        for widget in (self.generate_button, self.model, self.refresh_button, self.png_info):
            widget.disabled = busy
        self.vae.disabled = busy or self._loaded == _GIVEN
        self.save_button.disabled = busy or not self.last_images
        self.stop_button.disabled = not busy

    def _say(self, message, *, kind: str = "info", detail: str | None = None, warnings=None, **fields) -> None:
        """Show `message` in the status line, with `warnings` under it. `message`: a STRINGS key
        filled with `fields`, or a function of the language; `warnings`: a function of the
        language giving a list. Remembered, so a language switch can say it again."""
        self._said = ((message,), dict(kind=kind, detail=detail, warnings=warnings, **fields))
        lang, t = self._lang, self.t
        text = t[message].format(**fields) if isinstance(message, str) else message(lang)
        self.status.value = render.status(text, t, kind=kind, detail=detail,
                                          warnings=tuple(warnings(lang)) if warnings else ())


def _warning(key: str, **fields):
    """A warning as `_say` takes it: the STRINGS entry `key` with `fields`, in any language."""
    return lambda lang: [STRINGS[lang][key].format(**fields)]


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.relative_to(folder)) or "."
    except ValueError:
        return str(path)


def _is_shipped(pipe) -> bool:
    source = pipe.config.get("_name_or_path")
    return source is not None and Path(str(source)).resolve() == SHIPPED_MODEL


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
