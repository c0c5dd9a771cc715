"""Running model-written programs for functional pass@1: a fresh interpreter, a time limit, no network.

Each program runs in its own `python -I` process (isolated: no user site, no environment
variables, no current directory on sys.path) inside a new temporary directory, with an empty
environment, no stdin, resource limits (CPU seconds, address space, file size) and an audit hook
installed before the program's first line that refuses sockets, new processes and `ctypes`.
A wall-clock timeout kills the whole process group.

This keeps an evaluation from hanging, reaching the network or spawning work; it is a guard
against accidents in generated code, not a boundary against a determined attacker.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout"]

# Audit events the program may not raise (see the table of audit events in Python's docs).
REFUSED_EVENTS = (
    "socket.",  # any socket operation: creation, connect, bind, getaddrinfo, sendto
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "ctypes.", "pty.",
)

_RUNNER = """\
import sys

REFUSED = {refused!r}

def _refuse(event, args):
    if event.startswith(REFUSED):
        raise PermissionError(f"sandbox: {{event}} is not allowed")

sys.addaudithook(_refuse)
with open("program.py", encoding="utf-8") as f:
    source = f.read()
exec(compile(source, "program.py", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resources one program may use."""

    timeout_s: float = 10.0  # wall clock before the process group is killed
    cpu_s: int = 10  # CPU seconds (RLIMIT_CPU)
    memory_bytes: int = 1 << 30  # address space (RLIMIT_AS)
    file_bytes: int = 1 << 20  # largest file it may write (RLIMIT_FSIZE)


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """How one program ended."""

    status: Status
    returncode: int | None  # None when killed for the timeout
    seconds: float  # wall clock
    detail: str  # the last line of stderr (the exception), or why it was killed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _set_limits(limits: SandboxLimits):
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_program(source: str, limits: SandboxLimits = SandboxLimits(), python: str = sys.executable) -> SandboxResult:
    """Run `source` as `__main__` in a sandboxed interpreter; "passed" means it exited with 0."""
    if limits.timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {limits.timeout_s}")
    with tempfile.TemporaryDirectory(prefix="fim-lsp-sandbox-") as tmp:
        Path(tmp, "program.py").write_text(source, encoding="utf-8")
        Path(tmp, "runner.py").write_text(_RUNNER.format(refused=REFUSED_EVENTS), encoding="utf-8")
        start = time.perf_counter()
        proc = subprocess.Popen(
            [python, "-I", "runner.py"], cwd=tmp, env={}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_set_limits(limits) if os.name == "posix" else None,
        )
        try:
            _, err = proc.communicate(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return SandboxResult("timeout", None, time.perf_counter() - start,
                                 f"killed after {limits.timeout_s:g} s")
        seconds = time.perf_counter() - start
    lines = err.decode("utf-8", "replace").strip().splitlines()
    detail = lines[-1] if lines else ""
    if proc.returncode == -signal.SIGXCPU or proc.returncode == -signal.SIGKILL:
        return SandboxResult("timeout", proc.returncode, seconds, f"killed by the CPU limit ({limits.cpu_s} s)")
    return SandboxResult("passed" if proc.returncode == 0 else "failed", proc.returncode, seconds, detail)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
