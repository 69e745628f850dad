"""The suite runs offline: Hugging Face libraries never try the hub, and a test that opens a
connection off this machine fails (see offline_site/offline_guard.py)."""

import sys
from pathlib import Path

import pytest

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
