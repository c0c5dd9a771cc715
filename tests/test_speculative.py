"""Prompt-lookup speculation: the drafter on literal ids, and speculative greedy decoding giving
plain greedy decoding's tokens, stop reasons and cached slot tokens (torch and ONNX Runtime)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.keystroke_replay import keystrokes, load_problems
from engine.api import CompletionRequest, DocId
from engine.backends.onnx_backend import load_onnx_backend
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from tests.support.faults import InjectedFault, failing_forward
from engine.generate import Sampling, StopRules, generate
from engine.loading import load_model
from engine.speculative import PromptLookup, draft_tokens, next_draft_length
from lsp_server.pipeline import early_stops
from lsp_server.core.postprocess import PostprocessConfig
from lsp_server.core.prompt import PromptConfig, build_prompt
from tests.test_generate import FakeKV, NextToken

CPU = torch.device("cpu")
CACHE = CacheConfig(budget_bytes=64 * 2**20)
BUDGETS = (1, 64, 2, 5, 64)  # max_new_tokens, cycled over the keystrokes: 1 and 2 leave no room for a draft


# -- the drafter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("context, kwargs, draft", [
    ([1, 2, 3, 9, 8, 3, 7, 1, 2, 3], {"k": 4}, [9, 8, 3, 7]),  # the trigram beats the more recent unigram 3
    ([5, 1, 2, 7, 1, 2, 8, 1, 2], {"k": 2}, [8, 1]),  # of two bigram matches the most recent wins
    ([5, 1, 2, 7, 1, 2, 8, 1, 2], {"k": 9}, [8, 1, 2]),  # the draft stops where the context does
    ([4, 4, 4, 4], {"k": 3}, [4]),  # the latest trigram match is followed by one token only
    ([1, 9, 5, 1], {"k": 3}, [9, 5, 1]),  # a unigram match
    ([1, 9, 5, 1], {"k": 3, "ngram_min": 2}, []),  # ... which ngram_min 2 refuses
    ([6, 1, 2, 6, 2], {"k": 2, "ngram_max": 1}, [6, 2]),  # unigrams only: the latest 2 is followed by 6, 2
    ([1, 2, 3], {"k": 3}, []),  # nothing repeats
    ([7], {"k": 3}, []),
    ([], {"k": 3}, []),
    ([1, 2, 1], {"k": 0}, []),
])
def test_draft_tokens(context, kwargs, draft):
    assert draft_tokens(context, **kwargs) == draft


@pytest.mark.parametrize("kwargs, match", [({"k": -1}, "k must be"), ({"ngram_min": 0}, "ngram_min"),
                                           ({"ngram_min": 3, "ngram_max": 2}, "ngram_min")])
def test_draft_tokens_rejects_bad_lengths(kwargs, match):
    with pytest.raises(ValueError, match=match):
        draft_tokens([1, 2, 1], **kwargs)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(0, 40), st.integers(1, 3), st.integers(0, 2),
       st.integers(0, 6))
def test_prompt_lookup_drafts_what_draft_tokens_drafts(ids, split, ngram_min, extra, k):
    lookup = PromptLookup(ids[:split], ngram_max=ngram_min + extra, ngram_min=ngram_min)
    for token in ids[split:]:
        lookup.append(token)
    assert lookup.draft(k) == draft_tokens(ids, ngram_max=ngram_min + extra, ngram_min=ngram_min, k=k)


def test_prompt_lookup_literal():
    lookup = PromptLookup([5, 1, 2, 7, 1], ngram_max=3, ngram_min=2)
    assert lookup.draft(3) == []  # the unigram 1 recurs, but single tokens are not matched
    lookup.append(2)
    assert lookup.draft(3) == [7, 1, 2]
    lookup.append(8)
    assert (lookup.ids, lookup.draft(3)) == ([5, 1, 2, 7, 1, 2, 8], [])


@pytest.mark.parametrize("length, drafted, kept, draft", [
    (4, 4, 4, 4), (3, 3, 3, 4), (2, 1, 1, 3),  # a wholly kept draft: one more, up to the limit 4
    (4, 4, 3, 3), (2, 2, 0, 1), (1, 1, 0, 1),  # a miss: one less, never below 1
    (3, 0, 0, 3),  # no draft was proposed: unchanged
])
def test_next_draft_length(length, drafted, kept, draft):
    assert next_draft_length(length, drafted, kept, limit=4) == draft


# -- the decode loop over a scripted model ---------------------------------------------------------

def scripted(prompt, rules, speculate):
    """(tokens, stop reason, written ids, forwards after the prefill, accepted, drafted) on NextToken."""
    model, written = NextToken(), []
    gen = generate(model, FakeKV(), prompt, 0, rules, Sampling(), written.extend,
                   decode=lambda ids: "".join(chr(97 + i) for i in ids), speculate=speculate)
    assert gen.steps == len(model.calls) - 1
    return gen.tokens, gen.stop_reason, written, gen.steps, gen.accepted, gen.drafted


@pytest.mark.parametrize("rules", [
    StopRules(max_new_tokens=0), StopRules(max_new_tokens=1), StopRules(max_new_tokens=2),
    StopRules(max_new_tokens=9), StopRules(max_new_tokens=9, stop_ids=frozenset({6}), eod_id=6),
    StopRules(max_new_tokens=9, stop_strings=("gh",)), StopRules(max_new_tokens=9, stop_strings=("e",)),
], ids=["max0", "max1", "max2", "max9", "stop-id", "stop-string", "stop-string-first-token"])
def test_speculation_gives_plain_tokens_reasons_and_written_ids(rules):
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 1, 2, 3]  # NextToken counts up: the prompt drafts it right
    plain = scripted(prompt, rules, speculate=0)
    spec = scripted(prompt, rules, speculate=4)
    assert spec[:3] == plain[:3], "tokens, stop reason and the K/V reported as written all equal plain decoding's"
    if rules.max_new_tokens == 9 and not rules.stop_ids and not rules.stop_strings:
        assert spec[3:] == (2, 6, 6), "9 tokens in 2 forwards after the prefill: every drafted token was kept"


def test_a_wrong_draft_costs_no_token_and_no_step():
    prompt = [3, 4, 9, 9, 2, 3]  # after 3, 4 the prompt drafts 9, 9, 2: NextToken says 5
    plain = scripted(prompt, StopRules(max_new_tokens=8), speculate=0)
    spec = scripted(prompt, StopRules(max_new_tokens=8), speculate=3)
    assert spec[:4] == plain[:4] and spec[4:] == (0, 3)


# -- the real engine on the tiny kit models --------------------------------------------------------

def torch_backends(family):
    from tests.conftest import kit

    loaded = load_model(str(kit(shape="tiny", family=family)), CPU, torch.float32)
    return TorchBackend(loaded, CACHE), TorchBackend(loaded, CACHE, speculate=4)


@pytest.fixture(scope="module", params=["torch-starcoder", "torch-santacoder", "onnx"])
def pair(request):
    """(plain, speculative) backends over the same tiny fp32 model, each with its own cache."""
    if request.param == "onnx":
        export = request.getfixturevalue("tiny_onnx")
        return tuple(load_onnx_backend(str(export), dtype="float32", cache=CACHE, speculate=n) for n in (0, 4))
    return torch_backends(request.param.removeprefix("torch-"))


def typing_requests(backend, problems=3, max_keys=10, heal=False):
    """The server's request after each keystroke of typing HumanEval spans; budgets cycle BUDGETS."""
    config = PromptConfig(max_new_tokens=max(BUDGETS), neighbours=False)
    n = 0
    for problem in load_problems(problems):
        for ctx in keystrokes(problem, max_keys):
            prompt = build_prompt(ctx, backend.fim, backend.count_tokens, backend.info.n_ctx, config).text
            yield CompletionRequest(DocId(problem.task_id), prompt, max_new_tokens=BUDGETS[n % len(BUDGETS)],
                                    stop_strings=(*early_stops(ctx, PostprocessConfig()), *([")"] if n % 3 else [])),
                                    heal=heal)
            n += 1


def assert_replay_matches(plain, spec, heal=False):
    drafted = accepted = 0
    for request in typing_requests(plain, heal=heal):
        a, b = plain.complete(request), spec.complete(request)
        assert (b.token_ids, b.stop_reason, b.text) == (a.token_ids, a.stop_reason, a.text), request.prompt
        assert spec.slot_tokens(request.doc_id) == plain.slot_tokens(request.doc_id)
        assert b.reused_tokens == a.reused_tokens, "the cache is reused between keystrokes as in plain decoding"
        drafted += b.extra["drafted_tokens"]
        accepted += b.extra["accepted_tokens"]
    assert drafted > 0 and accepted > 0, "the replay should both keep and reject draft tokens"


@pytest.mark.parametrize("heal", [False, True], ids=["plain", "healed"])
def test_speculative_greedy_equals_plain_greedy_over_a_typing_replay(pair, heal, one_thread):
    plain, spec = pair
    assert_replay_matches(plain, spec, heal)
    if spec.info.backend == "onnx":
        for doc, slot in spec.buffers.items():
            assert slot.length == len(spec.slot_tokens(doc)), "the ONNX slot's arrays hold exactly the cached tokens"


def repeating_request(backend, doc="file:///repeat.py"):
    f = backend.fim
    body = "def area(w, h):\n    return w * h\n\n\n" * 6
    return CompletionRequest(DocId(doc), f"{f.prefix}{body}{f.suffix}\n{f.middle}", max_new_tokens=48)


def test_a_document_that_repeats_itself_gets_drafts_accepted(one_thread):
    from engine.select import DEFAULT_MODEL_DIR

    loaded = load_model(str(DEFAULT_MODEL_DIR), CPU, torch.float32)  # trained: it copies what repeats
    plain, spec = TorchBackend(loaded, CACHE), TorchBackend(loaded, CACHE, speculate=4)
    req = repeating_request(plain)
    a, b = plain.complete(req), spec.complete(req)
    assert (b.token_ids, b.stop_reason) == (a.token_ids, a.stop_reason)
    assert b.extra["accepted_tokens"] > 0 and b.extra["decode_steps"] < a.extra["decode_steps"]
    assert a.extra["accepted_tokens"] == a.extra["drafted_tokens"] == 0 and spec.slot_tokens(req.doc_id) == \
        plain.slot_tokens(req.doc_id)


def test_a_forward_failing_midway_leaves_the_slot_consistent(one_thread):
    plain, spec = torch_backends("starcoder")
    req = repeating_request(plain, "file:///fails.py")
    spec.complete(req)  # the slot holds the document
    edited = CompletionRequest(req.doc_id, req.prompt.replace("area", "volume", 1), max_new_tokens=48)
    with failing_forward(spec, InjectedFault("injected"), after_calls=3), pytest.raises(InjectedFault):
        spec.complete(edited)  # prefill + two verifying steps run, the third raises
    assert spec.slot_tokens(req.doc_id) == [], "a failed request forgets the slot rather than keep half-written K/V"
    a, b = plain.complete(edited), spec.complete(edited)
    assert b.token_ids == a.token_ids and spec.slot_tokens(req.doc_id) == plain.slot_tokens(req.doc_id)


def test_a_cancel_between_steps_leaves_a_prefix_of_the_greedy_tokens_cached(one_thread):
    from engine.api import Cancelled
    from tests.conftest import CancelAfter

    plain, spec = torch_backends("starcoder")
    req = repeating_request(plain, "file:///cancelled.py")
    with pytest.raises(Cancelled):
        spec.complete(req, CancelAfter(3))  # three steps run, the fourth is refused
    full = plain.tokenizer.encode(req.prompt) + plain.complete(req).token_ids
    cached = spec.slot_tokens(req.doc_id)
    assert len(cached) > len(plain.tokenizer.encode(req.prompt)) and cached == full[:len(cached)]
    assert spec.complete(req).token_ids == plain.complete(req).token_ids


def test_the_speculate_setting_reaches_the_backend():
    from engine.select import load_backend
    from engine.speculative import default_speculate
    from fim_lsp.cli import build_parser
    from lsp_server.config import ConfigError, ServerConfig, apply_settings, config_from_args
    from tests.conftest import kit

    args = build_parser().parse_args(["serve", "--speculate", "6"])
    assert config_from_args(args).model.speculate == 6
    assert apply_settings(ServerConfig(), {"speculate": 0}).model.speculate == 0
    with pytest.raises(ConfigError, match="speculate"):
        apply_settings(ServerConfig(), {"speculate": -2})
    tiny = str(kit(shape="tiny"))
    assert load_backend(tiny, backend="torch", dtype="float32", speculate=3).speculate == 3
    assert load_backend(tiny, backend="torch", dtype="float32").speculate == default_speculate("torch", "cpu")


def test_the_edit_replay_deletes_a_function_body_after_its_docstring(tmp_path):
    from benchmarks.speculative import stdlib_problems

    source = ('import os\n\n\ndef short():\n    return 1\n\n\n'
              'def body(a):\n    """Doc.\x0c"""\n    b = a + 1\n    c = b * 2\n    return c\n\n\nX = 1\n')
    (tmp_path / "m.py").write_text(source)
    [problem] = stdlib_problems(5, stdlib=tmp_path, files=["m.py", "missing.py"])
    assert problem.task_id == "m.py:body"
    assert problem.middle == "    b = a + 1\n    c = b * 2\n    return c\n"
    assert problem.prefix.endswith('"""Doc.\x0c"""\n') and problem.suffix == "\n\nX = 1\n"
    assert problem.prefix + problem.middle + problem.suffix == source


def test_the_speculation_table_figures_on_literal_samples():
    from benchmarks.speculative import Run, Sample, format_table, summarize

    plain = Run("plain", [Sample(100, 90, [1, 2, 3], 3, 0, 0), Sample(300, 280, [4, 5], 2, 0, 0)])
    spec = Run("spec4", [Sample(50, 40, [1, 2, 3], 1, 4, 2), Sample(150, 140, [4, 6], 2, 4, 0)])
    base, ours = summarize([plain, spec])
    assert (ours["p50_ms"], ours["speedup_p50"], ours["speedup_mean"]) == (100, 2.0, 2.0)
    assert (ours["steps_per_keystroke"], ours["accepted_per_step"], ours["draft_hit_rate"]) == (1.5, 2 / 3, 0.25)
    assert ours["identical"] == 0.5 and base["identical"] == 1.0 and ours["decode_tokens_per_s"] == 5 / 0.18
    assert format_table("title", [base, ours]).splitlines()[4].startswith("spec4")
