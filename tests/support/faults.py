"""Fault injection: a Backend wrapper whose failures are armed on command, for tests and the soak.

`FaultyBackend` passes every call through to the backend it wraps until a fault is armed for a
document; that document's next request then meets the fault inside the real engine:

- `decode_error`: the model's forward raises RuntimeError on its second call of the request (the
  prompt is prefilled and the slot written, then a decode step fails, a beam's too);
- `decode_oom`: the same step raises MemoryError (an allocation that failed mid-generation);
- `alloc_error`: allocating the document's K/V buffer raises MemoryError;
- `corrupt_slot`: the document's K/V buffer is overwritten with NaN before the request runs.

Each fault fires once. Besides faults, `hold` makes a document's next request block mid-decode
until the test releases it (`tests.support.hold`). They reach into the engine, so the wrapped backend must be the torch
backend (or one built on it): `model`, `new_buffer`, `buffers`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from engine.api import Backend, CancelToken, CompletionRequest, CompletionResult, DocId
from tests.support.hold import Hold, holding_forward, wrapped_forwards

FaultKind = Literal["decode_error", "decode_oom", "alloc_error", "corrupt_slot"]
FAULT_KINDS: tuple[FaultKind, ...] = ("decode_error", "decode_oom", "alloc_error", "corrupt_slot")


class InjectedFault(RuntimeError):
    """The failure a `decode_error` fault raises."""


class FaultyBackend:
    """`engine.api.Backend` over `inner`, with per-document faults armed by `arm`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.info = inner.info
        self.fim = inner.fim
        self.armed: dict[DocId, FaultKind] = {}
        self.holds: dict[DocId, Hold] = {}

    def arm(self, doc_id: str, kind: FaultKind) -> None:
        """Make `doc_id`'s next request meet `kind`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if not hasattr(self.inner, "buffers"):
            raise ValueError(f"fault {kind!r} reaches into the torch engine; {self.info.backend} has no K/V buffers")
        self.armed[DocId(doc_id)] = kind

    def hold(self, doc_id: str, hold: Hold) -> None:
        """Make `doc_id`'s next request block in its second forward until `hold.release` is set."""
        if not hasattr(self.inner, "model"):
            raise ValueError(f"a hold reaches into the torch engine; {self.info.backend} has no model to hold")
        self.holds[DocId(doc_id)] = hold

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        hold = self.holds.pop(request.doc_id, None)
        if hold is not None:
            with holding_forward(self.inner, hold):
                return self.inner.complete(request, cancel)
        kind = self.armed.pop(request.doc_id, None)
        if kind is None:
            return self.inner.complete(request, cancel)
        if kind == "corrupt_slot":
            buffer = self.inner.buffers.get(request.doc_id)
            assert buffer is not None, f"corrupt_slot needs a slot for {request.doc_id}: complete it once first"
            buffer.data.fill_(float("nan"))
            return self.inner.complete(request, cancel)
        if kind == "alloc_error":
            self.inner.drop(request.doc_id)  # so this request must allocate the document's buffer
            with failing_allocation(self.inner):
                return self.inner.complete(request, cancel)
        error = MemoryError("injected: out of memory in a decode step") if kind == "decode_oom" \
            else InjectedFault("injected: a decode step failed")
        with failing_forward(self.inner, error, after_calls=1):
            return self.inner.complete(request, cancel)

    def drop(self, doc_id: DocId) -> None:
        self.inner.drop(doc_id)

    def cache_stats(self) -> dict[str, int]:
        return self.inner.cache_stats()

    def __getattr__(self, name: str) -> Any:  # slot_tokens, table, ...: the wrapped backend's
        return getattr(self.inner, name)


@contextlib.contextmanager
def failing_forward(backend: Any, error: BaseException, after_calls: int) -> Iterator[None]:
    """While active, the backend model's forwards (one sequence's, or a beam's rows) raise `error`
    once `after_calls` calls succeeded."""
    model = backend.model
    calls = 0

    def failing(original):
        def forward(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls > after_calls:
                raise error
            return original(*args, **kwargs)
        return forward

    with wrapped_forwards(model, failing):
        yield


@contextlib.contextmanager
def failing_allocation(backend: Any) -> Iterator[None]:
    """While active, allocating a new K/V buffer raises MemoryError."""
    original = backend.new_buffer

    def new_buffer(capacity: int):
        raise MemoryError(f"injected: cannot allocate a {capacity}-position K/V buffer")

    backend.new_buffer = new_buffer
    try:
        yield
    finally:
        backend.new_buffer = original
