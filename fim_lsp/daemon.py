"""`fim-lsp engine`: one engine process shared by several `fim-lsp serve` processes, over HTTP.

One model in memory for every editor a developer has open. The daemon holds the local engine
(torch or ONNX Runtime, with its per-document KV slots) and speaks two dialects:

- `POST /v1/completions`, `GET /v1/models`: the OpenAI-compatible subset any client can use
  (one slot per `user` field, so unrelated callers do not evict each other's prefix);
- `POST /v1/fim-lsp/completions` and `/v1/fim-lsp/drop`, `GET /v1/fim-lsp/info`,
  `/v1/fim-lsp/tokenizer`, `/v1/fim-lsp/stats`: ours, carrying a client id and the document id,
  so each editor's documents keep their own slots (`client/doc_id`) and the language server can
  count tokens with the engine's own tokenizer.

It binds to loopback unless told otherwise, and then only with a secret (`--token-file` or
$FIM_LSP_TOKEN; sent by clients as
`Authorization: Bearer TOKEN`, the OpenAI API key header). A client that hangs up mid-request
cancels its generation at the engine's next step.
"""
from __future__ import annotations

import hmac
import json
import re
import select
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engine.api import Backend, CancelToken, Cancelled, CompletionRequest, DocId

MAX_BODY_BYTES = 8 * 2**20  # a prompt is at most a few hundred KB; refuse anything far larger
DISCONNECT_POLL_S = 0.02  # how often a running request checks that its client is still connected
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RequestError(ValueError):
    """A request the daemon cannot take; carries the HTTP status to answer with."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Engine:
    """The shared backend and the documents each client has open on it."""

    backend: Backend
    tokenizer_json: str | None  # the text of the model's tokenizer.json, served to clients
    token: str | None = None  # required bearer token; None = none required (loopback)
    clients: dict[str, set[str]] = field(default_factory=dict)  # client id -> its document ids
    lock: threading.Lock = field(default_factory=threading.Lock)

    def slot(self, client: str, doc_id: str) -> DocId:
        """The engine slot of one client's document: namespaced, so clients never share a slot."""
        with self.lock:
            self.clients.setdefault(client, set()).add(doc_id)
        return DocId(f"{client}/{doc_id}")

    def drop(self, client: str, doc_id: str) -> bool:
        with self.lock:
            known = doc_id in self.clients.get(client, set())
            self.clients.get(client, set()).discard(doc_id)
        if known:
            self.backend.drop(DocId(f"{client}/{doc_id}"))
        return known

    def stats(self) -> dict[str, Any]:
        with self.lock:
            clients = {c: sorted(docs) for c, docs in self.clients.items()}
        return {"clients": clients, "cache": self.backend.cache_stats()}


def completion_request(body: dict[str, Any], doc_id: DocId, default_temperature: float) -> CompletionRequest:
    """The engine request a JSON body asks for; RequestError naming the bad field."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(HTTPStatus.BAD_REQUEST, "`prompt` must be one string")
    max_tokens = body.get("max_tokens", 16)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 0 <= max_tokens <= 4096:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`max_tokens` must be an integer in 0..4096, got {max_tokens!r}")
    temperature = number(body, "temperature", default_temperature, 0.0, 10.0)
    top_p = number(body, "top_p", 1.0, 0.0, 1.0)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`seed` must be an integer, got {seed!r}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError(HTTPStatus.BAD_REQUEST, "`stop` must be a string or a list of strings")
    budget = body.get("time_budget_s")
    if budget is not None and (not isinstance(budget, (int, float)) or budget <= 0):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`time_budget_s` must be a positive number, got {budget!r}")
    heal = body.get("heal", False)
    if not isinstance(heal, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`heal` must be true or false, got {heal!r}")
    stop_at_line_end = body.get("stop_at_line_end", False)
    if not isinstance(stop_at_line_end, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"`stop_at_line_end` must be true or false, got {stop_at_line_end!r}")
    stop_at_loop = body.get("stop_at_loop", False)
    if not isinstance(stop_at_loop, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`stop_at_loop` must be true or false, got {stop_at_loop!r}")
    dedent = body.get("stop_at_dedent")
    if dedent is not None and (not isinstance(dedent, int) or isinstance(dedent, bool) or not 0 <= dedent <= 4096):
        raise RequestError(HTTPStatus.BAD_REQUEST,
                           f"`stop_at_dedent` must be null or a column in 0..4096, got {dedent!r}")
    rank = body.get("first_token_rank", 0)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank <= 64:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`first_token_rank` must be an integer in 0..64, got {rank!r}")
    beam = body.get("beam", 1)
    if not isinstance(beam, int) or isinstance(beam, bool) or not 1 <= beam <= 8:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`beam` must be an integer in 1..8, got {beam!r}")
    return CompletionRequest(doc_id=doc_id, prompt=prompt, max_new_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, stop_strings=tuple(stop), time_budget_s=budget, heal=heal,
                             stop_at_line_end=stop_at_line_end, stop_at_dedent=dedent, stop_at_loop=stop_at_loop,
                             first_token_rank=rank, beam=beam)


def number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`{key}` must be a number in {low:g}..{high:g}, got {value!r}")
    return float(value)


def openai_answer(result, model: str, stream: bool) -> dict[str, Any]:
    """An OpenAI text_completion object (or its one streamed chunk) for an engine result."""
    finish = "length" if result.stop_reason in ("max_tokens", "time_budget") else "stop"
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": result.text, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.generated_tokens,
                  "total_tokens": result.prompt_tokens + result.generated_tokens,
                  "prompt_tokens_details": {"cached_tokens": result.reused_tokens}},
    }


def fim_answer(result) -> dict[str, Any]:
    """Our endpoint's answer: the engine's CompletionResult as JSON."""
    return {"text": result.text, "token_ids": result.token_ids, "stop_reason": result.stop_reason,
            "prompt_tokens": result.prompt_tokens, "reused_tokens": result.reused_tokens,
            "prefill_tokens": result.prefill_tokens, "generated_tokens": result.generated_tokens,
            "latency_ms": result.latency_ms, "extra": result.extra,
            "token_logprobs": result.token_logprobs, "token_ends": result.token_ends,
            "score": result.score, "other_lines": [fim_answer(other) for other in result.other_lines]}


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 connection (kept alive) to the daemon."""

    protocol_version = "HTTP/1.1"
    server_version = "fim-lsp-engine/0.1"
    engine: Engine  # set on the subclass `make_server` builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # one line per keystroke would drown stderr; errors are answered to the client

    def do_GET(self) -> None:
        self.dispatch({
            "/v1/models": self.models,
            "/v1/fim-lsp/info": self.info,
            "/v1/fim-lsp/tokenizer": self.tokenizer,
            "/v1/fim-lsp/stats": lambda: self.engine.stats(),
        }, has_body=False)

    def do_POST(self) -> None:
        self.dispatch({
            "/v1/completions": self.openai_completions,
            "/v1/fim-lsp/completions": self.fim_completions,
            "/v1/fim-lsp/drop": self.drop,
        }, has_body=True)

    def dispatch(self, routes: dict[str, Any], has_body: bool) -> None:
        try:
            self.body = self.read_body() if has_body else {}
            self.authorize()
            route = routes.get(self.path.split("?")[0])
            if route is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no {self.command} {self.path} here")
            answer = route()
            if answer is not None:
                self.send_json(HTTPStatus.OK, answer)
        except RequestError as exc:
            self.send_error_json(exc.status, str(exc))
        except Cancelled:
            self.close_connection = True  # the client hung up: nobody to answer
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # the engine failed on a request: answer it, keep serving others
            self.send_error_json(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    def read_body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send a JSON body with Content-Length")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def authorize(self) -> None:
        token = self.engine.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise RequestError(HTTPStatus.UNAUTHORIZED,
                               "this engine needs `Authorization: Bearer TOKEN` (its --token-file or $FIM_LSP_TOKEN)")

    # -- routes ------------------------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        info = self.engine.backend.info
        return {"object": "list", "data": [{"id": info.model, "object": "model", "owned_by": "fim-lsp",
                                            "max_model_len": info.n_ctx}]}

    def info(self) -> dict[str, Any]:
        b = self.engine.backend
        return {"engine": "fim-lsp", "model": b.info.model, "backend": b.info.backend, "device": b.info.device,
                "dtype": b.info.dtype, "n_ctx": b.info.n_ctx, "params": b.info.params, "family": b.fim.family,
                "has_tokenizer": self.engine.tokenizer_json is not None, "searches_lines": b.searches_lines}

    def tokenizer(self) -> str:
        if self.engine.tokenizer_json is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "this engine's model has no tokenizer.json to share")
        return self.engine.tokenizer_json

    def openai_completions(self) -> None:
        user = self.body.get("user") or "default"
        if not isinstance(user, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "`user` must be a string")
        request = completion_request(self.body, DocId(f"openai/{user}"), default_temperature=1.0)
        answer = openai_answer(self.run(request), self.engine.backend.info.model, bool(self.body.get("stream")))
        if not self.body.get("stream"):
            self.send_json(HTTPStatus.OK, answer)
            return
        # the engine decodes to the end before answering: one event carries the whole text
        payload = f"data: {json.dumps(answer)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def fim_completions(self) -> dict[str, Any]:
        client, doc_id = self.client_and_doc()
        request = completion_request(self.body, self.engine.slot(client, doc_id), default_temperature=0.0)
        return fim_answer(self.run(request))

    def drop(self) -> dict[str, Any]:
        client, doc_id = self.client_and_doc()
        return {"dropped": self.engine.drop(client, doc_id)}

    def client_and_doc(self) -> tuple[str, str]:
        client, doc_id = self.body.get("client"), self.body.get("doc_id")
        if not isinstance(client, str) or not CLIENT_ID.match(client):
            raise RequestError(HTTPStatus.BAD_REQUEST, "`client` must be 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(doc_id, str) or not doc_id:
            raise RequestError(HTTPStatus.BAD_REQUEST, "`doc_id` must be a non-empty string")
        return client, doc_id

    def run(self, request: CompletionRequest):
        """Complete on the shared engine, cancelling when this client hangs up."""
        cancel = CancelToken()
        done = threading.Event()
        watcher = threading.Thread(target=watch_disconnect, args=(self.connection, cancel, done), daemon=True)
        watcher.start()
        try:
            return self.engine.backend.complete(request, cancel)
        except ValueError as exc:  # the engine's RequestError: a prompt too long for the window, ...
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        finally:
            done.set()
            watcher.join()

    # -- answers -----------------------------------------------------------------------------

    def send_json(self, status: HTTPStatus, answer: Any) -> None:
        payload = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    def send_error_json(self, status: HTTPStatus, message: str) -> None:
        kind = "authentication_error" if status == HTTPStatus.UNAUTHORIZED else "invalid_request_error"
        try:
            self.send_json(status, {"error": {"message": message, "type": kind, "code": int(status)}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def watch_disconnect(conn: socket.socket, cancel: CancelToken, done: threading.Event) -> None:
    """Cancel `cancel` when the peer closes `conn` before `done` is set."""
    while not done.wait(DISCONNECT_POLL_S):
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if readable and conn.recv(1, socket.MSG_PEEK) == b"":
                cancel.cancel()
                return
        except (OSError, ValueError):  # closed under us
            cancel.cancel()
            return


def make_server(engine: Engine, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server bound to (host, port) answering for `engine` (port 0: any free one)."""
    handler = type("EngineHandler", (Handler,), {"engine": engine})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("EngineServer", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
    return server_cls((host, port), handler)


def tokenizer_json(backend: Backend) -> str | None:
    """The backend's tokenizer as tokenizer.json text, when it holds a `tokenizers` tokenizer."""
    tok = getattr(getattr(backend, "tokenizer", None), "tokenizer", None)
    return tok.to_str() if hasattr(tok, "to_str") else None


def main_engine(args) -> int:
    from engine.loading import CheckpointError
    from engine.select import load_backend
    from fim_lsp.secret import TOKEN_ENV, read_token
    from lsp_server.address import is_loopback, parse_listen

    say = lambda msg: print(f"fim-lsp engine: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        host, port = parse_listen(args.listen)
        token = read_token(args, "fim-lsp engine")
    except (OSError, ValueError) as exc:
        say(str(exc).replace("--tcp", "--listen"))
        return 2
    if not is_loopback(host) and not token:
        say(f"--listen {host} is reachable from other machines; pass --token-file PATH or set ${TOKEN_ENV} "
            f"(clients send the secret as their API key) or bind 127.0.0.1")
        return 2
    if args.backend == "openai":
        say("--backend openai would forward to another server; the engine runs the model itself: "
            "use --backend auto, torch or onnx")
        return 2
    try:
        backend = load_backend(model=args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                               revision=args.revision, threads=args.threads, speculate=args.speculate,
                               progress=lambda msg, frac: say(f"{msg} ({frac:.0%})"))
    except (CheckpointError, ValueError, OSError) as exc:
        say(f"could not load the model: {exc}")
        return 2
    try:
        server = make_server(Engine(backend, tokenizer_json(backend), token), host, port)
    except OSError as exc:
        say(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 2
    bound_host, bound_port = server.server_address[:2]
    info = backend.info
    say(f"{info.model} on {info.backend} {info.device} {info.dtype}; listening on http://{bound_host}:{bound_port}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0
