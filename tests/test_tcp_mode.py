"""`fim-lsp serve --tcp`: completions over the socket equal the in-process pipeline's; when a
session ends (shutdown, exit, or a client that drops the connection mid-request) the server keeps
listening and the next session, on the same port, starts clean (what an editor that restarts its
language client meets); SIGTERM stops it."""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time

import pytest

from engine.cache import CacheConfig
from engine.select import load_backend
from lsp_server import pipeline
from lsp_server.config import CompletionSettings
from lsp_server.core.postprocess import ShownSuggestion
from lsp_server.documents import uri_to_path
from tests.support.probe import ServerGone, SyncClient
from tests.test_security import free_port, wait_listening
from tests.test_server_e2e import CODE, TINY

SERVE = [sys.executable, "-m", "fim_lsp.cli", "serve", "--model", TINY, "--dtype", "float32", "--backend", "torch"]
URI = "file:///work/project/reader.py"
HANG_S = 120  # only a hang takes this long


@pytest.fixture(scope="module")
def oracle():
    return load_backend(model=TINY, backend="torch", dtype="float32",
                        cache=CacheConfig(reuse=False, share_blocks=False))


def typed_session(port: int, oracle, typed: str, client: SyncClient | None = None) -> None:
    """One session (on `client`, already started, or a new one): open CODE, type `typed` key by
    key, each completion equal to a recompute in process."""
    if client is None:
        client = SyncClient.connect("127.0.0.1", port)
        client.start_session("utf-16", {"maxNewTokens": 8})
    settings = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8))
    text, cursor = CODE, CODE.index("    print(len(lines))")
    client.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                            "text": text}})
    shown, snippets = None, ()
    for version, key in enumerate(typed, start=2):
        line = text.count("\n", 0, cursor)
        character = cursor - (text.rfind("\n", 0, cursor) + 1)
        client.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": version}, "contentChanges": [
            {"range": {"start": {"line": line, "character": character}, "end": {"line": line, "character": character}},
             "text": key}]})
        text, cursor, character = text[:cursor] + key + text[cursor:], cursor + 1, character + 1
        answer = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": URI}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}})  # automatic, as typing asks: one suggestion
        key_id = f"{URI}#{port}-{version}"
        outcome = pipeline.complete(oracle, key_id, text, line, character, config=settings, path=uri_to_path(URI),
                                    previous_snippets=snippets, shown=shown)
        oracle.drop(key_id)
        snippets = outcome.snippets
        shown = None if outcome.suggestion is None else ShownSuggestion(
            outcome.context.prefix, outcome.context.suffix, outcome.suggestion)
        got = [item["insertText"] for item in answer["items"]]
        assert got == ([outcome.suggestion.text] if outcome.suggestion else []), (version, key)
    assert client.status()["latency"]["count"] >= 1
    client.close()  # shutdown + exit, then the socket closes


def test_tcp_completions_and_a_new_session_on_the_same_server_after_the_session_ended(oracle):
    port = free_port()
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen([*SERVE, "--tcp", f"127.0.0.1:{port}"], stderr=stderr)
    try:
        wait_listening(proc, port)
        for typed in ("    tot", "    n = "):  # the second session after the first one's shutdown and exit
            typed_session(port, oracle, typed)
            assert proc.poll() is None, "a session's end does not stop the server"
    finally:
        stopped_cleanly(proc, stderr)


def accepted_session(port: int) -> SyncClient:
    """A started session, connecting again while the server still winds the previous one down
    (it closes a connection made while a session is live, as an editor's reconnect meets it)."""
    deadline = time.monotonic() + HANG_S
    while True:
        client = SyncClient.connect("127.0.0.1", port)
        try:
            client.start_session("utf-16", {"maxNewTokens": 8})
            return client
        except (ServerGone, OSError):
            client.sock.close()
            assert time.monotonic() < deadline, "the server took no new session after the drop"


def test_a_client_dropping_the_connection_mid_request_leaves_the_server_serving_the_next_session(oracle):
    port = free_port()
    stderr = tempfile.TemporaryFile()
    proc = subprocess.Popen([*SERVE, "--tcp", f"127.0.0.1:{port}"], stderr=stderr)
    try:
        wait_listening(proc, port)
        dropped = SyncClient.connect("127.0.0.1", port)
        dropped.start_session("utf-16", {"maxNewTokens": 200, "multiline": "always"})
        dropped.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                                 "text": "# left behind\n" + CODE}})
        dropped.send("textDocument/inlineCompletion", {"textDocument": {"uri": URI},
                                                       "position": {"line": 9, "character": 0},
                                                       "context": {"triggerKind": 1}})
        dropped.sock.shutdown(socket.SHUT_RDWR)  # no shutdown, no exit: the editor went away
        dropped.sock.close()
        client = accepted_session(port)
        status = client.status()
        assert status["open_documents"] == 0, "the dropped session's documents are forgotten"
        assert status["config"]["max_new_tokens"] == 8, "and its settings"
        typed_session(port, oracle, "    n = ", client)
        assert proc.poll() is None, "a session's end does not stop the server"
    finally:
        stopped_cleanly(proc, stderr)


def stopped_cleanly(proc, stderr) -> None:
    """SIGTERM stops the server (only a hang takes HANG_S); its exit is clean, else its stderr is shown."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(HANG_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError("the server did not stop on SIGTERM") from None
    stderr.seek(0)
    assert proc.returncode in (0, -15), stderr.read().decode(errors="replace")[-3000:]
