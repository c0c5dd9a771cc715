"""The remote backend: completions from an OpenAI-compatible server (vLLM, TGI, llama.cpp, `fim-lsp engine`).

The language server builds the FIM prompt itself, with the same prompt core as in-process, and
sends the text to `POST {url}/v1/completions`; the server's own prefix cache (vLLM's automatic
prefix caching, llama.cpp's `cache_prompt`) does the reuse, which the SPM prompt and the chunked
window keep hitting. When the server is our own engine daemon (`fim-lsp engine`), requests go to
its richer endpoint instead, carrying this process's client id and the document id, so the
daemon's per-document KV slots line up with the editor's documents.

HTTP is httpx's, run on one event loop thread for the process: pooled keep-alive connections,
timeouts per phase, `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment as every Python HTTP
tool reads them, TLS trusting `caBundle`, else `SSL_CERT_FILE`/`SSL_CERT_DIR`, else the system's
store and certifi's; streamed answers are read with httpx-sse. A cancelled request is a cancelled
task, whose connection httpx closes: servers that notice stop generating. Token counts come from a
local tokenizer copy (`--model DIR`), else from the daemon's tokenizer, else from a conservative
characters-per-token estimate. Failures become `BackendError` with a message naming the server and
what to do. The API key is read at call time (configuration first, then the environment) and
never logged.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import certifi
import httpx
from httpx_sse import EventSource

from engine.api import (
    BackendError, BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, DocId, StopReason,
    end_of_use,
)
from engine import fim
from engine.fim import Family, FimTokens, fim_tokens_from_vocab

log = logging.getLogger("fim-lsp.openai")

API_KEY_ENV = "FIM_LSP_API_KEY"
CHARS_PER_TOKEN_ESTIMATE = 2.0  # code averages 3-4 characters per BPE token: 2 over-counts, so prompts fit
DEFAULT_N_CTX = 2048  # when neither a local config.json nor the server says
WATCH_POLL_S = 0.01  # how often a request's watcher looks at its CancelToken and deadline
DAEMON_INFO = "/v1/fim-lsp/info"
DAEMON_TOKENIZER = "/v1/fim-lsp/tokenizer"
DAEMON_COMPLETIONS = "/v1/fim-lsp/completions"
DAEMON_DROP = "/v1/fim-lsp/drop"
OPENAI_COMPLETIONS = "/v1/completions"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
Mode = Literal["unknown", "daemon", "openai"]
Scored = list[tuple[str, float]]  # (token text, log-probability) per generated token


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """How to talk to the server, beyond its URL."""

    api_key: str | None = field(default=None, repr=False)  # bearer key; None = the environment's, read per call
    api_key_env: str = API_KEY_ENV  # the environment variable holding the key
    family: Family | None = None  # FIM spelling when no tokenizer is at hand; None = starcoder
    served_model: str | None = None  # the `model` field sent; None = the first of the server's /v1/models
    n_ctx: int | None = None  # the model's window; None = from config.json or the server
    connect_timeout_s: float = 3.0  # to open the TCP connection (and the TLS handshake)
    read_timeout_s: float = 30.0  # for the whole answer of one request
    retries: int = 2  # extra attempts after a refused connection or a 429/5xx
    backoff_s: float = 0.25  # first wait before a retry; doubles each time
    stream: bool = False  # read the answer as server-sent events (stops early on a stop string)
    client_id: str | None = None  # this process's namespace in a shared daemon; None = a random one
    ca_bundle: str | None = None  # PEM file (or directory) of the CAs trusted for https; None = see tls_trust


class _Retry(Exception):
    """An attempt that may succeed if repeated (connection refused or reset, 429, 5xx)."""

    def __init__(self, message: str, before_response: bool = False) -> None:
        super().__init__(message)
        self.before_response = before_response  # no status line was read


class _NotFound(BackendError):
    """HTTP 404: the path does not exist on this server."""


class OpenAIBackend:
    """`engine.api.Backend` over an OpenAI-compatible `/v1/completions` server."""

    def __init__(self, url: str, config: RemoteConfig = RemoteConfig(), tokenizer: Any = None,
                 fim: FimTokens | None = None, n_ctx: int | None = None, why: str = "",
                 environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base = base_url(url)  # scheme://host:port/prefix: what messages name, and where /v1/... goes
        self.config = config
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer, or None to estimate counts
        self.fim = fim or family_tokens(config.family or "starcoder")
        self.environ, self.clock, self.sleep = environ, clock, sleep
        self.client_id = config.client_id or uuid.uuid4().hex[:16]
        self.mode: Mode = "unknown"
        self.daemon_searches = False  # the daemon's engine runs beam searches (its info says)
        self.served_model = config.served_model
        self.client, self.loop = http_client(config), http_loop()  # httpx's, on the one event loop of remote HTTP
        self.conn: httpx.Response | None = None  # the answer being read, while one is
        self.counters = {"requests": 0, "errors": 0, "retries": 0, "cancelled": 0}
        self.info = BackendInfo(backend="openai", model=f"{self.served_model or 'model'} at {self.base}",
                                device="remote", dtype="remote", n_ctx=n_ctx or config.n_ctx or DEFAULT_N_CTX,
                                why=why)

    # -- Backend protocol -------------------------------------------------------------------

    @property
    def ranks_first_token(self) -> bool:
        """Whether CompletionRequest.first_token_rank is honoured: by our engine daemon only."""
        return self.mode == "daemon"

    @property
    def searches_lines(self) -> bool:
        """Whether CompletionRequest.beam is honoured: by our engine daemon, where its backend does."""
        return self.mode == "daemon" and self.daemon_searches

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        start = self.clock()
        self.counters["requests"] += 1
        stops = stop_list(self.fim, request.stop_strings)
        try:
            if self.mode == "unknown":
                self.probe(cancel)
            path, body = self.request_body(request, stops)
            if self.mode == "daemon":
                return self.daemon_result(self.post(path, body, cancel), start)
            if self.config.stream:
                text, finish, usage, scored = self.post_streaming(path, body, stops, cancel,
                                                                  lambda sofar: end_of_use(request, sofar))
            else:
                text, finish, usage, scored = parse_completion(self.post(path, body, cancel), self.base)
        except Cancelled:
            self.counters["cancelled"] += 1
            raise
        except BackendError:
            self.counters["errors"] += 1
            raise
        text, cut = cut_at_stops(text, stops)
        used = None if cut else end_of_use(request, text)
        if used is not None:
            text = text[:used[0]]  # the suggestion's line or block ends there: what follows is never shown
        details = usage.get("prompt_tokens_details") if isinstance(usage.get("prompt_tokens_details"), dict) else {}
        prompt_tokens = int(usage.get("prompt_tokens") or self.count_tokens(request.prompt))
        cached = int(details.get("cached_tokens") or 0)  # vLLM reports it; others leave it out (then 0)
        reason: StopReason = ("stop_string" if cut else used[1] if used is not None
                              else "max_tokens" if finish == "length" else "eos")
        ends = None
        if scored is not None:  # each token's end: the running length of the tokens' texts, within `text`
            ends, end = [], 0
            for token_text, _ in scored:
                end = min(end + len(token_text), len(text))
                ends.append(end)
        return CompletionResult(
            text=text, token_ids=[], stop_reason=reason, prompt_tokens=prompt_tokens, reused_tokens=cached,
            prefill_tokens=prompt_tokens - cached, generated_tokens=int(usage.get("completion_tokens") or 0),
            latency_ms=(self.clock() - start) * 1e3, extra={"cache_reported": float("cached_tokens" in details)},
            token_logprobs=None if scored is None else [logprob for _, logprob in scored], token_ends=ends,
        )

    def request_body(self, request: CompletionRequest, stops: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        """(path, JSON body): our daemon's endpoint with the document id, else plain /v1/completions."""
        if self.mode == "daemon":
            return DAEMON_COMPLETIONS, {
                "client": self.client_id, "doc_id": request.doc_id, "prompt": request.prompt,
                "max_tokens": request.max_new_tokens, "temperature": request.temperature, "top_p": request.top_p,
                "seed": request.seed, "stop": list(stops), "time_budget_s": request.time_budget_s,
                "heal": request.heal, "stop_at_line_end": request.stop_at_line_end,
                "stop_at_dedent": request.stop_at_dedent, "stop_at_loop": request.stop_at_loop,
                "first_token_rank": request.first_token_rank, "beam": request.beam,
            }
        body = {"prompt": request.prompt, "max_tokens": request.max_new_tokens, "temperature": request.temperature,
                "top_p": request.top_p, "stop": list(stops), "stream": self.config.stream}
        if self.served_model:
            body["model"] = self.served_model
        if request.seed is not None:
            body["seed"] = request.seed
        if request.token_probabilities:
            body["logprobs"] = 1  # OpenAI's legacy completions field: vLLM and llama.cpp's servers fill it
        return OPENAI_COMPLETIONS, body

    def drop(self, doc_id: DocId) -> None:
        if self.mode != "daemon":
            return  # a generic server keeps no per-document state of ours
        try:
            self.post(DAEMON_DROP, {"client": self.client_id, "doc_id": doc_id}, None, retries=0)
        except BackendError as exc:  # the daemon evicts by LRU anyway
            log.info("could not drop %s on %s: %s", doc_id, self.base, exc)

    def cache_stats(self) -> dict[str, int]:
        """This process's request counters (the server's cache is its own; never asked from here)."""
        return {"slots": 0, "bytes": 0, **self.counters}

    # -- the server -------------------------------------------------------------------------

    def probe(self, cancel: CancelToken | None = None) -> dict[str, Any] | None:
        """Learn whether the server is our daemon (its info) or a generic one (its model list).

        Returns the daemon's info, or None for a generic server; leaves `mode` "unknown" (and
        raises BackendError) when the server cannot be reached.
        """
        try:
            info = self.get(DAEMON_INFO, cancel)
        except _NotFound:
            self.mode = "openai"
            if self.served_model is None:
                try:
                    models = self.get("/v1/models", cancel)
                    self.served_model = str(models["data"][0]["id"])
                except (_NotFound, KeyError, IndexError, TypeError):
                    pass  # the `model` field is then left out; most single-model servers accept that
            return None
        self.mode = "daemon"
        self.daemon_searches = bool(info.get("searches_lines")) if isinstance(info, dict) else False
        return info

    def get(self, path: str, cancel: CancelToken | None) -> Any:
        return self.request("GET", path, None, cancel, retries=0)

    def post(self, path: str, body: dict[str, Any], cancel: CancelToken | None, retries: int | None = None) -> Any:
        return self.request("POST", path, body, cancel, retries=retries)

    def post_streaming(self, path: str, body: dict[str, Any], stops: tuple[str, ...],
                       cancel: CancelToken | None, used: Callable[[str], Any] = lambda _: None,
                       ) -> tuple[str, str | None, dict[str, Any], Scored | None]:
        """Read a server-sent-event answer; stop reading (closing the connection) at a stop string,
        or once `used(text so far)` says the suggestion is complete."""
        where = self.base

        async def read(response: httpx.Response, path: str):
            if response.status_code != 200 or "text/event-stream" not in response.headers.get("content-type", ""):
                return parse_completion(await self.decode(response, path), where)  # an error, or `stream` ignored
            parts, finish, usage, scored = [], None, {}, []
            async with contextlib.aclosing(EventSource(response).aiter_sse()) as events:
                async for event in events:
                    if event.data.strip() == "[DONE]":
                        break
                    try:
                        answer = json.loads(event.data)
                    except ValueError:
                        raise BackendError(f"the completion server at {where} streamed an event that is not JSON: "
                                           f"{event.data[:200]!r}") from None
                    text, f, u, pairs = parse_completion(answer, where, streamed=True)
                    parts.append(text)
                    finish, usage = f or finish, u or usage
                    if scored is not None and (pairs is not None or text):  # kept only when every token has one
                        scored = None if pairs is None else scored + pairs
                    sofar = "".join(parts)
                    if any(s in sofar for s in stops) or used(sofar) is not None:
                        break  # the answer closes half-read, and so does its connection: the server stops generating
            return "".join(parts), finish, usage, scored

        return self.request("POST", path, body, cancel, read=read)

    def request(self, method: str, path: str, body: dict[str, Any] | None, cancel: CancelToken | None,
                retries: int | None = None, read: Callable[[httpx.Response, str], Any] | None = None) -> Any:
        """Send one request with bounded retries and backoff; `read` the response (default: its JSON)."""
        retries = self.config.retries if retries is None else retries
        attempt = 0
        while True:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("cancelled before the request was sent")
            exchange = _Exchange()
            try:
                return asyncio.run_coroutine_threadsafe(
                    self.watched(self.send(method, path, body, read or self.decode, exchange), cancel), self.loop,
                ).result()
            except _Retry as exc:
                if exc.before_response and not exchange.connected:
                    continue  # a kept-alive connection the server had closed meanwhile: reconnect at once
                if attempt == retries:
                    raise BackendError(f"{exc}{f' (tried {retries + 1} times)' if retries else ''}") from None
                self.counters["retries"] += 1
                self.wait(self.config.backoff_s * 2**attempt, cancel)
                attempt += 1

    async def watched(self, attempt: Coroutine[Any, Any, Any], cancel: CancelToken | None) -> Any:
        """`attempt`, cancelled when `cancel` fires or the answer takes longer than read_timeout_s in all;
        httpx closes the connection of a cancelled request, which stops the server's generation."""
        task = asyncio.ensure_future(attempt)
        deadline = self.clock() + self.config.read_timeout_s
        while not task.done():
            await asyncio.wait([task], timeout=WATCH_POLL_S)
            cancelled = cancel is not None and cancel.cancelled
            if not task.done() and (cancelled or self.clock() > deadline):
                task.cancel()
                await asyncio.wait([task])  # its connection is closed once it is done
                raise Cancelled("cancelled while the server was answering") if cancelled else self.timed_out()
        return task.result()

    async def send(self, method: str, path: str, body: dict[str, Any] | None, read: Callable[..., Any],
                   exchange: "_Exchange") -> Any:
        """One attempt: the request, and `read` of its response; transport failures told as what they mean."""
        try:
            async with self.client.stream(method, self.base + path, json=body, headers=self.headers(),
                                          extensions={"trace": exchange.trace}) as response:
                exchange.answered, self.conn = True, response
                return await read(response, path)
        except httpx.TransportError as exc:
            raise self.translate(exc, exchange.answered) from None
        finally:
            self.conn = None

    def translate(self, exc: httpx.TransportError, answered: bool) -> Exception:
        """A transport failure as BackendError or _Retry."""
        if isinstance(exc, httpx.TimeoutException):
            return self.timed_out()
        where, cause = self.base, os_error(exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return BackendError(f"the completion server at {where} has a certificate this machine does not trust "
                                f"({cause.verify_message}); set caBundle to its CA's PEM file, or $SSL_CERT_FILE")
        if isinstance(exc, httpx.ConnectError):
            reason = os.strerror(cause.errno) if cause is not None and cause.errno else cause or exc
            return _Retry(f"cannot reach the completion server at {where}: {reason}; is it running?")
        # the server hung up, before any answer (http.client's name for that, which users search for) or during one
        name = type(cause).__name__ if cause is not None else (
            "RemoteDisconnected" if isinstance(exc, httpx.RemoteProtocolError) else type(exc).__name__)
        return _Retry(f"the completion server at {where} closed the connection ({name})", before_response=not answered)

    def timed_out(self) -> BackendError:
        return BackendError(f"the completion server at {self.base} did not answer within {self.config.read_timeout_s:g}"
                            f" s; check that it is not overloaded, or raise remoteTimeoutMs")

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        key = self.config.api_key or self.environ.get(self.config.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def decode(self, response: httpx.Response, path: str) -> Any:
        """The JSON of a response; BackendError (or _Retry) for an error status or a body that is not JSON."""
        raw = await response.aread()
        where = self.base
        status = response.status_code
        if status in (404, 405):
            raise _NotFound(f"the completion server at {where} has no {path} (HTTP {status}); "
                            f"is url the address of an OpenAI-compatible server?")
        if status != 200:
            detail = self.redact(error_detail(raw))
            if status in (401, 403):
                has_key = bool(self.config.api_key or self.environ.get(self.config.api_key_env))
                what = "refused the API key" if has_key else "needs an API key"
                raise BackendError(f"the completion server at {where} {what} (HTTP {status}: {detail}); "
                                   f"set apiKey in the settings or ${self.config.api_key_env}")
            if status in RETRY_STATUSES:
                raise _Retry(f"the completion server at {where} answered HTTP {status}: {detail}")
            raise BackendError(f"the completion server at {where} rejected the request (HTTP {status}: {detail})")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BackendError(f"the completion server at {where} sent a reply that is not JSON: "
                               f"{self.redact(excerpt(raw))!r}") from None

    def redact(self, text: str) -> str:
        """`text` with the API key blanked, should a server echo it back."""
        key = self.config.api_key or self.environ.get(self.config.api_key_env)
        return text.replace(key, "***") if key else text

    def wait(self, seconds: float, cancel: CancelToken | None) -> None:
        """Back off for `seconds`, waking early (and raising Cancelled) when `cancel` fires."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if cancel is not None and cancel.cancelled:
                raise Cancelled("cancelled while waiting to retry")
            self.sleep(min(left, WATCH_POLL_S * 5))

    def daemon_result(self, answer: Any, start: float) -> CompletionResult:
        """Our daemon's answer: the engine's own CompletionResult fields."""
        try:
            return CompletionResult(
                text=str(answer["text"]), token_ids=[int(t) for t in answer["token_ids"]],
                stop_reason=answer["stop_reason"], prompt_tokens=int(answer["prompt_tokens"]),
                reused_tokens=int(answer["reused_tokens"]), prefill_tokens=int(answer["prefill_tokens"]),
                generated_tokens=int(answer["generated_tokens"]), latency_ms=(self.clock() - start) * 1e3,
                extra={"engine_ms": float(answer["latency_ms"]),
                       **{k: float(v) for k, v in (answer.get("extra") or {}).items()}},
                token_logprobs=optional_list(answer.get("token_logprobs"), float),
                token_ends=optional_list(answer.get("token_ends"), int),
                score=None if answer.get("score") is None else float(answer["score"]),
                other_lines=[self.daemon_result(other, start) for other in answer.get("other_lines") or ()],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"the engine daemon at {self.base} sent an answer without "
                               f"{exc}: {excerpt(json.dumps(answer).encode())!r}") from None


def optional_list(values: Any, kind: type) -> list | None:
    """`values` as a list of `kind`, or None when absent (a daemon from before the field)."""
    return None if values is None else [kind(v) for v in values]

class _Exchange:
    """What one attempt learnt: whether it opened a connection, whether an answer began."""

    def __init__(self) -> None:
        self.connected = False  # a connection was opened for it (rather than one kept alive)
        self.answered = False  # the status line and headers arrived

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx's trace hook."""
        if event == "connection.connect_tcp.complete":
            self.connected = True


def http_client(config: RemoteConfig) -> httpx.AsyncClient:
    """A pooled client with per-phase timeouts; proxies as the environment says."""
    timeout = httpx.Timeout(connect=config.connect_timeout_s, read=config.read_timeout_s,
                            write=config.read_timeout_s, pool=config.read_timeout_s)
    return httpx.AsyncClient(timeout=timeout, verify=tls_trust(config.ca_bundle), trust_env=True)


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def http_loop() -> asyncio.AbstractEventLoop:
    """The event loop every remote backend's HTTP runs on: one thread, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="fim-remote-http", daemon=True).start()
        return _loop


def tls_trust(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """The CAs trusted for https: `ca_bundle` (a PEM file or a directory of them) alone when given;
    else `$SSL_CERT_FILE` / `$SSL_CERT_DIR` (httpx reads them: True); else the system's store and
    certifi's bundle (a company CA installed system-wide is trusted, as is the public web)."""
    if ca_bundle:
        path = Path(ca_bundle).expanduser()
        try:
            return ssl.create_default_context(**{"capath" if path.is_dir() else "cafile": str(path)})
        except (OSError, ssl.SSLError) as exc:
            raise BackendError(f"caBundle {ca_bundle!r}: {exc.strerror or exc}; give a PEM file of the CA "
                               f"certificates the server's certificate is signed with") from None
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    return context


def base_url(url: str) -> str:
    """`url` as scheme://host:port/prefix, without credentials nor a trailing `/v1`."""
    try:
        parts = httpx.URL(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (httpx.InvalidURL, ValueError):
        raise BackendError(f"url {redact_url(url)!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.host:
        raise BackendError(f"url {redact_url(url)!r} is not an http(s) address; use e.g. http://127.0.0.1:8000")
    host = f"[{parts.host}]" if ":" in parts.host else parts.host
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/').removesuffix('/v1')}"


def os_error(exc: BaseException | None) -> OSError | None:
    """The operating system's error at the root of an httpx exception (refused, reset, certificate), if any."""
    found = None
    while exc is not None:
        found = exc if isinstance(exc, OSError) else found
        exc = exc.__cause__ or exc.__context__
    return found


def load_backend(model: str | None = None, device: str = "auto", dtype: str = "auto", revision: str | None = None,
                 progress=None, url: str | None = None, remote: RemoteConfig | None = None,
                 environ: Mapping[str, str] = os.environ) -> OpenAIBackend:
    """The remote backend for `url`; `model` is an optional local checkpoint directory (its tokenizer).

    Asks the server once whether it is our daemon (then its tokenizer counts tokens exactly); a
    server that cannot be reached now is asked again on the first request.
    """
    if not url:
        raise BackendError("--backend openai needs --url (the server's address, e.g. http://127.0.0.1:8000)")
    config = remote or RemoteConfig()
    tokenizer, fim, n_ctx, notes = None, None, config.n_ctx, []
    if model is not None:
        path = Path(model)
        if not (path / "tokenizer.json").is_file():
            raise BackendError(f"--model {model}: for the openai backend this is a local directory holding the "
                               f"model's tokenizer.json (to count tokens); none found there")
        from engine.tokenizer import CheckpointTokenizer

        local = CheckpointTokenizer.from_dir(path)
        tokenizer, fim = local.tokenizer, local.fim
        n_ctx = n_ctx or read_n_ctx(path)
        notes.append(f"tokens counted with the tokenizer in {path}")
    backend = OpenAIBackend(url, config, tokenizer, fim, n_ctx, environ=environ)
    try:
        info = backend.probe()
    except BackendError as exc:
        info = None
        notes.append(f"server not reachable at start ({exc}); asked again on the first request")
    if info is not None:
        if tokenizer is None:
            backend.tokenizer, backend.fim = tokenizer_from_json(backend.get(DAEMON_TOKENIZER, None))
            notes.append("tokens counted with the engine daemon's tokenizer")
        backend.served_model = backend.served_model or info.get("model")
        n_ctx = n_ctx or int(info.get("n_ctx") or 0) or None
        params = int(info.get("params") or 0)  # the engine daemon's model size (pipeline.beam_for)
    else:
        params = 0
    if backend.tokenizer is None:
        family = config.family or "starcoder"
        notes.append(f"no local tokenizer: {family} FIM tokens{'' if config.family else ' (the default family)'}, "
                     f"tokens estimated at {CHARS_PER_TOKEN_ESTIMATE:g} characters each")
    kind = {"daemon": "engine daemon", "openai": "OpenAI-compatible server", "unknown": "server"}[backend.mode]
    backend.info = BackendInfo(backend="openai", model=f"{backend.served_model or 'model'} at {backend.base}",
                               device="remote", dtype="remote", n_ctx=n_ctx or DEFAULT_N_CTX,
                               why=f"{kind}; " + "; ".join(notes), params=params)
    return backend


# -- pure helpers ----------------------------------------------------------------------------


def family_tokens(family: str) -> FimTokens:
    """The FIM tokens of a family named in configuration."""
    try:
        return fim.family_tokens(family)
    except ValueError as exc:
        raise BackendError(str(exc)) from None


def tokenizer_from_json(text: Any) -> tuple[Any, FimTokens]:
    """A tokenizers.Tokenizer from a parsed tokenizer.json, and its FIM tokens."""
    from tokenizers import Tokenizer

    if not isinstance(text, dict):
        raise BackendError("the engine daemon sent no tokenizer (expected its tokenizer.json)")
    tok = Tokenizer.from_str(json.dumps(text))
    special = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    return tok, fim_tokens_from_vocab(special)


def read_n_ctx(path: Path) -> int | None:
    """`n_positions` from a checkpoint's config.json, if it says."""
    try:
        value = json.loads((path / "config.json").read_text()).get("n_positions")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def stop_list(fim: FimTokens, stop_strings: tuple[str, ...]) -> tuple[str, ...]:
    """The family's FIM tokens and end of text, then the request's stop strings; no repeats."""
    return tuple(dict.fromkeys(s for s in (*fim.stop_tokens(), *stop_strings) if s))


def cut_at_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string (servers that print special tokens leave them in)."""
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def parse_completion(answer: Any, where: str, streamed: bool = False,
                     ) -> tuple[str, str | None, dict[str, Any], list[tuple[str, float]] | None]:
    """(text, finish_reason, usage, (token text, log-probability) pairs or None when the answer has
    none) of a /v1/completions answer; BackendError when it has no text."""
    try:
        choice = answer["choices"][0] if answer.get("choices") or not streamed else {"text": ""}
        text = choice["text"]
        if not isinstance(text, str):
            raise TypeError("choices[0].text is not a string")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise BackendError(f"the completion server at {where} sent JSON without choices[0].text: "
                           f"{excerpt(json.dumps(answer).encode())!r}") from None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    return text, choice.get("finish_reason"), usage, token_scores(choice.get("logprobs"))


def token_scores(logprobs: Any) -> list[tuple[str, float]] | None:
    """(token text, log-probability) pairs of a legacy completions `logprobs` object; None when
    absent or malformed (a server that ignored the request for them)."""
    if not isinstance(logprobs, dict):
        return None
    tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        return None
    if not all(isinstance(t, str) for t in tokens) or not all(isinstance(v, (int, float)) for v in values):
        return None
    return [(t, float(v)) for t, v in zip(tokens, values)]


def error_detail(raw: bytes) -> str:
    """The message of an error body: OpenAI's `{"error": {"message": ...}}`, FastAPI's `detail`, or its start."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return excerpt(raw) or "no body"
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:300]
        if isinstance(error, str):
            return error[:300]
        if body.get("detail"):
            return str(body["detail"])[:300]
    return excerpt(raw)


def excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"


def redact_url(url: str) -> str:
    """`url` without user:password@."""
    return re.sub(r"//[^/@]*@", "//", url)
