"""Chapter 8's fine-tuning (tutorial_ldm.finetune): what each method trains, and its files loaded
back the A1111 way. Adherence figures are bench/finetune.py's; here only short runs."""

import numpy as np
import pytest
import torch

from tutorial_ldm import extra_networks as xn
from tutorial_ldm import finetune as ft
from tutorial_ldm import metrics, world
from tutorial_ldm.__main__ import main
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.prompts import encode_prompts

SHORT = dict(steps=3, batch=4, n_concept=8, n_prior=8)


def test_the_new_colour_is_unseen_but_drawn_and_read():
    assert ft.NEW_COLOUR in world.UNSEEN_COLOURS and ft.NEW_COLOUR not in world.COLOURS
    assert all(s.colour != ft.NEW_COLOUR for s in world.sample_scenes(2000, 0))
    prompts = ft.concept_prompts()
    images = [world.render(world.parse_caption(p)) for p in prompts]
    assert metrics.adherence(images, prompts)["all3"] == 1.0
    # held-out pairs never appear among the training scenes
    assert not any(ft.held_out(s.shape, s.position) for s in ft.concept_scenes(300, 0))
    assert all(ft.held_out(world.parse_caption(p).shape, world.parse_caption(p).position) for p in prompts)
    # the original prompts are read with the original palette: pink is not a possible answer there
    blue = world.render(world.Scene("circle", "blue", "on the left"))
    assert metrics.analyze(blue).colour == "blue"


def test_lora_formula_is_what_peft_computes():
    pipe = load_pipeline(device="cpu")
    ft.add_lora(pipe.unet, rank=3, alpha=6.0)
    layer = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_out[0]  # has a bias
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(4, layer.in_features)
    want = x @ ft.lora_formula(layer.base_layer.weight, layer.lora_A["default"].weight,
                               layer.lora_B["default"].weight, 6.0).T
    torch.testing.assert_close(layer(x), want + layer.base_layer.bias, rtol=1e-5, atol=1e-5)


def _unet_out(pipe, prompt):
    torch.manual_seed(0)
    z = torch.randn(1, 4, 16, 16)
    cond, _ = encode_prompts(pipe, prompt)
    with torch.no_grad():
        return pipe.unet(z, torch.tensor([500]), cond).sample


def test_lora_trains_only_its_matrices_and_loads_back_as_a_tag(tmp_path, monkeypatch):
    pipe = load_pipeline(device="cpu")
    frozen = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    encoder = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    log = ft.finetune(pipe, ft.FinetuneConfig(method="lora", lr=0.05, rank=2, alpha=2.0, **SHORT))
    assert log["trainable"] == sum(p.numel() for n, p in pipe.unet.named_parameters() if "lora_" in n)
    for name, value in pipe.unet.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(value, frozen[name.replace(".base_layer", "")]), name
    assert all(torch.equal(v, encoder[k]) for k, v in pipe.text_encoder.state_dict().items())
    trained = _unet_out(pipe, "a pink circle on the left")

    path = ft.save_lora(pipe.unet, tmp_path / "Lora" / "pink.safetensors", alpha=2.0)
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in xn.read_lora(path))
    monkeypatch.setenv("TUTORIAL_LDM_LORA_DIR", str(tmp_path / "Lora"))
    fresh = load_pipeline(device="cpu")
    base = _unet_out(fresh, "a pink circle on the left")
    with xn.loras_applied(fresh, [xn.LoraTag("pink")]):
        loaded = _unet_out(fresh, "a pink circle on the left")
    torch.testing.assert_close(loaded, trained, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(base, trained)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_textual_inversion_trains_one_vector_and_is_used_by_name(tmp_path, monkeypatch, suffix):
    pipe = load_pipeline(device="cpu")
    unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rows = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    log = ft.finetune(pipe, ft.FinetuneConfig(method="textual_inversion", **SHORT))
    assert log["trainable"] == rows.shape[1]
    table = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[: len(rows)], rows)  # the old words are untouched
    assert all(torch.equal(v, unet[k]) for k, v in pipe.unet.state_dict().items())
    trained = encode_prompts(pipe, "a pink circle on the left")[0]

    ft.save_embedding(pipe, tmp_path / "embeddings" / f"pink{suffix}")
    monkeypatch.setenv("TUTORIAL_LDM_EMBEDDINGS_DIR", str(tmp_path / "embeddings"))
    fresh = load_pipeline(device="cpu")
    with xn.embeddings_loaded(fresh, ["pink"]) as rewrite:
        used = encode_prompts(fresh, rewrite("a pink circle on the left"))[0]
    torch.testing.assert_close(used, trained)


def test_full_fine_tuning_moves_the_unet_only():
    pipe = load_pipeline(device="cpu")
    unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    encoder = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    log = ft.finetune(pipe, ft.FinetuneConfig(method="full", **SHORT))
    assert log["trainable"] == sum(v.numel() for v in unet.values())
    assert not all(torch.equal(v, unet[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, encoder[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert len(log["losses"]) == 3 and np.isfinite(log["losses"]).all()


@pytest.mark.parametrize("field, value, words", [("method", "dreambooth", "not one of"), ("steps", 0, "positive"),
                                                  ("lr", 5.0, "between 0 and 1"), ("alpha", -1.0, "positive")])
def test_bad_config_is_named(field, value, words):
    with pytest.raises(ValueError, match=f"{field}.*{words}"):
        ft.check_config(ft.FinetuneConfig(**{field: value}))


def test_cli_names_a_bad_option(capsys):
    assert main(["finetune", "--steps", "0", "--out", "/nonexistent/x"]) == 2
    assert "steps = 0" in capsys.readouterr().err


def test_report_speaks_the_course_language(monkeypatch):
    from tutorial_ldm import language

    result = {"method": "lora", "steps": 40, "cpu_seconds": 90.0, "trainable": 12345, "file": "pink.safetensors",
              "file_bytes": 2048, "before_new": {"colour": 0.1, "all3": 0.05}, "after_new": {"colour": 0.9, "all3": 0.5},
              "before_old": {"all3": 0.8}, "after_old": {"all3": 0.75}, "chance": 1 / 7}
    monkeypatch.setattr(language, "_current", "en")
    english = ft.report(result)
    assert "40 steps" in english and "12,345 trained parameters" in english and "+5.0 points lost" in english
    monkeypatch.setattr(language, "_current", "zh")
    chinese = ft.report(result)
    assert "40 步" in chinese and "12,345 个参数" in chinese and "损失 +5.0 个百分点" in chinese
    assert english.count("\n") == chinese.count("\n") == 2
    shared = {**result, "processes": 2, "batch": 4}
    assert "40 步（2 个进程 × 批次 4）" in ft.report(shared)
    monkeypatch.setattr(language, "_current", "en")
    assert "40 steps on 2 processes × batch 4" in ft.report(shared)
