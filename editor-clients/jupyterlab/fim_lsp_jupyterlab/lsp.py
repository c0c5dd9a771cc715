"""A small LSP client over a subprocess's stdio: enough to open documents and ask for completions.

The server's stderr goes to a log file (an unread pipe would fill up and stall the server).
Requests the server sends us (progress tokens, configuration) get an empty answer.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ServerGone(RuntimeError):
    """The server process is not running (never started, or exited)."""


class LspProcess:
    """One `fim-lsp serve` process and the JSON-RPC stream to it."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr_log: Path):
        self.proc, self.stderr_log = proc, stderr_log
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def start(cls, command: list[str], stderr_log: Path, cwd: str | None = None) -> "LspProcess":
        """Spawn `command`; FileNotFoundError / PermissionError when it cannot be run."""
        stderr_log.parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_log, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, cwd=cwd)
        return cls(proc, stderr_log)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self._reader.done()

    def stderr_tail(self, chars: int = 600) -> str:
        try:
            return self.stderr_log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    async def request(self, method: str, params: Any, timeout_s: float) -> Any:
        if not self.alive:
            raise ServerGone(f"the server exited (code {self.proc.returncode})")
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        try:
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(msg_id, None)

    def notify(self, method: str, params: Any) -> None:
        if not self.alive:
            raise ServerGone(f"the server exited (code {self.proc.returncode})")
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def close(self) -> None:
        if self.alive:
            try:
                await self.request("shutdown", None, 5)
                self.notify("exit", None)
                await asyncio.wait_for(self.proc.wait(), 5)
            except (ServerGone, asyncio.TimeoutError, ConnectionError):
                pass
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                length = None
                while (line := await stdout.readline()) not in (b"\r\n", b"\n"):
                    if not line:
                        return  # EOF: the server exited
                    name, _, value = line.decode("ascii", "replace").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length is None:
                    continue
                self._dispatch(json.loads(await stdout.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            gone = ServerGone(f"the server exited (code {self.proc.returncode}): {self.stderr_tail()}")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(gone)

    def _dispatch(self, message: dict) -> None:
        if "id" in message and "method" in message:  # a request from the server
            result = [{}] * len(message.get("params", {}).get("items", [])) \
                if message["method"] == "workspace/configuration" else None
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif "id" in message:
            future = self._pending.get(message["id"])
            if future is None or future.done():
                return
            if "error" in message:
                future.set_exception(RuntimeError(message["error"].get("message", "server error")))
            else:
                future.set_result(message.get("result"))
        elif message.get("method") in ("window/logMessage", "window/showMessage"):
            log.info("fim-lsp: %s", message["params"].get("message"))
