"""A beam search over one line: the likeliest whole lines, not the line greedy decoding happens on.

Greedy decoding commits to each token in turn, so a small model that puts a likely token on an
unlikely path (`self.y and ...` where `self.y == other.y` was likelier as a whole) writes the
unlikely line. A beam keeps the `width` likeliest partial lines at every step; a line is finished
when the request's stop rules end it (its line break, an end token, a stop string, a loop's first
copy, the token budget), and is scored by the total log-probability of its tokens, the one that
ended it included: the probability that the line is exactly this. Partial lines only lose
probability as they grow, so once two finished lines (`SETTLED`) score at least the best partial
one, no partial line can overtake them and the search stops; the lines returned are those
finished by then, likeliest first.

Every partial line past the first token needs the K/V of its own tokens after the shared prompt.
The prompt's K/V are in the document's slot; each line decodes in a buffer of its own that holds a
copy of the prompt's K/V (the first line reuses the slot itself: positions past the prompt are
never reported as written, so the cache keeps only the prompt) and its tokens after it, copied
from its parent's buffer when two lines share one. A step runs every line's next token in one
forward (`Transformer.forward_rows`): the weights are read once for all the lines, so a beam of
three costs little more than greedy decoding where one token's forward is memory-bound.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.api import CancelToken, Cancelled, StopReason
from engine.generate import Generation, StopRules, checked_row, cut_text, finished_by, only, prefill
from engine.healing import Healing, left_after
from engine.model import KVBuffer, Transformer


# The search stops once this many finished lines score at least every partial one: the likeliest
# line and one spare for when post-processing drops it (a copy of the line above). Waiting for all
# `width` lines changed no suggestion on the first 300 HumanEval single-line holes with the bundled
# model and took 15% longer; waiting for one left 25 of them with nothing to show.
SETTLED = 2


@dataclass(slots=True)
class _Line:
    """A partial or finished line: its tokens (a stop token excluded), their log-probabilities, the
    total score (a stop token's included), healing's text still to spell, and its buffer."""

    tokens: list[int]
    logprobs: list[float]
    score: float
    rest: str
    buffer: KVBuffer | None = None
    stop_reason: StopReason | None = None


@dataclass(frozen=True, slots=True)
class _Candidate:
    score: float
    parent: _Line
    token: int
    logprob: float


@torch.inference_mode()
def beam_lines(model: Transformer, kv: KVBuffer, prompt: Sequence[int], keep: int, rules: StopRules, width: int,
               written: Callable[[list[int]], None], decode: Callable[[list[int]], str],
               new_buffer: Callable[[int], KVBuffer], cancel: CancelToken | None = None, prefill_chunk: int = 512,
               clock: Callable[[], float] = time.perf_counter, healing: Healing | None = None) -> list[Generation]:
    """Up to `width` finished lines completing `prompt` (first `keep` tokens cached), likeliest first.

    `new_buffer(capacity)` makes an empty buffer of `kv`'s kind (a runtime's own, e.g. ONNX's).

    Each is a `Generation` whose `score` is its total log-probability; they share the prefill and
    decode times, and `steps` counts the forwards (one a step for all the lines). When the deadline
    passes, the partial lines join the finished ones with the reason "time_budget" (as a greedy
    line cut there would).
    """
    assert width >= 1, f"a beam holds at least one line, got {width}"
    assert 0 <= keep < len(prompt), f"keep {keep} must leave at least one of {len(prompt)} prompt tokens to run"
    assert len(prompt) + max(rules.max_new_tokens - 1, 0) <= kv.capacity, "the slot is smaller than the request"
    t0 = clock()
    logits = prefill(model, kv, prompt[keep:], keep, prefill_chunk, written, cancel)  # [V]
    t1 = clock()
    start = len(prompt)
    root = _Line([], [], 0.0, healing.text if healing is not None else "")
    alive: list[tuple[_Line, Tensor]] = [(root, logits)]
    finished: dict[str, _Line] = {}  # by the text it shows: each line once, its likeliest spelling
    steps = 0
    buffers = _Buffers(kv, start, new_buffer)
    while alive and rules.max_new_tokens > 0:
        candidates = [c for line, row in alive for c in _extend(line, row, rules, width, healing, start)]
        candidates.sort(key=lambda c: -c.score)
        kept: list[_Line] = []
        for cand in candidates:
            if len(kept) == width:
                break
            line = _child(cand, rules, decode, healing)
            if line.stop_reason is None:
                kept.append(line)
            else:
                line.buffer = None
                _finish(finished, line, rules, decode)
        buffers.hand_out(kept, [line for line, _ in alive])
        best_alive = max((line.score for line in kept), default=float("-inf"))
        if sum(line.score >= best_alive for line in finished.values()) >= min(width, SETTLED) or not kept:
            break
        if rules.deadline is not None and clock() > rules.deadline:
            for line in kept:
                line.stop_reason = "time_budget"
                _finish(finished, line, rules, decode)
            break
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled during decoding")
        device = kv.device
        rows = model.forward_rows(torch.tensor([line.tokens[-1] for line in kept], dtype=torch.long, device=device),
                                  torch.tensor([start + len(line.tokens) - 1 for line in kept], device=device),
                                  [line.buffer for line in kept])  # [R, V], every line's next logits at once
        alive = list(zip(kept, rows))
        steps += 1
    truncate = getattr(kv, "truncate", None)  # a runtime whose buffer keeps whole forwards' K/V (OrtSlot)
    if truncate is not None:
        truncate(start)  # the slot holds the prompt, as the cache's table says
    if not finished:  # no step ran (an empty budget): the empty line
        finished[""] = _Line([], [], 0.0, "", None, "max_tokens")
    ranked = sorted(finished.values(), key=lambda line: -line.score)
    decode_ms = (clock() - t1) * 1e3
    return [Generation(tokens=line.tokens, stop_reason=line.stop_reason, prefill_ms=(t1 - t0) * 1e3,
                       decode_ms=decode_ms, steps=steps, logprobs=line.logprobs, score=line.score)
            for line in ranked[:width]]


class _Buffers:
    """The K/V buffers of a beam's lines. Each holds the prompt's K/V at 0..start-1 and its line's
    tokens after it; the first line of the search takes the document's slot itself."""

    def __init__(self, slot: KVBuffer, start: int, new_buffer: Callable[[int], KVBuffer]) -> None:
        self.slot, self.start, self.new_buffer = slot, start, new_buffer
        self.slot_free = True
        self.spare: list[KVBuffer] = []  # buffers of lines that left the beam (the prompt still in them)

    def hand_out(self, kept: list[_Line], previous: list[_Line]) -> None:
        """Give each kept line (holding its parent's buffer, or None under the root) a buffer of its
        own: a parent's buffer goes to its first child, the others copy the parent's tokens into a
        spare or new one. Buffers of `previous` lines with no child become spare."""
        in_use = {id(line.buffer) for line in kept}
        self.spare += [old.buffer for old in previous if old.buffer is not None and id(old.buffer) not in in_use]
        handed: set[int] = set()
        for line in kept:
            parent = line.buffer
            if parent is not None and id(parent) not in handed:
                handed.add(id(parent))
                continue
            if parent is None and self.slot_free:  # a first token: the slot itself holds the prompt
                line.buffer, self.slot_free = self.slot, False
                continue
            line.buffer = self.spare.pop() if self.spare else self.new()
            if parent is not None:  # the parent's tokens after the prompt
                line.buffer.copy_range_from(parent, self.start, self.start + len(line.tokens) - 1)

    def new(self) -> KVBuffer:
        buffer = self.new_buffer(self.slot.capacity)
        buffer.copy_prefix_from(self.slot, self.start)
        return buffer


def _finish(finished: dict[str, _Line], line: _Line, rules: StopRules, decode: Callable[[list[int]], str]) -> None:
    """Add a finished line unless a likelier one shows the same text (the text the backend returns:
    cut where the rule that ended it says; `\n` then an end token, another spelling of the same
    characters, or different text after a stop string all show alike)."""
    text = cut_text(decode(line.tokens), line.stop_reason, rules)
    held = finished.get(text)
    if held is None or held.score < line.score:
        finished[text] = line


def _extend(line: _Line, row: Tensor, rules: StopRules, width: int, healing: Healing | None,
            start: int) -> list[_Candidate]:
    """The `width` best next tokens of a line from its logits row [V] (healing's mask applied)."""
    row = checked_row(row, rules, start + len(line.tokens))
    logprobs = torch.log_softmax(row.float(), dim=-1)  # [V], the model's own distribution
    choice = only(logprobs, healing.texts.compatible(line.rest)) if healing is not None and line.rest else logprobs
    best = torch.topk(choice, min(width, choice.shape[-1]))  # [width], best first
    return [_Candidate(line.score + float(value), line, int(token), float(value))
            for value, token in zip(best.values.tolist(), best.indices.tolist()) if value != float("-inf")]


def _child(cand: _Candidate, rules: StopRules, decode: Callable[[list[int]], str], healing: Healing | None) -> _Line:
    """The line a candidate token makes of its parent; finished when a stop rule ends it. Its
    buffer is the parent's until the beam hands buffers out."""
    parent = cand.parent
    if cand.token in rules.stop_ids:
        reason: StopReason = "eos" if cand.token == rules.eod_id else "stop_token"
        return _Line(parent.tokens, parent.logprobs, cand.score, "", None, reason)
    rest = left_after(parent.rest, healing.texts.text_of(cand.token)) if parent.rest else ""
    tokens = [*parent.tokens, cand.token]
    # while healing's text is re-spelled, `decode` gives "" and only the budget can end the line
    return _Line(tokens, [*parent.logprobs, cand.logprob], cand.score, rest, parent.buffer,
                 finished_by(tokens, rules, decode))
