"""Fault injection through the real server: a failing decode step, a failed allocation (of the K/V
buffer, or mid-decode), a corrupted K/V slot, and a remote engine killed mid-session.

In each case the affected request fails cleanly (an LSP error, or an empty answer and one message
for a remote server that is gone), the document's slot is dropped and its next completion is
recomputed and right, other documents keep their slots and their answers, and the server keeps
running. Faults are armed through the probed server (tests.support.probe, tests.support.faults).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.support.probe import FAULT, SLOT, LspError, SyncClient, probed_command
from tests.support.faults import FAULT_KINDS, FaultyBackend
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from tests.test_server_e2e import TINY, Mirror
from tests.test_sync_state_machine import lsp_position

INTERNAL_ERROR = -32603
SETTINGS = CompletionSettings(max_new_tokens=8, neighbours=False)
OPTIONS = {"maxNewTokens": 8, "neighbours": False}
DOC_A = "file:///work/project/victim.py"
DOC_B = "file:///work/project/bystander.py"
TEXT_A = "import math\n\ndef area(radius):\n    return math.pi * \n\nprint(area(2))\n"
TEXT_B = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.\n"


class Editor:
    """The client side of one session: documents, typing, completions checked against an oracle."""

    def __init__(self, client: SyncClient, oracle) -> None:
        self.client = client
        self.mirror = Mirror(None, oracle, settings=SETTINGS)
        self.versions: dict[str, int] = {}

    def open(self, uri: str, text: str) -> None:
        self.mirror.docs[uri], self.versions[uri] = text, 1
        self.client.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}})

    def type_at_end_of(self, uri: str, marker: str, typed: str) -> int:
        """Insert `typed` after the first `marker`; the cursor offset after it."""
        text = self.mirror.docs[uri]
        offset = text.index(marker) + len(marker)
        position = lsp_position(text, offset, "utf-16")
        self.versions[uri] += 1
        self.client.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": self.versions[uri]},
            "contentChanges": [{"range": {"start": position, "end": position}, "text": typed}]})
        self.mirror.docs[uri] = text[:offset] + typed + text[offset:]
        return offset + len(typed)

    def inline(self, uri: str, offset: int) -> list:
        answer = self.client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": lsp_position(self.mirror.docs[uri], offset, "utf-16"),
            "context": {"triggerKind": 2}})  # automatic, as typing asks (by hand, alternatives would follow)
        return [(item["insertText"], item["range"]) for item in answer["items"]]

    def expect(self, uri: str, offset: int) -> list:
        return [(item.insert_text, {"start": {"line": item.range.start.line, "character": item.range.start.character},
                                    "end": {"line": item.range.end.line, "character": item.range.end.character}})
                for item in self.mirror.expect(uri, offset).items]

    def check(self, uri: str, offset: int) -> list:
        answer = self.inline(uri, offset)
        assert answer == self.expect(uri, offset), f"{uri}: the answer differs from the in-process pipeline's"
        return answer

    def slot_tokens(self, uri: str) -> int:
        return self.client.request(SLOT, {"doc": uri})["tokens"]


@pytest.fixture(scope="module")
def oracle():
    return pipeline.load_model(ModelConfig(model=TINY, backend="torch", dtype="float32"))


@pytest.fixture(scope="module")
def session():
    client = SyncClient.spawn(probed_command("--model", TINY, "--dtype", "float32", "--backend", "torch"))
    client.start_session("utf-16", OPTIONS)
    yield client
    assert client.close() == 0, client.stderr_text()[-3000:]


@pytest.mark.parametrize("kind", ["decode_error", "decode_oom", "alloc_error", "corrupt_slot"])
def test_a_fault_fails_one_request_cleanly_and_the_slot_is_recomputed(kind, session, oracle):
    editor = Editor(session, oracle)
    a, b = f"{DOC_A}?{kind}", f"{DOC_B}?{kind}"
    editor.open(a, TEXT_A)
    editor.open(b, TEXT_B)
    cursor_a = editor.type_at_end_of(a, "math.pi * ", "radius")
    cursor_b = editor.type_at_end_of(b, "        self.", "it")
    editor.check(a, cursor_a)
    editor.check(b, cursor_b)
    held_b = editor.slot_tokens(b)
    assert editor.slot_tokens(a) > 0 and held_b > 0

    session.request(FAULT, {"doc": a, "kind": kind})
    cursor_a = editor.type_at_end_of(a, "math.pi * radius", " ** 2  # Z")  # a new prompt: the engine must run
    with pytest.raises(LspError) as failure:
        editor.inline(a, cursor_a)
    assert failure.value.code == INTERNAL_ERROR and failure.value.message.startswith("completion failed: ")
    assert editor.slot_tokens(a) == 0, "the failed request's slot is dropped"
    assert editor.slot_tokens(b) == held_b, "the other document keeps its slot"

    # the other document is unaffected, and served from its cache
    cursor_b = editor.type_at_end_of(b, "        self.it", "e")
    editor.check(b, cursor_b)
    last = session.status()["last"]
    assert last["reused"] or last["reused_tokens"] > 0, last

    # the victim's next completion recomputes its slot from scratch and is right
    cursor_a = editor.type_at_end_of(a, "# Z", "z")
    editor.check(a, cursor_a)
    last = session.status()["last"]
    assert not last["reused"] and last["reused_tokens"] == 0 and last["prefill_tokens"] == last["prompt_tokens"], last
    assert editor.slot_tokens(a) > 0
    assert session.status()["state"] == "ready" and session.proc.poll() is None


def test_every_fault_kind_is_tested():
    tested = test_a_fault_fails_one_request_cleanly_and_the_slot_is_recomputed.pytestmark[0].args[1]
    assert sorted(tested) == sorted(FAULT_KINDS)


def test_faults_the_backend_cannot_take_are_refused_by_name(oracle):
    faulty = FaultyBackend(oracle)
    with pytest.raises(ValueError, match="unknown fault 'meteor'; known: decode_error"):
        faulty.arm("file:///x.py", "meteor")


# ------------------------------------------------------------------------------------------------
# A remote engine killed mid-session

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


def start_daemon(port: int = 0) -> tuple[subprocess.Popen, int]:
    """`fim-lsp engine` with the tiny kit model on loopback; the process and its port."""
    proc = subprocess.Popen([sys.executable, "-m", "fim_lsp.cli", "engine", "--listen", f"127.0.0.1:{port}",
                             "--model", TINY, "--dtype", "float32", "--backend", "torch"],
                            stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if (match := LISTENING.search(line)) is not None:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
            return proc, int(match.group(1))
    proc.kill()
    raise AssertionError(f"the engine daemon did not start: {''.join(lines)}")


def test_a_killed_remote_engine_fails_requests_cleanly_and_they_work_once_it_is_back(oracle):
    daemon, port = start_daemon()
    client = SyncClient.spawn(probed_command("--backend", "openai", "--url", f"http://127.0.0.1:{port}",
                                             "--model", TINY))
    try:
        assert client.start_session("utf-16", {**OPTIONS, "remoteTimeoutMs": 5000})["backend"] == "openai"
        editor = Editor(client, oracle)
        editor.open(DOC_A, TEXT_A)
        editor.open(DOC_B, TEXT_B)
        cursor_a = editor.type_at_end_of(DOC_A, "math.pi * ", "r")
        answer = editor.check(DOC_A, cursor_a)
        # a key that does not continue the suggestion shown (that one is served without the engine)
        key = "b" if answer and answer[0][0].startswith("a") else "a"

        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        cursor_a = editor.type_at_end_of(DOC_A, "math.pi * r", key)
        assert editor.inline(DOC_A, cursor_a) == [], "a request to a dead engine answers empty"
        cursor_b = editor.type_at_end_of(DOC_B, "        self.", "i")
        assert editor.inline(DOC_B, cursor_b) == []
        shown = [m for m in client.messages() if f"127.0.0.1:{port}" in m]
        assert len(shown) == 1, f"one message per run of failures, not one per keystroke: {client.messages()}"
        status = client.status()
        assert status["state"] == "ready" and status["backend_error"] and client.proc.poll() is None

        daemon, _ = start_daemon(port)  # the engine comes back on the same address, with empty slots
        cursor_a = editor.type_at_end_of(DOC_A, f"math.pi * r{key}", "d")
        editor.check(DOC_A, cursor_a)
        editor.check(DOC_B, cursor_b)
        assert client.status()["backend_error"] is None
        assert any("completions work again" in m for m in client.messages("window/logMessage"))
    finally:
        daemon.kill()
        daemon.wait(10)
        assert client.close() == 0, client.stderr_text()[-3000:]
