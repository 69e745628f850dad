"""devices and paths: one home each, the old names still importable, and the CPU thread choice."""

import os

import pytest
import torch

from tutorial_ldm import devices, loading, paths, train


def test_one_home_for_devices_and_paths():
    assert loading.default_device is devices.default_device is train.default_device
    assert loading.REPO_ROOT == paths.REPO_ROOT and loading.SHIPPED_MODEL == paths.SHIPPED_MODEL
    assert loading.models_dir is paths.models_dir and loading.MODELS_DIR_ENV == "TUTORIAL_LDM_MODELS_DIR"
    assert (paths.SHIPPED_MODEL / "model_index.json").is_file() and (paths.REPO_ROOT / "tutorial_ldm").is_dir()


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (16, 4)])
def test_cpu_threads_uses_the_cores_for_a_large_model(monkeypatch, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: cores)
    assert devices.cpu_threads() == expected
    big = torch.nn.Module()  # as many parameters as the bound, on the meta device (no memory)
    big.weight = torch.nn.Parameter(torch.empty(devices.SMALL_MODEL_PARAMETERS, device="meta"))
    assert devices.cpu_threads(big) == expected


def test_cpu_threads_is_one_for_a_small_model_whatever_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: 16)
    small = torch.nn.Linear(10, 10)
    for load in (0.0, 1.0, 14.0):  # the load never changes the count: same seed, same image
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert devices.cpu_threads(small) == 1
        assert devices.cpu_threads() == 4


def test_cpu_threads_respects_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert devices.cpu_threads() == 3


def test_cpu_threads_for_sets_and_restores(monkeypatch):
    before = torch.get_num_threads()
    with devices.cpu_threads_for("cpu", 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with devices.cpu_threads_for("cuda", 1):  # other devices: torch's setting is left alone
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_bad_thread_count_is_named(bad):
    from tutorial_ldm.settings import SettingsError

    with pytest.raises(SettingsError, match=r"threads=.* must be None \(chosen for the model\) or an integer ≥ 1"):
        with devices.cpu_threads_for("cpu", bad):
            pass
