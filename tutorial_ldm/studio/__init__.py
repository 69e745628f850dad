"""The studio: one-click text to image in the notebook, with the controls of the A1111 web UI.

    from tutorial_ldm.studio import studio
    app = studio()          # the shipped tiny model; studio(pipe) for any load_pipeline() result
    app                     # type a prompt, click Generate

Everything a student clicks is also a public attribute, so a notebook (or a test) can drive it:

    app.prompt.value = "a red circle on the left"
    app.seed.value = 42
    app.generate_button.click()
    app.wait()              # generation runs in a background thread; wait() blocks until done
    app.last_images         # the PIL images, settings in image.info["parameters"]
    app.batch_count.value = 3   # three runs one after another (batch_size: images per run)
    app.vae.value = "None"  # A1111's VAE setting: "Automatic", "None" or a file of models/VAE
    app.clip_skip.value = 2     # A1111's Clip skip: 2 = the text encoder's penultimate layer
    app.load_png("00012-42.png")  # PNG Info: a saved image's settings back into the controls
    app.language = "zh"     # or the English / 中文 switch at the top

A value the controls cannot use (width 65, seed "abc") stays as typed and Generate explains in
the status line what is allowed; words the model does not know and a size it was not trained
at are warned about, and the images are still made.

The package, one idea per module:

    strings.py   every label and message, English and Chinese, as data
    messages.py  errors and warnings → sentences a student can act on
    render.py    pure functions: values in, HTML out
    controls.py  number boxes that keep what was typed, beside their sliders
    job.py       the background job: one lock; start, stop, wait, busy
    img2img.py   the img2img and inpaint modes, the Hires fix section, "→ img2img" on gallery images
    app.py       the controller: the controls and what each click does

`tutorial_ldm.studio(...)` is this package called like a function (the name teachers know),
and `tutorial_ldm.widgets.studio` its old address.
"""

import sys
import types

from .app import Studio
from .strings import LANGUAGES, STRINGS


def studio(pipe=None, *, models_dir=None, lang: str | None = None) -> Studio:
    """The one-click text-to-image app for the notebook.

    pipe: a pipeline from `load_pipeline` (tiny on the CPU, SD on a GPU); default: the shipped
        tiny model, loaded now.
    models_dir: the A1111-style checkpoint folder listed in the Model menu (default: see
        `tutorial_ldm.loading.models_dir`); choosing one there loads it.
    lang: "en" or "zh", the language of every label and message (switchable in the app);
        default: the chapter's, `tutorial_ldm.language.current_language()`.
    """
    return Studio(pipe, models_dir=models_dir, lang=lang)


class _CallableModule(types.ModuleType):
    """Importing this package makes `tutorial_ldm.studio` the package, not the function, so the
    package itself answers a call: `tutorial_ldm.studio(pipe)` keeps working."""

    def __call__(self, *args, **kwargs) -> Studio:
        return studio(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__all__ = ["LANGUAGES", "STRINGS", "Studio", "studio"]
