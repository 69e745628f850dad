"""Input widgets that keep what the student typed.

A browser slider or number field silently rounds, clamps or reverts what it cannot take
(width 65 → 64, 1000 → 256, seed "abc" → the old seed), so the student never learns why.
Here each number is a `NumberBox`, a text box that holds exactly what was typed (as a number
when it is one), beside a slider for dragging; the studio checks the box's value when
Generate is clicked and says in the status line what is allowed.
"""

from __future__ import annotations

import ipywidgets as w
import traitlets


class NumberBox(w.Text):
    """A text box for a number that keeps what was typed: "65" → 65, "abc" stays "abc"."""

    value = traitlets.Union([traitlets.Int(), traitlets.Float(), traitlets.Unicode()],
                            default_value="").tag(sync=True)

    def __init__(self, value, kind=int, **kwargs):
        self.kind = kind
        # sent when the box loses focus or on Enter, not per keystroke: the kernel's answer
        # ("6" → 6) must not overwrite what is still being typed
        super().__init__(value=value, continuous_update=False, **kwargs)

    @traitlets.validate("value")
    def _as_number(self, proposal):
        value = proposal["value"]
        if isinstance(value, str):
            try:
                return self.kind(value.strip())
            except ValueError:
                return value
        return float(value) if self.kind is float and not isinstance(value, bool) else value


def paired(box: NumberBox, slider) -> w.HBox:
    """The box and a slider that follow each other; a value the slider cannot take stays in the box."""
    def to_box(change):
        # a browser slider sends 5.000000000000001 for 5
        box.value = round(change["new"], 2) if box.kind is float else change["new"]

    def to_slider(change):
        value = change["new"]
        if isinstance(value, (int, float)) and slider.min <= value <= slider.max \
                and (box.kind is float or (value - slider.min) % slider.step == 0):
            slider.value = value

    slider.observe(to_box, names="value")
    box.observe(to_slider, names="value")
    return w.HBox([box, slider])


def labelled(widget, width: str | None = None):
    """The widget with room for the longest label (in both languages) before it."""
    widget.style.description_width = "6.5em"
    if width:
        widget.layout.width = width
    return widget
