"""From a document and a cursor to a suggestion: the one path every entry point takes.

The language server, `fim-lsp complete`, the demo and the evaluation all call `complete()`:
cursor context -> prompt (prompt core, counted with the backend's tokenizer) -> the backend's
generation (stop strings, token budget, temperature, cancellation) -> post-processing. Pure glue:
the backend is passed in, and nothing here knows about LSP.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

from engine.api import Backend, CancelToken, CompletionRequest, CompletionResult, DocId
from lsp_server.config import CompletionSettings, ModelConfig
from lsp_server.core.context import CursorContext, Encoding, cursor_context
from lsp_server.core.neighbours import Snippet, select_snippets, text_around_cursor
from lsp_server.core.postprocess import (PostprocessConfig, ShownSuggestion, Suggestion, postprocess, reuse_suggestion,
                                    block_floor, takes_block)
from lsp_server.core.prompt import Prompt, PromptConfig, TokenCounter, build_prompt, memoize_counts

Progress = Callable[[str, float], None]  # (message, fraction done in [0, 1]) while a model loads

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> its memoised token counter


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """The prompt core's and the generation's settings for one request."""

    prompt: PromptConfig = PromptConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    temperature: float = 0.0
    time_budget_s: float | None = None
    seed: int | None = None
    heal: bool = True  # re-spell the token at the cursor (engine.healing); backends without it ignore it
    min_token_probability: float = 0.0  # hide suggestions with a token the model was less sure of
    # one-line suggestions: how many lines to compare (a beam search, or first tokens continued
    # greedily), showing the likeliest (None: `AUTO_BEAM` where a decode is cheap, `beam_for`)
    beam: int | None = None


AUTO_BEAM = 3  # lines compared for a one-line suggestion where decoding is cheap
CHEAP_DECODE_PARAMS = 100_000_000  # smaller models decode a line in tens of ms on a CPU (the bundled one: ~30 ms)


def beam_for(backend: Backend, config: PipelineConfig) -> int:
    """How many lines to compare for a greedy one-line suggestion.

    A small model's greedy line often copies the line above (dropped by post-processing) or takes a
    less likely path after a likely token. A backend with a beam search (`searches_lines`) keeps
    this many partial lines at every step and returns the likeliest whole lines; one that only ranks
    first tokens continues each of this many first tokens greedily. Either costs about one decode
    per line, so "auto" compares lines only for models that decode in milliseconds.
    """
    if config.temperature > 0 or not (backend.ranks_first_token or backend.searches_lines):
        return 1
    if config.beam is not None:
        return config.beam
    return AUTO_BEAM if 0 < backend.info.params < CHEAP_DECODE_PARAMS else 1


def pipeline_config(settings: CompletionSettings) -> PipelineConfig:
    """The pipeline configuration that user-facing completion settings describe."""
    return PipelineConfig(
        prompt=PromptConfig(
            fim_mode=settings.fim_mode, prefix_suffix_ratio=settings.prefix_suffix_ratio,
            max_new_tokens=settings.max_new_tokens, neighbours=settings.neighbours,
            include_repo_name=settings.repo_name,
        ),
        postprocess=PostprocessConfig(multiline=settings.multiline),
        temperature=settings.temperature,
        time_budget_s=settings.time_budget_s,
        heal=settings.token_healing,
        min_token_probability=settings.min_token_probability,
        beam=settings.beam,
    )


@dataclass(slots=True)
class Outcome:
    """What one completion produced, and what it cost."""

    suggestion: Suggestion | None  # what the editor shows; None = nothing worth showing
    context: CursorContext
    prompt: Prompt | None  # None when served from the suggestion already shown
    result: CompletionResult | None  # the backend's raw generation and token figures; None when reused
    snippets: tuple[Snippet, ...] = ()  # neighbour snippets in the prompt (pass back as `previous`)
    # the lowest probability the model gave a token of the suggestion (of the generation when none
    # is shown); None when reused or the backend does not report it
    confidence: float | None = None
    # the beam: the other lines compared that would be shown, likeliest first (offered beside the
    # suggestion to a request made by hand), and how many lines were compared (a beam's, or first-token ranks decoded)
    other_lines: tuple[Outcome, ...] = ()
    beam: int = 1

    @property
    def raw(self) -> str:
        """The generation before post-processing (the reused suggestion's text when reused)."""
        if self.result is not None:
            return self.result.text
        return self.suggestion.text if self.suggestion is not None else ""


def complete(
    backend: Backend,
    doc_id: str,
    text: str,
    line: int,
    character: int,
    *,
    encoding: Encoding = "utf-16",
    config: PipelineConfig = PipelineConfig(),
    path: str | None = None,
    repo: str | None = None,
    others: list[tuple[str, str]] | None = None,
    previous_snippets: tuple[Snippet, ...] = (),
    shown: ShownSuggestion | None = None,
    cancel: CancelToken | None = None,
    first_token_rank: int = 0,
    quoted: Callable[[tuple[Snippet, ...]], None] | None = None,
) -> Outcome:
    """Complete `text` at (`line`, `character`) with `backend`.

    `others` are (path, text) of other open documents for neighbour snippets; `shown` is the
    suggestion the editor shows now: when the user typed into it, its rest is served with no
    model call. `first_token_rank` > 0 asks for an alternative: greedy from the first token ranked
    that far below the best. `quoted` is told the snippets the prompt quotes as soon as it is
    built, before the backend runs: the next request keeps them (`previous_snippets`), so its
    prompt still matches the cache this one prefilled even when this one is cancelled. Raises
    engine.api.Cancelled when `cancel` fires during generation.
    """
    text = scrub_surrogates(text)
    path = scrub_surrogates(path) if path is not None else None  # a URI may hold a lone surrogate too
    ctx = cursor_context(text, line, character, encoding)
    if shown is not None and (reused := reuse_suggestion(shown, ctx)) is not None:
        return Outcome(suggestion=reused, context=ctx, prompt=None, result=None)
    prompt, snippets, request = request_for(backend, doc_id, ctx, config=config, path=path, repo=repo, others=others,
                                            previous_snippets=previous_snippets, first_token_rank=first_token_rank)
    if quoted is not None:
        quoted(snippets)
    one_line = request.stop_at_line_end
    beam = beam_for(backend, config) if one_line and first_token_rank == 0 else 1
    if beam > 1 and backend.searches_lines:  # one beam search finds the likeliest lines
        found = backend.complete(replace(request, beam=beam), cancel)
        runs = [_Line(rank, _score(result, suggestion), suggestion, result, confidence)
                for rank, result in enumerate([found, *found.other_lines])
                for suggestion, confidence in [_checked(result, ctx, config, backend)]]
        calls = [found]
    else:
        ranks = range(first_token_rank, first_token_rank + beam)
        runs = _first_token_lines(backend, request, ctx, config, ranks, cancel)
        calls = [run.result for run in runs]
    ranked = sorted(runs, key=lambda run: (-run.logprob, run.rank))  # likeliest first; a tie: the likelier first token
    best = ranked[0]
    result = best.result
    if len(runs) > 1:  # the request's cost: the first call's prefill, every call's time
        first = calls[0]
        result = replace(result, reused_tokens=first.reused_tokens, prefill_tokens=first.prefill_tokens,
                         latency_ms=sum(call.latency_ms for call in calls),
                         extra={**result.extra, "beam": float(len(runs)),
                                "beam_tokens": float(sum(run.result.generated_tokens for run in runs))})
    other_lines = tuple(Outcome(suggestion=run.suggestion, context=ctx, prompt=prompt, result=run.result,
                               snippets=snippets, confidence=run.confidence)
                       for run in ranked[1:] if run.suggestion is not None)
    return Outcome(suggestion=best.suggestion, context=ctx, prompt=prompt, result=result, snippets=snippets,
                   confidence=best.confidence, other_lines=other_lines, beam=len(runs))


def request_for(backend: Backend, doc_id: str, ctx: CursorContext, *, config: PipelineConfig = PipelineConfig(),
                path: str | None = None, repo: str | None = None, others: list[tuple[str, str]] | None = None,
                previous_snippets: tuple[Snippet, ...] = (), first_token_rank: int = 0,
                ) -> tuple[Prompt, tuple[Snippet, ...], CompletionRequest]:
    """The prompt, its neighbour snippets and the backend request for a cursor: what `complete`
    sends, and what idle prefill warms (`lsp_server.prefill`), built alike so the warm is the one used."""
    count_tokens = token_counter(backend)
    snippets: tuple[Snippet, ...] = ()
    if config.prompt.neighbours and others:
        # the snippets chosen from another document are scrubbed (its path and text may hold a lone
        # surrogate, which must not fail this request); the documents are not: a request scans only a
        # budget of them, and scrubbing every open document would cost a pass over all of them
        snippets = tuple(select_snippets(
            text_around_cursor(ctx), others, config.prompt.neighbour_tokens, count_tokens, previous=previous_snippets,
            clean=scrub_surrogates,
        ))
    prompt = build_prompt(ctx, backend.fim, count_tokens, backend.info.n_ctx, config.prompt, path=path,
                          snippets=snippets, repo=repo)
    one_line = not takes_block(ctx, config.postprocess)
    beam = beam_for(backend, config) if one_line and first_token_rank == 0 else 1
    request = CompletionRequest(
        doc_id=DocId(doc_id), prompt=prompt.text, max_new_tokens=config.prompt.max_new_tokens,
        temperature=config.temperature, seed=config.seed,
        stop_strings=(*config.postprocess.stop_strings, *early_stops(ctx, config.postprocess)),
        time_budget_s=config.time_budget_s, heal=config.heal,
        stop_at_line_end=one_line,  # one line: the tokens after its end would be decoded only to be cut
        stop_at_dedent=block_floor(ctx, config.postprocess),  # a block: the lines after it likewise
        stop_at_loop=True,  # a line repeating itself shows its first copy, not the token budget's worth
        token_probabilities=config.min_token_probability > 0 or beam > 1, first_token_rank=first_token_rank,
    )
    return prompt, snippets, request


def _first_token_lines(backend: Backend, request: CompletionRequest, ctx: CursorContext, config: PipelineConfig,
                          ranks: range, cancel: CancelToken | None) -> list[_Line]:
    """Greedy lines from each of the first tokens of these `ranks`, one backend call each, within
    the request's time budget (a backend without a beam search)."""
    runs: list[_Line] = []
    budget_ms = config.time_budget_s * 1000 if config.time_budget_s is not None else None
    for rank in ranks:
        left_ms = budget_ms - sum(run.result.latency_ms for run in runs) if budget_ms is not None else None
        if left_ms is not None and runs and left_ms <= 0:
            break  # the time budget covers all the lines
        result = backend.complete(replace(request, first_token_rank=rank,
                                          time_budget_s=left_ms / 1000 if left_ms is not None else None), cancel)
        suggestion, confidence = _checked(result, ctx, config, backend)
        runs.append(_Line(rank, _score(result, suggestion), suggestion, result, confidence))
        if result.stop_reason == "time_budget":
            break  # out of time: the lines after it would be too
    return runs


@dataclass(frozen=True, slots=True)
class _Line:
    """One line compared (a beam's, or a first token's greedy line) and what post-processing made of it."""

    rank: int  # its place: in the beam's order, or its first token's among the model's choices (0: the likeliest)
    logprob: float  # of the shown text (`_score`): -inf when nothing is shown
    suggestion: Suggestion | None
    result: CompletionResult
    confidence: float | None  # its lowest token probability


def _checked(result: CompletionResult, ctx: CursorContext, config: PipelineConfig,
             backend: Backend) -> tuple[Suggestion | None, float | None]:
    """Post-process a generation: the suggestion to show (None: nothing worth showing) and the
    lowest probability among its tokens (the generation's when none is shown)."""
    suggestion = postprocess(result.text, ctx, config.postprocess, stop_tokens=backend.fim.stop_tokens())
    # post-processing keeps (nearly always) a beginning of the raw text: its tokens are the first ones
    confidence = result.min_token_probability(len(suggestion.text) if suggestion is not None else len(result.text))
    if suggestion is not None and confidence is not None and confidence < config.min_token_probability:
        suggestion = None
    return suggestion, confidence


def _score(result: CompletionResult, suggestion: Suggestion | None) -> float:
    """How likely the model found the line: a beam's score (the whole line, the token that ended it
    included), else the sum of the shown tokens' log-probabilities; -inf when nothing is shown, 0
    when the backend does not report them."""
    if suggestion is None:
        return float("-inf")
    if result.score is not None:
        return result.score
    wrote = result.logprobs_of(len(suggestion.text))
    return sum(wrote) if wrote else 0.0


def early_stops(ctx: CursorContext, config: PostprocessConfig) -> tuple[str, ...]:
    """Stop strings that end decoding where post-processing would cut anyway.

    With text on both sides of the cursor, a suggestion is one line unless multi-line is forced,
    so decoding past the first line break is wasted time (most keystrokes land mid-line).
    """
    if config.multiline != "always" and ctx.line_prefix.strip() and ctx.line_suffix.strip():
        return ("\n",)
    return ()


def token_counter(backend: Backend) -> TokenCounter:
    """The backend's token count, memoised once per backend (unchanged prompt chunks cost a look-up)."""
    try:
        counter = _COUNTERS.get(backend)
        if counter is None:
            # The counter holds the backend weakly: a value that referenced its own key would keep
            # every replaced model alive.
            held = weakref.ref(backend)
            counter = _COUNTERS[backend] = memoize_counts(lambda text: held().count_tokens(text))
        return counter
    except TypeError:  # a backend that cannot be weakly referenced
        return memoize_counts(backend.count_tokens)


def scrub_surrogates(text: str) -> str:
    """`text` with lone UTF-16 surrogates (unencodable as UTF-8) replaced by U+FFFD.

    Each is one code point and one UTF-16 unit either way, so positions do not move.
    """
    if _LONE_SURROGATE.search(text) is None:
        return text
    return _LONE_SURROGATE.sub("\ufffd", text)


def missing_fim(backend: Backend, needed_for: str) -> str | None:
    """Why `backend` cannot fill a middle (its tokenizer has no FIM tokens), or None when it can."""
    if backend.fim.has_fim:
        return None
    return f"{backend.info.model} has no fill-in-the-middle tokens (<fim_prefix>/<fim-prefix>); {needed_for}"


def load_model(config: ModelConfig, progress: Progress | None = None) -> Backend:
    """Load the backend `config` names through the engine's registry (`engine.backends.load`).

    Raises the loader's own exception (a message saying what to do) when the model cannot load.
    """
    from engine.backends import load

    remote = None
    if config.runtime == "openai":  # a thin client: neither torch nor the local engine is imported
        from engine.backends.openai_backend import API_KEY_ENV, RemoteConfig

        remote = RemoteConfig(api_key=config.api_key, family=config.family, served_model=config.remote_model,
                              read_timeout_s=config.remote_timeout_s, ca_bundle=config.ca_bundle,
                              # "": no key from the environment for a url the operator did not give
                              api_key_env=API_KEY_ENV if config.sends_env_key else "")
        return load("openai", model=config.model, url=config.url, remote=remote)
    if config.runtime == "reference":
        return load("reference", model=config.model)
    from engine.cache import CacheConfig

    cache = CacheConfig(budget_bytes=config.cache_bytes, regions=config.cache_regions)
    return load(config.runtime, model=config.model, device=config.device, dtype=config.dtype,
                revision=config.revision, progress=progress, threads=config.threads, cache=cache,
                speculate=config.speculate)
