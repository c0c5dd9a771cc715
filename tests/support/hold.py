"""A generation held mid-decode until the test lets it go: "a request still running", without sleeps.

`holding_forward(backend, hold)` makes the torch backend's model block in its second forward (the
prompt prefilled, one token decoded) until `hold.release` is set; `hold.reached` is set as it
blocks, so a test waits for that event instead of guessing how long a decode takes. The hold fires
once; later forwards pass through.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

HOLD_BOUND_S = 120.0  # a hold never released within this long fails its request (only a broken test takes it)


@dataclass(slots=True)
class Hold:
    """One request's hold: `reached` once its model blocks, `release` to let it go on."""

    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    fired: bool = False


@contextlib.contextmanager
def holding_forward(backend: Any, hold: Hold, after_calls: int = 1) -> Iterator[None]:
    """While active, the backend model's forward (one sequence's, or a beam's rows) blocks once,
    after `after_calls` forwards went through, until `hold.release` is set."""
    model = backend.model
    calls = 0

    def holding(original):
        def forward(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls > after_calls and not hold.fired:
                hold.fired = True
                hold.reached.set()
                if not hold.release.wait(HOLD_BOUND_S):
                    raise AssertionError(f"a held generation was not released in {HOLD_BOUND_S:.0f} s")
            return original(*args, **kwargs)
        return forward

    with wrapped_forwards(model, holding):
        yield


@contextlib.contextmanager
def wrapped_forwards(model: Any, wrap) -> Iterator[None]:
    """`model.forward` (and `forward_rows`, where it has one) replaced by `wrap(original)` while inside."""
    names = [name for name in ("forward", "forward_rows") if hasattr(model, name)]
    for name in names:  # an instance attribute shadows the class's method; nn.Module calls it
        setattr(model, name, wrap(getattr(model, name)))
    try:
        yield
    finally:
        for name in names:
            delattr(model, name)
