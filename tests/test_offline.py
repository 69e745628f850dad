"""The offline guard itself: a connection off the machine fails at once, loopback still works."""

import os
import socket
import time

import offline_guard
import pytest

EXAMPLE_COM = ("93.184.216.34", 80)  # a public address: must never be reached from the tests


def test_hugging_face_libraries_are_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_connect_to_public_address_is_refused_without_sending_anything():
    start = time.perf_counter()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(offline_guard.NetworkAccessError, match="93.184.216.34"),
    ):
        s.connect(EXAMPLE_COM)
    with pytest.raises(offline_guard.NetworkAccessError):
        socket.create_connection(EXAMPLE_COM, timeout=5)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        pytest.raises(offline_guard.NetworkAccessError),
    ):
        s.sendto(b"x", ("8.8.8.8", 53))
    # refused before any packet: no time-out, no SYN waiting for an answer
    assert time.perf_counter() - start < 0.5
    assert len(offline_guard.blocked) == 3
    offline_guard.blocked.clear()  # expected here; the autouse fixture fails any other test


def test_name_lookup_is_refused():
    with pytest.raises(offline_guard.NetworkAccessError, match="huggingface.co"):
        socket.getaddrinfo("huggingface.co", 443)
    offline_guard.blocked.clear()


def test_loopback_still_works():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5) as client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    assert not offline_guard.blocked


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.5.5", "::1", "localhost", "::ffff:127.0.0.1"])
def test_loopback_addresses_are_recognised(host):
    assert offline_guard.is_loopback(host)


@pytest.mark.parametrize(
    "host", ["93.184.216.34", "10.0.0.1", "192.168.1.1", "huggingface.co", "::2"]
)
def test_other_addresses_are_not(host):
    assert not offline_guard.is_loopback(host)
