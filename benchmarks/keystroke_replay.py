"""Keystroke replay: what a completion costs while someone types, cached versus recomputed.

Each HumanEval infilling problem is a document with one span removed; we type the span back one
character at a time and, after every keystroke, ask for 16 greedy tokens at the cursor through
each mode on the same checkpoint: our engine with its per-document KV cache, our engine
recomputing the whole prompt, and transformers' `generate()` (the reference backend). Prompts
come from the language server's prompt core (`lsp_server.core.prompt.build_prompt`), so the benchmark
sees exactly the token stream the server would send. The table compares latency, tokens
prefilled per keystroke, cache hit rate and throughput, checks that every mode produced the
same tokens, and sets the decode step against the floor memory bandwidth allows.
"""
from __future__ import annotations

import gzip
import json
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.api import Backend, CompletionRequest, DocId
from lsp_server.core.context import CursorContext
from lsp_server.core.prompt import PromptConfig, build_prompt

REPO = Path(__file__).resolve().parent.parent
DATA_DIRS = (REPO / "lsp_server" / "data" / "human-eval-infilling",
             REPO.parent / "shared" / "data" / "human-eval-infilling",
             Path("/work/shared/data/human-eval-infilling"))
SINGLE_LINE = "HumanEval-SingleLineInfilling.jsonl.gz"


@dataclass(frozen=True, slots=True)
class Problem:
    """A document with a span removed: `prefix + middle + suffix` is the whole file."""

    task_id: str
    prefix: str
    middle: str
    suffix: str


@dataclass(slots=True)
class Sample:
    """One completion of one mode after one keystroke."""

    latency_ms: float
    prompt_tokens: int
    prefill_tokens: int
    reused_tokens: int
    token_ids: list[int]
    decode_ms: float = 0.0


@dataclass(slots=True)
class ModeRun:
    """Everything one mode did over a replay."""

    name: str
    samples: list[Sample] = field(default_factory=list)


def data_file(name: str = SINGLE_LINE) -> Path:
    """The HumanEval infilling file: the package's copy if present, else the shared one."""
    for folder in DATA_DIRS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{name} not found in any of {[str(d) for d in DATA_DIRS]}")


def load_problems(limit: int, path: Path | None = None) -> list[Problem]:
    """The first span of each of the first `limit` distinct HumanEval problems."""
    problems: list[Problem] = []
    seen: set[str] = set()
    with gzip.open(path or data_file(), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            base = row["task_id"].split("/")[2]  # "SingleLineInfilling/HumanEval/0/L0" -> "0"
            if base in seen:
                continue
            seen.add(base)
            problems.append(Problem(row["task_id"], row["prompt"], row["canonical_solution"], row["suffix"]))
            if len(problems) == limit:
                break
    return problems


def pad_problem(problem: Problem, others: Sequence[Problem], count_tokens: Callable[[str], int],
                target_tokens: int) -> Problem:
    """The problem with other problems' code placed before it until the file is ~target_tokens long."""
    lead, used = [], count_tokens(problem.prefix + problem.middle + problem.suffix)
    for other in others:
        if used >= target_tokens:
            break
        if other.task_id == problem.task_id:
            continue
        text = other.prefix + other.middle + other.suffix + "\n\n"
        lead.append(text)
        used += count_tokens(text)
    return Problem(problem.task_id, "".join(lead) + problem.prefix, problem.middle, problem.suffix)


def keystrokes(problem: Problem, max_keys: int | None = None) -> Iterator[CursorContext]:
    """The document at the cursor before typing and after each typed character of the span."""
    n = len(problem.middle) if max_keys is None else min(len(problem.middle), max_keys)
    for k in range(n + 1):
        yield CursorContext(prefix=problem.prefix + problem.middle[:k], suffix=problem.suffix)


def replay(problems: Sequence[Problem], modes: dict[str, Backend], n_ctx: int, max_new_tokens: int = 16,
           max_keys: int | None = None, progress: Callable[[int], None] | None = None) -> list[ModeRun]:
    """Type every problem's span back through every mode; one Sample per mode per keystroke."""
    any_backend = next(iter(modes.values()))
    config = PromptConfig(max_new_tokens=max_new_tokens, neighbours=False)
    runs = {name: ModeRun(name) for name in modes}
    for problem in problems:
        doc = DocId(f"file:///{problem.task_id}.py")
        for ctx in keystrokes(problem, max_keys):
            prompt = build_prompt(ctx, any_backend.fim, any_backend.count_tokens, n_ctx, config).text
            request = CompletionRequest(doc_id=doc, prompt=prompt, max_new_tokens=max_new_tokens)
            for name, backend in modes.items():
                result = backend.complete(request)
                runs[name].samples.append(Sample(
                    result.latency_ms, result.prompt_tokens, result.prefill_tokens, result.reused_tokens,
                    result.token_ids, result.extra.get("decode_ms", 0.0),
                ))
            if progress:
                progress(1)
        for backend in modes.values():
            backend.drop(doc)
    return list(runs.values())


def prefill_counts(problems: Sequence[Problem], fim, encode: Callable[[str], list[int]], n_ctx: int,
                   max_new_tokens: int = 16) -> list[int]:
    """Prompt tokens the cache would prefill at each keystroke of typing every span in full.

    Token-level only (no model): the same prompts and the same `SlotTable` policy the engine
    uses, without the generated tokens the engine also appends (which can only add reuse).
    """
    import xxhash

    from engine.cache import SlotTable

    count = lambda text: len(encode(text))  # noqa: E731
    config = PromptConfig(max_new_tokens=max_new_tokens, neighbours=False)
    table = SlotTable(bytes_per_token=1, budget_bytes=2**40, max_tokens=n_ctx,
                      hash_fn=xxhash.xxh3_64_intdigest)
    counts = []
    for problem in problems:
        doc = DocId(problem.task_id)
        for ctx in keystrokes(problem):
            ids = encode(build_prompt(ctx, fim, count, n_ctx, config).text)
            plan = table.plan(doc, ids, len(ids))
            table.append(doc, ids[plan.keep:])
            counts.append(len(ids) - plan.keep)
    return counts


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def measure_bandwidth(threads: int = 2, mib: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes/s: the best of `repeats` torch sums over a `mib` MiB tensor."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.ones(mib * 2**20 // 4, dtype=torch.float32)  # [mib MiB / 4 B]
        x.sum()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            x.sum()
            best = min(best, time.perf_counter() - t)
        return x.numel() * 4 / best
    finally:
        torch.set_num_threads(before)


def summarize(runs: Sequence[ModeRun]) -> list[dict]:
    """One row of figures per mode; speed-ups against the last mode (the slowest baseline)."""
    rows = []
    for run in runs:
        pre = [s.prefill_tokens for s in run.samples]
        generated = sum(len(s.token_ids) for s in run.samples)
        lat_s = sum(s.latency_ms for s in run.samples) / 1e3
        rows.append({
            **latency_row(run.name, run.samples, speed_base=runs[-1].samples, token_base=runs[0].samples),
            "prefill_median": statistics.median(pre),
            "prefill_p95": percentile(pre, 95),
            "hit_rate": sum(s.reused_tokens for s in run.samples) / max(1, sum(s.prompt_tokens for s in run.samples)),
            "tokens_per_s": generated / max(1e-9, lat_s),
            "prompt_tokens_median": statistics.median(s.prompt_tokens for s in run.samples),
            "decode_step_ms": decode_step_ms(run.samples),
        })
    return rows


def latency_row(name: str, samples: Sequence, speed_base: Sequence, token_base: Sequence) -> dict:
    """The figures every replay table has: latency percentiles, the p50 speed-up over `speed_base`
    and the share of keystrokes whose tokens equal `token_base`'s (samples with `latency_ms`, `token_ids`)."""
    lat = [s.latency_ms for s in samples]
    return {
        "mode": name,
        "keystrokes": len(samples),
        "p50_ms": statistics.median(lat),
        "p95_ms": percentile(lat, 95),
        "speedup_p50": statistics.median(s.latency_ms for s in speed_base) / statistics.median(lat),
        "identical": sum(s.token_ids == b.token_ids for s, b in zip(samples, token_base)) / max(1, len(token_base)),
    }


def decode_step_ms(samples: Sequence[Sample]) -> float:
    """Median time of one cached decode step (decode time over the tokens fed back)."""
    steps = [s.decode_ms / (len(s.token_ids) - 1) for s in samples if s.decode_ms and len(s.token_ids) > 1]
    return statistics.median(steps) if steps else float("nan")


def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width table of `summarize` rows."""
    header = (f"{'mode':<16}{'keys':>6}{'prompt':>8}{'p50 ms':>10}{'p95 ms':>10}{'prefill p50':>13}"
              f"{'prefill p95':>13}{'hit rate':>10}{'tok/s':>8}{'speed-up':>10}{'same tokens':>13}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['mode']:<16}{r['keystrokes']:>6}{r['prompt_tokens_median']:>8.0f}{r['p50_ms']:>10.1f}"
            f"{r['p95_ms']:>10.1f}{r['prefill_median']:>13.0f}{r['prefill_p95']:>13.0f}{r['hit_rate']:>10.1%}"
            f"{r['tokens_per_s']:>8.1f}{r['speedup_p50']:>9.1f}x{r['identical']:>13.1%}"
        )
    return "\n".join(lines)
