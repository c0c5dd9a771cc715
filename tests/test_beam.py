"""engine.beam through TorchBackend: exact scores, greedy at width 1, the slot keeps only the prompt."""
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from engine.api import Cancelled, CompletionRequest, DocId
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import load_model
from engine.model import KVBuffer
from tests.conftest import CancelAfter

pytestmark = pytest.mark.usefixtures("one_thread")

DEFAULT = Path(__file__).resolve().parent.parent / "engine" / "default_model"
DOC = DocId("file:///a.py")
PROMPTS = [  # (prefix, suffix): the bundled model ends these lines within a few tokens
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ", "\n\n    def norm(self):\n"),
    ("def total(values):\n    result = 0\n    for value in values:\n        result += value\n    ", "\n"),
    ("def sign(x):\n    if x >= 0:\n        return 1\n    ", "\n        return -1\n"),
    ("import os\n\n\ndef exists(path):\n    return ", "\n"),
]


@pytest.fixture(scope="module")
def loaded():
    return load_model(str(DEFAULT), torch.device("cpu"), torch.float32)


def backend(loaded, **kwargs) -> TorchBackend:
    return TorchBackend(loaded, CacheConfig(budget_bytes=16 * 2**20), **kwargs)


def fim(b: TorchBackend, prefix: str, suffix: str) -> str:
    return f"{b.fim.prefix}{b.fim.suffix}{suffix}{b.fim.middle}{prefix}"


def line_request(b, prefix, suffix, beam, **fields) -> CompletionRequest:
    return CompletionRequest(DOC, fim(b, prefix, suffix), max_new_tokens=24, stop_at_line_end=True,
                             stop_at_loop=True, beam=beam, **fields)


def recomputed_logprobs(loaded, ids: list[int], continuation: list[int]) -> list[float]:
    """Each continuation token's log-probability from one fresh forward over the whole sequence."""
    model = loaded.model
    seq = ids + continuation
    kv = KVBuffer(model.args, len(seq), torch.float32)
    with torch.inference_mode():
        logits = model(torch.tensor(seq), torch.arange(len(seq)), kv, 0)  # [T, V]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return [float(logprobs[len(ids) - 1 + i, t]) for i, t in enumerate(continuation)]


@pytest.mark.parametrize("prefix,suffix", PROMPTS)
def test_each_line_is_scored_exactly_and_they_come_likeliest_first(loaded, prefix, suffix):
    b = backend(loaded)
    result = b.complete(line_request(b, prefix, suffix, beam=4))
    lines = [result, *result.other_lines]
    assert 2 <= len(lines) <= 4
    ids = b.tokenizer.encode(fim(b, prefix, suffix))
    for line in lines:
        expected = recomputed_logprobs(loaded, ids, line.token_ids)  # a wrong K/V copy between lines shows here
        assert line.token_logprobs == pytest.approx(expected, abs=1e-4)
        ending = 0.0  # the stop token that ended the line counts in its score
        if line.stop_reason in ("eos", "stop_token"):
            stops = [b.tokenizer.eod_id] if line.stop_reason == "eos" else sorted(b.stop_ids - {b.tokenizer.eod_id})
            endings = [recomputed_logprobs(loaded, ids, [*line.token_ids, stop])[-1] for stop in stops]
            ending = min(endings, key=lambda e: abs(line.score - sum(expected) - e))
        assert line.score == pytest.approx(sum(expected) + ending, abs=1e-3)
        assert line.stop_reason in ("line_end", "eos", "stop_token", "loop", "max_tokens")
        if line.stop_reason == "line_end":
            assert line.text.endswith("\n") and b.tokenizer.decode(line.token_ids).startswith(line.text)
    scores = [line.score for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert len({tuple(line.token_ids) for line in lines}) == len(lines)


@pytest.mark.parametrize("prefix,suffix", PROMPTS)
def test_the_best_line_is_at_least_as_likely_as_the_greedy_one(loaded, prefix, suffix):
    b = backend(loaded)
    greedy = b.complete(line_request(b, prefix, suffix, beam=1))
    ids = b.tokenizer.encode(fim(b, prefix, suffix))
    greedy_score = sum(recomputed_logprobs(loaded, ids, greedy.token_ids))
    if greedy.stop_reason in ("eos", "stop_token"):  # greedy took the likeliest stop token of its kind
        stops = [b.tokenizer.eod_id] if greedy.stop_reason == "eos" else sorted(b.stop_ids - {b.tokenizer.eod_id})
        greedy_score += max(recomputed_logprobs(loaded, ids, [*greedy.token_ids, stop])[-1] for stop in stops)
    assert greedy.score is None and greedy.other_lines == []  # width 1 is plain greedy decoding
    best = backend(loaded).complete(line_request(b, prefix, suffix, beam=4))
    assert best.score >= greedy_score - 1e-4


def test_width_one_finds_the_greedy_line(loaded):
    from engine.beam import beam_lines
    from engine.generate import Sampling, StopRules, generate

    b = backend(loaded)
    for prefix, suffix in PROMPTS:
        ids = b.tokenizer.encode(fim(b, prefix, suffix))
        rules = StopRules(max_new_tokens=24, stop_ids=b.stop_ids, eod_id=b.tokenizer.eod_id, line_end=True)
        runs = []
        for search in ("greedy", "beam"):
            kv = KVBuffer(loaded.model.args, len(ids) + 24, torch.float32)
            if search == "greedy":
                runs.append(generate(loaded.model, kv, ids, 0, rules, Sampling(), lambda part: None,
                                     b.tokenizer.decode))
            else:
                runs.append(beam_lines(loaded.model, kv, ids, 0, rules, 1, lambda part: None, b.tokenizer.decode,
                                       new_buffer=b.new_buffer)[0])
        assert runs[1].tokens == runs[0].tokens and runs[1].stop_reason == runs[0].stop_reason
        assert runs[1].logprobs == pytest.approx(runs[0].logprobs, abs=1e-5)


def test_lines_that_show_the_same_text_come_once(loaded):
    b = backend(loaded)
    for prefix, suffix in PROMPTS:
        for stops in ((), ("\n",), (" ",)):  # "\n": the pipeline's mid-line stop; " ": most lines stop early
            result = b.complete(line_request(b, prefix, suffix, beam=4, stop_strings=stops))
            texts = [r.text for r in [result, *result.other_lines]]
            assert len(set(texts)) == len(texts), texts
            assert not any(s in text for s in stops for text in texts)


def test_the_slot_keeps_the_prompt_and_the_next_keystroke_is_exact(loaded):
    b = backend(loaded)
    prefix, suffix = PROMPTS[0]
    b.complete(line_request(b, prefix, suffix, beam=3))
    assert b.slot_tokens(DOC) == b.tokenizer.encode(fim(b, prefix, suffix))  # no line's tokens
    typed = line_request(b, prefix + "self.", suffix, beam=3)
    again = b.complete(typed)
    fresh = backend(loaded).complete(typed)
    assert again.reused_tokens > 0 and again.prefill_tokens < fresh.prefill_tokens
    assert [(r.token_ids, r.score) for r in [again, *again.other_lines]] == \
        [(r.token_ids, pytest.approx(r.score, abs=1e-4)) for r in [fresh, *fresh.other_lines]]
    greedy = b.complete(line_request(b, prefix + "self.", suffix, beam=1))  # the beam left the slot sound
    assert greedy.token_ids == backend(loaded).complete(line_request(b, prefix + "self.", suffix, beam=1)).token_ids


def test_healing_lines_re_spell_the_backed_off_text(loaded):
    b = backend(loaded)
    prefix, suffix = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = ", "\n"
    result = b.complete(line_request(b, prefix, suffix, beam=3, heal=True))
    whole = b.tokenizer.encode(fim(b, prefix, suffix))
    backed_off = b.tokenizer.decode(whole[-1:])
    for line in [result, *result.other_lines]:
        written = b.tokenizer.decode(line.token_ids)
        assert written.startswith(backed_off) and line.text == written[len(backed_off):][:len(line.text)]
        expected = recomputed_logprobs(loaded, whole[:-1], line.token_ids)
        assert line.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_only_greedy_one_line_requests_search(loaded):
    b = backend(loaded)
    prefix, suffix = PROMPTS[1]
    sampled = b.complete(line_request(b, prefix, suffix, beam=3, temperature=0.8, seed=1))
    block = b.complete(CompletionRequest(DOC, fim(b, prefix, suffix), max_new_tokens=8, beam=3))
    assert sampled.score is None and block.score is None and not sampled.other_lines and not block.other_lines
    empty = b.complete(replace(line_request(b, prefix, suffix, beam=3), max_new_tokens=0))  # caches the prompt
    assert (empty.text, empty.token_ids, empty.other_lines) == ("", [], [])
    with pytest.raises(ValueError, match="beam"):
        b.complete(line_request(b, prefix, suffix, beam=0))


def test_a_deadline_returns_the_partial_lines_and_a_cancel_raises(loaded):
    ticks = iter(range(10**6))
    b = backend(loaded, clock=lambda: float(next(ticks)))  # every reading is a second later
    prefix, suffix = PROMPTS[0]
    result = b.complete(line_request(b, prefix, suffix, beam=3, time_budget_s=3.5))
    lines = [result, *result.other_lines]
    assert any(line.stop_reason == "time_budget" for line in lines)
    assert all(len(line.token_ids) <= 2 for line in lines)
    with pytest.raises(Cancelled):
        backend(loaded).complete(line_request(b, *PROMPTS[2], beam=3), CancelAfter(1))  # after the prefill
    assert math.isfinite(result.score)
