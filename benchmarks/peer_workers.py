"""Rows of `fim-lsp bench peer` as worker processes that stay alive, asked one at a time.

Each row (a backend on its own threads, its own memory, its own llama.cpp or torch runtime) is
loaded once in a process of its own and then answers commands over a pipe. The coordinator sends
one command and waits for its answer before it sends the next, to any worker: two rows never run
at once, and whatever drifts on the host (other load, clock, thermal state) reaches every row
alike because their requests alternate (`round_order`). Each worker counts the CPU its process
used while it was waiting for a command (threads left spinning after a call would show there) and
reports it when stopped.

The worker side (`serve`) is given a factory, a module-level function that loads the row and
returns an object with a method per command; the coordinator side is `RowWorker`.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, TypeVar

T = TypeVar("T")
LOAD_TIMEOUT_S = 1800.0  # a SantaCoder-sized row loads (and quantises) in well under this


class RowFailed(Exception):
    """A row could not load or answer a command; the message is one line, fit for the table."""


def one_line(exc: BaseException) -> str:
    """`Type: message`, first line only, without table separators."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".replace("|", "/").strip()


def round_order(rows: Sequence[T], index: int) -> list[T]:
    """The order rows are asked in round `index`: as given in even rounds, reversed in odd ones.

    Over any two consecutive rounds every row sits at the same mean position (ABBA for two rows),
    so a row is neither always first after the coordinator's pause nor always last.
    """
    return list(rows) if index % 2 == 0 else list(reversed(rows))


def serve(conn: Connection, factory: Callable[[Any], Any], spec: Any) -> None:
    """Worker process: load `factory(spec)`, answer ("ready", runner.describe()) or ("error", line), then
    answer each (command, argument) with ("ok", getattr(runner, command)(argument)) or ("error", line)
    until ("stop", None), which answers ("ok", {"idle_cpu_s": ...})."""
    try:
        runner = factory(spec)
        described = runner.describe()
    except Exception as exc:  # noqa: BLE001 - any load failure is the row's one-line reason
        conn.send(("error", one_line(exc)))
        return
    conn.send(("ready", described))
    idle, answered = 0.0, time.process_time()  # CPU seconds of the whole process (all threads)
    while True:
        try:
            command, argument = conn.recv()
        except EOFError:  # the coordinator closed its end (it dropped this row)
            return
        idle += time.process_time() - answered
        if command == "stop":
            conn.send(("ok", {"idle_cpu_s": idle}))
            return
        try:
            reply = ("ok", getattr(runner, command)(argument))
        except Exception as exc:  # noqa: BLE001 - reported to the coordinator, which drops the row
            traceback.print_exc()
            reply = ("error", one_line(exc))
        answered = time.process_time()
        conn.send(reply)


class RowWorker:
    """The coordinator's handle on one worker process."""

    def __init__(self, name: str, factory: Callable[[Any], Any], spec: Any):
        ctx = get_context("spawn")  # a fresh interpreter: no inherited threads or allocator state
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, factory, spec), name=f"peer row {name}", daemon=True)
        self.process.start()
        child.close()  # the worker holds the only other end: its death ends our recv with EOFError
        self.described = self.receive(LOAD_TIMEOUT_S, expect="ready")

    def receive(self, timeout: float | None = None, expect: str = "ok"):
        if timeout is not None and not self.conn.poll(timeout):
            self.close()
            raise RowFailed(f"no answer in {timeout:.0f} s")
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionError):
            self.close()
            code = self.process.exitcode
            raise RowFailed(f"worker died (exit code {code}{', a crash' if code and code < 0 else ''})") from None
        if status == "error":
            self.close()
            raise RowFailed(value)
        assert status == expect, f"{self.name}: expected {expect!r}, got {status!r}"
        return value

    def call(self, command: str, argument: Any = None):
        """Run one command in the worker and wait for its answer; RowFailed if it fails or dies."""
        self.conn.send((command, argument))
        return self.receive()

    def stop(self) -> dict:
        """End the worker; what it reports on the way out (its idle CPU)."""
        try:
            return self.call("stop")
        finally:
            self.close()

    def close(self) -> None:
        self.conn.close()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
