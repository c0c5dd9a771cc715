"""Outbound sockets refused: put this directory first on PYTHONPATH and every Python process started
with it (a test run, a server under test) may connect to loopback only.

`PYTHONPATH=tests/netguard:. pytest` runs the suite this way. Each refused connection (and each
DNS lookup of a name that is not local) raises PermissionError in the process that tried, and is
written as one line to the file named by FIM_LSP_NETGUARD_LOG when that is set; each process
that loads the guard first writes `PID guard`, so a test can tell a quiet process from one the
guard never reached. FIM_LSP_NETGUARD_WATCH names paths (os.pathsep between them): any attempt to
open one of them, however spelled (`/a/./b`, `/a//b`, a relative path, a symlink), is written
there too as `PID open RESOLVED-PATH`.
"""
import ipaddress
import os
import socket
import sys

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_log_fd = os.open(os.environ["FIM_LSP_NETGUARD_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT) \
    if os.environ.get("FIM_LSP_NETGUARD_LOG") else None
_watched = {os.path.realpath(p) for p in os.environ.get("FIM_LSP_NETGUARD_WATCH", "").split(os.pathsep) if p}


def _record(line: str) -> None:
    if _log_fd is not None:
        os.write(_log_fd, f"{os.getpid()} {line}\n".encode())


def _is_local(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or str(host).lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _is_address(host) -> bool:
    try:
        ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host))
        return True
    except ValueError:
        return False


def _guard(event: str, args: tuple) -> None:
    if event == "socket.connect" or event == "socket.sendto":
        sock, address = args[0], args[-1]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            _record(f"{event} {address[0]}:{address[1]}")
            raise PermissionError(f"outbound connection to {address[0]}:{address[1]} refused (tests/netguard)")
    elif event == "socket.getaddrinfo" and not _is_local(args[0]) and not _is_address(args[0]):  # a DNS query
        _record(f"{event} {args[0]}")
        raise PermissionError(f"name lookup of {args[0]!r} refused (tests/netguard)")
    elif event == "open" and _watched and args and isinstance(args[0], (str, bytes, os.PathLike)):
        resolved = os.path.realpath(os.fsdecode(args[0]))
        if resolved in _watched:
            _record(f"open {resolved}")


_record("guard")
sys.addaudithook(_guard)
