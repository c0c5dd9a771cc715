"""Runs completions off the event loop: one engine thread, newest request per document wins.

The LSP event loop must stay free to read the next keystroke, so every model call runs on a
single worker thread (the engine is one model on a few cores; running two generations at once
only makes both slower). Each request gets a CancelToken. A newer request for the same document
cancels the older one; `$/cancelRequest` cancels the awaiting task, and we forward that to the
token so the engine stops at its next decode step. Requests for other documents queue behind the
running one and are answered in turn.

A request identical to the one in flight (same document text, position and settings) shares its
answer instead of cancelling it: VS Code asks `textDocument/inlineCompletion` and, while the user
types a word, `textDocument/completion` for the same keystroke, and the second must not take the
ghost text away from the first. The shared job is cancelled only when all its requests are.

Background work (`lsp_server.prefill`: warming a prompt, prefetching a suggestion) runs on the
same thread in short jobs through `background`; any request cancels the background job in flight
at its next step and queues behind at most that one job.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from engine.api import CancelToken, Cancelled
from lsp_server.pacing import Pacing

T = TypeVar("T")


class Superseded(Exception):
    """A newer request for the same document arrived; this one was dropped."""


@dataclass(slots=True)
class _Ticket:
    """One job in flight for a document, and the requests awaiting it."""

    token: CancelToken
    same: Hashable | None  # what makes a request identical to this one; None: never shared
    done: asyncio.Future  # the job's result or exception
    waiting: int = 0  # requests awaiting `done`
    task: asyncio.Task | None = None  # the job's runner (held here: the loop keeps only weak references)


class Scheduler:
    """One engine thread; per-document cancellation of older requests; a fixed or adaptive wait
    for a newer request (`lsp_server.pacing`)."""

    def __init__(self, debounce_s: float = 0.0, adaptive: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.debounce_s = debounce_s  # a fixed wait (the user's debounceMs); > 0 overrides the adaptive one
        self.adaptive = adaptive  # wait per `Pacing` (typing rate against model latency)
        self.pacing = Pacing()
        self.clock = clock
        self.stopped = False  # shutdown() was called: a new session needs a new scheduler
        self.sleep = sleep  # waits out the debounce (tests pass one they release by hand)
        self._engine = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fim-engine")
        self._latest: dict[str, _Ticket] = {}
        self._background: set[CancelToken] = set()  # background jobs queued or running
        self._idle = asyncio.Event()  # set while no request is queued, debounced or running
        self._idle.set()

    @property
    def busy(self) -> bool:
        """A request is queued, waiting out its debounce, or running."""
        return bool(self._latest)

    async def idle(self) -> None:
        """Return once no request is queued or running."""
        while self._latest:
            await self._idle.wait()

    async def background(self, job: Callable[[CancelToken], T]) -> T:
        """Run `job(token)` on the engine thread as background work: any request cancels `token`
        (the job stops at its next step; one cancelled before it began raises Cancelled)."""
        token = CancelToken()
        if self._latest:
            token.cancel()
        self._background.add(token)
        try:
            return await asyncio.wrap_future(self._engine.submit(_unless_cancelled, job, token))
        finally:
            self._background.discard(token)

    async def run(self, doc_key: str, job: Callable[[CancelToken], T], same: Hashable | None = None) -> T:
        """Run `job(token)` on the engine thread as the newest request for `doc_key`.

        When the job in flight for `doc_key` was started with an equal, non-None `same`, await its
        result instead. Raises Superseded when a newer request for the document replaced this one
        before or while it ran, and asyncio.CancelledError when the awaiting task is cancelled,
        e.g. by `$/cancelRequest` (the token is cancelled once no request awaits the job).
        """
        for token in self._background:
            token.cancel()  # what the user asks for now comes first
        older = self._latest.get(doc_key)
        if same is not None and older is not None and older.same == same and not older.token.cancelled:
            return await self._await(older)
        wait_s = self.pacing.arrived(doc_key, self.clock())
        if self.debounce_s > 0 or not self.adaptive:
            wait_s = self.debounce_s
        ticket = _Ticket(CancelToken(), same, asyncio.get_running_loop().create_future())
        ticket.done.add_done_callback(_retrieve)
        if older is not None:
            older.token.cancel()
        self._latest[doc_key] = ticket
        self._idle.clear()
        ticket.task = asyncio.ensure_future(self._execute(doc_key, ticket, job, wait_s))
        return await self._await(ticket)

    async def _execute(self, doc_key: str, ticket: _Ticket, job: Callable[[CancelToken], Any], wait_s: float) -> None:
        """Run the job (after waiting `wait_s` for a newer request) and settle `ticket.done` with its outcome."""
        try:
            if wait_s > 0:
                await self.sleep(wait_s)
            if ticket.token.cancelled:
                raise Superseded(doc_key)
            future = self._engine.submit(_timed, job, ticket.token, self.clock)
            try:
                result, engine_s = await asyncio.wrap_future(future)
            except Cancelled:
                raise Superseded(doc_key) from None
            self.pacing.answered(engine_s)
            if not ticket.done.done():
                ticket.done.set_result(result)
        except asyncio.CancelledError:  # the server is shutting down
            ticket.done.cancel()
            raise
        except Exception as exc:  # handed to the requests awaiting the job
            if not ticket.done.done():
                ticket.done.set_exception(exc)
        finally:
            if self._latest.get(doc_key) is ticket:
                del self._latest[doc_key]
            if not self._latest:
                self._idle.set()

    async def _await(self, ticket: _Ticket) -> Any:
        """Await the job of `ticket` as one of its requests."""
        ticket.waiting += 1
        try:
            return await asyncio.shield(ticket.done)
        except asyncio.CancelledError:
            if ticket.done.cancelled():
                raise
            ticket.waiting -= 1
            if ticket.waiting == 0:
                ticket.token.cancel()  # no request wants it: the engine stops at its next step
            raise

    def cancel(self, doc_key: str) -> None:
        """Cancel the request in flight for `doc_key`, if any (the document was closed)."""
        ticket = self._latest.pop(doc_key, None)
        if ticket is not None:
            ticket.token.cancel()
        self.pacing.forget(doc_key)
        if not self._latest:
            self._idle.set()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread after the work queued before it (e.g. dropping a slot)."""
        return await asyncio.wrap_future(self._engine.submit(fn))

    def shutdown(self) -> None:
        """Cancel everything in flight and stop the engine thread."""
        self.stopped = True
        for ticket in self._latest.values():
            ticket.token.cancel()
        for token in self._background:
            token.cancel()
        self._engine.shutdown(wait=False, cancel_futures=True)


def _retrieve(done: asyncio.Future) -> None:
    """Mark a job's exception as seen: with every request gone, nobody else reads it."""
    if not done.cancelled():
        done.exception()


def _timed(job: Callable[[CancelToken], T], token: CancelToken, clock: Callable[[], float]) -> tuple[T, float]:
    """`_unless_cancelled`, and the seconds the job took."""
    start = clock()
    result = _unless_cancelled(job, token)
    return result, clock() - start


def _unless_cancelled(job: Callable[[CancelToken], T], token: CancelToken) -> T:
    """Skip a job whose request was cancelled while it waited in the queue."""
    if token.cancelled:
        raise Cancelled("cancelled before it started")
    return job(token)


class LatencyWindow:
    """Latencies of the last `size` completions (milliseconds), for status reports."""

    def __init__(self, size: int = 100) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, latency_ms: float) -> None:
        with self._lock:
            self._values.append(latency_ms)

    def summary(self) -> dict[str, float | int | None]:
        """Count, p50 and p95 in milliseconds (None before the first completion)."""
        with self._lock:
            values = sorted(self._values)
        return {"count": len(values), "p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95)}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank `q`th percentile of already sorted values; None when empty."""
    if not sorted_values:
        return None
    assert 0 < q <= 100, f"percentile must be in (0, 100], got {q}"
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[rank - 1]
