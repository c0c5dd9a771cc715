"""The keystroke replay: its pieces on literal inputs, and the cached engine's exactness over 20 problems."""
import statistics

import pytest
import torch

from benchmarks.keystroke_replay import (
    ModeRun, Problem, Sample, format_table, keystrokes, load_problems, pad_problem, percentile, prefill_counts, replay,
    summarize,
)
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import load_model, load_tokenizer
from tests.conftest import kit


pytestmark = pytest.mark.usefixtures("one_thread")


def test_keystrokes_type_the_span_back_one_character_at_a_time():
    contexts = list(keystrokes(Problem("t", "ab", "xy", "cd")))
    assert [(c.prefix, c.suffix) for c in contexts] == [("ab", "cd"), ("abx", "cd"), ("abxy", "cd")]
    assert len(list(keystrokes(Problem("t", "", "xyz", ""), max_keys=1))) == 2


def test_percentile_is_nearest_rank():
    assert percentile([5, 1, 4, 2, 3], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([7], 95) == 7


def test_pad_problem_prepends_other_problems_until_the_target():
    a, b, c = Problem("a", "P", "M", "S"), Problem("b", "xx", "y", "z"), Problem("c", "q", "r", "s")
    padded = pad_problem(a, [a, b, c], count_tokens=len, target_tokens=6)
    assert padded.prefix == "xxyz\n\nP" and (padded.middle, padded.suffix) == ("M", "S")


def test_load_problems_takes_one_span_per_distinct_problem():
    problems = load_problems(20)
    assert len(problems) == 20 and len({p.task_id.split("/")[2] for p in problems}) == 20
    assert all(p.middle for p in problems)


def test_summarize_figures_on_literal_samples():
    fast = ModeRun("ours", [Sample(10, 100, 1, 99, [1, 2], 4.0), Sample(20, 101, 3, 98, [1, 3], 6.0)])
    slow = ModeRun("ref", [Sample(100, 100, 100, 0, [1, 2]), Sample(300, 101, 101, 0, [1, 4])])
    ours, ref = summarize([fast, slow])
    assert (ours["p50_ms"], ours["p95_ms"], ours["prefill_median"], ours["speedup_p50"]) == (15, 20, 2, 200 / 15)
    assert ours["hit_rate"] == 197 / 201 and ours["tokens_per_s"] == 4 / 0.03
    assert ours["decode_step_ms"] == 5.0 and ref["identical"] == 0.5 and ours["identical"] == 1.0
    assert "ours" in format_table([ours, ref]).splitlines()[2]


def test_cached_greedy_tokens_equal_full_recompute_at_every_keystroke_of_20_problems():
    loaded = load_model(str(kit(shape="tiny")), torch.device("cpu"), torch.float32)
    modes = {
        "ours": TorchBackend(loaded, CacheConfig(budget_bytes=64 * 2**20)),
        "recompute": TorchBackend(loaded, CacheConfig(budget_bytes=64 * 2**20, reuse=False)),
    }
    problems = load_problems(20)
    ours, recompute = replay(problems, modes, n_ctx=loaded.model.args.n_positions, max_new_tokens=8)
    assert len(ours.samples) == sum(len(p.middle) + 1 for p in problems)
    for k, (a, b) in enumerate(zip(ours.samples, recompute.samples)):
        assert a.token_ids == b.token_ids, f"keystroke {k}: cached {a.token_ids} != recomputed {b.token_ids}"
        assert a.prompt_tokens == b.prompt_tokens and b.reused_tokens == 0
    prefilled = [s.prefill_tokens for s in ours.samples]
    assert statistics.median(prefilled) <= 2, "typing at the end of an SPM prompt prefills a token or two"
    assert sum(s.reused_tokens for s in ours.samples) > 0.9 * sum(s.prompt_tokens for s in ours.samples)


def test_prefill_counts_follow_the_cache_policy_over_full_typing():
    tokenizer = load_tokenizer(kit(shape="tiny"))
    problems = load_problems(3)
    counts = prefill_counts(problems, tokenizer.fim, tokenizer.encode, n_ctx=512)
    assert len(counts) == sum(len(p.middle) + 1 for p in problems)
    start = 0
    for p in problems:  # each document's first keystroke prefills its whole prompt
        assert counts[start] > 50
        start += len(p.middle) + 1
    assert statistics.median(counts) <= 2 and percentile(counts, 90) <= 8
