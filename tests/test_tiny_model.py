"""The shipped tiny model: a small, stock diffusers pipeline that loads offline and follows
prompts well enough that a broken model, loader or scheduler config would fail here."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from tutorial_ldm import metrics
from tutorial_ldm.guidance import generate_batch

MODEL = Path(__file__).resolve().parent.parent / "assets" / "tiny-ldm"


@pytest.fixture(scope="module")
def pipe():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_shipped_folder_is_small_and_safetensors_only():
    files = [f for f in MODEL.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt", ".ckpt", ".pth")]
    assert {f.parent.name for f in weights} == {"unet", "vae", "text_encoder"}
    assert all(f.suffix == ".safetensors" for f in weights)
    assert (MODEL / "README.md").exists()  # the model card


def test_components_match_the_paper_setup(pipe):
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 4  # f = 4: 64×64×3 -> 16×16×4
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    scale = pipe.vae.config.scaling_factor
    assert 0.05 < scale < 20 and scale != 1.0  # measured from data, as SD's 0.18215 was
    config = pipe.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    assert config.timestep_spacing == "trailing" and config.steps_offset == 1


def test_tokenizer_is_case_insensitive_and_maps_unknown_words(pipe):
    tok = pipe.tokenizer
    assert tok("A  RED circle").input_ids == tok("a red circle").input_ids
    ids = tok("a red circle on the left, highly detailed").input_ids
    assert tok.unk_token_id in ids
    assert tok.model_max_length == 77


def test_latent_scale_gives_unit_variance(pipe):
    from tutorial_ldm import world

    x = torch.from_numpy(world.render_batch(world.sample_scenes(64, seed=99)))
    with torch.no_grad():
        z = pipe.vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0))
    assert 0.7 < float((z * pipe.vae.config.scaling_factor).std()) < 1.3


def test_same_seed_same_image(pipe):
    def run(seed):
        return pipe("a blue square at the top", num_inference_steps=10, guidance_scale=5,
                    generator=torch.Generator().manual_seed(seed), output_type="np").images
    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_shipped_model_follows_prompts(pipe):
    prompts = metrics.benchmark_prompts(variants=1)[::3][:32]  # 32 prompts, all colours/shapes
    images = generate_batch(pipe, prompts, guidance_scale=5.0, seed=1000, steps=25)
    scores = metrics.adherence(images, prompts)
    assert scores["colour"] >= 0.8 and scores["position"] >= 0.8, scores
    assert scores["all3"] >= 0.6, scores


# ----------------------------------------------------------------------------- Chinese


@pytest.fixture(scope="module")
def bilingual_tokenizer(tmp_path_factory):
    """The second edition's tokenizer, saved as standard files and loaded back as diffusers does."""
    from transformers import AutoTokenizer

    from tutorial_ldm.tiny_model import TinyLDMConfig, build_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(TinyLDMConfig(languages=("en", "zh"))).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    return AutoTokenizer.from_pretrained(folder)


def words(tok, text):
    return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)


def test_chinese_is_segmented_by_greedy_longest_match(bilingual_tokenizer):
    tok = bilingual_tokenizer
    assert words(tok, "左边有一个大的红色的正方形，蓝色背景") == [
        "左边", "有", "一个", "大", "的", "红色", "的", "正方形", "，", "蓝色", "背景"]
    assert words(tok, "在右侧有一个小紫色方形") == ["在", "右侧", "有", "一个", "小", "紫色", "方形"]
    assert words(tok, "一个红色的圆形在左边") == ["一个", "红色", "的", "圆形", "在", "左边"]
    # English is tokenized as before, and the two mix
    assert words(tok, "A large RED circle") == ["a", "large", "red", "circle"]
    assert words(tok, "a red 圆形 on the left") == ["a", "red", "圆形", "on", "the", "left"]


def test_unknown_chinese_maps_to_unk_without_error(bilingual_tokenizer):
    tok = bilingual_tokenizer
    assert words(tok, "非常漂亮的红色圆形。") == ["<unk>", "的", "红色", "圆形", "<unk>"]
    assert words(tok, "一只猫") == ["<unk>"]


def test_english_ids_are_those_of_the_first_edition(bilingual_tokenizer, pipe):
    for text in ("a small red circle on the left on a blue background", "a large green triangle"):
        assert bilingual_tokenizer(text).input_ids == pipe.tokenizer(text).input_ids
