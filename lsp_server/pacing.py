"""How long a request waits for a newer keystroke before the model starts: adapted to the person and the model.

When keys come faster than the model answers, every keystroke's run but the last is thrown away,
and a prefill chunk already running delays the one that matters. Like Tabby's debouncer, we keep
moving averages of the typing interval (gaps under `TYPING_GAP_S`; a longer gap is a pause, not
typing) and of the model's time per answered request, and wait about one and a half typing
intervals (at most `MAX_WAIT_S`) while the model is slower than the typing; a newer request in
that time supersedes the older one before it costs anything. A model that answers within a typing
interval gets no wait at all. Pure: the caller passes the clock's readings in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ALPHA = 0.3  # weight of the newest sample in the moving averages
TYPING_GAP_S = 1.0  # gaps between requests shorter than this are typing
WAIT_FACTOR = 1.5  # typing intervals to wait (most gaps in a burst are shorter than 1.5 of their mean)
MAX_WAIT_S = 0.4  # never wait longer: a pause of this length is the person waiting for us


@dataclass(slots=True)
class Pacing:
    """Moving averages of typing and model latency (seconds), and the wait they call for."""

    typing_s: float | None = None  # moving average of the gap between a document's requests while typing
    model_s: float | None = None  # moving average of the engine time of answered requests
    last_at: dict[str, float] = field(default_factory=dict)  # doc key -> when its last request arrived

    def arrived(self, doc_key: str, now_s: float) -> float:
        """A request for `doc_key` arrived at `now_s`: record the gap, return the wait (seconds)."""
        before = self.last_at.get(doc_key)
        self.last_at[doc_key] = now_s
        if before is not None and 0 <= now_s - before < TYPING_GAP_S:
            self.typing_s = average(self.typing_s, now_s - before)
        return self.wait_s()

    def answered(self, engine_s: float) -> None:
        """A request was answered after `engine_s` seconds on the engine."""
        self.model_s = average(self.model_s, engine_s)

    def wait_s(self) -> float:
        """The wait a new request gets now: 0 until both averages exist, and while the model answers
        within a typing interval."""
        if self.typing_s is None or self.model_s is None or self.model_s <= self.typing_s:
            return 0.0
        return min(WAIT_FACTOR * self.typing_s, MAX_WAIT_S)

    def forget(self, doc_key: str) -> None:
        self.last_at.pop(doc_key, None)


def average(old: float | None, sample: float) -> float:
    """The exponential moving average after `sample` (the sample itself when there is none yet)."""
    return sample if old is None else ALPHA * sample + (1 - ALPHA) * old
