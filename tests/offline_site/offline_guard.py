"""Keep a process off the network: Hugging Face libraries offline, and any connection (or name
lookup) to an address outside this machine's loopback fails loudly instead of sending traffic.

Loopback stays open because Jupyter kernels talk to their client over localhost. Installed in
the test process by `tests/conftest.py` and in every notebook kernel by `sitecustomize.py` here.
"""

import ipaddress
import os
import socket

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
LOCAL_NAMES = {"localhost", "ip6-localhost", ""}  # "" connects to this machine

blocked: list[str] = []  # every refused attempt, so a test can fail even if a library swallows it


class NetworkAccessError(RuntimeError):
    """Raised instead of opening a connection off this machine: the suite must run offline."""


def is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]  # drop an IPv6 zone id
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name other than localhost would need a DNS lookup
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _refuse(what: str):
    blocked.append(what)
    raise NetworkAccessError(f"network access blocked: {what} (tests and notebooks run offline)")


def _allowed(sock, address) -> bool:
    family = getattr(sock, "family", None)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True  # Unix sockets, netlink, ...: never leave the machine
    return is_loopback(address[0])


def install() -> None:
    """Set the offline variables and patch `socket` (idempotent)."""
    os.environ.update(OFFLINE_ENV)
    if getattr(socket.socket.connect, "_offline_guard", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_sendto, real_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def connect(self, address):
        if not _allowed(self, address):
            _refuse(f"connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _allowed(self, address):
            _refuse(f"connect_ex to {address!r}")
        return real_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]  # sendto(data, address) or sendto(data, flags, address)
        if not _allowed(self, address):
            _refuse(f"sendto {address!r}")
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if host is not None and not is_loopback(host):
            _refuse(f"address lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    connect._offline_guard = True
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.socket.sendto, socket.getaddrinfo = sendto, getaddrinfo
