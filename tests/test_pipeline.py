"""The pipeline's glue: cursor -> prompt -> backend request -> post-processing, with a recording backend."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.api import (BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, through_dedent,
                        through_line_end)
from engine.fim import fim_tokens_from_vocab
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from lsp_server.core.context import cursor_context
from lsp_server.core.postprocess import (PostprocessConfig, ShownSuggestion, Suggestion, block_floor, postprocess,
                                    takes_block)
from lsp_server.core.prompt import PromptConfig

STARCODER = fim_tokens_from_vocab(["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                   "<filename>"])


@dataclass
class RecordingBackend:
    """Answers every request with `raw` and remembers what it was asked."""

    raw: str
    info: BackendInfo = BackendInfo(backend="recording", model="m", device="cpu", dtype="float32", n_ctx=256)
    fim: object = STARCODER
    requests: list[CompletionRequest] = field(default_factory=list)
    tokens: list[CancelToken | None] = field(default_factory=list)
    ranks_first_token: bool = False
    searches_lines: bool = False

    def count_tokens(self, text: str) -> int:
        return len(text.encode("utf-8")) // 4 + 1  # about four bytes a token

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        self.requests.append(request)
        self.tokens.append(cancel)
        if cancel is not None and cancel.cancelled:
            raise Cancelled(request.doc_id)
        return CompletionResult(text=self.raw, token_ids=[1, 2], stop_reason="eos", prompt_tokens=10,
                                reused_tokens=7, prefill_tokens=3, generated_tokens=2, latency_ms=1.5)


TEXT = "def area(r):\n    return 3.14 * \n\nprint(area(2))\n"


def test_the_backend_gets_the_fim_prompt_and_the_generation_settings():
    backend = RecordingBackend(raw="r * r")
    settings = CompletionSettings(max_new_tokens=12, temperature=0.3, time_budget_s=2.0)
    outcome = pipeline.complete(backend, "doc-1", TEXT, 1, 18, config=pipeline.pipeline_config(settings), path="geo.py")
    [request] = backend.requests
    assert request.doc_id == "doc-1"
    assert request.prompt == ("<filename>geo.py\n<fim_prefix><fim_suffix>\n\nprint(area(2))\n<fim_middle>"
                              "def area(r):\n    return 3.14 * ")
    assert (request.max_new_tokens, request.temperature, request.time_budget_s) == (12, 0.3, 2.0)
    assert request.heal, "the token at the cursor is healed unless the user turned it off"
    assert outcome.prompt.text == request.prompt and outcome.prompt.mode == "spm"
    assert outcome.result.prefill_tokens == 3 and outcome.raw == "r * r"


@pytest.mark.parametrize("raw, expected", [
    ("r * r<|endoftext|>junk", Suggestion("r * r")),  # cut at the end-of-text token
    ("r * r)\nmore = 1", Suggestion("r * r")),  # one line; a closer nothing before the cursor opened is dropped
    ("   ", None),  # only whitespace: nothing to show
    ("", None),
])
def test_the_suggestion_is_the_post_processed_generation(raw, expected):
    backend = RecordingBackend(raw=raw)
    config = pipeline.PipelineConfig(postprocess=PostprocessConfig(multiline="never"))
    outcome = pipeline.complete(backend, "d", TEXT, 1, 18, config=config)
    assert outcome.suggestion == expected  # literal: not computed with the postprocess call under test


def test_typing_into_the_shown_suggestion_needs_no_model_call():
    backend = RecordingBackend(raw="unused")
    before = cursor_context(TEXT, 1, 18)
    shown = ShownSuggestion(before.prefix, before.suffix, Suggestion("r * r"))
    typed = TEXT[: len(before.prefix)] + "r " + TEXT[len(before.prefix):]
    outcome = pipeline.complete(backend, "d", typed, 1, 20, shown=shown)
    assert backend.requests == []
    assert outcome.suggestion == Suggestion("* r") and outcome.result is None and outcome.raw == "* r"


def test_cancellation_reaches_the_backend():
    backend = RecordingBackend(raw="x")
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        pipeline.complete(backend, "d", TEXT, 1, 18, cancel=token)
    assert backend.tokens == [token]


def test_lone_surrogates_are_replaced_without_moving_positions():
    backend = RecordingBackend(raw="1")
    text = "a = '\ud83d'\nb = "
    outcome = pipeline.complete(backend, "d", text, 1, 4)
    assert outcome.context.prefix == "a = '\ufffd'\nb = "
    assert "\ud83d" not in backend.requests[0].prompt
    assert pipeline.scrub_surrogates("ok 😀") == "ok 😀"


def test_neighbour_documents_head_the_prompt_only_when_enabled():
    other = ("lib/geometry.py", "def circle_area(r):\n    return 3.14 * r * r\n")
    on = RecordingBackend(raw="r")
    outcome = pipeline.complete(on, "d", TEXT, 1, 18, others=[other], path="geo.py")
    assert outcome.snippets and outcome.snippets[0].path == "lib/geometry.py"
    assert "circle_area" in on.requests[0].prompt
    off = RecordingBackend(raw="r")
    config = pipeline.PipelineConfig(prompt=PromptConfig(neighbours=False))
    assert pipeline.complete(off, "d", TEXT, 1, 18, config=config, others=[other]).snippets == ()
    assert "circle_area" not in off.requests[0].prompt


def test_settings_map_onto_the_prompt_core_configuration():
    config = pipeline.pipeline_config(CompletionSettings(
        max_new_tokens=20, multiline="always", prefix_suffix_ratio=2.0, neighbours=False, fim_mode="psm"))
    assert config.prompt == PromptConfig(fim_mode="psm", prefix_suffix_ratio=2.0, max_new_tokens=20, neighbours=False)
    assert config.postprocess == PostprocessConfig(multiline="always")
    assert config.heal and not pipeline.pipeline_config(CompletionSettings(token_healing=False)).heal




@pytest.mark.parametrize("text, line, character, multiline, stops", [
    ("x = f(a, )\n", 0, 9, "auto", ("\n",)),  # text on both sides: one line is all that is kept
    ("x = f(a, )\n", 0, 9, "never", ("\n",)),
    ("x = f(a, )\n", 0, 9, "always", ()),
    ("x = \n", 0, 4, "auto", ()),  # line end: the model may go on to the next line
    ("    )\n", 0, 4, "auto", ()),  # line start
    ("\n", 0, 0, "auto", ()),
])
def test_early_stops_only_mid_line(text, line, character, multiline, stops):
    ctx = cursor_context(text, line, character)
    assert pipeline.early_stops(ctx, PostprocessConfig(multiline=multiline)) == stops


@pytest.mark.parametrize("raw", ["b)\nprint(x)", "b, c)\n\n    y = 2\n", "\n    more", "b[0] + 1\nz"])
@pytest.mark.parametrize("multiline", ["auto", "never"])
def test_stopping_at_the_line_break_mid_line_changes_no_suggestion(raw, multiline):
    ctx = cursor_context("x = f(a, )\nprint(x)\n", 0, 9)
    config = PostprocessConfig(multiline=multiline)
    assert pipeline.early_stops(ctx, config) == ("\n",)
    assert postprocess(raw[: raw.index("\n")], ctx, config) == postprocess(raw, ctx, config)


LINE_CONTEXTS = [  # (document, line, character): every kind of cursor a one-line suggestion serves
    ("total = \nprint(total)\n", 0, 8),  # line end
    ("def f(x):\n    y = x\n\n    return y\n", 2, 4),  # an empty line, not under an opener
    ("items = [\n    1,\n    \n]\n", 2, 4),  # an indented empty line
    ("def f(x):\n    return g(x)\n", 1, 4),  # line start, the rest of the line after the cursor
    ("x = f(a, )\nprint(x)\n", 0, 9),  # mid-line
    ("", 0, 0),  # an empty document
]


@pytest.mark.parametrize("text, line, character", LINE_CONTEXTS)
@pytest.mark.parametrize("multiline", ["auto", "never"])
@settings(max_examples=150, deadline=None)
@given(raw=st.text(alphabet="ab( ):\n\t#", max_size=40))
def test_stopping_at_the_first_line_end_after_text_changes_no_one_line_suggestion(
        text, line, character, multiline, raw):
    ctx = cursor_context(text, line, character)
    config = PostprocessConfig(multiline=multiline)
    assert not takes_block(ctx, config)
    cut = through_line_end(raw)
    assert postprocess(raw if cut is None else raw[:cut], ctx, config) == postprocess(raw, ctx, config)


BLOCK_CONTEXTS = [  # (document, line, character): a block suggestion under an opener
    ("def f(x):\n\nprint(f(1))\n", 0, 9),  # at the end of the opener's line
    ("def f(x):\n    \n", 1, 4),  # on the empty line under it
    ("class A:\n    def f(self):\n        \n    def g(self):\n        pass\n", 2, 8),  # nested
    ("\tif x:\n\t\t\n", 1, 2),  # tabs
    ("items = foo(\n\nprint(items)\n", 0, 12),  # a bracket: its closer at the opener's depth is kept
]
lines_of_code = st.lists(st.tuples(st.sampled_from(["", " ", "  ", "    ", "\t", "        ", "\t\t", "     "]),
                                   st.sampled_from(["", "x = 1", ")", "])", "pass", "def g():", "y", "  "])),
                         max_size=8)


@pytest.mark.parametrize("text, line, character", BLOCK_CONTEXTS)
@settings(max_examples=300, deadline=None)
@given(lines=lines_of_code, tail=st.booleans())
def test_stopping_after_the_first_dedented_line_changes_no_block_suggestion(text, line, character, lines, tail):
    raw = "\n".join(indent + code for indent, code in lines) + ("\n" if tail else "")
    ctx = cursor_context(text, line, character)
    config = PostprocessConfig(multiline="auto")
    floor = block_floor(ctx, config)
    assert floor is not None
    cut = through_dedent(raw, floor)
    assert postprocess(raw if cut is None else raw[:cut], ctx, config) == postprocess(raw, ctx, config)


def test_block_floor_is_known_only_under_an_opener():
    assert block_floor(cursor_context("def f(x):\n", 0, 9), PostprocessConfig()) == 1
    assert block_floor(cursor_context("    if x:\n", 0, 9), PostprocessConfig()) == 5
    assert block_floor(cursor_context("total = \n", 0, 8), PostprocessConfig()) is None  # one line
    assert block_floor(cursor_context("total = \n", 0, 8), PostprocessConfig(multiline="always")) is None
    assert through_dedent("body\n    a\n\n  b\nc\n", 4) == len("body\n    a\n\n  b\n")
    assert through_dedent("a\n    b\n", 4) is None and through_dedent("\nx", 1) is None


@pytest.mark.parametrize("text, line, character, multiline, one_line, dedent", [
    ("total = \n", 0, 8, "auto", True, None),
    ("def f(x):\n", 0, 9, "auto", False, 1),  # after an opener: a block, ended by a line at column 0
    ("    def f(x):\n        \n", 1, 8, "auto", False, 5),  # on the empty line under it
    ("def f(x):\n", 0, 9, "never", True, None),
    ("total = \n", 0, 8, "always", False, None),  # a block with no opener: its scope is not known before
])
def test_the_request_says_where_a_line_or_block_suggestion_ends(text, line, character, multiline, one_line, dedent):
    backend = RecordingBackend(raw="1\n")
    config = pipeline.pipeline_config(CompletionSettings(multiline=multiline))
    pipeline.complete(backend, "doc", text, line, character, config=config)
    assert backend.requests[-1].stop_at_line_end is one_line
    assert backend.requests[-1].stop_at_dedent == dedent
    assert backend.requests[-1].stop_at_loop is True  # every suggestion ends at a loop's first copy


def test_a_replaced_backend_is_freed_with_its_token_counter():
    import gc
    import weakref

    class Served(RecordingBackend):  # hashable, as every real backend is
        __hash__ = object.__hash__

    backend = Served("x")
    counter = pipeline.token_counter(backend)
    assert counter("abc") == backend.count_tokens("abc") and pipeline.token_counter(backend) is counter
    held = weakref.ref(backend)
    del backend, counter
    gc.collect()
    assert held() is None, "the memoised token counter keeps a replaced model alive"


@dataclass
class ScoredBackend(RecordingBackend):
    """RecordingBackend whose tokens carry log-probabilities and text ends."""

    logprobs: list[float] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        result = super().complete(request, cancel)
        return replace(result, token_ids=list(range(len(self.logprobs))), generated_tokens=len(self.logprobs),
                       token_logprobs=self.logprobs, token_ends=self.ends)


# A healed-prefix token (writes none of the text), "r", " *", " r" (shown), then ")", "\n", "more = 1" (cut).
SCORED = dict(raw="r * r)\nmore = 1", logprobs=[-9.0, -0.1, -0.2, -0.3, -5.0, -6.0, -7.0], ends=[0, 1, 3, 5, 6, 7, 15])


@pytest.mark.parametrize("threshold, shown", [(0.0, True), (0.5, True), (0.74, True), (0.75, False), (0.99, False)])
def test_a_suggestion_with_a_token_the_model_doubted_is_hidden(threshold, shown):
    config = pipeline.PipelineConfig(postprocess=PostprocessConfig(multiline="never"), min_token_probability=threshold)
    outcome = pipeline.complete(ScoredBackend(**SCORED), "d", TEXT, 1, 18, config=config)
    # only the tokens of the text shown count: not the re-spelled prefix, not what post-processing cut
    assert outcome.confidence == pytest.approx(math.exp(-0.3))
    assert (outcome.suggestion == Suggestion("r * r")) if shown else outcome.suggestion is None


def test_without_token_probabilities_nothing_is_hidden():
    config = pipeline.PipelineConfig(postprocess=PostprocessConfig(multiline="never"), min_token_probability=0.9)
    outcome = pipeline.complete(RecordingBackend(raw="r * r"), "d", TEXT, 1, 18, config=config)
    assert outcome.suggestion == Suggestion("r * r") and outcome.confidence is None
    assert pipeline.pipeline_config(CompletionSettings(min_token_probability=0.3)).min_token_probability == 0.3


# -- the beam: the likeliest of a few first tokens' greedy lines ------------------------------------

CLASS = ("class P:\n    def __init__(self, name, age):\n        self.name = name\n        \n\n"
         "    def greet(self):\n        pass\n")


@dataclass
class RankedBackend:
    """Answers each first-token rank with its own line: rank -> (raw text, each token's
    log-probability); the text splits evenly over the tokens."""

    lines: dict[int, tuple[str, list[float]]]
    params: int = 7_000_000
    stop_reason: str = "line_end"
    fim: object = STARCODER
    searches_lines: bool = False  # first-token lines (the beam search is engine.beam's, tested there)
    ranks_first_token: bool = True
    requests: list[CompletionRequest] = field(default_factory=list)

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(backend="ranked", model="m", device="cpu", dtype="float32", n_ctx=256, params=self.params)

    def count_tokens(self, text: str) -> int:
        return len(text.encode("utf-8")) // 4 + 1

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        self.requests.append(request)
        text, logprobs = self.lines[request.first_token_rank]
        n = len(logprobs)
        ends = [len(text) * (i + 1) // n for i in range(n)]
        first = not request.first_token_rank  # the first run prefills the prompt, the others one token
        return CompletionResult(text=text, token_ids=list(range(n)), stop_reason=self.stop_reason, prompt_tokens=40,
                                reused_tokens=0 if first else 39, prefill_tokens=40 if first else 1,
                                generated_tokens=n, latency_ms=2.0, token_logprobs=logprobs, token_ends=ends)


ONE_LINE = pipeline.PipelineConfig(postprocess=PostprocessConfig(multiline="never"))
LINES = {0: ("self.name = name\n", [-0.1, -0.1, -0.1]),  # the likeliest, but it repeats the line above
         1: ("# type: ignore\n", [-2.0, -2.0]),
         2: ("self.age = age\n", [-1.0, -0.3, -0.2])}


def test_a_beam_shows_the_likeliest_line_that_post_processing_keeps():
    backend = RankedBackend(LINES)
    outcome = pipeline.complete(backend, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=3))
    assert [r.first_token_rank for r in backend.requests] == [0, 1, 2]
    assert all(r.token_probabilities for r in backend.requests), "the lines are compared by their probability"
    assert len({r.prompt for r in backend.requests}) == 1
    assert outcome.suggestion == Suggestion("self.age = age")  # -1.5 beats -4.0; the copy is dropped
    assert outcome.confidence == pytest.approx(math.exp(-1.0))
    # the request's cost: the first run's prefill, all three runs' time
    assert (outcome.result.prefill_tokens, outcome.result.reused_tokens) == (40, 0)
    assert outcome.result.latency_ms == 6.0 and outcome.result.extra["beam"] == 3
    assert outcome.result.extra["beam_tokens"] == 8


def test_one_branch_is_plain_greedy():
    backend = RankedBackend(LINES)
    outcome = pipeline.complete(backend, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=1))
    assert [r.first_token_rank for r in backend.requests] == [0]
    assert outcome.suggestion is None, "the greedy line repeats the line above"


def test_a_tie_keeps_the_likelier_first_token():
    backend = RankedBackend({0: ("self.x = 1\n", [-1.0, -1.0]), 1: ("self.y = 2\n", [-0.5, -1.5])})
    outcome = pipeline.complete(backend, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=2))
    assert outcome.suggestion == Suggestion("self.x = 1")


def test_a_branch_with_a_doubted_token_is_not_shown_but_the_others_still_compete():
    lines = {**LINES, 2: ("self.age = age\n", [-3.0, 0.0, 0.0])}  # sum -3.0 still beats -4.0, but one token is doubted
    config = replace(ONE_LINE, beam=3, min_token_probability=0.1)  # exp(-3.0) = 0.05 < 0.1 <= exp(-2.0)
    outcome = pipeline.complete(RankedBackend(lines), "d", CLASS, 3, 8, config=config)
    assert outcome.suggestion == Suggestion("# type: ignore")


def test_no_more_lines_once_out_of_time():
    backend = RankedBackend(LINES, stop_reason="time_budget")
    pipeline.complete(backend, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=3))
    assert len(backend.requests) == 1


@pytest.mark.parametrize("params, temperature, ranks, multiline, rank, requests", [
    (7_000_000, 0.0, True, "never", 0, 3),  # auto: a small model compares lines
    (1_100_000_000, 0.0, True, "never", 0, 1),  # a 1B model decodes too slowly for it
    (0, 0.0, True, "never", 0, 1),  # unknown size (a remote server)
    (7_000_000, 0.4, True, "never", 0, 1),  # sampling: no ranks to branch on
    (7_000_000, 0.0, False, "never", 0, 1),  # a backend that cannot force a first token
    (7_000_000, 0.0, True, "always", 0, 1),  # a block: a sum over lines would favour the shortest
    (7_000_000, 0.0, True, "never", 1, 1),  # an alternative the user cycles to is that rank's line
])
def test_auto_beam_only_where_they_are_cheap_and_meaningful(params, temperature, ranks, multiline, rank, requests):
    backend = RankedBackend(LINES, params=params, ranks_first_token=ranks)
    config = pipeline.PipelineConfig(postprocess=PostprocessConfig(multiline=multiline), temperature=temperature)
    assert config.beam is None
    pipeline.complete(backend, "d", CLASS, 3, 8, config=config, first_token_rank=rank)
    assert len(backend.requests) == requests
    assert [r.first_token_rank for r in backend.requests] == list(range(rank, rank + requests))


def test_the_beam_setting_reaches_the_pipeline():
    assert pipeline.pipeline_config(CompletionSettings(beam=2)).beam == 2
    assert pipeline.pipeline_config(CompletionSettings()).beam is None


@dataclass
class SearchingBackend(RankedBackend):
    """Answers a beam request with all its lines at once, rank i's line scored `scores[i]` (a beam's
    whole-line score, which the pipeline ranks by instead of the shown tokens' sum)."""

    scores: tuple[float, ...] = (-0.3, -1.2, -2.5)
    searches_lines: bool = True

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        self.requests.append(request)
        found = []
        for rank, score in zip(sorted(self.lines), self.scores[:request.beam]):
            text, logprobs = self.lines[rank]
            n = len(logprobs)
            found.append(CompletionResult(text=text, token_ids=list(range(n)), stop_reason="line_end",
                                          prompt_tokens=40, reused_tokens=0, prefill_tokens=40, generated_tokens=n,
                                          latency_ms=5.0, token_logprobs=logprobs,
                                          token_ends=[len(text) * (i + 1) // n for i in range(n)], score=score))
        found[0].other_lines = found[1:]
        return found[0]


def test_a_beam_is_one_request_and_its_likeliest_shown_line_wins():
    backend = SearchingBackend(LINES, scores=(-0.3, -2.5, -1.2))  # rank 1's comment line is the least likely
    outcome = pipeline.complete(backend, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=3))
    assert [(r.beam, r.first_token_rank) for r in backend.requests] == [(3, 0)]
    assert outcome.suggestion == Suggestion("self.age = age")  # the copy of the line above (-0.3) is out
    # by the beam's scores, not the shown tokens' sums (which would put "# type: ignore" at -4.0 last too,
    # but "self.age = age" at -1.5)
    assert [o.suggestion.text for o in outcome.other_lines] == ["# type: ignore"]
    assert outcome.beam == 3 and outcome.result.latency_ms == 5.0 and outcome.result.extra["beam"] == 3
    one = SearchingBackend(LINES)
    pipeline.complete(one, "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=1))
    assert [r.beam for r in one.requests] == [1]  # one line: plain greedy decoding
    hidden = pipeline.complete(SearchingBackend(LINES), "d", CLASS, 3, 8,
                               config=replace(ONE_LINE, beam=3, min_token_probability=0.2))
    assert hidden.suggestion == Suggestion("self.age = age") and hidden.other_lines == ()  # exp(-2) < 0.2


def test_a_beam_on_a_real_model_is_one_call_and_shows_its_likeliest_line_that_survives():
    backend = pipeline.load_model(ModelConfig(dtype="float32"))
    assert backend.searches_lines
    calls = []
    complete = backend.complete

    def recorded(request, cancel=None):
        calls.append((request, complete(request, cancel)))
        return calls[-1][1]

    backend.complete = recorded
    branched = pipeline.complete(backend, "b", CLASS, 3, 8, config=replace(ONE_LINE, beam=3))
    assert [request.beam for request, _ in calls] == [3]
    found = [calls[0][1], *calls[0][1].other_lines]
    assert len(found) >= 2 and [r.score for r in found] == sorted((r.score for r in found), reverse=True)
    ctx = branched.context
    kept = [text for r in found if (text := postprocess(r.text, ctx, ONE_LINE.postprocess,
                                                        stop_tokens=backend.fim.stop_tokens())) is not None]
    assert branched.suggestion == kept[0] and [o.suggestion for o in branched.other_lines] == kept[1:]
    assert branched.beam == len(found) and branched.result.latency_ms == calls[0][1].latency_ms


def test_the_other_lines_compared_come_likeliest_first():
    lines = {**LINES, 3: ("self.age = None\n", [-1.0, -1.0, -0.5])}  # -2.5: between -1.5 and -4.0
    outcome = pipeline.complete(RankedBackend(lines), "d", CLASS, 3, 8, config=replace(ONE_LINE, beam=4))
    assert outcome.suggestion == Suggestion("self.age = age") and outcome.beam == 4
    # rank 0 repeats the line above: no runner-up; the rest by their lines' total log-probability
    assert [o.suggestion.text for o in outcome.other_lines] == ["self.age = None", "# type: ignore"]
    assert [o.confidence for o in outcome.other_lines] == pytest.approx([math.exp(-1.0), math.exp(-2.0)])


def test_the_lines_compared_share_the_time_budget():
    backend = RankedBackend(LINES)  # each run reports 2 ms
    config = replace(ONE_LINE, beam=3, time_budget_s=0.005)
    pipeline.complete(backend, "d", CLASS, 3, 8, config=config)
    budgets = [r.time_budget_s for r in backend.requests]
    assert budgets == pytest.approx([0.005, 0.003, 0.001])
    pipeline.complete(backend, "e", CLASS, 3, 8, config=replace(config, time_budget_s=0.004))
    assert len(backend.requests) == 3 + 2, "no third run once the first two spent the budget"


def test_the_snippets_a_prompt_quotes_are_told_before_the_backend_runs_even_when_it_is_cancelled():
    """A request superseded mid-decode has already prefilled its prompt, neighbour snippets
    included: the next request must quote the same ones, or its prompt misses the cache."""
    token = CancelToken()
    token.cancel()  # superseded: the backend stops at its first check
    told = []
    others = [("lib/geometry.py", "def area(width, height):\n    return width * height\n")]
    with pytest.raises(Cancelled):
        pipeline.complete(RecordingBackend(raw="x"), "d", "w = area(width, height)\n", 0, 4,
                          config=pipeline.PipelineConfig(), others=others, cancel=token, quoted=told.append)
    assert len(told) == 1 and [s.path for s in told[0]] == ["lib/geometry.py"]
