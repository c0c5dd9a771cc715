"""`fim-lsp engine`: one engine process serving several language servers with separate caches.

The end-to-end test runs the real daemon and two real `fim-lsp serve` processes against it at
once; the oracle is the in-process pipeline on the same checkpoint: every answer must be exactly
what the engine would give in-process. The rest drives the daemon's HTTP surface in this process:
its token, its answers to bad requests, and a client hanging up mid-request.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from lsprotocol import types

from engine.api import BackendInfo, Cancelled, CompletionRequest, CompletionResult, DocId
from engine.backends.openai_backend import RemoteConfig, load_backend as load_remote
from engine.cache import CacheConfig
from fim_lsp.daemon import Engine, main_engine, make_server, tokenizer_json
from engine.fim import EOD_TOKEN, fim_tokens_from_vocab
from engine.select import load_backend
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from fim_lsp.demo import fetch_status
from tests.support.hold import Hold, holding_forward
from tests.test_openai_backend import lsp_session
from tests.test_server_e2e import CODE, TINY, Mirror

LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@pytest.fixture(scope="module")
def daemon():
    """`fim-lsp engine --listen 127.0.0.1:0` with the tiny kit model; yields its URL."""
    proc = subprocess.Popen([sys.executable, "-m", "fim_lsp.cli", "engine", "--listen", "127.0.0.1:0",
                             "--model", TINY, "--dtype", "float32"], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if (m := LISTENING.search(line)) is not None:
            url = m.group(1)
    assert url is not None, f"the daemon did not start: {''.join(lines)}"
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def engine():
    """The oracle: the same checkpoint, backend and dtype, in this process."""
    return pipeline.load_model(ModelConfig(model=TINY, dtype="float32"))


def get(url: str, path: str) -> Any:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


async def test_two_language_servers_share_one_engine_with_separate_caches(daemon: str, engine):
    # one server counts tokens with its own copy of the tokenizer, the other with the daemon's
    async with lsp_session(daemon) as first, lsp_session(daemon, model=None) as second:
        statuses = [await fetch_status(c) for c in (first, second)]
        assert [s["backend"] for s in statuses] == ["openai", "openai"]
        assert "tokens counted with the engine daemon's tokenizer" in statuses[1]["why"]
        uri = "file:///work/project/reader.py"
        mirrors = [Mirror(first, engine), Mirror(second, engine)]
        for mirror in mirrors:
            mirror.config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False))
            mirror.open(uri, CODE)
        cursor = CODE.index("    print(len(lines))")
        for key in "    tot":
            cursors = [mirror.type(uri, cursor, key) for mirror in mirrors]
            cursor = cursors[0]
            answers = await asyncio.gather(*(mirror.inline(uri, cursor) for mirror in mirrors))  # both at once
            assert list(answers) == [mirror.expect(uri, cursor) for mirror in mirrors]
        lasts = [(await fetch_status(c))["last"] for c in (first, second)]
        for last in lasts:
            if not last["reused"]:  # the engine ran: its own slot held all but the newest tokens
                assert last["prompt_tokens"] > last["prefill_tokens"] >= 1, last
                assert 0 < last["min_token_probability"] <= 1, "the engine's token probabilities came through"

        stats = get(daemon, "/v1/fim-lsp/stats")
        assert sorted(stats["clients"].values()) == [[uri], [uri]], "one slot per client for the same document"
        first.text_document_did_close(did_close(uri))
        deadline = time.monotonic() + HANG_S  # the drop travels: server's engine thread -> HTTP -> daemon
        while sorted(get(daemon, "/v1/fim-lsp/stats")["clients"].values()) != [[], [uri]]:
            assert time.monotonic() < deadline, get(daemon, "/v1/fim-lsp/stats")
            await asyncio.sleep(0.1)


def did_close(uri: str) -> types.DidCloseTextDocumentParams:
    return types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))


# -- the HTTP surface, in this process -------------------------------------------------------


@pytest.fixture(scope="module")
def local_engine():
    return load_backend(model=TINY, backend="torch", dtype="float32")


def serve(engine: Engine):
    server = make_server(engine, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def post(url: str, path: str, body: bytes, headers: dict[str, str] | None = None,
         timeout_s: float = 30) -> tuple[int, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_the_token_is_required_and_bad_requests_get_clear_errors(local_engine):
    server, url = serve(Engine(local_engine, tokenizer_json(local_engine), token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}
    ok = json.dumps({"client": "c1", "doc_id": "file:///a.py", "prompt": "<fim_prefix>x = <fim_suffix><fim_middle>",
                     "max_tokens": 4, "temperature": 0}).encode()
    try:
        assert post(url, "/v1/fim-lsp/completions", ok) == (401, {"error": {
            "message": "this engine needs `Authorization: Bearer TOKEN` (its --token-file or $FIM_LSP_TOKEN)",
            "type": "authentication_error", "code": 401}})
        assert post(url, "/v1/fim-lsp/completions", ok, {"Authorization": "Bearer wrong"})[0] == 401
        code, answer = post(url, "/v1/fim-lsp/completions", ok, auth)
        assert code == 200 and answer["prompt_tokens"] > 0 and len(answer["token_ids"]) == answer["generated_tokens"]
        second = post(url, "/v1/fim-lsp/completions",
                      json.dumps({**json.loads(ok), "first_token_rank": 1}).encode(), auth)
        local = local_engine.complete(CompletionRequest(DocId("local"), json.loads(ok)["prompt"], max_new_tokens=4,
                                                        first_token_rank=1))
        assert second[1]["token_ids"] == local.token_ids != answer["token_ids"]  # an alternative, as in process
        lines = {**json.loads(ok), "beam": 3, "stop_at_line_end": True}
        code, searched = post(url, "/v1/fim-lsp/completions", json.dumps(lines).encode(), auth)
        local = local_engine.complete(CompletionRequest(DocId("local-beam"), lines["prompt"], max_new_tokens=4,
                                                        stop_at_line_end=True, beam=3))
        assert code == 200 and [searched["token_ids"], *(a["token_ids"] for a in searched["other_lines"])] == \
            [local.token_ids, *(a.token_ids for a in local.other_lines)]  # the same beam search, as in process
        assert searched["score"] == pytest.approx(local.score) and len(searched["other_lines"]) >= 1
        too_long = {"client": "c1", "doc_id": "d", "prompt": "x = 1\n" * 2000, "max_tokens": 4}
        cases = {
            b"{not json": "the body is not JSON",
            b"[1, 2]": "the body must be a JSON object",
            json.dumps({"doc_id": "d", "prompt": "x"}).encode():
                "`client` must be 1-64 letters, digits, '.', '_' or '-'",
            json.dumps({"client": "c1/x", "doc_id": "d", "prompt": "x"}).encode():
                "`client` must be 1-64 letters, digits, '.', '_' or '-'",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": 7}).encode(): "`prompt` must be one string",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "max_tokens": -1}).encode():
                "`max_tokens` must be an integer in 0..4096, got -1",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "temperature": "hot"}).encode():
                "`temperature` must be a number in 0..10, got 'hot'",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "heal": "yes"}).encode():
                "`heal` must be true or false, got 'yes'",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "stop_at_line_end": 1}).encode():
                "`stop_at_line_end` must be true or false, got 1",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "stop_at_dedent": "4"}).encode():
                "`stop_at_dedent` must be null or a column in 0..4096, got '4'",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "stop_at_loop": "no"}).encode():
                "`stop_at_loop` must be true or false, got 'no'",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "first_token_rank": -1}).encode():
                "`first_token_rank` must be an integer in 0..64, got -1",
            json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "beam": 9}).encode():
                "`beam` must be an integer in 1..8, got 9",
        }
        for body, message in cases.items():
            assert post(url, "/v1/fim-lsp/completions", body, auth) == (400, {"error": {
                "message": message, "type": "invalid_request_error", "code": 400}}), body
        code, answer = post(url, "/v1/fim-lsp/completions", json.dumps(too_long).encode(), auth)
        assert code == 400 and "but the model's window is 512" in answer["error"]["message"]
        assert post(url, "/v1/nothing", b"{}", auth)[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_the_openai_endpoint_gives_the_engines_tokens(local_engine):
    server, url = serve(Engine(local_engine, tokenizer_json(local_engine)))
    try:
        prompt = "<fim_prefix>def area(r):\n    return <fim_suffix>\n<fim_middle>"
        request = CompletionRequest(doc_id=DocId("file:///g.py"), prompt=prompt, max_new_tokens=6)
        expected = local_engine.complete(request)
        for stream in (False, True):
            remote = load_remote(url=url, remote=RemoteConfig(stream=stream), environ={})
            assert remote.mode == "daemon"
            remote.mode = "openai"  # speak plain /v1/completions, as any OpenAI client would
            result = remote.complete(request)
            assert (result.text, result.prompt_tokens) == (expected.text, expected.prompt_tokens)
        assert result.reused_tokens == expected.prompt_tokens - 1, "the `user` slot served the repeat"
    finally:
        server.shutdown()
        server.server_close()


HANG_S = 60  # only a hang takes this long


class Waiting:
    """A backend whose generation runs until it is cancelled (at most HANG_S)."""

    def __init__(self) -> None:
        self.fim = fim_tokens_from_vocab([EOD_TOKEN])
        self.info = BackendInfo("torch", "waiting", "cpu", "float32", 512)
        self.started, self.cancelled = threading.Event(), threading.Event()

    def count_tokens(self, text: str) -> int:
        return len(text)

    def complete(self, request, cancel=None) -> CompletionResult:
        self.started.set()
        for _ in range(HANG_S * 1000):  # one "decode step" a millisecond
            if cancel is not None and cancel.cancelled:
                self.cancelled.set()
                raise Cancelled("cancelled")
            time.sleep(0.001)
        raise AssertionError("never cancelled")

    def drop(self, doc_id) -> None:
        pass

    def cache_stats(self) -> dict[str, int]:
        return {}


def test_a_client_hanging_up_cancels_its_generation():
    backend = Waiting()
    server, url = serve(Engine(backend, None))
    try:
        body = json.dumps({"client": "c1", "doc_id": "d", "prompt": "x", "max_tokens": 4}).encode()
        with socket.create_connection(server.server_address[:2]) as sock:
            sock.sendall(b"POST /v1/fim-lsp/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            assert backend.started.wait(HANG_S), "the engine never started the generation"
        # the client hung up mid-generation: only the hang-up can stop it before HANG_S
        assert backend.cancelled.wait(HANG_S), "the engine saw the hang-up"
    finally:
        server.shutdown()
        server.server_close()


def test_binding_beyond_loopback_needs_a_token(capsys):
    args = argparse.Namespace(listen="0.0.0.0:0", token=None, token_file=None, backend="auto", model=TINY,
                              device="auto", dtype="auto", revision=None, threads=None, url=None)
    assert main_engine(args) == 2
    assert "--listen 0.0.0.0 is reachable from other machines; pass --token-file PATH" in capsys.readouterr().err
    args.listen, args.backend = "127.0.0.1:0", "openai"
    assert main_engine(args) == 2
    assert "the engine runs the model itself" in capsys.readouterr().err


# -- several clients on one document -----------------------------------------------------------


class Watched:
    """The real engine behind an in-process daemon, recording each slot's request: its cancel
    token, whether it started and how it ended; `hold_next` holds the next request mid-decode."""

    def __init__(self, inner) -> None:
        self.inner, self.info, self.fim = inner, inner.info, inner.fim
        self.tokens: dict[str, Any] = {}  # slot -> the cancel token of its latest request
        self.ended: dict[str, str] = {}  # slot -> "answered" or "cancelled"
        self.started = threading.Condition()
        self.next_hold: Hold | None = None
        self.held: str | None = None  # the slot whose request took the hold

    def complete(self, request, cancel=None) -> CompletionResult:
        with self.started:
            self.tokens[request.doc_id] = cancel
            self.started.notify_all()
            hold, self.next_hold = self.next_hold, None
            if hold is not None:
                self.held = request.doc_id
        try:
            if hold is None:
                result = self.inner.complete(request, cancel)
            else:
                with holding_forward(self.inner, hold):
                    result = self.inner.complete(request, cancel)
        except Cancelled:
            self.ended[request.doc_id] = "cancelled"
            raise
        self.ended[request.doc_id] = "answered"
        return result

    def wait_started(self, count: int) -> list[str]:
        """The slots whose requests reached the engine, once `count` did."""
        with self.started:
            assert self.started.wait_for(lambda: len(self.tokens) >= count, HANG_S), self.tokens
            return list(self.tokens)

    def __getattr__(self, name: str) -> Any:  # count_tokens, drop, cache_stats, ...: the engine's
        return getattr(self.inner, name)


def until(condition, what: str) -> None:
    """Wait for `condition` (checked every few milliseconds); fail after HANG_S."""
    deadline = time.monotonic() + HANG_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {HANG_S} s"
        threading.Event().wait(0.005)


@pytest.fixture(scope="module")
def solo():
    """The single-client answer: the same checkpoint with no K/V reuse and no cross-slot seeding."""
    return load_backend(model=TINY, backend="torch", dtype="float32",
                        cache=CacheConfig(reuse=False, share_blocks=False))


def fim_prompt(typed: str) -> str:
    at = CODE.index("    print(len(lines))")
    return f"<fim_prefix>{CODE[:at]}{typed}<fim_suffix>{CODE[at:]}<fim_middle>"


def test_three_clients_on_one_document_get_single_client_answers_and_a_hang_up_cancels_only_its_own(solo):
    backend = Watched(load_backend(model=TINY, backend="torch", dtype="float32"))
    server, url = serve(Engine(backend, None))
    doc = "file:///work/project/reader.py"
    prompts = {"c1": fim_prompt("    tot"), "c2": fim_prompt("    n = "), "c3": fim_prompt("    tot")}

    def body(client: str) -> bytes:
        return json.dumps({"client": client, "doc_id": doc, "prompt": prompts[client], "max_tokens": 8}).encode()

    def expected(client: str) -> tuple[str, list[int]]:
        result = solo.complete(CompletionRequest(DocId(f"solo-{client}"), prompts[client], max_new_tokens=8))
        solo.drop(DocId(f"solo-{client}"))
        return result.text, result.token_ids

    answers: dict[str, Any] = {}
    hold = Hold()

    def ask(client: str) -> None:
        code, answer = post(url, "/v1/fim-lsp/completions", body(client), timeout_s=HANG_S)
        answers[client] = (code, answer["text"], answer["token_ids"]) if code == 200 else (code, answer)

    try:
        backend.next_hold = hold
        first = threading.Thread(target=ask, args=("c1",))
        first.start()
        assert hold.reached.wait(HANG_S), "c1's generation never decoded"  # c1 holds the engine mid-decode
        third = threading.Thread(target=ask, args=("c3",))
        with socket.create_connection(server.server_address[:2]) as sock:  # c2 speaks raw HTTP, to hang up
            raw = body("c2")
            sock.sendall(b"POST /v1/fim-lsp/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw)
            third.start()
            assert sorted(backend.wait_started(3)) == [f"c1/{doc}", f"c2/{doc}", f"c3/{doc}"]
        # c2 hung up while c1 decodes and c3 waits: only c2's request is cancelled
        until(lambda: backend.tokens[f"c2/{doc}"].cancelled, "c2's cancel")
        assert not backend.tokens[f"c1/{doc}"].cancelled and not backend.tokens[f"c3/{doc}"].cancelled
        hold.release.set()
        first.join(HANG_S)
        third.join(HANG_S)
        assert answers == {c: (200, *expected(c)) for c in ("c1", "c3")}
        until(lambda: f"c2/{doc}" in backend.ended, "c2's request ending")
        assert backend.ended == {f"c1/{doc}": "answered", f"c2/{doc}": "cancelled", f"c3/{doc}": "answered"}
        ask("c2")  # c2 asks again: its slot holds what the cancelled request wrote, and the answer is right
        assert answers["c2"] == (200, *expected("c2"))
        assert get(url, "/v1/fim-lsp/stats")["clients"] == {c: [doc] for c in ("c1", "c2", "c3")}
    finally:
        hold.release.set()
        server.shutdown()
        server.server_close()


async def test_a_cancel_in_one_language_server_leaves_the_other_servers_request_on_the_same_document(engine):
    backend = Watched(load_backend(model=TINY, backend="torch", dtype="float32"))
    server, url = serve(Engine(backend, tokenizer_json(backend.inner)))
    uri = "file:///work/project/reader.py"
    hold = Hold()
    try:
        async with lsp_session(url) as first, lsp_session(url) as second:
            mirrors = [Mirror(first, engine), Mirror(second, engine)]
            for mirror in mirrors:
                mirror.config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, neighbours=False))
                mirror.open(uri, CODE)
            cursor = mirrors[0].type(uri, CODE.index("    print(len(lines))"), "    tot")
            mirrors[1].type(uri, cursor - 7, "    tot")
            backend.next_hold = hold
            kept = asyncio.ensure_future(mirrors[1].inline(uri, cursor))
            assert await asyncio.to_thread(hold.reached.wait, HANG_S), "the second server's request never decoded"
            params = types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=mirrors[0].position(uri, cursor),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
            cancelled = asyncio.wrap_future(first.protocol.send_request(
                types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="cancel-me"))
            slots = await asyncio.to_thread(backend.wait_started, 2)  # the first server's request reached the daemon
            mine = next(slot for slot in slots if slot != backend.held)
            first.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(cancelled, HANG_S)  # only a hang takes this long
            assert getattr(info.value, "code", None) == -32800
            await asyncio.to_thread(until, lambda: backend.tokens[mine].cancelled, "the first server's cancel")
            others = [slot for slot in backend.tokens if slot != mine]
            assert len(others) == 1 and not backend.tokens[others[0]].cancelled, "only the cancelled request stops"
            hold.release.set()
            assert await asyncio.wait_for(kept, HANG_S) == mirrors[1].expect(uri, cursor)
            assert await mirrors[0].inline(uri, cursor) == mirrors[0].expect(uri, cursor)  # and it is served again
            assert backend.ended[others[0]] == "answered"
    finally:
        hold.release.set()
        server.shutdown()
        server.server_close()
