"""The decode loop's stop rules, sampling and cancellation, over a scripted model."""
import pytest
import torch

from engine.api import Cancelled
from engine.generate import RequestError, Sampling, StopRules, check_prompt, generate, sample
from tests.conftest import CancelAfter

V = 16


class NextToken(torch.nn.Module):
    """A model whose logits always favour `(last input id + 1) % V`; records what it ran."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[list[int], int]] = []

    def forward(self, input_ids, input_pos, kv, start, last_only=False):
        self.calls.append((input_ids.tolist(), start))
        assert input_pos.tolist() == list(range(start, start + len(input_ids)))
        ids = input_ids[-1:] if last_only else input_ids
        return torch.nn.functional.one_hot((ids + 1) % V, V).float() * 10  # [T, V]


class FakeKV:
    def __init__(self, capacity=64):
        self.data = torch.zeros(1)
        self.device = self.data.device
        self.capacity = capacity


def run(prompt, keep=0, rules=None, sampling=Sampling(), cancel=None, clock=None, chunk=512, model=None):
    model = model or NextToken()
    written: list[int] = []
    gen = generate(model, FakeKV(), prompt, keep, rules or StopRules(max_new_tokens=5), sampling,
                   written=written.extend, decode=lambda ids: "".join(chr(97 + i) for i in ids),
                   cancel=cancel, prefill_chunk=chunk, **({"clock": clock} if clock else {}))
    return gen, written, model


def test_greedy_decodes_max_new_tokens_and_reports_every_written_token():
    gen, written, model = run([1, 2, 3], keep=1)
    assert gen.tokens == [4, 5, 6, 7, 8] and gen.stop_reason == "max_tokens"
    assert written == [2, 3, 4, 5, 6, 7], "the prompt's new tokens, then each fed token; never the last sampled"
    assert model.calls[0] == ([2, 3], 1)


def test_prefill_runs_in_chunks():
    _gen, _written, model = run(list(range(7)), chunk=3, rules=StopRules(max_new_tokens=1))
    assert [c for c in model.calls] == [([0, 1, 2], 0), ([3, 4, 5], 3), ([6], 6)]


def test_stop_token_ends_without_being_returned_and_eos_is_named():
    gen, _, _ = run([1], rules=StopRules(max_new_tokens=9, stop_ids=frozenset({4, 9}), eod_id=9))
    assert (gen.tokens, gen.stop_reason) == ([2, 3], "stop_token")
    gen, _, _ = run([6], rules=StopRules(max_new_tokens=9, stop_ids=frozenset({4, 9}), eod_id=9))
    assert (gen.tokens, gen.stop_reason) == ([7, 8], "eos")


def test_stop_string_ends_decoding():
    gen, _, _ = run([0], rules=StopRules(max_new_tokens=9, stop_strings=("cd",)))  # tokens 1,2,3 -> "bcd"
    assert (gen.tokens, gen.stop_reason) == ([1, 2, 3], "stop_string")


# id -> text, for NextToken's 1, 2, ...
PIECES = {1: "x", 2: "\n", 3: "    y", 4: "\n", 5: "\n", 6: "z", 7: "\n", 8: "w"}


@pytest.mark.parametrize("rules, tokens, reason", [
    (StopRules(max_new_tokens=9, line_end=True), [1, 2], "line_end"),  # "x\n"
    (StopRules(max_new_tokens=9, dedent=1), [1, 2, 3, 4, 5, 6, 7], "block_end"),  # "    y" stays, "z" leaves
    (StopRules(max_new_tokens=9, dedent=5), [1, 2, 3, 4], "block_end"),  # "    y" already leaves
    (StopRules(max_new_tokens=6, dedent=1), [1, 2, 3, 4, 5, 6], "max_tokens"),  # "z" not complete yet
])

def test_line_and_block_ends_stop_after_the_line_that_decides_them(rules, tokens, reason):
    gen = generate(NextToken(), FakeKV(), [0], 0, rules, Sampling(), written=lambda ids: None,
                   decode=lambda ids: "".join(PIECES.get(i, "?") for i in ids))
    assert (gen.tokens, gen.stop_reason) == (tokens, reason)


LOOPING = {1: "os", 2: ".path", 3: ".path", 4: ".path", 5: ".path", 6: ".path", 7: ".path"}  # a model in a loop


@pytest.mark.parametrize("rules", [StopRules(max_new_tokens=9, line_end=True, loop=True),
                                   StopRules(max_new_tokens=9, dedent=1, loop=True),
                                   StopRules(max_new_tokens=9, loop=True)])
@pytest.mark.parametrize("speculate", [0, 3])
def test_a_suggestion_caught_in_a_loop_stops_at_the_fourth_copy(rules, speculate):
    gen = generate(NextToken(), FakeKV(), [0], 0, rules, Sampling(), written=lambda ids: None,
                   decode=lambda ids: "".join(LOOPING.get(i, "?") for i in ids), speculate=speculate)
    assert (gen.tokens, gen.stop_reason) == ([1, 2, 3, 4, 5], "loop")  # not the budget's 9
    raw = generate(NextToken(), FakeKV(), [0], 0, StopRules(max_new_tokens=9, line_end=True), Sampling(),
                   written=lambda ids: None,
                   decode=lambda ids: "".join(LOOPING.get(i, "?") for i in ids), speculate=speculate)
    assert len(raw.tokens) == 9 and raw.stop_reason == "max_tokens"  # without `loop` the rule is off


def test_time_budget_stops_at_a_step_boundary():
    ticks = iter(range(100))
    gen, _, _ = run([0], rules=StopRules(max_new_tokens=9, deadline=3.5), clock=lambda: next(ticks))
    assert gen.stop_reason == "time_budget" and 0 < len(gen.tokens) < 9


def test_unemittable_ids_are_never_sampled():
    gen, _, _ = run([5], rules=StopRules(max_new_tokens=3, emittable=6))  # 6 would be greedy
    assert gen.tokens[0] != 6 and all(t < 6 for t in gen.tokens)


def test_cancel_mid_decode_raises_and_written_matches_what_ran():
    model = NextToken()
    written: list[int] = []
    with pytest.raises(Cancelled):
        generate(model, FakeKV(), [1, 2], 0, StopRules(max_new_tokens=9), Sampling(), written.extend,
                 decode=str, cancel=CancelAfter(3))
    fed = [ids for ids, _ in model.calls]
    assert written == [t for ids in fed for t in ids] == [1, 2, 3, 4]


def test_top_p_sampling_is_seeded_and_stays_in_the_nucleus():
    logits = torch.tensor([5.0, 4.9, 0.0, -3.0])
    draws = [sample(logits, Sampling(1.0, 0.6, 0), torch.Generator().manual_seed(s)) for s in range(40)]
    assert set(draws) <= {0, 1}, "top_p 0.6 keeps only the two likely tokens"
    again = [sample(logits, Sampling(1.0, 0.6, 0), torch.Generator().manual_seed(s)) for s in range(40)]
    assert draws == again and len(set(draws)) == 2
    assert sample(logits, Sampling(0.0), None) == 0


def test_seeded_generation_repeats():
    a, _, _ = run([0], sampling=Sampling(temperature=50.0, seed=3), rules=StopRules(max_new_tokens=8))
    b, _, _ = run([0], sampling=Sampling(temperature=50.0, seed=3), rules=StopRules(max_new_tokens=8))
    assert a.tokens == b.tokens and a.tokens != [1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("ids, match", [([], "no tokens"), ([1] * 8, "window is 8"), ([1, 99], "outside")])
def test_check_prompt_rejects_what_cannot_run(ids, match):
    with pytest.raises(RequestError, match=match):
        check_prompt(ids, n_ctx=8, vocab_size=16)
    check_prompt([1] * 7, n_ctx=8, vocab_size=16)
