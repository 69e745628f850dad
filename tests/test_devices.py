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


@pytest.mark.parametrize("cores, load, expected", [
    (2, 0.0, 2),   # idle laptop: every core
    (2, 1.0, 2),   # this process itself is the one runnable process
    (2, 2.0, 1),   # one other busy process on two cores: one thread
    (2, 6.0, 1),   # a shared machine
    (16, 0.5, 4),  # at most MAX_CPU_THREADS
    (16, 9.0, 4),
    (16, 14.0, 3),
])
def test_cpu_threads_uses_the_free_cores(monkeypatch, cores, load, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(devices, "usable_cores", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert devices.cpu_threads() == expected


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

    with pytest.raises(SettingsError, match=r"threads=.* must be None \(the free cores\) or an integer ≥ 1"):
        with devices.cpu_threads_for("cpu", bad):
            pass
