"""The studio's extra-networks row: the LoRAs and embeddings it finds, and a click that types
their tag into the prompt (A1111's "Lora" and "Textual Inversion" tabs, in one line).

LoRAs come from models/Lora (or $TUTORIAL_LDM_LORA_DIR), embeddings from embeddings/ (or
$TUTORIAL_LDM_EMBEDDINGS_DIR), listed by `tutorial_ldm.extra_networks`. A LoRA is inserted as
`<lora:name:1>` into the prompt; an embedding by its name, into the prompt or the negative prompt.
"""

from __future__ import annotations

import ipywidgets as w

from ..extra_networks import list_embeddings, list_loras

STRINGS = {
    "en": {"lora": "LoRA", "embedding": "Embedding", "insert": "Insert", "into_negative": "into negative",
           "none": "(none found)", "refresh_tip": "Look again in {loras} and {embeddings}",
           "insert_tip": "Add the tag to the prompt"},
    "zh": {"lora": "LoRA", "embedding": "嵌入", "insert": "插入", "into_negative": "插入反向提示词",
           "none": "（未找到）", "refresh_tip": "重新查找 {loras} 和 {embeddings}",
           "insert_tip": "把标签加入提示词"},
}


def _append(text: str, tag: str) -> str:
    """The prompt with `tag` at its end, after a comma as A1111 inserts it."""
    text = text.rstrip()
    return f"{text}, {tag}" if text and not text.endswith(",") else f"{text} {tag}".lstrip()


class NetworksRow(w.VBox):
    """Two dropdowns with Insert buttons; `prompt` and `negative_prompt` are the studio's text areas."""

    def __init__(self, prompt, negative_prompt, lang: str = "en"):
        self._prompt, self._negative = prompt, negative_prompt
        self.loras = w.Dropdown(layout=w.Layout(width="auto", flex="1"))
        self.embeddings = w.Dropdown(layout=w.Layout(width="auto", flex="1"))
        self.insert_lora = w.Button(layout=w.Layout(width="6em"))
        self.insert_embedding = w.Button(layout=w.Layout(width="6em"))
        self.into_negative = w.Checkbox(True, indent=False, layout=w.Layout(width="auto"))
        self.refresh_button = w.Button(description="🔄", layout=w.Layout(width="3em"))
        self.insert_lora.on_click(lambda _: self.insert(lora=self.loras.value))
        self.insert_embedding.on_click(lambda _: self.insert(embedding=self.embeddings.value))
        self.refresh_button.on_click(lambda _: self.refresh())
        super().__init__([w.HBox([self.loras, self.insert_lora, self.refresh_button]),
                          w.HBox([self.embeddings, self.into_negative, self.insert_embedding])])
        self.language = lang
        self.refresh()

    @property
    def language(self) -> str:
        return self._lang

    @language.setter
    def language(self, lang: str) -> None:
        self._lang = lang
        t = STRINGS[lang]
        self.loras.description, self.embeddings.description = t["lora"], t["embedding"]
        self.insert_lora.description = self.insert_embedding.description = t["insert"]
        self.insert_lora.tooltip = self.insert_embedding.tooltip = t["insert_tip"]
        self.into_negative.description = t["into_negative"]
        from ..paths import embeddings_dir, lora_dir

        self.refresh_button.tooltip = t["refresh_tip"].format(loras=lora_dir(), embeddings=embeddings_dir())
        self.refresh()

    def refresh(self) -> None:
        """List the folders again (new files appear, removed ones go)."""
        t = STRINGS[self._lang]
        for dropdown, button, names in ((self.loras, self.insert_lora, list_loras()),
                                        (self.embeddings, self.insert_embedding, list_embeddings())):
            keep = dropdown.value
            dropdown.options = [(n, n) for n in sorted(names)] or [(t["none"], None)]
            dropdown.value = keep if keep in names else dropdown.options[0][1]
            dropdown.disabled = button.disabled = not names

    def insert(self, *, lora: str | None = None, embedding: str | None = None) -> None:
        """Type `<lora:name:1>` into the prompt, or an embedding's name into the prompt or the
        negative prompt (as the checkbox says)."""
        if lora:
            self._prompt.value = _append(self._prompt.value, f"<lora:{lora}:1>")
        if embedding:
            box = self._negative if self.into_negative.value else self._prompt
            box.value = _append(box.value, embedding)
