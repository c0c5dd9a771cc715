"""A probed `fim-lsp serve` and a synchronous LSP client for driving it, for the soak and tests.

The probed server is the real server (`lsp_server.server`) with three extra requests registered
before it starts, so a driver can check it from outside without a debugger:

- `fim-lsp-probe/texts` `{"uris": [...]}` -> `{"texts": {uri: text or null}}`: the server's copy
  of documents (to compare with the client's after every edit);
- `fim-lsp-probe/fault` `{"doc": key, "kind": ...}`: arm an `tests.support.faults` fault for a document;
- `fim-lsp-probe/slot` `{"doc": key}` -> `{"tokens": n}`: how many tokens the document's K/V slot holds;
- `fim-lsp-probe/hold` `{"doc": key}`: the document's next request blocks mid-decode
  (`tests.support.hold`); `fim-lsp-probe/held` `{"doc": key}` answers `{"held": true}` once it
  blocks (false after 120 s); `fim-lsp-probe/release` `{"doc": key}` lets it go on. A hold
  outlives a model reload: the held request keeps the backend it started on.

Every backend it loads is wrapped in `tests.support.faults.FaultyBackend` (a pass-through until a fault
is armed). Run it as `python -m tests.support.probe [fim-lsp serve options]`.

`SyncClient` speaks JSON-RPC over the server's stdio with plain dicts, one blocking call at a
time, so a hypothesis state machine or a benchmark loop can drive it without an event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TEXTS = "fim-lsp-probe/texts"
FAULT = "fim-lsp-probe/fault"
SLOT = "fim-lsp-probe/slot"
LIVE = "fim-lsp-probe/live"
HOLD = "fim-lsp-probe/hold"
HELD = "fim-lsp-probe/held"
RELEASE = "fim-lsp-probe/release"
READY_TIMEOUT_S = 300


class LspError(Exception):
    """An error response: `code` and `message` as the server sent them."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class ServerGone(Exception):
    """The server process exited (or stopped answering) while a request waited."""


class SyncClient:
    """A language client over a subprocess's stdio; requests block until answered."""

    def __init__(self, writer: BinaryIO, reader: BinaryIO, proc: subprocess.Popen | None = None) -> None:
        self.proc = proc  # the server process, when this client started it
        self.stderr = tempfile.TemporaryFile()
        self._writer, self._reader_file = writer, reader
        self._write_lock = threading.Lock()
        self._cond = threading.Condition()
        self._answers: dict[Any, dict] = {}
        self.notifications: list[dict] = []  # logMessage, showMessage, ... in arrival order
        self._next_id = 0
        self._reader = threading.Thread(target=self._read_loop, name="probe-reader", daemon=True)
        self._reader.start()

    @classmethod
    def spawn(cls, command: list[str], env: dict[str, str] | None = None) -> "SyncClient":
        """Start `command` and speak LSP over its stdio (its stderr kept for `stderr_text`)."""
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        client = cls(proc.stdin, proc.stdout, proc)
        client.stderr = stderr
        return client

    @classmethod
    def connect(cls, host: str, port: int, timeout_s: float = 60) -> "SyncClient":
        """Speak LSP over a TCP connection to a server already listening (retrying until it is)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sock.settimeout(None)
        client = cls(sock.makefile("wb"), sock.makefile("rb"))
        client.sock = sock
        return client

    # -- wire --------------------------------------------------------------------------------------

    def _write(self, message: dict) -> None:
        body = json.dumps(message).encode()
        with self._write_lock:
            self._writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self._writer.flush()

    def _read_loop(self) -> None:
        out = self._reader_file
        try:
            while True:
                length = None
                while (line := out.readline()) not in (b"\r\n", b"\n"):
                    if not line:
                        return
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                assert length is not None, "a message without Content-Length"
                message = json.loads(out.read(length))
                if "method" in message and "id" in message:  # a server-to-client request: accept it
                    self._write({"jsonrpc": "2.0", "id": message["id"], "result": None})
                    continue
                with self._cond:
                    if "method" in message:
                        self.notifications.append(message)
                    else:
                        self._answers[message.get("id")] = message
                    self._cond.notify_all()
        except (OSError, ValueError):  # the connection was reset or closed under us
            return
        finally:
            with self._cond:
                self._cond.notify_all()

    # -- calls -------------------------------------------------------------------------------------

    def notify(self, method: str, params: Any) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    def send(self, method: str, params: Any) -> int:
        """Send a request without waiting; its id."""
        self._next_id += 1
        self._write({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    def wait(self, msg_id: int, timeout_s: float = 120) -> Any:
        """The result of request `msg_id`; raise LspError for an error answer, ServerGone if none comes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while msg_id not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    state = "hung up" if not self._reader.is_alive() else f"sent no answer in {timeout_s:.0f} s"
                    raise ServerGone(f"request {msg_id}: the server {state}")
                self._cond.wait(min(left, 1.0))
            answer = self._answers.pop(msg_id)
        if "error" in answer:
            raise LspError(answer["error"]["code"], answer["error"]["message"])
        return answer.get("result")

    def request(self, method: str, params: Any, timeout_s: float = 120) -> Any:
        return self.wait(self.send(method, params), timeout_s)

    def cancel(self, msg_id: int) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    def messages(self, method: str = "window/showMessage") -> list[str]:
        """Texts of the notifications of `method` received so far."""
        with self._cond:
            return [n["params"]["message"] for n in self.notifications if n["method"] == method]

    def wait_message(self, predicate: Callable[[str], bool], after: int = 0, method: str = "window/logMessage",
                     timeout_s: float = 120) -> str:
        """The first `method` notification past the first `after` whose text satisfies `predicate`,
        waiting for it to arrive; ServerGone when none comes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                texts = [n["params"]["message"] for n in self.notifications if n["method"] == method][after:]
                found = next((text for text in texts if predicate(text)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise ServerGone(f"no matching {method} in {timeout_s:.0f} s")
                self._cond.wait(min(left, 1.0))

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def close(self, timeout_s: float = 120) -> int | None:
        """shutdown + exit; the server's exit status when this client started it (killed if it lingers)."""
        if self._reader.is_alive():
            try:
                self.request("shutdown", None, timeout_s=timeout_s)
                self.notify("exit", None)
            except (ServerGone, LspError, OSError):
                pass
        if self.proc is None:
            self.sock.close()
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    # -- session -------------------------------------------------------------------------------------

    def start_session(self, encoding: str = "utf-16", options: dict | None = None, timeout_s: float = READY_TIMEOUT_S,
                      ) -> dict:
        """initialize (offering only `encoding`) + initialized; wait until the model is ready; the status."""
        capabilities = {
            "general": {"positionEncodings": [encoding]},
            "textDocument": {"inlineCompletion": {}, "completion": {}, "synchronization": {}},
            "notebookDocument": {"synchronization": {}},
        }
        result = self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": capabilities,
                                             "initializationOptions": options or {}})
        assert result["capabilities"].get("positionEncoding", "utf-16") == encoding, result["capabilities"]
        self.notify("initialized", {})
        return self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, loads: int | None = None) -> dict:
        """Poll `fim-lsp/status` until the model is ready (raise on failure or timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.request("fim-lsp/status", None)
            if status["state"] == "ready":
                return status
            if status["state"] == "failed":
                raise RuntimeError(f"the model failed to load: {status['error']}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model did not load in {timeout_s} s (state {status['state']})")
            time.sleep(0.05)

    def texts(self, uris: list[str]) -> dict[str, str | None]:
        """The server's text of each document (None where it has none)."""
        return self.request(TEXTS, {"uris": uris})["texts"]

    def status(self) -> dict:
        return self.request("fim-lsp/status", None)


def probed_command(*serve_args: str) -> list[str]:
    """The command line of a probed server with these `fim-lsp serve` options."""
    return [sys.executable, "-m", "tests.support.probe", *serve_args]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} has no VmRSS")


# ------------------------------------------------------------------------------------------------
# The server side


def install_probes() -> None:
    """Register the probe requests on the real server and wrap every backend it loads."""
    from tests.support.faults import FaultyBackend
    from tests.support.hold import HOLD_BOUND_S, Hold
    from lsp_server import pipeline
    from lsp_server.server import FimServer, server

    load = pipeline.load_model
    pipeline.load_model = lambda config, progress=None: FaultyBackend(load(config, progress))

    def field(params: Any, name: str) -> Any:
        return params.get(name) if isinstance(params, dict) else getattr(params, name, None)

    @server.feature(TEXTS)
    def probe_texts(ls: FimServer, params: Any) -> dict:
        uris = field(params, "uris")
        uris = list(ls.store.documents) if uris is None else uris
        return {"texts": {uri: (doc.text if (doc := ls.store.get(uri)) is not None else None) for uri in uris}}

    @server.feature(FAULT)
    def probe_fault(ls: FimServer, params: Any) -> dict:
        assert isinstance(ls.model.backend, FaultyBackend), "no model loaded yet"
        ls.model.backend.arm(field(params, "doc"), field(params, "kind"))
        return {"armed": True}

    @server.feature(SLOT)
    async def probe_slot(ls: FimServer, params: Any) -> dict:
        backend = ls.model.backend
        assert backend is not None, "no model loaded yet"
        doc = field(params, "doc")
        tokens = await ls.scheduler.call(lambda: len(backend.slot_tokens(doc)))  # after the queued work
        return {"tokens": tokens}


    holds: dict[str, Hold] = {}  # doc key -> its latest hold (kept here: a reload replaces the backend)

    @server.feature(HOLD)
    def probe_hold(ls: FimServer, params: Any) -> dict:
        assert isinstance(ls.model.backend, FaultyBackend), "no model loaded yet"
        doc = field(params, "doc")
        holds[doc] = Hold()
        ls.model.backend.hold(doc, holds[doc])
        return {"armed": True}

    @server.feature(HELD)
    async def probe_held(ls: FimServer, params: Any) -> dict:
        hold = holds[field(params, "doc")]
        return {"held": await asyncio.to_thread(hold.reached.wait, HOLD_BOUND_S)}

    @server.feature(RELEASE)
    def probe_release(ls: FimServer, params: Any) -> dict:
        holds[field(params, "doc")].release.set()
        return {"released": True}

    @server.feature(LIVE)
    def probe_live(ls: FimServer, params: Any) -> dict:
        """Instances alive per class name, for the classes named (after a full collection)."""
        import gc

        names = set(field(params, "classes") or ())
        gc.collect()
        counts = dict.fromkeys(names, 0)
        for obj in gc.get_objects():
            name = type(obj).__name__
            if name in names:
                counts[name] += 1
        return {"live": counts}


def main(argv: list[str]) -> int:
    from fim_lsp.cli import build_parser
    from fim_lsp.serve import main_serve

    install_probes()
    return main_serve(build_parser().parse_args(["serve", *argv]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
