"""list_models on the folders students really have: linked in, partly unreadable, looping."""

import os
from pathlib import Path

from tutorial_ldm.loading import list_models


def names(models, root):
    return [p.relative_to(root).as_posix() for p in models]


def a1111_folder(root: Path) -> Path:
    (root / "anime").mkdir(parents=True)
    (root / "anime" / "old.ckpt").write_bytes(b"x")
    (root / "v15.safetensors").write_bytes(b"x")
    (root / "sd-diffusers" / "unet").mkdir(parents=True)
    (root / "sd-diffusers" / "model_index.json").write_text("{}")
    (root / "sd-diffusers" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (root / ".cache").mkdir()
    (root / ".cache" / "hidden.safetensors").write_bytes(b"x")
    return root


def test_symlinked_subfolders_are_scanned_and_a_loop_ends(tmp_path):
    root = a1111_folder(tmp_path / "models")
    elsewhere = tmp_path / "big-disk" / "checkpoints"
    elsewhere.mkdir(parents=True)
    (elsewhere / "realistic.safetensors").write_bytes(b"x")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)  # as A1111 users do
    (root / "anime" / "loop").symlink_to(root, target_is_directory=True)  # a link back up
    (elsewhere / "back").symlink_to(elsewhere, target_is_directory=True)  # a link to itself
    (root / "dangling").symlink_to(tmp_path / "gone", target_is_directory=True)

    found = list_models(root)
    assert names(found, root) == ["anime/old.ckpt", "linked/realistic.safetensors", "sd-diffusers",
                                  "v15.safetensors"]  # each once; nothing inside the diffusers folder
    assert found.skipped == []


def test_an_unreadable_subfolder_is_skipped_and_named(tmp_path, monkeypatch):
    root = a1111_folder(tmp_path / "models")
    (root / "locked").mkdir()
    (root / "locked" / "secret.safetensors").write_bytes(b"x")
    real_scandir = os.scandir

    def scandir(path="."):  # what `chmod 000 locked` does for a normal user (the tests run as root)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = list_models(root)
    assert names(found, root) == ["anime/old.ckpt", "sd-diffusers", "v15.safetensors"]
    assert found.skipped == [(root / "locked", "Permission denied")]


def test_a_real_chmod_000_folder(tmp_path):
    root = a1111_folder(tmp_path / "models")
    locked = root / "locked"
    locked.mkdir()
    (locked / "secret.safetensors").write_bytes(b"x")
    locked.chmod(0)
    try:
        readable = os.access(locked, os.R_OK | os.X_OK)  # root reads it anyway; a student does not
        found = list_models(root)
    finally:
        locked.chmod(0o755)
    if readable:
        assert "locked/secret.safetensors" in names(found, root) and found.skipped == []
    else:
        assert "locked/secret.safetensors" not in names(found, root)
        assert [path for path, _ in found.skipped] == [locked]
    assert {"anime/old.ckpt", "sd-diffusers", "v15.safetensors"} <= set(names(found, root))


def test_an_unreadable_models_folder_lists_nothing_and_says_why(tmp_path, monkeypatch):
    root = a1111_folder(tmp_path / "models")

    def scandir(path="."):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", scandir)
    found = list_models(root)
    assert found == [] and found.skipped == [(root, "Permission denied")]
