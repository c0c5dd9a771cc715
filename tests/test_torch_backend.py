"""TorchBackend: the Backend contract, exactness against recompute and transformers, bad input."""
import threading

import pytest
import torch

from engine.api import CancelToken, Cancelled, CompletionRequest, DocId
from engine.backends.reference import ReferenceBackend
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.generate import RequestError
from engine.loading import load_model
from tests.conftest import CancelAfter, kit

MIB = 2**20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded():
    return load_model(str(kit(shape="tiny")), torch.device("cpu"), torch.float32)


def backend(loaded, **config) -> TorchBackend:
    return TorchBackend(loaded, CacheConfig(**{"budget_bytes": 16 * MIB, **config}))


def fim_prompt(b, prefix: str, suffix: str) -> str:
    f = b.fim
    return f"{f.prefix}{f.suffix}{suffix}{f.middle}{prefix}"


def recompute(loaded, request: CompletionRequest) -> list[int]:
    """Greedy tokens from a fresh backend that prefills the whole prompt."""
    return backend(loaded, reuse=False).complete(request).token_ids


DOC = DocId("file:///a.py")
PREFIX = "import os\n\ndef read_config(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n"


def test_complete_fills_the_result_and_the_next_keystroke_reuses_the_slot(loaded):
    b = backend(loaded)
    first = b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=8))
    ids = b.tokenizer.encode(fim_prompt(b, PREFIX, SUFFIX))
    assert (first.prompt_tokens, first.reused_tokens, first.prefill_tokens) == (len(ids), 0, len(ids))
    assert first.generated_tokens == len(first.token_ids) and first.text == b.tokenizer.decode(first.token_ids)
    assert b.slot_tokens(DOC) == (ids + first.token_ids)[: len(ids) + max(len(first.token_ids) - 1, 0)]
    second = b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX + "d", SUFFIX), max_new_tokens=8))
    assert second.reused_tokens >= len(ids) - 2 and second.prefill_tokens <= 3
    assert second.token_ids == recompute(loaded, CompletionRequest(DOC, fim_prompt(b, PREFIX + "d", SUFFIX), 8))
    assert b.info.backend == "torch" and b.info.n_ctx == 512 and b.info.dtype == "float32"


def test_greedy_tokens_equal_transformers_generate(loaded):
    b = backend(loaded)
    reference = ReferenceBackend.load(loaded.path)
    for k, prefix in enumerate([PREFIX, "def add(a, b):\n    return", "class Stack:\n    def push(self, x):\n"]):
        request = CompletionRequest(DocId(f"d{k}"), fim_prompt(b, prefix, SUFFIX), max_new_tokens=12)
        ours, theirs = b.complete(request), reference.complete(request)
        assert ours.token_ids == theirs.token_ids and ours.stop_reason == theirs.stop_reason


def test_sampling_with_a_seed_repeats(loaded):
    b = backend(loaded)
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=10, temperature=0.9,
                                top_p=0.95, seed=11)
    assert b.complete(request).token_ids == backend(loaded).complete(request).token_ids


def test_stop_strings_cut_the_text(loaded):
    b = backend(loaded)
    full = b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=12))
    assert len(full.text) > 3, "the tiny model should write something to cut"
    stop = full.text[2:4]
    cut = b.complete(CompletionRequest(DocId("other"), fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=12,
                                       stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string" and cut.text == full.text[: full.text.index(stop)]


@pytest.mark.parametrize("prefix, suffix", [("", ""), ("", PREFIX + SUFFIX), (PREFIX + SUFFIX, "")],
                         ids=["empty document", "cursor at 0", "cursor at end"])
def test_edge_documents_equal_recompute_and_leave_the_slot_consistent(loaded, prefix, suffix):
    b = backend(loaded)
    b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=6))
    request = CompletionRequest(DOC, fim_prompt(b, prefix, suffix), max_new_tokens=6)
    assert b.complete(request).token_ids == recompute(loaded, request)
    again = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=6)
    assert b.complete(again).token_ids == recompute(loaded, again)


def test_a_prompt_longer_than_the_window_is_refused_and_the_slot_survives(loaded):
    b = backend(loaded)
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=6)
    b.complete(request)
    held = b.slot_tokens(DOC)
    with pytest.raises(RequestError, match="window is 512"):
        b.complete(CompletionRequest(DOC, fim_prompt(b, "x = 1\n" * 400, SUFFIX), max_new_tokens=6))
    assert b.slot_tokens(DOC) == held
    assert b.complete(request).token_ids == recompute(loaded, request)


def test_generation_never_runs_past_the_window(loaded):
    b = backend(loaded)
    ids = b.tokenizer.encode("x = 1\n" * 200)
    text = b.tokenizer.decode(ids[: 512 - 3])
    result = b.complete(CompletionRequest(DOC, text, max_new_tokens=50))
    assert result.prompt_tokens + result.generated_tokens <= 512


def test_special_tokens_in_the_document_and_unemittable_ids(loaded):
    b = backend(loaded)
    b.emittable = 600  # pretend ids >= 600 are vocabulary padding
    weird = fim_prompt(b, PREFIX + "<fim_pad><gh_stars><|endoftext|>x", SUFFIX)
    request = CompletionRequest(DOC, weird, max_new_tokens=10)
    result = b.complete(request)
    assert all(t < 600 for t in result.token_ids)
    fresh = backend(loaded, reuse=False)
    fresh.emittable = 600
    assert result.token_ids == fresh.complete(request).token_ids
    with pytest.raises(ValueError, match="max_new_tokens"):
        b.complete(CompletionRequest(DOC, weird, max_new_tokens=-1))


@pytest.mark.parametrize("checks", [0, 3], ids=["before prefill", "mid-decode"])
def test_cancel_raises_and_the_next_request_equals_recompute(loaded, checks):
    b = backend(loaded)
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=12)
    with pytest.raises(Cancelled):
        b.complete(request, CancelAfter(checks))
    ids = b.tokenizer.encode(request.prompt)
    held = b.slot_tokens(DOC)
    assert held[: len(ids)] == ids[: len(held)], "the slot holds a prefix of the prompt, then decoded tokens"
    assert len(held) == (0 if checks == 0 else len(ids) + checks - 1)
    assert b.complete(request).token_ids == recompute(loaded, request)


def test_fifty_documents_stay_under_the_budget_and_evicted_ones_recompute(loaded):
    per_slot = 256 * loaded.model.args.kv_bytes_per_token(4)  # one 256-position chunk
    b = backend(loaded, budget_bytes=8 * per_slot)
    requests = [CompletionRequest(DocId(f"doc{i}"), fim_prompt(b, f"# file {i}\n" + PREFIX, SUFFIX), max_new_tokens=4)
                for i in range(50)]
    for request in requests:
        b.complete(request)
        stats = b.cache_stats()
        assert stats["bytes"] <= stats["budget_bytes"] and stats["slots"] <= 8
    assert b.cache_stats()["evictions"] == 42
    assert b.slot_tokens(DocId("doc0")) == []
    assert b.complete(requests[0]).token_ids == recompute(loaded, requests[0])


def test_a_document_opening_like_a_cached_one_is_seeded_by_copy(loaded):
    b = backend(loaded)
    header = "".join(f"import module_{i}\n" for i in range(40))  # well over two 64-token blocks
    b.complete(CompletionRequest(DocId("first"), fim_prompt(b, header + "x = 1\n", SUFFIX), max_new_tokens=4))
    request = CompletionRequest(DocId("second"), fim_prompt(b, header + "y = 2\n", SUFFIX), max_new_tokens=4)
    result = b.complete(request)
    assert result.extra["seeded_tokens"] >= 128 and result.reused_tokens == result.extra["seeded_tokens"]
    assert result.token_ids == recompute(loaded, request)


def test_drop_frees_the_slot(loaded):
    b = backend(loaded)
    b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=4))
    assert b.cache_stats()["slots"] == 1 and b.cache_stats()["bytes"] > 0
    b.drop(DOC)
    assert b.cache_stats()["slots"] == 0 and b.cache_stats()["bytes"] == 0 and b.slot_tokens(DOC) == []


def test_requests_from_several_threads_equal_sequential_ones(loaded):
    b = backend(loaded)
    requests = [CompletionRequest(DocId(f"t{i}"), fim_prompt(b, PREFIX + "x" * i, SUFFIX), max_new_tokens=6)
                for i in range(6)]
    expected = [recompute(loaded, r) for r in requests]
    results: dict[int, list[int]] = {}

    def work(i):
        for _ in range(2):
            results[i] = b.complete(requests[i]).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(6)] == expected


def test_a_one_line_request_ends_at_the_first_line_break_after_text():
    from engine.api import suggestion_end
    from engine.select import DEFAULT_MODEL_DIR

    trained = load_model(str(DEFAULT_MODEL_DIR), torch.device("cpu"), torch.float32)  # it writes whole lines
    cursors = [("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ", "\n"),
               ("def mean(values):\n    total = sum(values)\n    ", "\n\nprint(mean([1, 2]))\n"),
               ("import os\n\ndef exists(path):\n    return os.path.", "\n"),
               ("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    ", "\n"),
               ("for i in range(10):\n    print(i)\nfor j in range(10):\n    ", "\n"),
               ("x = [1, 2, 3]\ny = [4, 5, 6]\nz = ", "\n"),
               (PREFIX, SUFFIX)]
    ended = 0
    for speculate in (0, 4):
        b = TorchBackend(trained, CacheConfig(budget_bytes=16 * MIB), speculate=speculate)
        for heal in (False, True):
            for i, (prefix, suffix) in enumerate(cursors):
                prompt = fim_prompt(b, prefix, suffix)
                full = b.complete(CompletionRequest(DocId(f"full{i}{heal}"), prompt, max_new_tokens=48, heal=heal))
                line = b.complete(CompletionRequest(DocId(f"line{i}{heal}"), prompt, max_new_tokens=48, heal=heal,
                                                    stop_at_line_end=True, stop_at_loop=True))
                end = suggestion_end(full.text, True, None, True)  # the line's end, or a loop's first copy
                if end is None:  # no line ended within the budget: nothing changes
                    assert (line.text, line.token_ids) == (full.text, full.token_ids)
                    continue
                ended += end[1] == "line_end"
                assert (line.stop_reason, line.text) == (end[1], full.text[:end[0]]), (full.text, line.text)
                assert line.token_ids == full.token_ids[:len(line.token_ids)]
                assert line.generated_tokens < full.generated_tokens or full.stop_reason != "max_tokens"
    assert ended >= 2, "the trained model ends a line at some of these cursors"


@pytest.mark.parametrize("heal", [False, True])
def test_token_log_probabilities_are_the_models_and_drafts_change_none(loaded, heal, monkeypatch):
    """Each token's log-probability is transformers' over the prompt and the tokens before it (the
    healed prompt drops its last token); speculative steps report the same figures as one-token steps."""
    from transformers import GPTBigCodeForCausalLM

    hf = GPTBigCodeForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
    b = backend(loaded)
    prefix = PREFIX + "return sel"  # ends inside a word: healing backs off "sel"
    request = CompletionRequest(DOC, fim_prompt(b, prefix, SUFFIX), max_new_tokens=12, heal=heal)
    result = b.complete(request)
    ids = b.tokenizer.encode(request.prompt)
    ids = ids[:-1] if heal else ids
    with torch.no_grad():
        logits = hf(torch.tensor([ids + result.token_ids])).logits[0, len(ids) - 1:-1, :b.emittable]
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(len(result.token_ids)),
                                                     torch.tensor(result.token_ids)]
    assert len(result.token_ids) > 3 and result.token_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert result.token_ends == sorted(result.token_ends) and result.token_ends[-1] == len(result.text)
    if heal:
        healed = b.tokenizer.decode(result.token_ids)
        assert healed.startswith("sel") and result.text == healed[3:]
        assert result.token_ends[0] == max(0, len(b.tokenizer.decode(result.token_ids[:1])) - 3)

    def draft(lookup, k):  # the true continuation, its last token wrong: kept and rejected draft rows
        true = result.token_ids[len(lookup.ids) - len(ids):][:k]
        return true[:-1] + [(true[-1] + 1) % b.emittable] if len(true) > 1 else true

    monkeypatch.setattr("engine.generate.PromptLookup.draft", draft)
    drafted = TorchBackend(loaded, CacheConfig(budget_bytes=16 * MIB), speculate=4).complete(request)
    assert drafted.extra["accepted_tokens"] > 0 and drafted.extra["drafted_tokens"] > drafted.extra["accepted_tokens"]
    assert drafted.token_ids == result.token_ids
    assert drafted.token_logprobs == pytest.approx(result.token_logprobs, abs=1e-4)


def test_an_alternative_starts_from_the_next_likeliest_first_token_and_goes_on_greedily(loaded):
    from transformers import GPTBigCodeForCausalLM

    hf = GPTBigCodeForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
    b = backend(loaded)
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=6)
    ids = b.tokenizer.encode(request.prompt)
    with torch.no_grad():
        ranked = torch.argsort(hf(torch.tensor([ids])).logits[0, -1, :b.emittable], descending=True).tolist()
    runs = [b.complete(CompletionRequest(DOC, request.prompt, max_new_tokens=6, first_token_rank=k)) for k in range(3)]
    assert [r.token_ids[0] for r in runs] == ranked[:3]
    checked = 0
    for run in runs:  # after the first token, greedy: what a fresh backend continues from it
        forced = CompletionRequest(DocId("forced"), request.prompt + b.tokenizer.decode(run.token_ids[:1]),
                                   max_new_tokens=5)
        if b.tokenizer.encode(forced.prompt) == ids + run.token_ids[:1]:  # the text re-tokenises the same
            assert backend(loaded).complete(forced).token_ids == run.token_ids[1:]
            checked += 1
    assert checked >= 2
    # healed: the alternatives are other re-spellings of the backed-off "sel", ranked among those only
    healed = [b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX + "return sel", SUFFIX), max_new_tokens=4,
                                           heal=True, first_token_rank=k)) for k in range(2)]
    firsts = [b.tokenizer.decode(r.token_ids[:1]) for r in healed]
    assert firsts[0] != firsts[1] and all("sel".startswith(f) or f.startswith("sel") for f in firsts), firsts
    with pytest.raises(ValueError, match="first_token_rank"):
        b.complete(CompletionRequest(DOC, request.prompt, first_token_rank=-1))


def test_warming_in_chunks_leaves_the_request_one_token_to_prefill_and_the_same_tokens(loaded):
    b = backend(loaded)
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=8, heal=True)
    ids = b.tokenizer.encode(request.prompt)
    target = len(ids) - 1 - (b.healing_for(ids) is not None)  # healing backs off the last token
    steps = []
    while True:
        written, left = b.warm(request, 7)
        steps.append((written, left))
        if left == 0:
            break
    assert [w for w, _ in steps] == [min(7, target - 7 * i) for i in range(len(steps))]
    assert sum(w for w, _ in steps) == target and b.warm(request, 7) == (0, 0)
    assert b.cache_stats()["warmed_tokens"] == target and b.cache_stats()["prefilled_tokens"] == 0
    result = b.complete(request)
    assert (result.prefill_tokens, result.reused_tokens) == (1, target)
    cold = backend(loaded).complete(request)
    assert result.token_ids == cold.token_ids and result.text == cold.text


def test_a_warm_that_was_cancelled_before_it_began_writes_nothing(loaded):
    b = backend(loaded)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        b.warm(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=8), 64, token)
    assert b.slot_tokens(DOC) == [] and b.cache_stats()["forwards"] == 0


@pytest.mark.parametrize("regions, warm_back", [(2, True), (1, False)])
def test_jumping_back_to_the_region_the_cursor_left_finds_it_cached(loaded, regions, warm_back):
    b = backend(loaded, regions=regions)
    header = "".join(f"import module_{i}\n" for i in range(30))  # prompts of more than one 64-token block
    here = CompletionRequest(DOC, fim_prompt(b, header + PREFIX, SUFFIX), max_new_tokens=4)
    there = CompletionRequest(DOC, fim_prompt(b, "def other(x):\n    ", "\n" + header + PREFIX + SUFFIX),
                              max_new_tokens=4)
    b.complete(here)
    b.complete(there)
    back = b.complete(here)
    ids = b.tokenizer.encode(here.prompt)
    assert (back.reused_tokens >= len(ids) - 2) == warm_back
    assert back.token_ids == recompute(loaded, here)
    again = b.complete(there)
    assert (again.prefill_tokens <= 2) == warm_back and again.token_ids == recompute(loaded, there)
    assert b.cache_stats()["slots"] == regions
    b.drop(DOC)
    assert b.cache_stats()["slots"] == 0 and b.cache_stats()["bytes"] == 0


def test_forwards_are_counted_and_a_cancelled_run_adds_only_the_one_in_flight(loaded):
    b = backend(loaded)
    result = b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=8))
    assert b.cache_stats()["forwards"] == 1 + result.extra["decode_steps"]
    token, calls = CancelToken(), []

    def cancel_during_third(module, args):  # a newer request arrives while the third forward runs
        calls.append(1)
        if len(calls) == 3:
            token.cancel()

    hook = b.model.register_forward_pre_hook(cancel_during_third)
    try:
        with pytest.raises(Cancelled):
            b.complete(CompletionRequest(DOC, fim_prompt(b, PREFIX + "x", SUFFIX), max_new_tokens=64), token)
    finally:
        hook.remove()
    assert len(calls) == 3 and b.cache_stats()["forwards_after_cancel"] == 1
    assert b.cache_stats()["forwards"] == 1 + result.extra["decode_steps"] + 3


def test_prefilled_tokens_counts_what_requests_computed_not_what_they_planned(loaded):
    b = backend(loaded)
    b.prefill_chunk = 8  # steps of 8 prompt tokens
    request = CompletionRequest(DOC, fim_prompt(b, PREFIX, SUFFIX), max_new_tokens=4)
    ids = b.tokenizer.encode(request.prompt)
    with pytest.raises(Cancelled):  # superseded after two of its prefill chunks
        b.complete(request, CancelAfter(2))
    held = len(b.slot_tokens(DOC))
    assert 0 < held < len(ids) and b.cache_stats()["prefilled_tokens"] == held
    result = b.complete(request)  # the next one computes only the rest
    assert result.reused_tokens == held
    assert b.cache_stats()["prefilled_tokens"] == len(ids) == held + result.prefill_tokens
