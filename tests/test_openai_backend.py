"""The remote backend against a scripted OpenAI-compatible server on 127.0.0.1.

Each test scripts what the server answers (text, an error status, garbage, silence, a closed
socket) and checks what the backend sends, what it returns, and that every failure is a
BackendError whose message names the server and what to do, within a bounded time. The last test
runs the real language server against the scripted server: a failure is one window/showMessage
and an empty result, and the next good answer is served again.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from engine.api import BackendError, Cancelled, CancelToken, CompletionRequest, DocId
from engine.backends.openai_backend import RemoteConfig, load_backend
from engine.tokenizer import CheckpointTokenizer
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from fim_lsp.demo import fetch_status, wait_until_loaded
from tests.conftest import kit

TINY = str(kit(shape="tiny", family="starcoder"))
PROMPT = "<fim_prefix>def area(r):\n    return <fim_suffix>\n<fim_middle>"
STARCODER_STOPS = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
                   "<file_sep>"]
FAST = RemoteConfig(retries=2, backoff_s=0.01, read_timeout_s=5.0, connect_timeout_s=1.0)


@dataclass(slots=True)
class Seen:
    """One request the scripted server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


Reply = Callable[[BaseHTTPRequestHandler, Seen], None]


@dataclass(slots=True)
class FakeServer:
    """An OpenAI-compatible server on 127.0.0.1 whose completions answer each test scripts."""

    reply: Reply | None = None
    requests: list[Seen] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None
    tls: ssl.SSLContext | None = None  # serve https with this context (tests/test_remote_transport.py)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"

    def completions(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/v1/completions"]

    def start(self) -> "FakeServer":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                seen = Seen(self.command, self.path, dict(self.headers), body)
                fake.requests.append(seen)
                if self.path == "/v1/models":
                    send(self, 200, {"object": "list", "data": [{"id": "served-7b", "object": "model"}]})
                elif self.path == "/v1/completions" and fake.reply is not None:
                    fake.reply(self, seen)
                else:
                    send(self, 404, {"detail": "Not Found"})

            do_GET = do_POST = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, body: Any, content_type: str = "application/json") -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def answer(text: str, finish: str = "stop", usage: dict | None = None) -> Reply:
    body = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 17, "completion_tokens": 3, "total_tokens": 20}}
    return lambda handler, seen: send(handler, 200, body)


def status(code: int, body: Any) -> Reply:
    return lambda handler, seen: send(handler, code, body)


HANG_S = 60  # only a hang takes this long


class Held:
    """A reply that arrives only when the test releases it (or after HANG_S): a server that went silent."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()

    def __call__(self, handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        self.arrived.set()
        self.release.wait(HANG_S)
        try:
            send(handler, 200, {"choices": [{"text": "late", "finish_reason": "stop"}]})
        except OSError:
            pass


@dataclass(slots=True)
class FakeClock:
    """The backend's clock and sleep: sleeping moves the clock on at once and is recorded."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def hang_up(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fake():
    server = FakeServer().start()
    yield server
    server.stop()


def request(max_new_tokens: int = 8, stop: tuple[str, ...] = ("\n\n",)) -> CompletionRequest:
    return CompletionRequest(doc_id=DocId("file:///w/geometry.py"), prompt=PROMPT, max_new_tokens=max_new_tokens,
                             stop_strings=stop)


def test_sends_the_fim_prompt_with_stops_and_key_and_cuts_at_a_stop(fake: FakeServer):
    fake.reply = answer("3.14 * r * r<fim_middle>junk")
    backend = load_backend(url=fake.url, remote=RemoteConfig(api_key="k-123"), environ={})
    assert backend.mode == "openai" and backend.served_model == "served-7b"
    assert [r.path for r in fake.requests] == ["/v1/fim-lsp/info", "/v1/models"]
    result = backend.complete(request())
    sent = fake.completions()[0]
    assert sent.body == {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.0, "top_p": 1.0,
                         "stop": STARCODER_STOPS + ["\n\n"], "stream": False, "model": "served-7b"}
    assert sent.headers["Authorization"] == "Bearer k-123"
    assert (result.text, result.stop_reason, result.prompt_tokens, result.generated_tokens) == (
        "3.14 * r * r", "stop_string", 17, 3)
    assert backend.info.backend == "openai" and backend.info.model == f"served-7b at {fake.url}"
    assert "starcoder FIM tokens (the default family)" in backend.info.why


def test_a_url_setting_with_backend_auto_loads_the_remote_backend(fake: FakeServer):
    """An editor that sets only `url` (backend left at auto) gets the server, as `--url` does."""
    backend = pipeline.load_model(ModelConfig(url=fake.url, remote_model="served-7b"))
    assert backend.info.backend == "openai" and backend.info.model == f"served-7b at {fake.url}"
    assert fake.requests[-1].path == "/v1/fim-lsp/info"  # the name was given: no /v1/models asked


def test_santacoder_family_from_configuration_and_length_finish(fake: FakeServer):
    fake.reply = answer("r ** 2", finish="length")
    backend = load_backend(url=fake.url + "/v1/", remote=RemoteConfig(family="santacoder"), environ={})
    result = backend.complete(request(stop=()))
    assert fake.completions()[0].body["stop"] == ["<|endoftext|>", "<fim-prefix>", "<fim-middle>", "<fim-suffix>",
                                                  "<fim-pad>"]
    assert (result.text, result.stop_reason) == ("r ** 2", "max_tokens")


def test_api_key_is_read_from_the_environment_at_each_call(fake: FakeServer):
    fake.reply = answer("1")
    environ: dict[str, str] = {}
    backend = load_backend(url=fake.url, environ=environ)
    backend.complete(request())
    environ["FIM_LSP_API_KEY"] = "env-key"
    backend.complete(request())
    first, second = fake.completions()
    assert "Authorization" not in first.headers
    assert second.headers["Authorization"] == "Bearer env-key"


def test_streaming_joins_events_and_hangs_up_at_a_stop_string(fake: FakeServer):
    def events(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        chunks = ["3.14", " * r", " * r\n\n", "never read"]
        body = "".join(f"data: {json.dumps({'choices': [{'text': c, 'finish_reason': None}]})}\n\n" for c in chunks)
        send(handler, 200, (body + "data: [DONE]\n\n").encode(), "text/event-stream")

    fake.reply = events
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=True), environ={})
    result = backend.complete(request())
    assert fake.completions()[0].body["stream"] is True
    assert (result.text, result.stop_reason) == ("3.14 * r * r", "stop_string")


def scored_reply(pairs: list[tuple[str, float]], stream: bool, with_scores: bool = True) -> Reply:
    """Tokens with log-probabilities in OpenAI's legacy `logprobs` form, one event each or one answer."""
    def logprobs(part):
        return {"tokens": [t for t, _ in part], "token_logprobs": [v for _, v in part],
                "text_offset": [99] * len(part)} if with_scores else None

    def reply(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        if not stream:
            send(handler, 200, {"choices": [{"text": "".join(t for t, _ in pairs), "finish_reason": "stop",
                                             "logprobs": logprobs(pairs)}]})
            return
        body = "".join(f"data: {json.dumps({'choices': [{'text': t, 'logprobs': logprobs([(t, v)])}]})}\n\n"
                       for t, v in pairs)
        last = {"choices": [{"text": "", "finish_reason": "stop", "logprobs": None}]}  # as llama.cpp ends
        send(handler, 200, (body + f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n").encode(), "text/event-stream")
    return reply


@pytest.mark.parametrize("stream", [False, True])
def test_token_probabilities_are_asked_for_only_when_wanted_and_read_when_given(fake: FakeServer, stream: bool):
    pairs = [("", -3.0), ("3.", -0.1), ("14", -0.2), (" * r", -0.7), ("\n", -0.4), ("more", -6.0)]
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=stream), environ={})
    wanted = replace(request(stop=()), token_probabilities=True, stop_at_line_end=True)
    fake.reply = scored_reply(pairs, stream)
    result = backend.complete(wanted)
    assert fake.completions()[-1].body["logprobs"] == 1
    assert result.text == "3.14 * r\n" and result.token_logprobs == [v for _, v in pairs[:len(result.token_logprobs)]]
    assert result.token_ends[:5] == [0, 2, 4, 8, 9]  # running lengths of the token texts, within the text
    assert result.min_token_probability(len("3.14 * r")) == pytest.approx(math.exp(-0.7))
    fake.reply = scored_reply(pairs, stream, with_scores=False)  # a server that ignores the field
    ignored = backend.complete(wanted)
    assert ignored.text == "3.14 * r\n" and ignored.token_logprobs is None and ignored.min_token_probability(3) is None
    backend.complete(request())
    assert "logprobs" not in fake.completions()[-1].body  # not asked for: never sent


def chunked(chunks: list[str], stream: bool):
    """A reply of `chunks`: streamed one event each, or joined into one answer."""
    if not stream:
        return answer("".join(chunks))

    def reply(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        body = "".join(f"data: {json.dumps({'choices': [{'text': c, 'finish_reason': None}]})}\n\n" for c in chunks)
        send(handler, 200, (body + "data: [DONE]\n\n").encode(), "text/event-stream")
    return reply


@pytest.mark.parametrize("stream", [False, True])
def test_a_one_line_request_ends_at_the_first_line_break_after_text(fake: FakeServer, stream: bool):
    chunks = ["\n", "3.14", " * r", " * r\n    return", " area\n", "never read"]
    fake.reply = chunked(chunks, stream)
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=stream), environ={})
    line = CompletionRequest(doc_id=DocId("file:///w/geometry.py"), prompt=PROMPT, max_new_tokens=32,
                             stop_at_line_end=True)
    result = backend.complete(line)
    assert "stop_at_line_end" not in fake.completions()[0].body  # a generic server is not told
    assert (result.text, result.stop_reason) == ("\n3.14 * r * r\n", "line_end")


@pytest.mark.parametrize("stream", [False, True])
def test_a_suggestion_caught_in_a_loop_is_cut_at_its_first_copy(fake: FakeServer, stream: bool):
    chunks = ["colors = ['red'", ", 'green'", ", 'green'", ", 'green'", ", 'green'", ", 'green'", " never read"]
    fake.reply = chunked(chunks, stream)
    backend = load_backend(url=fake.url, remote=RemoteConfig(stream=stream), environ={})
    looping = CompletionRequest(doc_id=DocId("file:///w/colors.py"), prompt=PROMPT, max_new_tokens=32,
                                stop_at_loop=True)
    result = backend.complete(looping)
    assert (result.text, result.stop_reason) == ("colors = ['red', 'green", "loop")  # the unit is "', 'green"


BAD_ANSWERS = {
    "500": (status(500, {"error": {"message": "CUDA out of memory"}}), 3,
            "the completion server at {url} answered HTTP 500: CUDA out of memory (tried 3 times)"),
    "503 plain text": (status(503, b"overloaded"), 3,
                       "the completion server at {url} answered HTTP 503: overloaded (tried 3 times)"),
    "400": (status(400, {"error": {"message": "prompt is longer than the context"}}), 1,
            "the completion server at {url} rejected the request (HTTP 400: prompt is longer than the context)"),
    "not json": (status(200, b"<html>proxy error</html>"), 1,
                 "the completion server at {url} sent a reply that is not JSON: '<html>proxy error</html>'"),
    "no choices": (status(200, {"object": "text_completion"}), 1,
                   "the completion server at {url} sent JSON without choices[0].text: "
                   "'{{\"object\": \"text_completion\"}}'"),
    "hangs up": (hang_up, 4,  # the first on the probe's kept-alive connection, reopened at once, then 3 tries
                 "the completion server at {url} closed the connection (RemoteDisconnected) (tried 3 times)"),
}


@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_a_bad_answer_is_one_clear_backend_error(fake: FakeServer, case: str):
    reply, attempts, message = BAD_ANSWERS[case]
    fake.reply = reply
    backend = load_backend(url=fake.url, remote=FAST, environ={})
    backend.clock = clock = FakeClock()
    backend.sleep = clock.sleep
    with pytest.raises(BackendError) as caught:
        backend.complete(request())
    assert str(caught.value) == message.format(url=fake.url)
    assert len(fake.completions()) == attempts
    retried = min(attempts - 1, FAST.retries)  # a reconnect on a kept-alive connection waits for nothing
    assert backend.counters["retries"] == retried
    assert sum(clock.slept) == pytest.approx(sum(FAST.backoff_s * 2**i for i in range(retried))), \
        "bounded retries, each backoff twice the one before"
    fake.reply = answer("r * r")  # the same backend serves again once the server does
    assert backend.complete(request()).text == "r * r"


@pytest.mark.parametrize("configured", ["right-key-123", None])
def test_a_refused_key_is_named_and_never_shown(fake: FakeServer, caplog, configured: str | None):
    def check_key(handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        if seen.headers.get("Authorization") != "Bearer right-key-123":
            got = seen.headers.get("Authorization", "")
            send(handler, 401, {"error": {"message": f"Incorrect API key provided: {got[7:]}"}})
        else:
            answer("ok")(handler, seen)

    fake.reply = check_key
    caplog.set_level(logging.DEBUG)
    wrong = RemoteConfig(api_key="wrong-key-456" if configured else None)
    backend = load_backend(url=fake.url, remote=wrong, environ={})
    with pytest.raises(BackendError) as caught:
        backend.complete(request())
    what = "refused the API key" if configured else "needs an API key"
    detail = "Incorrect API key provided: ***" if configured else "Incorrect API key provided: "
    assert str(caught.value) == (f"the completion server at {fake.url} {what} (HTTP 401: {detail}); "
                                 f"set apiKey in the settings or $FIM_LSP_API_KEY")
    assert len(fake.completions()) == 1, "a refused key is not retried"
    good = load_backend(url=fake.url, environ={"FIM_LSP_API_KEY": "right-key-123"})
    assert good.complete(request()).text == "ok"
    shown = [repr(wrong), repr(good.config), repr(good.info), repr(ModelConfig(api_key="wrong-key-456")),
             *(r.getMessage() for r in caplog.records)]
    assert not any("wrong-key-456" in s or "right-key-123" in s for s in shown)


def test_a_slow_server_times_out_without_hanging(fake: FakeServer):
    fake.reply = held = Held()  # silent until released: without the read timeout the backend would get "late"
    backend = load_backend(url=fake.url, remote=RemoteConfig(read_timeout_s=0.3, retries=2), environ={})
    try:
        with pytest.raises(BackendError) as caught:
            backend.complete(request())
    finally:
        held.release.set()
    assert str(caught.value) == (f"the completion server at {fake.url} did not answer within 0.3 s; "
                                 f"check that it is not overloaded, or raise remoteTimeoutMs")
    assert len(fake.completions()) == 1, "a timeout is not retried"


def test_an_unreachable_url_is_a_clear_error_after_bounded_retries():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    backend = load_backend(url=url, remote=FAST, environ={})
    assert backend.mode == "unknown" and "server not reachable at start" in backend.info.why
    backend.mode = "openai"  # as after a successful probe: now the request's own retries apply
    backend.clock = clock = FakeClock()
    backend.sleep = clock.sleep
    with pytest.raises(BackendError) as caught:
        backend.complete(request())
    assert str(caught.value) == (f"cannot reach the completion server at {url}: Connection refused; "
                                 f"is it running? (tried 3 times)")
    assert sum(clock.slept) == pytest.approx(FAST.backoff_s * (1 + 2)), "two backoffs, the second doubled"
    with pytest.raises(BackendError, match="is not an http"):
        load_backend(url="ftp://127.0.0.1:1")


def test_cancelling_closes_the_connection_at_once_and_the_next_request_works(fake: FakeServer):
    fake.reply = held = Held()  # the server holds the request: only the cancel can end it before HANG_S
    backend = load_backend(url=fake.url, remote=replace(FAST, read_timeout_s=2 * HANG_S), environ={})
    cancel = CancelToken()

    def cancel_once_the_server_has_it() -> None:
        held.arrived.wait(HANG_S)
        cancel.cancel()

    threading.Thread(target=cancel_once_the_server_has_it, daemon=True).start()
    try:
        with pytest.raises(Cancelled):
            backend.complete(request(), cancel)
    finally:
        held.release.set()
    assert backend.conn is None, "the interrupted connection is dropped"
    fake.reply = answer("r * r")
    assert backend.complete(request()).text == "r * r"
    assert backend.cache_stats()["cancelled"] == 1


def test_token_counts_use_the_local_tokenizer_else_a_stated_estimate(fake: FakeServer):
    local = load_backend(model=TINY, url=fake.url, environ={})
    tokenizer = CheckpointTokenizer.from_dir(TINY)
    assert local.count_tokens(PROMPT) == len(tokenizer.encode(PROMPT))
    assert local.info.n_ctx == 512 and f"tokenizer in {TINY}" in local.info.why
    estimated = load_backend(url=fake.url, environ={})
    assert estimated.count_tokens("abcde") == 3 and estimated.count_tokens("") == 0
    assert "tokens estimated at 2 characters each" in estimated.info.why
    with pytest.raises(BackendError, match="holding the model's tokenizer.json"):
        load_backend(model=str(fake.url), url=fake.url)


# -- the language server in front of the scripted server ------------------------------------


@asynccontextmanager
async def lsp_session(url: str, model: str | None = TINY, extra: tuple[str, ...] = (),
                      folders: tuple[str, ...] = ()):
    """`fim-lsp serve --backend openai --url URL` over stdio, initialized, its backend loaded.

    `model`: a local checkpoint directory whose tokenizer counts tokens (None: none); `folders`:
    the workspace folders' URIs.
    """
    command = [sys.executable, "-m", "fim_lsp.cli", "serve", "--backend", "openai", "--url", url,
               *(("--model", model) if model else ()), *extra]
    client = await ClientServerConfig(server_command=command).start()
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(
                general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
                text_document=types.TextDocumentClientCapabilities(
                    inline_completion=types.InlineCompletionClientCapabilities())),
            workspace_folders=[types.WorkspaceFolder(uri=f, name=f.rsplit("/", 1)[-1]) for f in folders] or None,
            initialization_options={"maxNewTokens": 8, "neighbours": False}))
        status = await wait_until_loaded(client, timeout_s=60)
        assert status["state"] == "ready" and status["backend"] == "openai", status
        yield client
    finally:
        await client.shutdown_session()


async def inline(client, uri: str, line: int, character: int) -> list[str]:
    """The insert texts of an inline completion at (line, character)."""
    result = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line, character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))), 30)
    return [item.insert_text for item in result.items]


async def test_the_language_server_shows_a_remote_failure_once_and_recovers(fake: FakeServer):
    async with lsp_session(fake.url, extra=("--threads", "1")) as client:
        uri = "file:///w/geometry.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text="def area(r):\n    return \n")))
        fake.reply = status(500, {"error": {"message": "engine crashed"}})
        assert await inline(client, uri, 1, 11) == []
        assert await inline(client, uri, 1, 11) == []
        errors = [m.message for m in client.messages if m.type == types.MessageType.Error]
        assert errors == [f"fim-lsp: the completion server at {fake.url} answered HTTP 500: engine crashed "
                          f"(tried 3 times)"], "shown once for a run of failures"
        assert (await fetch_status(client))["backend_error"] is not None
        fake.reply = answer("3.14159 * r * r")
        assert await inline(client, uri, 1, 11) == ["3.14159 * r * r"]
        assert (await fetch_status(client))["backend_error"] is None
        sent = fake.completions()[-1].body
    # the same prompt core in this process, on the same tokenizer, sends the very same request
    local = load_backend(model=TINY, url=fake.url, environ={})
    settings = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False))
    outcome = pipeline.complete(local, uri, "def area(r):\n    return \n", 1, 11, config=settings,
                                path="geometry.py")  # a file outside any workspace folder goes by its name
    assert outcome.suggestion.text == "3.14159 * r * r"
    assert fake.completions()[-1].body == sent and sent["max_tokens"] == 8


async def test_asking_by_hand_sends_one_request_to_a_server_that_cannot_rank_first_tokens(fake: FakeServer):
    fake.reply = answer("3.14159 * r * r")
    async with lsp_session(fake.url) as client:
        uri = "file:///w/geometry.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text="def area(r):\n    return \n")))
        assert await inline(client, uri, 1, 11) == ["3.14159 * r * r"]  # the backend now knows the server
        before = len(fake.completions())
        result = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(1, 11),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))
        assert [i.insert_text for i in result.items] == ["3.14159 * r * r"]
        assert len(fake.completions()) - before <= 1, "no alternatives asked of a plain OpenAI server"


async def test_the_prompt_names_a_file_by_its_path_in_the_innermost_workspace_folder(fake: FakeServer):
    async with lsp_session(fake.url, folders=("file:///home/me/w", "file:///home/me/w/lib")) as client:
        for uri in ("file:///home/me/w/pkg/geometry.py", "file:///home/me/w/lib/shapes.py", "file:///tmp/scratch.py"):
            client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
                uri=uri, language_id="python", version=1, text="x = ")))
            fake.reply = answer("1")
            assert await inline(client, uri, 0, 4) == ["1"]
        client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            types.WorkspaceFoldersChangeEvent(added=[types.WorkspaceFolder("file:///home/me/w/pkg", "pkg")],
                                              removed=[])))
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri="file:///home/me/w/pkg/area.py", language_id="python", version=1, text="y = ")))
        fake.reply = answer("2")
        assert await inline(client, "file:///home/me/w/pkg/area.py", 0, 4) == ["2"]
    heads = [c.body["prompt"].split("\n", 1)[0] for c in fake.completions()]
    # StarCoder's head: the workspace folder's name as <reponame>, the path inside it as <filename>
    assert heads == ["<reponame>w<filename>pkg/geometry.py", "<reponame>lib<filename>shapes.py",
                     "<filename>scratch.py", "<reponame>pkg<filename>area.py"]
