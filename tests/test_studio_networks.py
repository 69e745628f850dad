"""The studio's LoRA / embedding row (tutorial_ldm.studio.networks): it lists what it finds and
types the tag into the prompt."""

import html

import torch
from safetensors.torch import save_file
from tiny_sd import shipped_pipe

from tutorial_ldm.studio import studio
from tutorial_ldm.studio.networks import STRINGS


def test_lists_inserts_and_speaks_both_languages(tmp_path, monkeypatch):
    (tmp_path / "Lora" / "styles").mkdir(parents=True)
    (tmp_path / "embeddings").mkdir()
    monkeypatch.setenv("TUTORIAL_LDM_LORA_DIR", str(tmp_path / "Lora"))
    monkeypatch.setenv("TUTORIAL_LDM_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    app = studio(shipped_pipe(), models_dir=tmp_path)
    row = app.networks
    assert row.insert_lora.disabled and row.loras.options[0][0] == STRINGS["en"]["none"]

    save_file({"x.alpha": torch.tensor(1.0)}, tmp_path / "Lora" / "styles" / "pink.safetensors")
    torch.save({"string_to_param": {"*": torch.zeros(1, 64)}}, tmp_path / "embeddings" / "EasyNeg.pt")
    row.refresh_button.click()
    assert [v for _, v in row.loras.options] == ["pink"] and not row.insert_lora.disabled
    assert [v for _, v in row.embeddings.options] == ["EasyNeg"]

    app.prompt.value = "a red circle on the left"
    row.insert_lora.click()
    assert app.prompt.value == "a red circle on the left, <lora:pink:1>"
    row.insert_embedding.click()  # into the negative prompt by default, as negative embeddings are
    assert app.negative_prompt.value == "EasyNeg"
    row.into_negative.value = False
    row.insert_embedding.click()
    assert app.prompt.value.endswith("<lora:pink:1>, EasyNeg")

    app.language = "zh"
    assert row.insert_lora.description == STRINGS["zh"]["insert"]
    assert set(STRINGS["en"]) == set(STRINGS["zh"])


def test_png_info_names_a_missing_lora(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("TUTORIAL_LDM_LORA_DIR", str(tmp_path / "Lora"))
    app = studio(shipped_pipe(), models_dir=tmp_path)
    image = Image.new("RGB", (64, 64))
    image.info["parameters"] = ("a red circle <lora:gone:0.5>\nSteps: 5, Sampler: Euler a, CFG scale: 2, "
                                'Seed: 1, Size: 64x64, Lora hashes: "gone: 0123456789ab"')
    assert app.load_png(image) is not None
    assert "<lora:gone:0.5>" in app.prompt.value
    said = html.unescape(app.status.value)
    assert "'gone'" in said and "no gone.safetensors" in said
