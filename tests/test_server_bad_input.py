"""Everything a client can get wrong, sent to one `fim-lsp serve` session: each gets an LSP error
or an empty result, and the server keeps answering correctly afterwards."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import subprocess

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient as BaseClient
from pytest_lsp import ClientServerConfig, LanguageClient

from lsp_server import pipeline
from lsp_server.config import ModelConfig
from fim_lsp.demo import fetch_status, plain, wait_until_loaded
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
    await client.initialize_async(types.InitializeParams(capabilities=client.capabilities, initialization_options=OPTIONS))
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
    assert [(i["insertText"], i["range"]) for i in far["items"]] == [(i["insertText"], i["range"]) for i in expected["items"]]

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
        params = types.InitializeParams(capabilities=types.ClientCapabilities(), initialization_options={"token": token})
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
