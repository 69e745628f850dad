"""<lora:…> tags and textual-inversion embeddings, the A1111 way (tutorial_ldm.extra_networks).

The LoRA files are built here in kohya's layout (lora_unet_…/lora_te_…, .lora_down/.lora_up/.alpha)
and their effect is checked against the formula W + m·(α/r)·B·A on the layers diffusers loaded.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_sd import build_tiny

from tutorial_ldm import extra_networks as xn
from tutorial_ldm.generation import generate
from tutorial_ldm.loading import load_pipeline
from tutorial_ldm.parameters import read_parameters, save_image
from tutorial_ldm.prompts import encode_prompts, encode_prompts_sdxl

PROMPT = "a red circle on the left"
FAST = dict(seed=3, steps=3, progress=False)
ATTENTION = ("to_q", "to_k", "to_v", "q_proj", "k_proj", "v_proj", "out_proj")


def kohya_lora(pipe, rank=2, alpha=1.0, seed=0, text_encoders=True) -> dict[str, torch.Tensor]:
    """A random LoRA in kohya's layout on every attention projection of the UNet (and encoders)."""
    g = torch.Generator().manual_seed(seed)
    parts = [("lora_unet", pipe.unet)]
    if text_encoders and getattr(pipe, "text_encoder_2", None) is not None:
        parts += [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]
    elif text_encoders:
        parts += [("lora_te", pipe.text_encoder)]
    out = {}
    for prefix, model in parts:
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear) and (name.split(".")[-1] in ATTENTION or name.endswith("to_out.0")):
                key = prefix + "_" + name.replace(".", "_")
                out[key + ".lora_down.weight"] = torch.randn(rank, m.in_features, generator=g) * 0.5
                out[key + ".lora_up.weight"] = torch.randn(m.out_features, rank, generator=g) * 0.5
                out[key + ".alpha"] = torch.tensor(alpha)
    return out


@pytest.fixture
def folders(tmp_path, monkeypatch):
    lora, emb = tmp_path / "Lora", tmp_path / "embeddings"
    lora.mkdir()
    emb.mkdir()
    monkeypatch.setenv("TUTORIAL_LDM_LORA_DIR", str(lora))
    monkeypatch.setenv("TUTORIAL_LDM_EMBEDDINGS_DIR", str(emb))
    return lora, emb


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline(device="cpu")  # our own copy: these tests load adapters into it


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- the prompt syntax -----------------------------------------------------------------------------

def test_tags_are_removed_and_parsed():
    text, tags = xn.parse_lora_tags("a <lora:one> red circle <lora:two:0.5>, <lora:one:0.25>")
    assert text == "a  red circle , "
    assert tags == [xn.LoraTag("one", 1.25), xn.LoraTag("two", 0.5)]
    assert xn.parse_lora_tags("no tags") == ("no tags", [])


@pytest.mark.parametrize("tag, words", [("<lora:x:big>", "not a number"),
                                        ("<lora:x:1:2:3>", "<lora:name:multiplier>"),
                                        ("<hypernet:x:1>", "only <lora"), ("<lyco:x:1>", "not supported")])
def test_bad_tags_are_named(tag, words):
    with pytest.raises(ValueError, match=words) as e:
        xn.parse_lora_tags(f"a {tag}")
    assert tag in str(e.value)


def test_missing_lora_is_named(folders, tiny):
    with pytest.raises(FileNotFoundError, match=r"'nowhere' not found.*nowhere.safetensors"):
        generate(tiny, PROMPT + " <lora:nowhere>", **FAST)


@pytest.mark.parametrize("key, kind", [("lora_unet_x.hada_w1_a", "LoHa"), ("lora_unet_x.lokr_w1", "LoKr"),
                                       ("lora_unet_x.weight", "not a LoRA")])
def test_lycoris_files_are_refused(folders, tiny, key, kind):
    save_file({key: torch.zeros(2, 2)}, folders[0] / "other.safetensors")
    with pytest.raises(ValueError, match=f"{kind}.*only LoRA|{kind} file.*only LoRA"):
        generate(tiny, PROMPT + " <lora:other>", **FAST)


# -- LoRA --------------------------------------------------------------------------------------------

def test_lora_changes_the_image_and_leaves_no_trace(folders, tiny):
    save_file(kohya_lora(tiny), folders[0] / "style.safetensors")
    before = pixels(generate(tiny, PROMPT, **FAST)[0])
    with_lora = generate(tiny, PROMPT + " <lora:style:0.8>", **FAST)[0]
    after = pixels(generate(tiny, PROMPT, **FAST)[0])
    assert np.abs(pixels(with_lora) - before).mean() > 1
    assert np.array_equal(after, before)  # bit-identical: nothing left behind
    assert not any(tiny.get_list_adapters().values())
    # multiplier 0 is the model itself; the tag is not part of what the encoder reads
    assert np.array_equal(pixels(generate(tiny, PROMPT + " <lora:style:0>", **FAST)[0]), before)
    info = with_lora.info["parameters"]
    assert "<lora:style:0.8>" in info.splitlines()[0]  # the prompt is recorded as typed, as A1111 does
    assert f'Lora hashes: "style: {xn.lora_hash(folders[0] / "style.safetensors")}"' in info


def _check_formula(pipe, state, prefix, model, multiplier):
    """Every LoRA'd layer computes W x + m·(α/r)·B·A x (peft's layer against the formula)."""
    checked = 0
    for name, m in model.named_modules():
        key = prefix + "_" + name.replace(".", "_")
        if key + ".lora_down.weight" not in state:
            continue
        A, B, alpha = state[key + ".lora_down.weight"], state[key + ".lora_up.weight"], state[key + ".alpha"]
        x = torch.randn(3, A.shape[1])
        W, b = m.base_layer.weight, m.base_layer.bias
        want = x @ (W + multiplier * (alpha / A.shape[0]) * B @ A).T + (0 if b is None else b)
        torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("arch", ["tiny", "sd1", "sd2", "sdxl"])
def test_kohya_file_is_loaded_as_the_formula_says(folders, tiny, arch):
    pipe = tiny if arch == "tiny" else build_tiny(arch)
    state = kohya_lora(pipe, rank=4, alpha=2.0)
    save_file(state, folders[0] / "k.safetensors")
    encoders = [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)] if arch == "sdxl" \
        else [("lora_te", pipe.text_encoder)]
    with xn.loras_applied(pipe, [xn.LoraTag("k", 0.6)]):
        for prefix, model in [("lora_unet", pipe.unet), *encoders]:
            _check_formula(pipe, state, prefix, model, 0.6)
    assert not any(pipe.get_list_adapters().values())
    assert not any("lora" in n for n, _ in pipe.unet.named_modules())  # the original modules again


def test_sd1_generation_with_a_lora_is_undone(folders):
    pipe = build_tiny("sd1")
    save_file(kohya_lora(pipe), folders[0] / "k.safetensors")
    kw = dict(FAST, width=64, height=64)
    before = pixels(generate(pipe, "a cat", **kw)[0])
    assert np.abs(pixels(generate(pipe, "a cat <lora:k>", **kw)[0]) - before).max() > 0
    assert np.array_equal(pixels(generate(pipe, "a cat", **kw)[0]), before)


# -- embeddings -------------------------------------------------------------------------------------

def test_a1111_pt_and_civitai_safetensors_embeddings(folders, tiny):
    width = tiny.text_encoder.get_input_embeddings().weight.shape[-1]
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "EasyNeg",
                "step": 100}, folders[1] / "EasyNeg.pt")
    save_file({"emb_params": vectors * 2}, folders[1] / "cyanish.safetensors")
    assert set(xn.list_embeddings()) == {"EasyNeg", "cyanish"}
    vocab, rows = len(tiny.tokenizer), tiny.text_encoder.get_input_embeddings().weight.clone()

    plain = encode_prompts(tiny, PROMPT, "easyneg")[1]
    with xn.embeddings_loaded(tiny, ["EasyNeg"]) as rewrite:
        text = rewrite("(EasyNeg:1.2), lowres")
        assert text == "(<ti-easyneg> <ti-easyneg-1>:1.2), lowres"  # the trigger, any case, becomes 2 tokens
        ids = tiny.tokenizer(text, add_special_tokens=False).input_ids[1:3]
        torch.testing.assert_close(tiny.text_encoder.get_input_embeddings().weight[ids], vectors)
        weighted = encode_prompts(tiny, PROMPT, text)[1]
        unweighted = encode_prompts(tiny, PROMPT, rewrite("EasyNeg, lowres"))[1]
    assert not torch.equal(weighted, unweighted)  # the weight applies to the embedding
    assert not torch.equal(unweighted, encode_prompts(tiny, PROMPT, "easyneg, lowres")[1])
    # restored: same vocabulary, same rows, same encoding of the word as before
    assert len(tiny.tokenizer) == vocab
    assert torch.equal(tiny.text_encoder.get_input_embeddings().weight, rows)
    assert torch.equal(encode_prompts(tiny, PROMPT, "easyneg")[1], plain)

    before = pixels(generate(tiny, PROMPT, **FAST)[0])
    image = generate(tiny, PROMPT, "(easyneg:1.2), cyanish", **FAST)[0]
    assert np.abs(pixels(image) - before).max() > 0
    assert np.array_equal(pixels(generate(tiny, PROMPT, **FAST)[0]), before)
    hashes = f'TI hashes: "EasyNeg: {xn.embedding_hash(folders[1] / "EasyNeg.pt")}, cyanish: '
    assert hashes in image.info["parameters"]


def test_pickled_code_is_not_run(folders, tiny):
    torch.save({"string_to_param": {"*": torch.nn.Linear(2, 2)}}, folders[1] / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read safely"):
        generate(tiny, "evil " + PROMPT, **FAST)


def test_sdxl_embedding_fills_both_encoders(folders):
    pipe = build_tiny("sdxl")
    l_width = pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    g_width = pipe.text_encoder_2.get_input_embeddings().weight.shape[-1]
    save_file({"clip_l": torch.randn(1, l_width), "clip_g": torch.randn(1, g_width)}, folders[1] / "xl.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(1, l_width)}}, folders[1] / "sd1only.pt")
    plain = encode_prompts_sdxl(pipe, "xl cat")[0]
    with xn.embeddings_loaded(pipe, ["xl"]) as rewrite:
        changed = encode_prompts_sdxl(pipe, rewrite("xl cat"))[0]
    assert not torch.equal(changed[..., :l_width], plain[..., :l_width])
    assert not torch.equal(changed[..., l_width:], plain[..., l_width:])
    assert torch.equal(encode_prompts_sdxl(pipe, "xl cat")[0], plain)
    with pytest.raises(ValueError, match="'sd1only'.*does not fit.*clip_g"):
        with xn.embeddings_loaded(pipe, ["sd1only"]):
            pass


# -- the PNG ---------------------------------------------------------------------------------------

def test_png_regenerates_and_names_a_missing_file(folders, tiny, tmp_path):
    save_file(kohya_lora(tiny, seed=5), folders[0] / "style.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(1, 64)}}, folders[1] / "neg.pt")
    image = generate(tiny, PROMPT + " <lora:style:0.5>", "neg", **FAST)[0]
    path = save_image(image, tmp_path / "out.png")

    s = read_parameters(path)
    xn.check_available(s)
    again = generate(tiny, **s.generate_kwargs(), progress=False)[0]
    assert np.array_equal(pixels(again), pixels(image))

    (folders[1] / "neg.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"'neg'.*no neg\.pt"):
        xn.check_available(s)
    (folders[0] / "style.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"'style'.*no style\.safetensors"):
        xn.check_available(s)
    save_file(kohya_lora(tiny, seed=6), folders[0] / "style.safetensors")
    with pytest.raises(ValueError, match="another version"):
        xn.check_available(s)


# -- every generation path -------------------------------------------------------------------------

def _only(state: dict, prefix: str) -> dict:
    return {k: v for k, v in state.items() if k.startswith(prefix + "_")}


def test_sdxl_generation_with_a_kohya_lora_is_undone(folders):
    pipe = build_tiny("sdxl")
    state = kohya_lora(pipe)
    save_file(state, folders[0] / "xl.safetensors")
    save_file(_only(state, "lora_te2"), folders[0] / "xl_te2.safetensors")  # the second encoder alone
    kw = dict(FAST, width=64, height=64, guidance=5.0)
    before = pixels(generate(pipe, "a cat", **kw)[0])
    with_lora = generate(pipe, "a cat <lora:xl:0.8>", **kw)[0]
    assert np.abs(pixels(with_lora) - before).max() > 0
    assert np.abs(pixels(generate(pipe, "a cat <lora:xl_te2>", **kw)[0]) - before).max() > 0
    assert np.array_equal(pixels(generate(pipe, "a cat", **kw)[0]), before)  # bit-identical afterwards
    assert not any(pipe.get_list_adapters().values())
    assert f"Lora hashes: \"xl: {xn.lora_hash(folders[0] / 'xl.safetensors')}\"" in with_lora.info["parameters"]


def test_hires_fix_img2img_and_inpaint_honour_the_tags(folders, tiny):
    from tutorial_ldm.image_to_image import img2img, inpaint, source_image, source_mask

    save_file(kohya_lora(tiny, seed=1), folders[0] / "style.safetensors")
    width = tiny.text_encoder.get_input_embeddings().weight.shape[-1]
    torch.save({"string_to_param": {"*": torch.randn(1, width)}}, folders[1] / "neg.pt")
    hires = dict(hires_upscale=2.0, hires_steps=2, hires_denoising=0.5)
    paths = {"hires fix": lambda p, n: generate(tiny, p, n, **FAST, **hires),
             "img2img": lambda p, n: img2img(tiny, source_image(), p, n, strength=0.6, **FAST),
             "inpaint": lambda p, n: inpaint(tiny, source_image(), source_mask(), p, n, **FAST)}
    for name, make in paths.items():
        before = pixels(make(PROMPT, "")[0])
        tagged = make(PROMPT + " <lora:style>", "")[0]
        assert np.abs(pixels(tagged) - before).max() > 0, name
        assert np.array_equal(pixels(make(PROMPT + " <lora:style:0>", "")[0]), before), name  # tag not read as text
        assert np.abs(pixels(make(PROMPT, "neg")[0]) - before).max() > 0, name  # the embedding too
        assert np.array_equal(pixels(make(PROMPT, "")[0]), before), name
        # A1111's place: extra_generation_params after the core and image fields, before Version
        keys = [pair.split(":")[0].strip() for pair in tagged.info["parameters"].splitlines()[-1].split(", ")]
        assert keys.index("Lora hashes") == len(keys) - 2 and keys[-1] == "Version", (name, keys)
