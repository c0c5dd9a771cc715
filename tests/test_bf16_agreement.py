"""bf16 is the one CPU path that is not exact: its agreement, measured, has a floor.

bf16 rounds a row's products differently depending on what else is in the forward, so on the
bundled trained model a cached keystroke (1-2 new tokens), a full recompute (the whole prompt),
and a speculative verification (the last token and up to 4 drafts in one forward) can flip a
near-tie of the argmax. docs/benchmarks/cpu-decode.md ("bf16: measured, not exact") gives the
figures of this replay: HumanEval spans typed back key by key, 8 greedy tokens a keystroke; each
floor below sits a little under them, so a bf16 path that drifts further fails here.
"""
import pytest
import torch

from benchmarks.backends import agreement
from benchmarks.keystroke_replay import load_problems, replay
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.hardware import cpu_has_bf16
from engine.loading import load_model
from engine.select import DEFAULT_MODEL_DIR
from engine.speculative import DEFAULT_DRAFT

CPU = torch.device("cpu")
PROBLEMS, KEYS, TOKENS = 6, 12, 8  # 6 problems x 13 keystrokes (before typing, then 12 keys) = 78
# Floors on the share of keystrokes whose 8 tokens are identical. bf16 arithmetic differs by CPU:
# - without native bf16 (measured 2026-12-07, 2-core AMD EPYC, AVX2): 100%, 100%, 91.0%;
# - with native bf16 (AVX-512 BF16 / AMX), not measured on this replay here: issue 26 measured
#   speculation on vs off at 74 of 78 keystrokes on the bundled model; docs/benchmarks/speculative.md
#   cached vs recompute at 99.1% (older weights). Its floors sit under those, and fp32's under
#   cpu-decode.md's 92.7% of keystrokes.
FLOORS = {
    False: {"speculation on vs off (bf16, cached)": 0.97,
            "cached vs recompute (bf16, no speculation)": 0.97,
            "bf16 as served (cached, speculation) vs fp32": 0.88},
    True: {"speculation on vs off (bf16, cached)": 0.92,
           "cached vs recompute (bf16, no speculation)": 0.92,
           "bf16 as served (cached, speculation) vs fp32": 0.85},
}[cpu_has_bf16()]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokens() -> dict[str, list[list[int]]]:
    """The replay's tokens per keystroke for bf16 three ways and for an fp32 recompute."""
    big = CacheConfig(budget_bytes=2**30)
    recompute = CacheConfig(budget_bytes=2**30, reuse=False, share_blocks=False)
    bf16 = load_model(str(DEFAULT_MODEL_DIR), CPU, torch.bfloat16)
    fp32 = load_model(str(DEFAULT_MODEL_DIR), CPU, torch.float32)
    modes = {
        "bf16 served": TorchBackend(bf16, big, kv_dtype=torch.bfloat16, speculate=DEFAULT_DRAFT),
        "bf16 cached": TorchBackend(bf16, big, kv_dtype=torch.bfloat16),
        "bf16 recompute": TorchBackend(bf16, recompute, kv_dtype=torch.bfloat16),
        "fp32 recompute": TorchBackend(fp32, recompute, kv_dtype=torch.float32),
    }
    runs = replay(load_problems(PROBLEMS), modes, bf16.model.args.n_positions, TOKENS, KEYS)
    assert all(len(r.samples) == PROBLEMS * (KEYS + 1) for r in runs)
    return {r.name: [s.token_ids for s in r.samples] for r in runs}


@pytest.mark.parametrize("pair, a, b", [
    ("speculation on vs off (bf16, cached)", "bf16 served", "bf16 cached"),
    ("cached vs recompute (bf16, no speculation)", "bf16 cached", "bf16 recompute"),
    ("bf16 as served (cached, speculation) vs fp32", "bf16 served", "fp32 recompute"),
])
def test_bf16_agreement_stays_above_its_measured_floor(tokens, pair, a, b):
    same_keystrokes, same_tokens = agreement(tokens[b], tokens[a])
    print(f"{pair}: {same_keystrokes:.1%} of keystrokes, {same_tokens:.1%} of tokens")
    assert same_keystrokes >= FLOORS[pair], f"{pair}: {same_keystrokes:.1%} of keystrokes identical"
