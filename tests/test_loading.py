"""Loading every kind of checkpoint a user may have, and refusing what is broken or unsafe."""

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from tiny_sd import tiny_sd_files

import tutorial_ldm
from tutorial_ldm.loading import MODELS_DIR_ENV, list_models, load_pipeline, model_name, models_dir


def assert_same_weights(pipe, reference):
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        for key in theirs:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key}"


def test_shipped_model_is_the_default():
    pipe = load_pipeline(device="cpu")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"
    assert model_name(pipe) == "tiny-ldm"


def test_diffusers_folder():
    files = tiny_sd_files()
    pipe = load_pipeline(files.folder, device="cpu")
    assert_same_weights(pipe, files.pipe)
    assert model_name(pipe) == "diffusers"


def test_single_safetensors_offline_with_a_config_folder():
    files = tiny_sd_files()
    assert not list(files.config.rglob("*.safetensors"))  # every weight comes from the file
    pipe = load_pipeline(files.single, config=files.config, device="cpu")
    assert_same_weights(pipe, files.pipe)
    assert model_name(pipe) == "tiny-sd"
    assert pipe.tokenizer("red").input_ids == files.pipe.tokenizer("red").input_ids


def test_plain_ckpt_loads_through_weights_only():
    files = tiny_sd_files()
    pipe = load_pipeline(files.ckpt, config=files.config, device="cpu")
    assert_same_weights(pipe, files.pipe)


class Payload:
    """Unpickling this calls open(marker, "w"): it creates a file if its code ever runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("fmt", ["torch zip", "torch legacy", "raw pickle"])
def test_malicious_ckpt_is_refused_and_its_code_never_runs(tmp_path, fmt):
    files = tiny_sd_files()
    marker = tmp_path / "pwned.txt"
    state = {"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4), "x": Payload(marker)}}
    ckpt = tmp_path / "evil.ckpt"
    if fmt == "torch zip":
        torch.save(state, ckpt)
    elif fmt == "torch legacy":
        torch.save(state, ckpt, _use_new_zipfile_serialization=False)
    else:
        ckpt.write_bytes(pickle.dumps(state))

    with pytest.raises(ValueError, match=r"refused to load .*evil\.ckpt: it contains code.*io\.open") as e:
        load_pipeline(ckpt, config=files.config, device="cpu")
    assert "weights_only" not in str(e.value)  # never point at the unsafe option
    assert not marker.exists()

    if fmt == "torch zip":  # the payload is live: an unsafe load would have run it
        torch.load(ckpt, weights_only=False)
        assert marker.exists()


def test_missing_path(tmp_path):
    missing = tmp_path / "models" / "majicmixRealistic_v7.safetensors"
    with pytest.raises(FileNotFoundError, match=r"majicmixRealistic_v7\.safetensors.*expected"):
        load_pipeline(missing, device="cpu")


def test_text_file_renamed_safetensors(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("<html>404 Not Found</html>\n" * 20)
    with pytest.raises(ValueError, match=r"model\.safetensors is not a valid \.safetensors file"):
        load_pipeline(fake, device="cpu")


def test_text_file_renamed_ckpt(tmp_path):
    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"model\.ckpt.*Expected a state dict saved by torch\.save"):
        load_pipeline(fake, device="cpu")


def test_truncated_safetensors(tmp_path):
    data = tiny_sd_files().single.read_bytes()
    cut = tmp_path / "half.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"half\.safetensors is not a valid .*truncated"):
        load_pipeline(cut, config=tiny_sd_files().config, device="cpu")


def test_a_safetensors_that_is_not_a_whole_model(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "add_detail.safetensors"  # a LoRA in the checkpoint folder by mistake
    save_file({"lora_unet_down_blocks_0_attentions_0.lora_down.weight": torch.zeros(4, 32)}, lora)
    with pytest.raises(ValueError, match=r"add_detail\.safetensors is not a model .* looks like a LoRA.*supported: SD 1\.x"):
        load_pipeline(lora, config=tiny_sd_files().config, device="cpu")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match=r"without model_index\.json; expected a diffusers pipeline folder"):
        load_pipeline(tmp_path, device="cpu")


def test_unknown_file_format(tmp_path):
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"model\.bin has an unknown format '\.bin'"):
        load_pipeline(weird, device="cpu")


def test_hub_id_offline_explains_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"'someone/no-such-model' is not a local file or folder.*download"):
        load_pipeline("someone/no-such-model", device="cpu")


def test_bad_dtype_and_device():
    with pytest.raises(ValueError, match=r"dtype 'int8' not supported"):
        load_pipeline(device="cpu", dtype="int8")
    with pytest.raises(ValueError, match=r"device 'gpu' is not a torch device; allowed: 'cpu', 'cuda'"):
        load_pipeline(device="gpu")
    for device in ("xla", "meta", "nonsense"):
        with pytest.raises(ValueError, match=rf"device '{device}' .*; allowed: 'cpu', 'cuda' \(or 'cuda:N'\), 'mps'"):
            load_pipeline(device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available on this machine; available: cpu"):
            load_pipeline(device="cuda")


def test_list_models_scans_an_a1111_folder(tmp_path, monkeypatch):
    root = tmp_path / "models" / "Stable-diffusion"
    (root / "anime").mkdir(parents=True)
    (root / "majicmixRealistic_v7.safetensors").write_bytes(b"x")
    (root / "anime" / "old.ckpt").write_bytes(b"x")
    (root / "README.txt").write_text("put checkpoints here")
    (root / ".cache.safetensors").write_bytes(b"x")
    shutil.copytree(tiny_sd_files().folder, root / "sd-diffusers")
    found = [p.relative_to(root).as_posix() for p in list_models(root)]
    assert found == ["anime/old.ckpt", "majicmixRealistic_v7.safetensors", "sd-diffusers"]

    monkeypatch.setenv(MODELS_DIR_ENV, str(root))
    assert list_models() == list_models(root)
    monkeypatch.chdir(tmp_path)  # notebooks run in notebooks/: the default must not follow the cwd
    monkeypatch.delenv(MODELS_DIR_ENV)
    course = Path(tutorial_ldm.__file__).resolve().parent.parent
    assert models_dir() == course / "models" / "Stable-diffusion"
    assert list_models(tmp_path / "nowhere") == []


def test_a_bare_name_is_found_in_the_models_folder(tmp_path, monkeypatch):
    files = tiny_sd_files()
    shutil.copy(files.single, tmp_path / "my-model.safetensors")
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    pipe = load_pipeline("my-model.safetensors", config=files.config, device="cpu")
    assert model_name(pipe) == "my-model"


def test_low_vram_turns_on_slicing_and_tiling():
    pipe = load_pipeline(tiny_sd_files().folder, device="cpu", low_vram=True)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}


def test_loading_the_shipped_model_prints_no_torchvision_notice():
    """A fresh process, since transformers warns only once per process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import tutorial_ldm; tutorial_ldm.load_pipeline()"],
                         capture_output=True, text=True, check=True)
    assert "torchvision" not in out.stderr + out.stdout


# ---------------------------------------------------------------------------------------------
# Issue 14: one clear line for each bad folder, file and option


def test_folder_with_an_unknown_pipeline_class(tmp_path):
    folder = tmp_path / "odd"
    shutil.copytree(tiny_sd_files().folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    with pytest.raises(ValueError, match=r"model_index\.json names the pipeline class 'NoSuchPipeline'.*"
                                         r"expected one of StableDiffusionPipeline"):
        load_pipeline(folder, device="cpu")


def test_folder_whose_components_come_with_their_own_code(tmp_path):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_sd_files().folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "unet": ["my_unet", "MyUNet"]}))
    with pytest.raises(ValueError, match=r"component 'unet' comes from 'my_unet'.*never run"):
        load_pipeline(folder, device="cpu")


class SystemPayload:
    """The classic: unpickling calls os.system (posix.system), here only creating a marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_folder_with_a_code_carrying_pytorch_model_bin(tmp_path):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_sd_files().folder, folder)
    for weights in (folder / "text_encoder").glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"
    torch.save({"text_model.embeddings.position_ids": SystemPayload(marker)},
               folder / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refused to load .*pytorch_model\.bin: it contains code.*posix\.system") as e:
        load_pipeline(folder, device="cpu")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["torch zip", "torch legacy", "raw pickle"])
def test_ckpt_calling_os_system_is_refused_as_code(tmp_path, fmt):
    marker = tmp_path / "pwned"
    state = {"state_dict": {"model.diffusion_model.out.2.bias": torch.zeros(4), "x": SystemPayload(marker)}}
    ckpt = tmp_path / "evil.ckpt"
    if fmt == "raw pickle":
        ckpt.write_bytes(pickle.dumps(state, protocol=5))  # STACK_GLOBAL, not GLOBAL
    else:
        torch.save(state, ckpt, _use_new_zipfile_serialization=fmt == "torch zip")
    with pytest.raises(ValueError, match=r"evil\.ckpt: it contains code, not plain weights .*posix\.system.*Nothing in it was run") as e:
        load_pipeline(ckpt, device="cpu")
    assert "weights_only" not in str(e.value)
    assert not marker.exists()


def test_the_refusal_follows_torch_by_type_not_by_wording(tmp_path, monkeypatch):
    """Whatever torch's message says, an UnpicklingError is reported from the file itself."""
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"x": SystemPayload(tmp_path / "pwned")}, ckpt)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("some future wording, with no names in it")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError, match=r"it contains code.*posix\.system"):
        load_pipeline(ckpt, device="cpu")


def test_folder_missing_its_unet_weights_names_the_safetensors_file(tmp_path):
    folder = tmp_path / "incomplete"
    shutil.copytree(tiny_sd_files().folder, folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ValueError, match=r"unet has no weights: expected .*unet/diffusion_pytorch_model\.safetensors$"):
        load_pipeline(folder, device="cpu")


def test_fp16_on_the_cpu_gives_one_note_of_ours(capfd):
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = load_pipeline(device="cpu", dtype="FP16")
    ours = [w for w in caught if "float16 on the CPU" in str(w.message)]
    assert len(ours) == 1 and pipe.unet.dtype == torch.float16
    out = capfd.readouterr()
    assert "float16" not in out.err + out.out  # diffusers' three warnings are gone


def test_the_command_line_says_each_in_one_line(tmp_path, capsys):
    """Issue 14 item 7: no tracebacks for bad devices or bad model folders."""
    from tutorial_ldm.__main__ import main

    odd = tmp_path / "odd"
    shutil.copytree(tiny_sd_files().folder, odd)
    index = json.loads((odd / "model_index.json").read_text())
    (odd / "model_index.json").write_text(json.dumps({**index, "_class_name": "NoSuchPipeline"}))
    evil = tmp_path / "evil"
    shutil.copytree(tiny_sd_files().folder, evil)
    for weights in (evil / "unet").glob("*.safetensors"):
        weights.unlink()
    torch.save({"x": SystemPayload(tmp_path / "pwned")}, evil / "unet" / "diffusion_pytorch_model.bin")
    cases = {("--device", "xla"): "device 'xla'", ("--device", "meta"): "device 'meta'",
             ("--model", str(odd)): "NoSuchPipeline", ("--model", str(evil)): "contains code"}
    capsys.readouterr()  # what building the test model printed
    for args, says in cases.items():
        assert main(["generate", "a cat", "--steps", "1", "--out", str(tmp_path / "x.png"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "pwned").exists()


def test_a_folder_of_plain_bin_weights_still_loads(tmp_path):
    files = tiny_sd_files()
    files.pipe.save_pretrained(tmp_path / "old", safe_serialization=False)
    assert list((tmp_path / "old" / "unet").glob("*.bin"))
    assert_same_weights(load_pipeline(tmp_path / "old", device="cpu"), files.pipe)
