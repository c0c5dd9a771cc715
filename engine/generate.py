"""Prefill, the decode loop, sampling and stop rules over one document's KV buffer.

`generate` runs the prompt tokens the slot does not hold yet (in chunks, so a cancel or a long
document never waits on one huge forward), then decodes one token per step until a stop rule
fires. After every forward it reports the tokens whose K/V it wrote through `written`, so the
cache bookkeeping always matches the buffer, even when a request is cancelled midway. The last
sampled token is never fed back: its K/V would only be needed by a step we did not take.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.api import CancelToken, Cancelled, StopReason
from engine.model import KVBuffer, Transformer


class RequestError(ValueError):
    """A request the model cannot serve as asked (empty, too long, unknown token ids)."""


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or infinite logits: the slot's K/V (or the weights) are corrupt."""


def check_prompt(ids: Sequence[int], n_ctx: int, vocab_size: int) -> None:
    """Raise RequestError unless `ids` can run: non-empty, shorter than the window, known ids."""
    if not ids:
        raise RequestError("the prompt encodes to no tokens; send at least one character or FIM token")
    if len(ids) >= n_ctx:
        raise RequestError(f"the prompt has {len(ids)} tokens but the model's window is {n_ctx}; "
                           f"build prompts of at most {n_ctx} - max_new_tokens tokens")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise RequestError(f"token ids {bad[:3]} are outside the model's vocabulary of {vocab_size}")


@dataclass(frozen=True, slots=True)
class Sampling:
    """How the next token is chosen; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class StopRules:
    """When decoding ends."""

    max_new_tokens: int
    stop_ids: frozenset[int] = frozenset()  # end of text, FIM markers, file headers
    eod_id: int | None = None  # the stop id reported as "eos"
    stop_strings: tuple[str, ...] = ()
    deadline: float | None = None  # clock() value after which no further step starts
    emittable: int | None = None  # ids >= this (vocabulary padding) are never sampled


@dataclass(slots=True)
class Generation:
    """Tokens generated (the stop token excluded) and why decoding ended."""

    tokens: list[int]
    stop_reason: StopReason
    prefill_ms: float
    decode_ms: float


def prefill(model: Transformer, kv: KVBuffer, ids: Sequence[int], start: int, chunk: int,
            written: Callable[[list[int]], None], cancel: CancelToken | None) -> Tensor:
    """Run `ids` at positions start.. in chunks of `chunk`; logits of the last one: [V]."""
    assert ids, "prefill needs at least one token (the last prompt token gives the first logits)"
    device = kv.device
    logits = None
    for offset in range(0, len(ids), chunk):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled during prefill")
        part = list(ids[offset:offset + chunk])
        pos = start + offset
        input_ids = torch.tensor(part, dtype=torch.long, device=device)  # [T]
        input_pos = torch.arange(pos, pos + len(part), device=device)  # [T]
        logits = model(input_ids, input_pos, kv, pos, last_only=True)[0]  # [V]
        written(part)
    return logits


def decode_one_token(model: Transformer, kv: KVBuffer, token: int, pos: int) -> Tensor:
    """Feed one token at `pos`; logits for the next: [V]."""
    device = kv.device
    input_ids = torch.tensor([token], dtype=torch.long, device=device)  # [1]
    input_pos = torch.tensor([pos], device=device)  # [1]
    return model(input_ids, input_pos, kv, pos)[0]  # [V]


def sample(logits: Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """Greedy argmax, or temperature + nucleus (top-p) sampling. logits: [V]."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)  # [V]
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)  # [V]
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > sampling.top_p  # mass before it > p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def hit_stop_string(text: str, stop_strings: tuple[str, ...]) -> bool:
    return any(s and s in text for s in stop_strings)


@torch.inference_mode()
def generate(model: Transformer, kv: KVBuffer, prompt: Sequence[int], keep: int, rules: StopRules,
             sampling: Sampling, written: Callable[[list[int]], None], decode: Callable[[list[int]], str],
             cancel: CancelToken | None = None, prefill_chunk: int = 512,
             clock: Callable[[], float] = time.perf_counter) -> Generation:
    """Complete `prompt`, whose first `keep` tokens already have K/V at positions 0..keep-1."""
    assert 0 <= keep < len(prompt), f"keep {keep} must leave at least one of {len(prompt)} prompt tokens to run"
    assert len(prompt) + max(rules.max_new_tokens - 1, 0) <= kv.capacity, "the slot is smaller than the request"
    t0 = clock()
    logits = prefill(model, kv, prompt[keep:], keep, prefill_chunk, written, cancel)  # [V]
    t1 = clock()
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=kv.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**63))
    tokens: list[int] = []
    reason: StopReason = "max_tokens"
    pos = len(prompt)
    while len(tokens) < rules.max_new_tokens:
        if not bool(torch.isfinite(logits).all()):  # one pass over [V]; argmax of NaN would pick a token silently
            raise NonFiniteLogits(f"non-finite logits at position {pos}: the document's cached K/V or the weights "
                                  f"are corrupt")
        if rules.emittable is not None and rules.emittable < logits.shape[-1]:
            logits[rules.emittable:] = float("-inf")
        token = sample(logits, sampling, generator)
        if token in rules.stop_ids:
            reason = "eos" if token == rules.eod_id else "stop_token"
            break
        tokens.append(token)
        if rules.stop_strings and hit_stop_string(decode(tokens), rules.stop_strings):
            reason = "stop_string"
            break
        if len(tokens) == rules.max_new_tokens:
            break
        if rules.deadline is not None and clock() > rules.deadline:
            reason = "time_budget"
            break
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled during decoding")
        logits = decode_one_token(model, kv, token, pos)
        written([token])
        pos += 1
    return Generation(tokens=tokens, stop_reason=reason, prefill_ms=(t1 - t0) * 1e3, decode_ms=(clock() - t1) * 1e3)
