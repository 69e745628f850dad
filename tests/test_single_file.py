"""A1111/civitai single files load offline, with nothing from the hub: the architecture from the
file's keys and shapes, the configs shipped with the package, CLIP's real vocabulary; VAE files
and A1111's short model hash (issue 11)."""

import hashlib
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tiny_sd import a_vae_file, ldm_state_dict, tiny_sd_files, tiny_single_file

from tutorial_ldm.loading import MODELS_DIR_ENV, VAE_DIR_ENV, list_vaes, load_pipeline, model_hash
from tutorial_ldm.sd_architecture import clip_vocabulary, write_clip_tokenizer

ARCHITECTURES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline",
                 "sdxl": "StableDiffusionXLPipeline", "sd1-inpainting": "StableDiffusionInpaintPipeline",
                 "sd2-inpainting": "StableDiffusionInpaintPipeline"}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No Hugging Face cache at all (and HF_HUB_OFFLINE=1, from conftest)."""
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TUTORIAL_LDM_CACHE", str(tmp_path / "cache"))
    yield home
    assert not home.exists() or not any(home.rglob("*")), "something was written to the hub cache"


def assert_same_weights(pipe, reference):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(reference, name, None) is None:
            continue
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key}"


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_a_single_file_loads_offline_with_an_empty_cache(arch, empty_hub_cache):
    made = tiny_single_file(arch)
    pipe = load_pipeline(made.file, device="cpu")
    assert type(pipe).__name__ == ARCHITECTURES[arch]
    assert_same_weights(pipe, made.pipe)
    assert pipe.model_info.architecture == arch and pipe.model_info.name == f"tiny-{arch}"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    ids = [320, 1125, 539, 320, 2368]  # "a photo of a cat" in CLIP's vocabulary
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, *ids, 49407]
    if arch.startswith("sd2"):  # OpenCLIP's tokenizer pads with "!"
        assert pipe.tokenizer.pad_token_id == 0
    else:
        assert pipe.tokenizer.pad_token_id == 49407
    if arch == "sdxl":
        assert pipe.tokenizer_2.pad_token_id == 0
        assert pipe.text_encoder_2.config.projection_dim == 128  # pooled embedding of the right width
        assert pipe.vae.config.scaling_factor == 0.13025


def test_a_safe_ckpt_loads_offline_too(tmp_path, empty_hub_cache):
    made = tiny_single_file("sd1")
    torch.save({"state_dict": ldm_state_dict(made.pipe, "sd1"), "global_step": 470000}, tmp_path / "old.ckpt")
    assert_same_weights(load_pipeline(tmp_path / "old.ckpt", device="cpu"), made.pipe)


def test_a_text_encoder_whose_heads_cannot_be_read_needs_config(empty_hub_cache):
    files = tiny_sd_files()  # 32-wide CLIP: no real SD has it, so only config= can say its heads
    with pytest.raises(ValueError, match=r"tiny-sd\.safetensors is not a model .* 32-wide text encoder.*pass config="):
        load_pipeline(files.single, device="cpu")
    load_pipeline(files.single, device="cpu", config=files.config)


def test_the_sd1_file_generates(empty_hub_cache):
    from tutorial_ldm import generate

    pipe = load_pipeline(tiny_single_file("sd1").file, device="cpu")
    images = generate(pipe, "a photo of a cat", steps=2, seed=1, width=64, height=64)
    assert images[0].size == (64, 64)


def test_the_clip_vocabulary_is_clips():
    vocab, merges = clip_vocabulary()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert (vocab["a</w>"], vocab["photo</w>"], vocab["cat</w>"]) == (320, 1125, 2368)
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"]) == (49406, 49407, 0)


def test_the_tokenizer_files_load_in_transformers(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "t", "!"))
    ids = tok("A Photo of a CAT", padding="max_length", max_length=10).input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407, 0, 0, 0]  # lower-cased, "!"-padded


# ---------------------------------------------------------------------------------------------
# What the file holds when it is not a supported checkpoint


def unet_only(arch="sd1"):
    return {k: v for k, v in ldm_state_dict(tiny_single_file(arch).pipe, arch).items()}


@pytest.mark.parametrize("name, keys, looks_like", [
    ("refiner", {"conditioner.embedders.0.model.text_projection": [4, 4],
                 "model.diffusion_model.input_blocks.0.0.weight": [4, 4, 3, 3]}, "an SDXL refiner"),
    ("sd3", {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": [4]},
     "a Stable Diffusion 3 model"),
    ("flux", {"double_blocks.0.img_attn.norm.key_norm.scale": [4]}, "a Flux model"),
    ("lora", {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 4]}, "a LoRA"),
    ("vae", {"encoder.conv_in.weight": [4, 3, 3, 3], "decoder.conv_out.weight": [3, 4, 3, 3]},
     "a VAE on its own"),
    ("embedding", {"emb_params": [2, 768]}, "a textual-inversion embedding"),
    ("random", {"weight": [4]}, "no Stable Diffusion model"),
])
def test_unsupported_files_say_what_they_look_like(tmp_path, name, keys, looks_like, empty_hub_cache):
    path = tmp_path / f"{name}.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, path)
    with pytest.raises(ValueError, match=rf"{name}\.safetensors is not a model this package can load: "
                                         rf"it looks like {looks_like}.*; supported: SD 1\.x, SD 2\.x"):
        load_pipeline(path, device="cpu")


def test_a_text_encoder_less_unet_is_named(tmp_path, empty_hub_cache):
    state = {k: v for k, v in unet_only().items() if k.startswith("model.diffusion_model.")}
    save_file(state, tmp_path / "unet.safetensors")
    with pytest.raises(ValueError, match=r"a UNet without its text encoder"):
        load_pipeline(tmp_path / "unet.safetensors", device="cpu")


# ---------------------------------------------------------------------------------------------
# ε or v for SD 2.x


def sd2_file(tmp_path, name, state_update=None, out_bias=None):
    made = tiny_single_file("sd2")
    state = ldm_state_dict(made.pipe, "sd2")
    if out_bias is not None:  # a UNet whose output is a constant: ε̂ = out_bias everywhere
        state["model.diffusion_model.out.2.weight"] = torch.zeros_like(state["model.diffusion_model.out.2.weight"])
        state["model.diffusion_model.out.2.bias"] = torch.full_like(state["model.diffusion_model.out.2.bias"], out_bias)
    state.update(state_update or {})
    path = tmp_path / f"{name}.safetensors"
    save_file(state, path)
    return path


def test_sd2_v_or_eps_by_a1111s_test(tmp_path, empty_hub_cache):
    """At t=999 on a constant 0.5 input an ε-model answers ≈ the input; A1111 calls it v when
    the output lies more than 1 below the input on average."""
    eps = load_pipeline(sd2_file(tmp_path, "eps", out_bias=0.5), device="cpu")
    v = load_pipeline(sd2_file(tmp_path, "v", out_bias=-1.0), device="cpu")
    assert eps.scheduler.config.prediction_type == "epsilon"
    assert v.scheduler.config.prediction_type == "v_prediction"
    assert v.model_info.prediction_source == "A1111's t=999 test"


def test_sd2_v_from_a1111s_yaml_the_v_pred_key_or_the_argument(tmp_path, empty_hub_cache):
    path = sd2_file(tmp_path, "sd21-768", out_bias=0.5)  # the test alone would say ε
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n")
    pipe = load_pipeline(path, device="cpu")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.model_info.prediction_source == "sd21-768.yaml"

    marked = sd2_file(tmp_path, "marked", {"v_pred": torch.tensor([])}, out_bias=0.5)
    assert load_pipeline(marked, device="cpu").scheduler.config.prediction_type == "v_prediction"

    forced = load_pipeline(path, device="cpu", prediction_type="epsilon")
    assert forced.scheduler.config.prediction_type == "epsilon"
    assert forced.model_info.prediction_source == "argument"
    with pytest.raises(ValueError, match=r"prediction_type 'v' not supported; allowed: epsilon, v_prediction"):
        load_pipeline(path, device="cpu", prediction_type="v")


def test_config_still_wins(empty_hub_cache):
    files = tiny_sd_files()  # its config folder has a character-level tokenizer
    pipe = load_pipeline(files.single, config=files.config, device="cpu")
    assert pipe.tokenizer("red").input_ids == files.pipe.tokenizer("red").input_ids
    assert len(pipe.tokenizer) < 1000


# ---------------------------------------------------------------------------------------------
# VAE files, as A1111 finds them


def assert_vae(pipe, weights):
    ours = pipe.vae.state_dict()
    assert all(torch.equal(ours[k], weights[k]) for k in weights)


def test_vae_beside_the_checkpoint_is_found_automatically(tmp_path, empty_hub_cache):
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(tiny_single_file("sd1").file, ckpt)
    weights = a_vae_file(tmp_path / "model.vae.safetensors")
    pipe = load_pipeline(ckpt, device="cpu")
    assert_vae(pipe, weights)
    assert pipe.model_info.vae_name == "model.vae.safetensors"
    assert pipe.model_info.vae_hash == hashlib.sha256((tmp_path / "model.vae.safetensors").read_bytes()).hexdigest()[:10]
    own = load_pipeline(ckpt, device="cpu", vae=None)  # None: the checkpoint's own VAE
    assert_same_weights(own, tiny_single_file("sd1").pipe)
    assert own.model_info.vae_name is None


def test_vae_from_the_vae_folder_by_name(tmp_path, monkeypatch, empty_hub_cache):
    (tmp_path / "VAE").mkdir()
    weights = a_vae_file(tmp_path / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors")
    monkeypatch.setenv(VAE_DIR_ENV, str(tmp_path / "VAE"))
    assert [p.name for p in list_vaes()] == ["vae-ft-mse-840000-ema-pruned.safetensors"]
    pipe = load_pipeline(tiny_single_file("sd1").file, device="cpu", vae="vae-ft-mse-840000-ema-pruned.safetensors")
    assert_vae(pipe, weights)
    tiny_single_file("sd1").pipe.save_pretrained(tmp_path / "folder")  # a diffusers folder takes it too
    folder_pipe = load_pipeline(tmp_path / "folder", device="cpu",
                                vae=tmp_path / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors")
    assert folder_pipe.model_info.vae_name == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert_vae(folder_pipe, weights)
    with pytest.raises(ValueError, match=r"as a VAE for this model \(.*expected shape.*\); expected a VAE of "
                                         r"the checkpoint's architecture$"):
        load_pipeline(tiny_sd_files().folder, device="cpu", vae="vae-ft-mse-840000-ema-pruned.safetensors")


def test_the_default_vae_folder_is_beside_the_models_folder(tmp_path, monkeypatch):
    from tutorial_ldm.loading import vae_dir

    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models" / "Stable-diffusion"))
    monkeypatch.delenv(VAE_DIR_ENV, raising=False)
    assert vae_dir() == tmp_path / "models" / "VAE"
    assert list_vaes() == []


def test_bad_vae_choices(tmp_path, empty_hub_cache):
    with pytest.raises(FileNotFoundError, match=r"no such VAE file: nothing\.safetensors .*'Automatic' or None"):
        load_pipeline(tiny_single_file("sd1").file, device="cpu", vae="nothing.safetensors")
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, lora)
    with pytest.raises(ValueError, match=r"lora\.safetensors is not a VAE"):
        load_pipeline(tiny_single_file("sd1").file, device="cpu", vae=lora)


# ---------------------------------------------------------------------------------------------
# A1111's short hash, computed once


def test_model_hash_is_a1111s_and_is_computed_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_LDM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"abc" * 1000)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()[:10]
    assert model_hash(path) == expected
    assert (tmp_path / "cache" / "hashes.json").is_file()

    stat = path.stat()
    path.write_bytes(b"xyz" * 1000)  # same size; put the old time back: the cache answers
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    import tutorial_ldm.loading as loading

    loading._HASHES.clear()  # a new process: only the file cache is left
    assert model_hash(path) == expected

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: hashed again
    assert model_hash(path) == hashlib.sha256(b"xyz" * 1000).hexdigest()[:10]


def test_the_pipe_records_the_model_hash(empty_hub_cache):
    made = tiny_single_file("sd1")
    pipe = load_pipeline(made.file, device="cpu")
    assert pipe.model_info.hash == hashlib.sha256(made.file.read_bytes()).hexdigest()[:10]
    assert load_pipeline(device="cpu").model_info.hash is None  # a folder has no A1111 hash


def test_the_sdxl_file_generates_with_our_prompt_encoding(empty_hub_cache):
    """Until generate() drives SDXL: diffusers' SDXL pipeline runs the offline-loaded file with
    the conditioning of prompts.encode_prompts_sdxl (size/crop conditioning is diffusers')."""
    import numpy as np

    from tutorial_ldm.prompts import encode_prompts_sdxl

    pipe = load_pipeline(tiny_single_file("sdxl").file, device="cpu")
    cond, uncond, pooled, negative_pooled = encode_prompts_sdxl(pipe, "a (red:1.2) cat BREAK on a mat", "")
    image = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, pooled_prompt_embeds=pooled,
                 negative_pooled_prompt_embeds=negative_pooled, num_inference_steps=2, width=64, height=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_model_info_of_a_pipeline_built_in_memory():
    from tutorial_ldm.loading import model_info

    info = model_info(tiny_single_file("sdxl").pipe)  # built, not loaded
    assert (info.architecture, info.hash, info.vae_name) == ("sdxl", None, None)
    loaded = load_pipeline(device="cpu")
    assert model_info(loaded) is loaded.model_info
