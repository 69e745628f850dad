"""The suite runs offline: Hugging Face libraries never try the hub, and a test that opens a
connection off this machine fails (see offline_site/offline_guard.py)."""

import os
import sys
from pathlib import Path

import pytest

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a busy 2-core
# machine spinning threads starve each other, and small tensor ops ran ~100x slower (measured:
# 1000 noising steps on a 128×128 image, 73 s spinning against 0.6 s passive). The notebook
# kernels inherit this environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

OFFLINE_SITE = Path(__file__).parent / "offline_site"
sys.path.insert(0, str(OFFLINE_SITE))

import offline_guard  # noqa: E402

# Before any test module imports huggingface_hub, which reads HF_HUB_OFFLINE once, at import.
offline_guard.install()


@pytest.fixture(autouse=True)
def no_network_attempts():
    """Fail a test that tried the network even when a library caught the NetworkAccessError."""
    offline_guard.blocked.clear()
    yield
    attempts, offline_guard.blocked[:] = list(offline_guard.blocked), []
    assert not attempts, f"the test tried to reach the network: {attempts}"


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's tests: the models are tiny, so one thread is as fast,
    and far faster when other jobs share the CPU. Use: pytestmark = pytest.mark.usefixtures("one_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
