"""Prefill, the decode loop, sampling and stop rules over one document's KV buffer.

`generate` runs the prompt tokens the slot does not hold yet (in chunks, so a cancel or a long
document never waits on one huge forward), then decodes one token per step until a stop rule
fires. After every forward it reports the tokens whose K/V it wrote through `written`, so the
cache bookkeeping always matches the buffer, even when a request is cancelled midway. The last
sampled token is never fed back: its K/V would only be needed by a step we did not take.

Greedy requests may speculate (prompt lookup, `engine.speculative`): a step feeds the last
sampled token plus a drafted continuation in one forward, and the logits after each position
say which draft tokens the model would have picked itself. The agreeing run is kept with the
model's own next token, exactly the tokens step-by-step greedy decoding gives; the positions of
rejected draft tokens are never reported as written (a later forward overwrites them).

A healing request (`engine.healing`) restricts each choice to the tokens compatible with the
backed-off text until it is spelled again; drafts are checked against the restricted choice, so
speculation stays exact.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from engine.api import CancelToken, Cancelled, StopReason, suggestion_end
from engine.healing import Healing
from engine.model import KVBuffer, Transformer
from engine.speculative import ENGINE_NGRAM_MIN, PromptLookup, next_draft_length


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
    # greedy only: the first token is the one ranked this far below the best (0: the best), the
    # rest greedy; what an alternative suggestion starts from
    first_rank: int = 0


@dataclass(frozen=True, slots=True)
class StopRules:
    """When decoding ends."""

    max_new_tokens: int
    stop_ids: frozenset[int] = frozenset()  # end of text, FIM markers, file headers
    eod_id: int | None = None  # the stop id reported as "eos"
    stop_strings: tuple[str, ...] = ()
    line_end: bool = False  # stop at the first line break that follows text (`through_line_end`)
    dedent: int | None = None  # stop after the first later line indented less than this (`through_dedent`)
    loop: bool = False  # stop at the first copy of a unit a line repeats (`through_loop`)
    deadline: float | None = None  # clock() value after which no further step starts
    emittable: int | None = None  # ids >= this (vocabulary padding) are never sampled


@dataclass(slots=True)
class Generation:
    """Tokens generated (the stop token excluded) and why decoding ended."""

    tokens: list[int]
    stop_reason: StopReason
    prefill_ms: float
    decode_ms: float
    steps: int = 0  # decode forwards after the prefill (each also verifies a draft when speculating)
    drafted: int = 0  # draft tokens fed to those forwards
    accepted: int = 0  # draft tokens the model agreed with and kept: extra tokens the steps gave
    logprobs: list[float] = field(default_factory=list)  # each token's log-probability under the model
    score: float = 0.0  # a beam's line: the total log-probability, a stop token's included (engine.beam)


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


def decode_tokens(model: Transformer, kv: KVBuffer, ids: list[int], pos: int) -> Tensor:
    """Feed `ids` at positions pos..pos+T-1; logits after each of them: [T, V]."""
    device = kv.device
    input_ids = torch.tensor(ids, dtype=torch.long, device=device)  # [T]
    input_pos = torch.arange(pos, pos + len(ids), device=device)  # [T]
    return model(input_ids, input_pos, kv, pos)  # [T, V]


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


def cut_text(text: str, reason: StopReason, rules: StopRules) -> str:
    """The generated text a result returns: cut before a stop string, after the line/block end or
    the loop's first copy that ended decoding; whole otherwise."""
    if reason == "stop_string":
        return text[:min(text.index(s) for s in rules.stop_strings if s and s in text)]
    if reason in ("line_end", "block_end", "loop"):
        return text[:suggestion_end(text, rules.line_end, rules.dedent, rules.loop)[0]]
    return text


def finished_by(tokens: list[int], rules: StopRules, decode: Callable[[list[int]], str]) -> StopReason | None:
    """Why generation ends after these tokens (a stop string, the end of the line or block, a
    loop's first copy, the token budget); None while it goes on. Stop tokens are checked before."""
    if rules.stop_strings or rules.line_end or rules.dedent is not None or rules.loop:
        text = decode(tokens)
        if rules.stop_strings and hit_stop_string(text, rules.stop_strings):
            return "stop_string"
        if (end := suggestion_end(text, rules.line_end, rules.dedent, rules.loop)) is not None:
            return end[1]
    return "max_tokens" if len(tokens) >= rules.max_new_tokens else None


def checked_row(row: Tensor, rules: StopRules, position: int) -> Tensor:
    """The logits row [V] ready to choose from: NonFiniteLogits unless finite (argmax of NaN would
    pick a token silently), vocabulary padding (ids >= rules.emittable) masked in place."""
    if not bool(torch.isfinite(row).all()):  # one pass over [V]
        raise NonFiniteLogits(f"non-finite logits at position {position}: the document's "
                              f"cached K/V or the weights are corrupt")
    if rules.emittable is not None and rules.emittable < row.shape[-1]:
        row[rules.emittable:] = float("-inf")
    return row


def only(row: Tensor, allowed: list[int]) -> Tensor:
    """A copy of the row [V] with every id outside `allowed` at -inf (healing's constraint)."""
    ids = torch.tensor(allowed, dtype=torch.long, device=row.device)  # [A]
    return torch.full_like(row, float("-inf")).index_copy_(0, ids, row[ids])  # [V]


def take_tokens(rows: Tensor, draft: list[int], tokens: list[int], pick: Callable[[Tensor], int],
                rules: StopRules, decode: Callable[[list[int]], str]) -> tuple[int, StopReason | None]:
    """Choose a token from each row of `rows` [R, V] in turn, appending to `tokens`.

    Row i holds the logits after draft[i - 1] (row 0: after the last token already chosen), so
    row i + 1 is valid only while the token chosen from row i equals draft[i]. Returns (draft
    tokens kept, the stop reason or None); the stop rules apply after each token exactly as in
    one-token decoding.
    """
    assert rows.shape[0] == len(draft) + 1, f"{rows.shape[0]} rows of logits for a draft of {len(draft)}"
    for i in range(rows.shape[0]):
        token = pick(rows[i])
        if token in rules.stop_ids:
            return i, "eos" if token == rules.eod_id else "stop_token"
        tokens.append(token)
        if (reason := finished_by(tokens, rules, decode)) is not None:
            return i, reason
        if i == len(draft) or draft[i] != token:
            return i, None
    raise AssertionError("unreachable: the last row has no draft token after it")


@torch.inference_mode()
def generate(model: Transformer, kv: KVBuffer, prompt: Sequence[int], keep: int, rules: StopRules,
             sampling: Sampling, written: Callable[[list[int]], None], decode: Callable[[list[int]], str],
             cancel: CancelToken | None = None, prefill_chunk: int = 512,
             clock: Callable[[], float] = time.perf_counter, speculate: int = 0,
             healing: Healing | None = None) -> Generation:
    """Complete `prompt`, whose first `keep` tokens already have K/V at positions 0..keep-1.

    `speculate`: draft tokens verified per step when decoding greedily (0: one token a step).
    `healing`: the first tokens must re-spell its text (`decode` should return the text after it).
    """
    assert 0 <= keep < len(prompt), f"keep {keep} must leave at least one of {len(prompt)} prompt tokens to run"
    assert len(prompt) + max(rules.max_new_tokens - 1, 0) <= kv.capacity, "the slot is smaller than the request"
    assert speculate >= 0, f"the draft length must be >= 0, got {speculate}"
    t0 = clock()
    logits = prefill(model, kv, prompt[keep:], keep, prefill_chunk, written, cancel)  # [V]
    t1 = clock()
    generator = None
    if sampling.temperature > 0:
        generator = torch.Generator(device=kv.device)
        generator.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**63))
        speculate = 0  # a draft is checked against the argmax; sampled tokens have none to agree with

    picked: list[float] = []  # log-probability of each token `pick` chose (the last may be a stop token)

    def pick(row: Tensor) -> int:  # row: [V]
        row = checked_row(row, rules, len(prompt) + len(tokens))
        choice, healing_now = row, healing is not None and healing.pending
        if healing_now:
            choice = only(row, healing.allowed())  # [V]
        if sampling.first_rank and not picked and sampling.temperature <= 0:
            best = torch.topk(choice, min(sampling.first_rank + 1, choice.shape[-1]))  # [first_rank + 1], best first
            finite = int(torch.isfinite(best.values).sum())  # fewer than asked when healing allows fewer
            token = int(best.indices[min(sampling.first_rank, finite - 1)])
        else:
            token = sample(choice, sampling, generator)
        if healing_now:
            healing.chose(healing.texts.text_of(token))
        # under the model's own distribution (no temperature, no healing mask): how sure it was
        picked.append(float(row[token].float() - torch.logsumexp(row.float(), dim=-1)))  # [V] -> nats
        return token

    truncate = getattr(kv, "truncate", None)  # a runtime whose buffer keeps whole forwards' K/V (OrtSlot)
    tokens: list[int] = []
    reason: StopReason = "max_tokens"
    steps = drafted = accepted = 0
    length = speculate  # the next draft's length, adapted to how much of the last one was kept
    lookup: PromptLookup | None = None  # built at the first draft (a 1-token request never needs it)
    rows, fed, pos = logits[None], [], len(prompt)  # rows [R, V]: logits after each fed token, fed at pos..
    while rules.max_new_tokens > 0:
        kept, stop = take_tokens(rows, fed[1:], tokens, pick, rules, decode)
        if kept:
            written(fed[1:kept + 1])
            accepted += kept
        length = next_draft_length(length, len(fed[1:]), kept, speculate)
        if truncate is not None and len(fed) > kept + 1:
            truncate(pos + kept + 1)  # drop the rejected draft positions
        if stop is not None:
            reason = stop
            break
        if rules.deadline is not None and clock() > rules.deadline:
            reason = "time_budget"
            break
        if cancel is not None and cancel.cancelled:
            raise Cancelled("cancelled during decoding")
        pos = len(prompt) + len(tokens) - 1  # where the last chosen token goes
        room = rules.max_new_tokens - len(tokens) - 1  # a longer draft would outrun max_new_tokens (and the slot)
        draft = []
        if speculate and room > 0:
            if lookup is None:
                lookup = PromptLookup([*prompt, *tokens], ngram_min=ENGINE_NGRAM_MIN)
            for token in tokens[len(lookup.ids) - len(prompt):]:
                lookup.append(token)
            draft = lookup.draft(min(length, room))
        fed = [tokens[-1], *draft]
        rows = decode_tokens(model, kv, fed, pos)  # [1 + len(draft), V]
        written(fed[:1])  # the chosen token's K/V are valid whatever the model says of the draft
        steps += 1
        drafted += len(draft)
    return Generation(tokens=tokens, stop_reason=reason, prefill_ms=(t1 - t0) * 1e3, decode_ms=(clock() - t1) * 1e3,
                      steps=steps, drafted=drafted, accepted=accepted, logprobs=picked[:len(tokens)])


def text_ends(tokens: Sequence[int], decode: Callable[[list[int]], str], length: int) -> list[int]:
    """Where each token's text ends in the decoded text (capped at `length`, never decreasing): token
    i covers [ends[i - 1], ends[i]) of it (a token inside healing's re-spelled prefix covers nothing)."""
    ends, end = [], 0
    for i in range(len(tokens)):
        end = max(end, min(len(decode(list(tokens[:i + 1]))), length))
        ends.append(end)
    return ends
