"""Everything a client can get wrong, sent to one `fim-lsp serve` session: each gets an LSP error
or an empty result, and the server keeps answering correctly afterwards."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import socket
import subprocess

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient as BaseClient
from pytest_lsp import ClientServerConfig, LanguageClient

from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from fim_lsp.demo import fetch_status, plain, wait_until_loaded
from tests.support.probe import LspError, SyncClient, probed_command
from tests.test_server_e2e import OPTIONS, TINY, Mirror, capabilities, serve_command

INLINE = types.TEXT_DOCUMENT_INLINE_COMPLETION


@pytest.fixture(scope="module")
def engine():
    """The oracle: the server's checkpoint and dtype on the default backend, in this process."""
    return pipeline.load_model(ModelConfig(model=TINY, dtype="float32"))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=serve_command()))
async def client(lsp_client: LanguageClient):
    yield
    await lsp_client.shutdown_session()


async def send_raw(client: LanguageClient, msg_id: str, method: str, params) -> object:
    """Send a request exactly as given (the client's own types refuse malformed params); its result,
    or the JsonRpcException the server answered with."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    client.protocol._request_futures[msg_id] = future
    body = json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()
    client.protocol.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
    try:
        return plain(await asyncio.wait_for(asyncio.wrap_future(future), timeout=20))
    except JsonRpcException as exc:
        return exc


def inline_params(uri: str, line: int, character: int) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}}  # automatic, as typing asks


def is_error(answer: object, code: int, text: str) -> bool:
    return isinstance(answer, JsonRpcException) and answer.code == code and text in answer.message


async def test_bad_input_gets_an_error_or_an_empty_result_and_the_server_lives(client: LanguageClient, engine):
    uri = "file:///work/project/ok.py"
    # before `initialize`: the LSP error for an uninitialized server
    answer = await send_raw(client, "early-1", INLINE, inline_params(uri, 0, 0))
    assert is_error(answer, -32002, "not initialized"), answer

    client.capabilities = capabilities()  # pytest-lsp's client checks requests against these
    await client.initialize_async(types.InitializeParams(capabilities=client.capabilities,
                                                         initialization_options=OPTIONS))
    mirror = Mirror(client, engine)
    mirror.open(uri, "def double(x):\n    return 2 * x\n")
    # after `initialize`, before `initialized`: the model is not loading yet, so an empty result
    answer = await send_raw(client, "early-2", INLINE, inline_params(uri, 1, 4))
    assert answer == {"items": []}
    client.initialized(types.InitializedParams())
    assert (await wait_until_loaded(client, timeout_s=120))["state"] == "ready"

    # a document the client never opened: an error, and nothing read from disk
    answer = await send_raw(client, "unknown-uri", INLINE, inline_params("file:///etc/hostname", 0, 0))
    assert is_error(answer, -32602, "is not open"), answer

    # malformed params: negative line, missing position, a string for a number, no params at all
    for msg_id, params in [
        ("negative-line", inline_params(uri, -1, 0)),
        ("no-position", {"textDocument": {"uri": uri}, "context": {"triggerKind": 1}}),
        ("string-line", inline_params(uri, "one", 0)),
        ("no-params", None),
    ]:
        answer = await send_raw(client, msg_id, INLINE, params)
        assert is_error(answer, -32602, "invalid params for textDocument/inlineCompletion"), (msg_id, answer)

    # an unknown method
    assert is_error(await send_raw(client, "unknown-method", "fim-lsp/nonsense", {}), -32601, "nonsense")

    # a position past the end of a line and past the last line: clamped, as LSP says
    end = len(mirror.docs[uri])
    answer = await mirror.inline(uri, end)
    assert answer == mirror.expect(uri, end)
    far = await send_raw(client, "past-end", INLINE, inline_params(uri, 999, 999))
    expected = mirror.client.protocol._converter.unstructure(answer)
    assert [(i["insertText"], i["range"]) for i in far["items"]] == [
        (i["insertText"], i["range"]) for i in expected["items"]]

    # binary-looking text, and lone surrogates (unencodable in UTF-8) in the document
    odd = "file:///work/project/odd.py"
    mirror.open(odd, "data = '\x00\x01\x02\x1b[31m\ufeff\x7f'\nx = '\ud83d'  # half an emoji\ny = ")
    cursor = len(mirror.docs[odd])
    assert await mirror.inline(odd, cursor) == mirror.expect(odd, cursor)

    # a 5 MB document: answered from a window around the cursor
    big = "file:///work/project/big.py"
    block = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(200))
    mirror.open(big, block * (5_000_000 // len(block) + 1))
    assert len(mirror.docs[big]) > 5_000_000
    cursor = mirror.type(big, len(mirror.docs[big]) // 2, "\ndef g(")
    assert await mirror.inline(big, cursor) == mirror.expect(big, cursor)

    # settings of the wrong type: a message, the settings unchanged
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxNewTokens": "lots"}))
    # a configuration naming a missing model: a clear message, the previous model kept
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"model": "/no/such/model"}))
    for _ in range(600):
        if any("could not load" in m.message for m in client.messages):
            break
        await asyncio.sleep(0.05)
    errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
    assert any("'maxNewTokens' must be int" in m for m in errors), errors
    assert any("could not load /no/such/model" in m and "keeping" in m for m in errors), errors
    status = await fetch_status(client)
    assert status["state"] == "ready" and status["model"] == TINY
    assert status["config"]["max_new_tokens"] == OPTIONS["maxNewTokens"]

    # and after all that, an ordinary completion is still right
    cursor = mirror.type(uri, len(mirror.docs[uri]), "\ndef triple(x):\n    return ")
    assert await mirror.inline(uri, cursor) == mirror.expect(uri, cursor)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_beyond_loopback_needs_a_token():
    run = subprocess.run([*serve_command(), "--tcp", f"0.0.0.0:{free_port()}"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert "pass --token" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("token, accepted", [("s3cret", True), ("guess", False)])
async def test_tcp_session_checks_the_token(token, accepted):
    port = free_port()
    server = subprocess.Popen([*serve_command(), "--tcp", f"127.0.0.1:{port}", "--token", "s3cret"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = BaseClient("tcp-test", "1")
    try:
        for _ in range(600):  # until the server listens
            try:
                await client.start_tcp("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        params = types.InitializeParams(capabilities=types.ClientCapabilities(),
                                        initialization_options={"token": token})
        if accepted:
            result = await asyncio.wait_for(client.initialize_async(params), timeout=60)
            assert result.server_info.name == "fim-lsp"
            status = plain(await client.protocol.send_request_async("fim-lsp/status", {}))
            assert status["state"] == "not started"  # no `initialized` yet, so no model loads
        else:
            with pytest.raises(JsonRpcException, match="initializationOptions.token"):
                await asyncio.wait_for(client.initialize_async(params), timeout=60)
            with pytest.raises(JsonRpcException, match="did not present the server's token"):
                await asyncio.wait_for(client.protocol.send_request_async("fim-lsp/status", {}), timeout=60)
    finally:
        server.kill()
        server.wait(timeout=30)
        await client.stop()


# ------------------------------------------------------------------------------------------------
# Round two (issue 27): raw bytes a client may send over stdio. Each input gets its documented
# answer (an error response, or a logged refusal where there is no id to answer), and afterwards a
# completion in a fresh document still carries exactly the oracle's text.

RAW_OPTIONS = {"maxNewTokens": 6}
PROBED = probed_command("--model", TINY, "--dtype", "float32", "--backend", "torch")


class RawSession:
    """One probed server over stdio, a raw writer, and the oracle's view of its documents."""

    def __init__(self, engine, client: SyncClient | None = None) -> None:
        if client is None:
            client = SyncClient.spawn(PROBED)
            client.start_session("utf-16", RAW_OPTIONS)
        self.client = client
        self.mirror = Mirror(None, engine, settings=CompletionSettings(max_new_tokens=6))
        self.count = 0

    def raw(self, data: bytes) -> None:
        self.client._writer.write(data)
        self.client._writer.flush()

    def body(self, body: bytes) -> None:
        self.raw(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def errors(self, msg_id) -> dict:
        """The error the server answered to `msg_id` (waiting for it)."""
        with pytest.raises(LspError) as caught:
            self.client.wait(msg_id, timeout_s=60)
        return {"code": caught.value.code, "message": caught.value.message}

    def logged(self, text: str) -> bool:
        return any(text in m for m in self.client.messages("window/logMessage"))

    def completion_is_right(self, text: str = "def add(a, b):\n    return ") -> None:
        """Open a fresh document, complete at its end: the oracle's text; then close it."""
        self.count += 1
        uri = f"file:///raw/doc{self.count}.py"
        self.client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                                     "version": 1, "text": text}})
        self.mirror.docs[uri] = text
        lines = text.split("\n")
        character = len(lines[-1].encode("utf-16-le")) // 2
        answer = self.client.request(INLINE, inline_params(uri, len(lines) - 1, character))
        expected = self.mirror.expect(uri, len(text))
        assert [i["insertText"] for i in answer["items"]] == [i.insert_text for i in expected.items]
        self.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        del self.mirror.docs[uri]


@pytest.fixture(scope="module")
def raw(engine):
    session = RawSession(engine)
    yield session
    assert session.client.close() == 0, session.client.stderr_text()[-3000:]


def request_body(msg_id, method="fim-lsp/status", params=None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


@pytest.mark.parametrize("header, logged", [
    (b"Content-Length: 1000000000000\r\n\r\n", "over the 67108864-byte limit"),  # was MemoryError, exit 1
    (b"Content-Length: 9223372036854775808\r\n\r\n", "over the 67108864-byte limit"),  # was OverflowError
    (b"Content-Length: " + b"7" * 5000 + b"\r\n\r\n", "over the 67108864-byte limit"),  # was ValueError
    (b"Content-Length: 10000000000\r\n\r\n", "over the 67108864-byte limit"),  # was a wait for 10 GB
    (b"Content-Length: -12\r\n\r\n", "not a non-negative integer"),  # was a silent hang
    (b"Content-Type: application/vscode-jsonrpc\r\n\r\n", "without Content-Length"),  # was a silent hang
    (b"X-Junk: " + b"x" * 70_000 + b"\r\n\r\n", "header block over 8192 bytes"),
])
def test_a_bad_header_is_refused_with_a_logged_error_and_the_stream_resynchronises(raw, header, logged):
    before = len(raw.client.messages("window/logMessage"))
    raw.raw(header + b'{"jsonrpc":"2.0","id":"lost","method":"fim-lsp/status"}')
    assert raw.client.status()["state"] == "ready"  # the next message is read
    new = raw.client.messages("window/logMessage")[before:]
    assert any("framing error, message dropped: " in m and logged in m for m in new), new
    raw.completion_is_right()


@pytest.mark.parametrize("header", [b"content-length: %d\r\n\r\n", b"Content-Length: %d\n\n"])
def test_lowercase_names_and_lf_only_headers_are_read(raw, header):
    body = request_body("spelled")
    raw.raw(header % len(body) + body)
    assert raw.client.wait("spelled", timeout_s=60)["state"] == "ready"
    raw.completion_is_right()


def test_a_length_shorter_than_the_body_costs_that_message_only(raw):
    body = request_body("short")
    raw.raw(b"Content-Length: 20\r\n\r\n" + body)
    assert raw.errors(None)["code"] == -32700  # the 20 bytes are not JSON; the rest is skipped
    assert raw.client.status()["state"] == "ready"
    raw.completion_is_right()


@pytest.mark.parametrize("body, msg_id, code, text", [
    (b'{"jsonrpc":"2.0","id":1,"method":"fim-lsp/status","params":"\xff\xfe"}', None, -32700, "not UTF-8"),
    (b"{this is not json", None, -32700, "not JSON"),
    (b'[{"jsonrpc":"2.0","id":"b1","method":"fim-lsp/status"}]', None, -32600, "batches"),
    (b'{"jsonrpc":"2.0","id":[1],"method":"fim-lsp/status"}', None, -32600, "id must be"),
    (b'{"jsonrpc":"2.0","id":{"x":1},"method":"fim-lsp/status"}', None, -32600, "id must be"),
    (b'{"jsonrpc":"1.0","id":"old","method":"fim-lsp/status"}', "old", -32600, "jsonrpc must be"),
])
def test_malformed_json_rpc_gets_parse_error_or_invalid_request(raw, body, msg_id, code, text):
    raw.body(body)
    error = raw.errors(msg_id)
    assert error["code"] == code and text in error["message"], error
    raw.completion_is_right()


def test_a_request_shaped_object_inside_a_notification_is_not_answered(raw):
    nested = {"jsonrpc": "2.0", "id": "nested", "method": "fim-lsp/status", "params": None}
    raw.client.notify("workspace/didChangeConfiguration", {"settings": {"fim-lsp": {}}, "extra": nested})
    raw.client.notify("$/setTrace", {"value": "off", "x": [nested]})
    assert raw.client.status()["state"] == "ready"  # answered after both notifications were handled
    assert "nested" not in raw.client._answers
    raw.completion_is_right()


@pytest.mark.parametrize("line", ["4", True, 1.0])
def test_a_position_of_the_wrong_json_type_is_refused_not_converted(raw, line):
    raw.completion_is_right()
    msg_id = raw.client.send(INLINE, inline_params("file:///raw/anything.py", line, 0))
    error = raw.errors(msg_id)
    assert error["code"] == -32602 and "invalid params for textDocument/inlineCompletion" in error["message"], error
    raw.completion_is_right()


def test_a_lone_surrogate_in_one_documents_uri_and_text_never_fails_another(raw):
    poisoned = "file:///raw/\ud83d-half.py"
    text = "def add(a, b):\n    x = '\ud800'\n    return a + b\n"
    raw.client.notify("textDocument/didOpen", {"textDocument": {
        "uri": poisoned, "languageId": "python", "version": 1, "text": text}})
    raw.mirror.docs[poisoned] = text
    try:
        raw.completion_is_right("def add_all(a, b):\n    return add(")  # the poisoned one is a neighbour
    finally:
        raw.client.notify("textDocument/didClose", {"textDocument": {"uri": poisoned}})
        del raw.mirror.docs[poisoned]


def test_twenty_thousand_edits_in_one_change_on_a_megabyte_and_ten_thousand_cell_kinds(raw):
    uri = "file:///raw/big.py"
    text = "".join(f"value_{i:05d} = {i}\n" for i in range(55_000))  # ~1 MB
    raw.client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": text}})
    changes = [{"range": {"start": {"line": i * 2, "character": 0}, "end": {"line": i * 2, "character": 5}},
                "text": "v"} for i in range(20_000)]
    raw.client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": changes})
    lines = text.split("\n")
    for i in range(20_000):
        lines[i * 2] = "v" + lines[i * 2][5:]
    assert raw.client.texts([uri])[uri] == "\n".join(lines)
    raw.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    book = "file:///raw/book.ipynb"
    cells = [f"file:///raw/book.ipynb#c{i}" for i in range(10_000)]
    raw.client.notify("notebookDocument/didOpen", {
        "notebookDocument": {"uri": book, "notebookType": "jupyter-notebook", "version": 1,
                             "cells": [{"kind": 2, "document": c} for c in cells]},
        "cellTextDocuments": [{"uri": c, "languageId": "python", "version": 1, "text": "x = 1\n"} for c in cells]})
    raw.client.notify("notebookDocument/didChange", {
        "notebookDocument": {"uri": book, "version": 2},
        "change": {"cells": {"data": [{"kind": 1, "document": c} for c in cells]}}})
    assert raw.client.status()["open_documents"] == 10_000
    raw.client.notify("notebookDocument/didClose", {"notebookDocument": {"uri": book},
                                                    "cellTextDocuments": [{"uri": c} for c in cells]})
    raw.completion_is_right()


def garbage_stream(rng: random.Random) -> bytes:
    """Framing and JSON-RPC garbage that never declares a body longer than what it sends (a
    declared body swallows what follows, by the protocol's design), and never `exit`/`shutdown`."""
    pieces = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.randrange(7)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80))).replace(b"ength", b"")
        json_junk = json.dumps(rng.choice([
            {"jsonrpc": "2.0", "id": rng.choice([1, "x", None, [1], {"a": 1}, True]), "method": rng.choice(
                [INLINE, "fim-lsp/status", "textDocument/didChange", "initialize", "nope"]),
             "params": rng.choice([None, {}, [], {"position": {"line": "4"}}, 3])},
            {"jsonrpc": rng.choice(["1.0", 2, None]), "method": "fim-lsp/status"},
            [1, 2], "str", 12, {"jsonrpc": "2.0", "result": None, "id": 99}])).encode()
        if kind == 0:
            pieces.append(junk)
        elif kind == 1:
            pieces.append(b"Content-Length: %d\r\n\r\n" % len(junk) + junk)
        elif kind == 2:
            pieces.append(b"Content-Length: %d\r\n\r\n" % len(json_junk) + json_junk)
        elif kind == 3:
            pieces.append(b"Content-Length: %d\r\n\r\n" % rng.randint(0, len(json_junk)) + json_junk)
        elif kind == 4:
            pieces.append(rng.choice([b"content-length: -1\r\n\r\n", b"Content-Length: 99999999999999999999\r\n\r\n",
                                      b"Content-Length: 1e3\r\n\r\n", b"\r\n\r\n", b"Content-Length:\r\n\r\n"]))
        elif kind == 5:
            pieces.append(b"Content-Length: %d\n\n" % len(json_junk) + json_junk)
        else:
            pieces.append(b"X" * rng.randint(0, 20_000) + b"\r\n")
    return b"".join(pieces)


def test_fuzz_a_seeded_stream_of_garbage_leaves_the_server_answering(raw):
    """200 seeded random streams of framing and JSON-RPC garbage (bounded by count, not time): after
    each, a valid request is answered; at the end a completion is right."""
    rng = random.Random(27)
    for round_ in range(200):
        raw.raw(garbage_stream(rng))
        assert raw.client.status()["state"] == "ready", f"round {round_}"
    assert raw.client.proc.poll() is None
    raw.completion_is_right()


def test_shutdown_before_initialize_and_requests_after_shutdown(engine):
    client = SyncClient.spawn(PROBED)
    try:
        with pytest.raises(LspError) as early:
            client.request("shutdown", None, timeout_s=60)
        assert early.value.code == -32002  # not initialized: the session is not wedged
        client.start_session("utf-16", RAW_OPTIONS)
        RawSession(engine, client).completion_is_right()
        assert client.request("shutdown", None) is None
        with pytest.raises(LspError) as late:
            client.status()
        assert late.value.code == -32600 and "shutting down" in late.value.message
        client.notify("exit", None)
        assert client.proc.wait(60) == 0
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
