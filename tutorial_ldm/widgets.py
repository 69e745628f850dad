"""The studio: one-click text to image in the notebook, with the controls of the A1111 web UI.

    from tutorial_ldm.widgets import studio
    app = studio()          # the shipped tiny model; studio(pipe) for any load_pipeline() result
    app                     # type a prompt, click Generate

Everything a student clicks is also a public attribute, so a notebook (or a test) can drive it:

    app.prompt.value = "a red circle on the left"
    app.seed.value = 42
    app.generate_button.click()
    app.wait()              # generation runs in a background thread; wait() blocks until done
    app.last_images         # the PIL images, settings in image.info["parameters"]

Why a thread: while the kernel runs a click handler it reads no further messages, so a second
click would queue up and start a second run as soon as the first ends, and Stop could not be
clicked at all. In a thread the kernel stays free: progress and preview render live, a click
during a run is ignored, Stop is heard. `wait()` makes a run synchronous for scripts and tests.

Every label and message, in English and Chinese, is in `STRINGS`; errors are explained in
`status` in red, in words a student can act on, and the app stays usable.
"""

from __future__ import annotations

import gc
import html
import io
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import ipywidgets as w

from .generation import MAX_SEED, generate, native_size, vae_factor
from .loading import SHIPPED_MODEL, list_models, load_pipeline, model_name, models_dir
from .parameters import read_parameters, save_image
from .preview import latent_rgb_for, project
from .prompts import BREAK, parse_prompt_attention
from .samplers import A1111_NAMES, SAMPLERS

# Every string the studio shows. Keys are the same in every language; {names} are filled in.
STRINGS = {
    "en": {
        "model": "Model",
        "model_tip": "The shipped tiny model, or a checkpoint from the models folder",
        "shipped": "tiny-ldm (shipped)",
        "refresh": "🔄",
        "refresh_tip": "Look for new checkpoints in {folder}",
        "prompt": "Prompt",
        "prompt_placeholder": "What to draw, e.g. a red circle on the left. (word:1.3) = more weight",
        "negative_prompt": "Negative",
        "negative_placeholder": "What to avoid, e.g. (worst quality:2), lowres",
        "show_weights": "Show weights",
        "weights_tip": "How the prompt is split into pieces with attention weights (A1111 syntax)",
        "weights_title": "{which}: text pieces and their weights",
        "weights_break": "BREAK: a new 75-token chunk starts here",
        "sampler": "Sampler",
        "steps": "Steps",
        "cfg": "CFG scale",
        "cfg_tip": "Classifier-free guidance: how strongly to follow the prompt (1 = not at all)",
        "seed": "Seed",
        "seed_tip": "-1 draws a random seed; the same seed and settings give the same image",
        "random_seed": "🎲",
        "random_seed_tip": "Random seed (-1)",
        "reuse_seed": "♻️",
        "reuse_seed_tip": "Reuse the last image's seed",
        "width": "Width",
        "height": "Height",
        "batch_size": "Batch size",
        "generate": "Generate",
        "stop": "Stop",
        "save": "Save",
        "save_tip": "Save the images as PNGs that carry their settings, in {folder}",
        "progress": "Progress",
        "ready": "Ready: {model}. Type a prompt and click Generate.",
        "loading": "Loading {model}…",
        "loaded": "Loaded {model} ({width}×{height}).",
        "generating": "Generating {n} image(s), {steps} steps…",
        "done": "✅ {n} image(s), {width}×{height}, seed {seeds}, in {seconds:.1f} s.",
        "stopped": "Stopped after {i} of {total} steps. Nothing was saved.",
        "saved": "Saved {n} image(s) in {folder}: {names}",
        "nothing_to_save": "Nothing to save yet: click Generate first.",
        "settings_of": "Settings of image {k}",
        "unnamed_model": "the given pipeline",
        "no_preview": "(No live preview: {detail})",
        # errors: what went wrong, then what to do
        "error": "Error",
        "details": "details",
        "no_model": "No model is loaded. Choose one in the Model list.",
        "bad_size": "{name} {value} does not fit this model: use a multiple of {f} from {f} to "
                    "{max} (for example {suggestion}).",
        "bad_seed": "Seed {value} is not allowed: use -1 for a random seed, or a whole number "
                    "from 0 to {max}.",
        "bad_steps": "Steps {value} is not allowed: use a whole number from 1 to {max}.",
        "bad_cfg": "CFG scale {value} is not allowed: use a number from 0 to {max}.",
        "bad_batch": "Batch size {value} is not allowed: use a whole number from 1 to {max}.",
        "bad_prompt": "The {which} cannot be read: {detail}",
        "which_prompt": "prompt",
        "which_negative": "negative prompt",
        "oom": "Out of memory. Try a smaller width and height or batch size; on a small GPU "
               "load the model with low_vram=True (see chapter 6).",
        "nan": "The model produced invalid numbers (NaN), usually a float16 overflow. Load the "
               "model in float32: load_pipeline(..., dtype='float32').",
        "missing_file": "A file or folder is missing: {detail}",
        "load_failed": "Could not load {model}: {reason} Still using {current}.",
        "cannot_load": "This model cannot be loaded ({detail}).",
        "bad_setting": "These settings cannot be used: {detail}",
        "unexpected": "Something unexpected went wrong ({kind}): {detail}",
        "save_failed": "Could not save the images: {detail}",
    },
    "zh": {
        "model": "模型",
        "model_tip": "内置的小模型，或模型文件夹中的检查点",
        "shipped": "tiny-ldm（内置）",
        "refresh": "🔄",
        "refresh_tip": "在 {folder} 中查找新的检查点",
        "prompt": "提示词",
        "prompt_placeholder": "要画什么，例如 a red circle on the left。(词:1.3) 表示加大权重",
        "negative_prompt": "反向提示词",
        "negative_placeholder": "要避免什么，例如 (worst quality:2), lowres",
        "show_weights": "显示权重",
        "weights_tip": "提示词如何被切分成带注意力权重的片段（A1111 语法）",
        "weights_title": "{which}：文本片段及其权重",
        "weights_break": "BREAK：从这里开始新的 75 个词元的分段",
        "sampler": "采样器",
        "steps": "步数",
        "cfg": "引导系数",
        "cfg_tip": "无分类器引导（CFG）：多大程度上遵循提示词（1 = 完全不引导）",
        "seed": "随机种子",
        "seed_tip": "-1 表示随机抽取；相同的种子和设置得到相同的图像",
        "random_seed": "🎲",
        "random_seed_tip": "随机种子（-1）",
        "reuse_seed": "♻️",
        "reuse_seed_tip": "沿用上一张图像的种子",
        "width": "宽度",
        "height": "高度",
        "batch_size": "每批数量",
        "generate": "生成",
        "stop": "停止",
        "save": "保存",
        "save_tip": "把图像保存为带有生成参数的 PNG，位于 {folder}",
        "progress": "进度",
        "ready": "就绪：{model}。输入提示词，然后点击“生成”。",
        "loading": "正在加载 {model}…",
        "loaded": "已加载 {model}（{width}×{height}）。",
        "generating": "正在生成 {n} 张图像，共 {steps} 步…",
        "done": "✅ {n} 张图像，{width}×{height}，种子 {seeds}，用时 {seconds:.1f} 秒。",
        "stopped": "已在第 {i} 步（共 {total} 步）停止，没有保存任何内容。",
        "saved": "已保存 {n} 张图像到 {folder}：{names}",
        "nothing_to_save": "还没有可保存的图像：请先点击“生成”。",
        "settings_of": "第 {k} 张图像的参数",
        "unnamed_model": "传入的模型",
        "no_preview": "（无法显示实时预览：{detail}）",
        "error": "错误",
        "details": "详细信息",
        "no_model": "没有加载模型。请在“模型”列表中选择一个。",
        "bad_size": "{name} {value} 不适合这个模型：请使用 {f} 到 {max} 之间 {f} 的倍数（例如 {suggestion}）。",
        "bad_seed": "种子 {value} 不可用：请用 -1 表示随机，或 0 到 {max} 之间的整数。",
        "bad_steps": "步数 {value} 不可用：请使用 1 到 {max} 之间的整数。",
        "bad_cfg": "引导系数 {value} 不可用：请使用 0 到 {max} 之间的数。",
        "bad_batch": "每批数量 {value} 不可用：请使用 1 到 {max} 之间的整数。",
        "bad_prompt": "无法读取{which}：{detail}。权重的写法是 (词:1.3)。",
        "which_prompt": "提示词",
        "which_negative": "反向提示词",
        "oom": "内存不足。请减小宽度、高度或每批数量；显存较小时，用 low_vram=True 加载模型（见第 6 章）。",
        "nan": "模型算出了无效的数（NaN），通常是 float16 溢出。请用 float32 加载模型："
               "load_pipeline(..., dtype='float32')。",
        "missing_file": "找不到文件或文件夹：{detail}",
        "load_failed": "无法加载 {model}：{reason} 仍在使用 {current}。",
        "cannot_load": "这个模型无法加载（{detail}）。",
        "bad_setting": "这些设置无法使用：{detail}",
        "unexpected": "发生了意外错误（{kind}）：{detail}",
        "save_failed": "无法保存图像：{detail}",
    },
}
LANGUAGES = tuple(STRINGS)

MAX_STEPS = 150  # the slider's range, as in A1111
MAX_CFG = 30.0
DEFAULT_CFG = 7.0  # A1111's default, for SD checkpoints
SHIPPED_CFG = 5.0  # the tiny model's: its adherence was measured at 5; at 7.5 colours drift (purple → blue)
MAX_BATCH = 8
PREVIEW_EVERY = 5  # steps between live previews (A1111 shows one every 10 by default)
DISPLAY_SIZE = 192  # small images are enlarged to about this many pixels (nearest neighbour)
SAVE_DIR = Path("outputs") / "txt2img-images"  # A1111's folder, relative to the notebook
DEFAULT_PROMPT = "a red circle on the left"
_SHIPPED, _GIVEN = "shipped", "given"  # model-list values besides checkpoint paths


class Interrupted(Exception):
    """Raised from the sampler's callback when Stop is clicked."""


class InputError(ValueError):
    """A setting the studio refuses before starting; its text is already in the student's language."""


def explain(error: BaseException, t: dict) -> str:
    """An exception → a sentence a student can act on, in the language of the table `t`."""
    import torch

    detail = str(error).strip() or type(error).__name__
    if isinstance(error, InputError):
        return str(error)
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or any(
            words in detail.lower() for words in ("out of memory", "can't allocate memory")):
        return t["oom"]
    if isinstance(error, FloatingPointError):
        return t["nan"]
    if isinstance(error, FileNotFoundError):
        return t["missing_file"].format(detail=detail)
    if isinstance(error, (ValueError, TypeError)):
        return t["bad_setting"].format(detail=detail)
    if isinstance(error, OSError):
        return t["cannot_load"].format(detail=detail)
    return t["unexpected"].format(kind=type(error).__name__, detail=detail)


def _png(image, size: int | None = None) -> bytes:
    """PNG bytes of a PIL image; small images enlarged by an integer factor, pixels kept sharp."""
    from PIL import Image

    if size is not None and max(image.size) < size:
        k = max(1, size // max(image.size))
        image = image.resize((image.width * k, image.height * k), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _label(widget, text: str, tip: str | None = None):
    widget.description = text
    widget.style.description_width = "6.5em"
    if tip is not None:
        widget.tooltip = tip
    return widget


class Studio(w.VBox):
    """The studio app. Build it with `studio()`; see the module docstring for driving it."""

    def __init__(self, pipe=None, *, models_dir=None, lang: str = "en"):
        if lang not in STRINGS:
            raise ValueError(f"lang={lang!r} is not available; allowed: {', '.join(LANGUAGES)}")
        super().__init__()
        self.t = t = STRINGS[lang]
        self.lang = lang
        self.models_dir = models_dir
        self.save_dir = SAVE_DIR
        self.load_options: dict = {}  # passed to load_pipeline, e.g. dict(low_vram=True)
        self.preview_every = PREVIEW_EVERY
        self.pipe = None
        self.last_images: list = []
        self.last_seed: int | None = None
        self._given = pipe
        self._loaded = None  # the model-list value of self.pipe
        self._lock = threading.Lock()
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._filling = False

        # --- controls (their names are public API) ---
        self.model = _label(w.Dropdown(layout=w.Layout(width="auto", flex="1")), t["model"], t["model_tip"])
        self.refresh_button = w.Button(description=t["refresh"], layout=w.Layout(width="3em"),
                                       tooltip=t["refresh_tip"].format(folder=self._folder()))
        self.prompt = _label(w.Textarea(DEFAULT_PROMPT, placeholder=t["prompt_placeholder"], rows=3,
                                        layout=w.Layout(width="100%")), t["prompt"])
        self.negative_prompt = _label(w.Textarea("", placeholder=t["negative_placeholder"], rows=2,
                                                 layout=w.Layout(width="100%")), t["negative_prompt"])
        self.weights_button = w.ToggleButton(False, description=t["show_weights"], tooltip=t["weights_tip"])
        self.weights = w.HTML(layout=w.Layout(display="none"))
        self.sampler = _label(w.Dropdown(options=[(A1111_NAMES.get(k, k), k) for k in SAMPLERS],
                                         value="euler_a" if "euler_a" in SAMPLERS else next(iter(SAMPLERS))),
                              t["sampler"])
        self.steps = _label(w.IntSlider(25, min=1, max=MAX_STEPS), t["steps"])
        self.cfg = _label(w.FloatSlider(DEFAULT_CFG, min=0.0, max=MAX_CFG, step=0.5), t["cfg"], t["cfg_tip"])
        self.seed = _label(w.IntText(-1, layout=w.Layout(width="16em")), t["seed"], t["seed_tip"])
        self.random_seed_button = w.Button(description=t["random_seed"], tooltip=t["random_seed_tip"],
                                           layout=w.Layout(width="3em"))
        self.reuse_seed_button = w.Button(description=t["reuse_seed"], tooltip=t["reuse_seed_tip"],
                                          layout=w.Layout(width="3em"), disabled=True)
        self.width = _label(w.IntSlider(64, min=8, max=2048, step=8), t["width"])
        self.height = _label(w.IntSlider(64, min=8, max=2048, step=8), t["height"])
        self.batch_size = _label(w.IntSlider(1, min=1, max=MAX_BATCH), t["batch_size"])
        self.generate_button = w.Button(description=t["generate"], button_style="primary", icon="play",
                                        layout=w.Layout(width="10em"))
        self.stop_button = w.Button(description=t["stop"], icon="stop", disabled=True)
        self.save_button = w.Button(description=t["save"], icon="save", disabled=True,
                                    tooltip=t["save_tip"].format(folder=self.save_dir))
        self.progress = _label(w.IntProgress(0, min=0, max=1, layout=w.Layout(width="100%")), t["progress"])
        self.status = w.HTML()
        self.preview = w.Image(format="png", layout=w.Layout(display="none"))
        self.gallery = w.GridBox(layout=w.Layout(grid_template_columns="repeat(auto-fill, minmax(200px, 1fr))",
                                                 grid_gap="8px"))

        controls = w.VBox([
            w.HBox([self.model, self.refresh_button]),
            self.prompt, self.negative_prompt,
            w.HBox([self.weights_button]), self.weights,
            self.sampler, self.steps, self.cfg,
            w.HBox([self.seed, self.random_seed_button, self.reuse_seed_button]),
            self.width, self.height, self.batch_size,
            w.HBox([self.generate_button, self.stop_button, self.save_button]),
            self.progress, self.status,
        ], layout=w.Layout(width="460px", min_width="360px"))
        results = w.VBox([self.preview, self.gallery], layout=w.Layout(flex="1", padding="0 0 0 12px"))
        self.children = [w.HBox([controls, results], layout=w.Layout(flex_flow="row wrap"))]

        # --- behaviour ---
        self._fill_model_list()
        self.model.observe(self._on_model_change, names="value")
        self.refresh_button.on_click(lambda _: self._fill_model_list())
        self.weights_button.observe(lambda _: self._show_weights(), names="value")
        self.prompt.observe(lambda _: self._show_weights(), names="value")
        self.negative_prompt.observe(lambda _: self._show_weights(), names="value")
        self.random_seed_button.on_click(lambda _: setattr(self.seed, "value", -1))
        self.reuse_seed_button.on_click(self._reuse_seed)
        self.generate_button.on_click(self._on_generate)
        self.stop_button.on_click(lambda _: self._stop.set())
        self.save_button.on_click(lambda _: self.save())

        # The first model is loaded now, before the app is shown (the shipped one takes seconds).
        self._load(self.model.value)
        if self.pipe is not None:
            self._say(t["ready"].format(model=self._model_label(self._loaded)))

    # ----- public methods -----

    def wait(self, timeout: float | None = None) -> list:
        """Block until the current run (generation or model loading) ends; return `last_images`."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"the studio is still busy after {timeout} s")
        return self.last_images

    @property
    def busy(self) -> bool:
        """True while a generation or a model load runs."""
        return self._busy

    def save(self, folder=None) -> list[Path]:
        """Write `last_images` as PNGs with their settings (`folder`, default `save_dir`).

        Files are numbered like A1111's, `00012-1234.png` (a running number, then the seed),
        and never overwrite an existing file.
        """
        t = self.t
        if not self.last_images:
            self._say(t["nothing_to_save"], error=True)
            return []
        folder = Path(self.save_dir if folder is None else folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            number = 1 + max((int(p.name[:5]) for p in folder.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")),
                             default=-1)
            paths = []
            for k, image in enumerate(self.last_images):
                seed = read_parameters(image).seed
                paths.append(save_image(image, folder / f"{number + k:05d}-{seed}.png"))
        except (OSError, ValueError) as e:
            self._say(t["save_failed"].format(detail=e), error=True)
            return []
        self._say(t["saved"].format(n=len(paths), folder=folder, names=", ".join(p.name for p in paths)))
        return paths

    # ----- models -----

    def _folder(self) -> Path:
        return models_dir(self.models_dir)

    def _model_label(self, value) -> str:
        for label, v in self.model.options:
            if v == value:
                return label
        return str(value)

    def _fill_model_list(self) -> None:
        options = []
        if self._given is not None:
            options.append((model_name(self._given) or self.t["unnamed_model"], _GIVEN))
        if self._given is None or not _is_shipped(self._given):
            options.append((self.t["shipped"], _SHIPPED))
        folder = self._folder()
        options += [(str(p.relative_to(folder)), str(p)) for p in list_models(folder)]
        current, values = self.model.value, [v for _, v in options]
        self._filling = True  # setting options moves the value: not a student's choice
        try:
            self.model.options = options
            self.model.value = current if current in values else values[0]
        finally:
            self._filling = False
        if self._loaded is not None and self.model.value != self._loaded:  # the loaded one is gone
            self._start(self._load, self.model.value)

    def _on_model_change(self, change) -> None:
        if self._filling or change["new"] is None or change["new"] == self._loaded:
            return
        if not self._start(self._load, change["new"]):  # busy: the choice cannot be honoured now
            self._filling = True
            try:
                self.model.value = change["old"]
            finally:
                self._filling = False

    def _load(self, value) -> None:
        """Load the model-list entry `value` and make it current; on failure keep the old one."""
        t = self.t
        label = self._model_label(value)
        self._say(t["loading"].format(model=label))
        try:
            if value == _GIVEN:
                pipe = self._given
            else:
                with _quiet_loading():
                    pipe = load_pipeline(None if value == _SHIPPED else value, **self.load_options)
        except Exception as e:  # any failure to load is shown; the app keeps its model
            current = self._model_label(self._loaded) if self.pipe is not None else "—"
            reason = explain(e, t)
            self._say(t["load_failed"].format(model=label, reason=reason, current=current), error=True,
                      detail=f"{type(e).__name__}: {e}")
            if self._loaded is not None:
                self.model.value = self._loaded  # _on_model_change sees it is loaded: no reload
            return
        old, self.pipe, self._loaded = self.pipe, pipe, value
        if old is not None and old is not self._given:  # free the previous model's memory now
            del old
            gc.collect()
            _empty_cuda_cache()
        self._model_defaults()
        self._say(t["loaded"].format(model=label, width=self.width.value, height=self.height.value))

    def _model_defaults(self) -> None:
        """Settings that suit the model just loaded: its native size, its CFG scale."""
        self.cfg.value = SHIPPED_CFG if _is_shipped(self.pipe) else DEFAULT_CFG
        f = vae_factor(self.pipe)
        native_w, native_h = native_size(self.pipe)
        for slider, native in ((self.width, native_w), (self.height, native_h)):
            with slider.hold_trait_notifications():
                slider.min, slider.step = f, f
                slider.max = max(4 * native, native)  # 2048 for SD 1.5, 256 for the tiny model
                slider.value = native

    # ----- generation -----

    def _settings(self) -> dict:
        """The widgets' values, checked; raises InputError with a message in the student's language."""
        t = self.t
        if self.pipe is None:
            raise InputError(t["no_model"])
        f = vae_factor(self.pipe)
        batch = self.batch_size.value
        if not 1 <= batch <= MAX_BATCH:
            raise InputError(t["bad_batch"].format(value=batch, max=MAX_BATCH))
        steps = self.steps.value
        if not 1 <= steps <= MAX_STEPS:
            raise InputError(t["bad_steps"].format(value=steps, max=MAX_STEPS))
        cfg = self.cfg.value
        if math.isfinite(cfg):
            cfg = round(cfg, 2)  # the browser's slider sends 5.000000000000001 for 5
        if not (math.isfinite(cfg) and 0 <= cfg <= MAX_CFG):
            raise InputError(t["bad_cfg"].format(value=cfg, max=MAX_CFG))
        for slider, key in ((self.width, "width"), (self.height, "height")):
            value = slider.value
            if value < f or value % f or value > slider.max:
                suggestion = min(max(f, round(value / f) * f), slider.max)
                raise InputError(t["bad_size"].format(name=t[key], value=value, f=f, max=slider.max,
                                                      suggestion=suggestion))
        seed = self.seed.value
        max_seed = MAX_SEED - batch + 1
        if not (seed == -1 or 0 <= seed <= max_seed):
            raise InputError(t["bad_seed"].format(value=seed, max=max_seed))
        for widget, which in ((self.prompt, "which_prompt"), (self.negative_prompt, "which_negative")):
            try:
                parse_prompt_attention(widget.value)
            except ValueError as e:
                raise InputError(t["bad_prompt"].format(which=t[which], detail=e)) from None
        return dict(prompt=self.prompt.value, negative_prompt=self.negative_prompt.value, steps=steps,
                    guidance=cfg, seed=seed, sampler=self.sampler.value, width=self.width.value,
                    height=self.height.value, batch_size=batch)

    def _on_generate(self, _button=None) -> None:
        if self._busy:  # a click that arrives during a run starts nothing
            return
        try:
            settings = self._settings()
        except InputError as e:
            self._say(str(e), error=True)
            return
        self._start(self._generate, settings)

    def _generate(self, settings: dict) -> None:
        t = self.t
        steps = settings["steps"]
        self._say(t["generating"].format(n=settings["batch_size"], steps=steps))
        self.progress.max, self.progress.value = steps, 0
        self.preview.layout.display = "none"
        preview_error = []
        start = time.perf_counter()

        def on_step(i, total, x, denoised):
            self.progress.value = i + 1
            if self._stop.is_set():
                raise Interrupted(i + 1, total)
            if self.preview_every and (i + 1) % self.preview_every == 0 and i + 1 < total and not preview_error:
                try:
                    self._show_preview(denoised)
                except Exception as e:  # a preview is a nicety: it never stops the images
                    preview_error.append(e)

        try:
            images = generate(self.pipe, callback=on_step, progress=False, **settings)
        except Interrupted as e:
            self._say(t["stopped"].format(i=e.args[0], total=e.args[1]))
            return
        finally:
            self.preview.layout.display = "none"
        seconds = time.perf_counter() - start
        self.last_images = images
        seeds = [read_parameters(image).seed for image in images]
        self.last_seed = seeds[0]
        self.reuse_seed_button.disabled = False
        self._show_gallery(images)
        shown = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
        message = t["done"].format(n=len(images), width=images[0].width, height=images[0].height,
                                   seeds=shown, seconds=seconds)
        if preview_error:
            message += " " + t["no_preview"].format(detail=f"{type(preview_error[0]).__name__}: {preview_error[0]}")
        self._say(message)

    def _show_preview(self, denoised) -> None:
        from PIL import Image

        thumbs = project(denoised, latent_rgb_for(self.pipe.vae))  # (N, h, w, 3)
        strip = Image.fromarray(thumbs.transpose(1, 0, 2, 3).reshape(thumbs.shape[1], -1, 3))
        scale = max(1, DISPLAY_SIZE // max(thumbs.shape[1:3]))
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
        self.preview.value = _png(strip)
        self.preview.layout.display = None

    def _show_gallery(self, images) -> None:
        t = self.t
        cells = []
        for k, image in enumerate(images, 1):
            picture = w.Image(value=_png(image, DISPLAY_SIZE), format="png",
                              layout=w.Layout(max_width="100%", height="auto"))
            text = html.escape(image.info.get("parameters", ""))
            caption = w.HTML(f'<details open><summary>{html.escape(t["settings_of"].format(k=k))}</summary>'
                             f'<pre style="white-space:pre-wrap;font-size:11px;line-height:1.3;margin:0">'
                             f"{text}</pre></details>")
            cells.append(w.VBox([picture, caption]))
        self.gallery.children = cells

    def _reuse_seed(self, _button=None) -> None:
        if self.last_seed is not None:
            self.seed.value = self.last_seed

    def _show_weights(self) -> None:
        t = self.t
        if not self.weights_button.value:
            self.weights.layout.display = "none"
            return
        parts = []
        for widget, which in ((self.prompt, "which_prompt"), (self.negative_prompt, "which_negative")):
            title = html.escape(t["weights_title"].format(which=t[which]))
            try:
                pieces = parse_prompt_attention(widget.value)
            except ValueError as e:
                parts.append(f"<b>{title}</b><br>{_red(t['bad_prompt'].format(which=t[which], detail=e))}")
                continue
            rows = "".join(
                f"<tr><td colspan=2><i>{html.escape(t['weights_break'])}</i></td></tr>" if piece == BREAK
                else f"<tr><td><code>{html.escape(repr(piece[0]))}</code></td><td>{piece[1]:.3g}</td></tr>"
                for piece in pieces
            )
            parts.append(f"<b>{title}</b><table>{rows}</table>")
        self.weights.value = "".join(parts)
        self.weights.layout.display = None

    # ----- running jobs in the background -----

    def _start(self, job, *args) -> bool:
        """Run job(*args) in a thread with the controls locked; False if a job is already running."""
        with self._lock:
            if self._busy:
                return False
            self._busy = True
        self._stop.clear()
        self._lock_controls(True)
        self._thread = threading.Thread(target=self._run, args=(job, *args), daemon=True)
        self._thread.start()
        return True

    def _run(self, job, *args) -> None:
        try:
            job(*args)
        except Exception as e:  # every failure is shown in status; the app stays usable
            self._say(explain(e, self.t), error=True, detail=f"{type(e).__name__}: {e}")
            _empty_cuda_cache()
        finally:
            self._lock_controls(False)
            self._busy = False

    def _lock_controls(self, busy: bool) -> None:
        self.generate_button.disabled = busy
        self.model.disabled = busy
        self.refresh_button.disabled = busy
        self.save_button.disabled = busy or not self.last_images
        self.stop_button.disabled = not busy

    def _say(self, message: str, *, error: bool = False, detail: str | None = None) -> None:
        text = _red(f"❌ {self.t['error']}: {message}") if error else html.escape(message)
        if detail and detail not in message:
            text += (f'<details><summary>{html.escape(self.t["details"])}</summary>'
                     f'<pre style="white-space:pre-wrap;font-size:11px">{html.escape(detail)}</pre></details>')
        self.status.value = text


def _is_shipped(pipe) -> bool:
    source = pipe.config.get("_name_or_path")
    return source is not None and Path(str(source)).resolve() == SHIPPED_MODEL


def _red(message: str) -> str:
    return f'<span style="color:#c62828;font-weight:bold">{html.escape(message)}</span>'


@contextmanager
def _quiet_loading():
    """No loading bars from diffusers and transformers: the status line says "Loading…"."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = [lib.enable_progress_bar for lib in (diffusers_logging, transformers_logging)
               if lib.is_progress_bar_enabled()]
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        for enable in restore:
            enable()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def studio(pipe=None, *, models_dir=None, lang: str = "en") -> Studio:
    """The one-click text-to-image app for the notebook.

    pipe: a pipeline from `load_pipeline` (tiny on the CPU, SD on a GPU); default: the shipped
        tiny model, loaded now.
    models_dir: the A1111-style checkpoint folder listed in the Model menu (default: see
        `tutorial_ldm.loading.models_dir`); choosing one there loads it.
    lang: "en" or "zh", the language of every label and message.
    """
    return Studio(pipe, models_dir=models_dir, lang=lang)
