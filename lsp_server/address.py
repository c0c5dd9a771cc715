"""Listening addresses: `HOST:PORT` parsing and the loopback test, shared by the server and the daemon.

No pygls and no torch here: the daemon imports this without loading the language server.
"""
from __future__ import annotations

import ipaddress


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `PORT` (loopback); raise ValueError with what is expected."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:2087), got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP addresses: nobody on another machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
