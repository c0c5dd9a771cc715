"""`fim-lsp bench speculative`: prompt-lookup speculation against plain greedy decoding.

Two typing replays, each keystroke sent as the language server would send it (prompt core,
the server's default generation budget, the mid-line stop at a line break) to two backends on
the same checkpoint with their own per-document caches: plain greedy decoding, and greedy
decoding that verifies a prompt-lookup draft in every step (`engine.speculative`).

- HumanEval: the infilling problems' removed spans typed back character by character.
- stdlib edits: function bodies deleted from Python standard-library files and retyped, the
  rest of the file around them (code that repeats itself, as real files do).

Per replay and mode: p50/p95 latency per keystroke, decode tokens/s, decode forwards per
keystroke, draft tokens accepted per forward, the p50 and mean speed-ups, and the share of
keystrokes whose tokens equal plain decoding's (speculation is exact, so this should be 100%).
"""
from __future__ import annotations

import ast
import json
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.keystroke_replay import Problem, keystrokes, latency_row, load_problems
from engine.api import Backend, CompletionRequest, DocId
from lsp_server.core.postprocess import PostprocessConfig
from lsp_server.core.prompt import PromptConfig, build_prompt

# Standard-library modules whose functions are retyped: plain Python, varied styles.
STDLIB_FILES = ("textwrap.py", "shlex.py", "difflib.py", "fractions.py", "calendar.py", "argparse.py",
                "configparser.py", "ipaddress.py", "statistics.py", "string.py", "glob.py", "csv.py")
BODY_LINES = (3, 25)  # retyped bodies span this many lines (inclusive)


@dataclass(slots=True)
class Sample:
    """One keystroke's completion in one mode."""

    latency_ms: float
    decode_ms: float
    token_ids: list[int]
    steps: int  # decode forwards
    drafted: int
    accepted: int


@dataclass(slots=True)
class Run:
    name: str
    samples: list[Sample] = field(default_factory=list)


def stdlib_problems(limit: int, stdlib: Path | None = None, files: Sequence[str] = STDLIB_FILES) -> list[Problem]:
    """Up to `limit` functions of standard-library files with their bodies removed (one per file per round).

    The body starts after the docstring, at the first statement's line (indentation included), and
    runs to the function's last line; bodies of BODY_LINES lines are used, those nearest the middle
    of their file first.
    """
    root = stdlib or Path(sysconfig.get_paths()["stdlib"])
    per_file: list[list[Problem]] = []
    for name in files:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")  # ast counts lines at \n only (splitlines would also cut at form feeds)
        found = []
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
                body = body[1:]  # keep the docstring: the signature and its promise are what one types after
            first, last = body[0].lineno, node.end_lineno
            if not BODY_LINES[0] <= last - first + 1 <= BODY_LINES[1]:
                continue
            start = sum(len(line) + 1 for line in lines[:first - 1])
            end = min(sum(len(line) + 1 for line in lines[:last]), len(text))
            found.append(Problem(f"{name}:{node.name}", text[:start], text[start:end], text[end:]))
        if found:
            # functions mid-file first: code on both sides of the cursor, as in most edits
            per_file.append(sorted(found, key=lambda p: abs(len(p.prefix) / len(text) - 0.5)))
    problems: list[Problem] = []
    for round_ in range(max((len(f) for f in per_file), default=0)):
        for found in per_file:
            if round_ < len(found) and len(problems) < limit:
                problems.append(found[round_])
    return problems


def requests(problem: Problem, backend: Backend, max_new_tokens: int, max_keys: int | None,
             n_ctx: int) -> Iterator[CompletionRequest]:
    """The server's request after each keystroke of retyping `problem`'s span."""
    from lsp_server.pipeline import early_stops, token_counter

    config = PromptConfig(max_new_tokens=max_new_tokens, neighbours=False)
    count = token_counter(backend)  # memoised per chunk, as the server counts: long files stay cheap to window
    for ctx in keystrokes(problem, max_keys):
        prompt = build_prompt(ctx, backend.fim, count, n_ctx, config).text
        yield CompletionRequest(doc_id=DocId(f"file:///{problem.task_id}"), prompt=prompt,
                                max_new_tokens=max_new_tokens, stop_strings=early_stops(ctx, PostprocessConfig()))


def replay(problems: Sequence[Problem], modes: dict[str, Backend], max_new_tokens: int, max_keys: int | None,
           progress: Callable[[int], None] | None = None) -> list[Run]:
    """Every keystroke of every problem through every mode (each with its own cache, reused between keys)."""
    first = next(iter(modes.values()))
    runs = {name: Run(name) for name in modes}
    for problem in problems:
        for request in requests(problem, first, max_new_tokens, max_keys, first.info.n_ctx):
            for name, backend in modes.items():
                r = backend.complete(request)
                runs[name].samples.append(Sample(
                    r.latency_ms, r.extra.get("decode_ms", 0.0), r.token_ids, int(r.extra.get("decode_steps", 0)),
                    int(r.extra.get("drafted_tokens", 0)), int(r.extra.get("accepted_tokens", 0))))
            if progress:
                progress(1)
        for backend in modes.values():
            backend.drop(DocId(f"file:///{problem.task_id}"))
    return list(runs.values())


def summarize(runs: Sequence[Run]) -> list[dict]:
    """One row per mode; speed-ups and identity against the first mode (plain decoding)."""
    base = runs[0].samples
    base_mean = statistics.fmean(s.latency_ms for s in base)
    rows = []
    for run in runs:
        steps = sum(s.steps for s in run.samples)
        generated = sum(len(s.token_ids) for s in run.samples)
        mean = statistics.fmean(s.latency_ms for s in run.samples)
        rows.append({
            **latency_row(run.name, run.samples, speed_base=base, token_base=base),
            "mean_ms": mean,
            "tokens_per_keystroke": generated / max(1, len(run.samples)),
            "decode_tokens_per_s": generated / max(1e-9, sum(s.decode_ms for s in run.samples) / 1e3),
            "steps_per_keystroke": steps / max(1, len(run.samples)),
            "accepted_per_step": sum(s.accepted for s in run.samples) / max(1, steps),
            "draft_hit_rate": sum(s.accepted for s in run.samples) / max(1, sum(s.drafted for s in run.samples)),
            "speedup_mean": base_mean / mean,
        })
    return rows


def format_table(title: str, rows: Sequence[dict]) -> str:
    header = (f"{'mode':<14}{'keys':>6}{'p50 ms':>9}{'p95 ms':>9}{'tok/key':>9}{'dec tok/s':>11}{'steps/key':>11}"
              f"{'acc/step':>10}{'draft hit':>11}{'x p50':>8}{'x mean':>8}{'identical':>11}")
    lines = [title, header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['mode']:<14}{r['keystrokes']:>6}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['tokens_per_keystroke']:>9.1f}"
            f"{r['decode_tokens_per_s']:>11.0f}{r['steps_per_keystroke']:>11.1f}{r['accepted_per_step']:>10.2f}"
            f"{r['draft_hit_rate']:>11.1%}{r['speedup_p50']:>7.2f}x{r['speedup_mean']:>7.2f}x{r['identical']:>11.1%}")
    return "\n".join(lines)


def load_pair(args, model: str, draft: int, say) -> tuple[Backend, Backend]:
    """(plain, speculative) backends for `model` as --backend/--device/--dtype choose."""
    from benchmarks.backends import export_dir_for
    from engine.backends.onnx_backend import OnnxConfig
    from engine.cache import CacheConfig
    from engine.select import load_backend

    onnx = OnnxConfig(export_dir=str(export_dir_for(Path(model))), auto_export=args.backend == "onnx")
    pair = []
    for speculate in (0, draft):
        pair.append(load_backend(model=model, backend=args.backend, device=args.device, dtype=args.dtype,
                                 revision=args.revision, threads=args.threads, cache=CacheConfig(budget_bytes=2**30),
                                 onnx=onnx, speculate=speculate,
                                 progress=lambda msg, frac: say(f"{msg} ({frac:.0%})")))
    return pair[0], pair[1]


def main(args) -> int:
    from tqdm import tqdm

    from benchmarks.cli import bench_model
    from engine.loading import CheckpointError
    from engine.speculative import DEFAULT_DRAFT
    from lsp_server.config import CompletionSettings

    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    draft = args.speculate or DEFAULT_DRAFT
    max_new = CompletionSettings().max_new_tokens
    try:
        model = bench_model(args, say)
        plain, spec = load_pair(args, model, draft, say)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"fim-lsp bench: {exc}", file=sys.stderr)
        return 2
    info = plain.info
    replays = {"HumanEval": load_problems(args.problems), "stdlib edits": stdlib_problems(args.problems)}
    total = sum(len(list(keystrokes(p, args.max_keys))) for ps in replays.values() for p in ps)
    say(f"{info.backend} {info.dtype} on {info.device}; {total} keystrokes, {max_new} tokens at most each; "
        f"speculation drafts {draft} tokens")
    results = {}
    t0 = time.perf_counter()
    with tqdm(total=total, desc="keystrokes", file=sys.stderr) as bar:
        for name, problems in replays.items():
            runs = replay(problems, {"plain": plain, f"speculate {draft}": spec}, max_new, args.max_keys, bar.update)
            results[name] = summarize(runs)
    if args.json:
        print(json.dumps({"model": model, "backend": info.backend, "dtype": info.dtype, "device": info.device,
                          "draft": draft, "max_new_tokens": max_new, "replays": results}, indent=2))
        return 0
    print(f"prompt-lookup speculation: {model}\n{info.backend} {info.dtype} on {info.device}, "
          f"{max_new} greedy tokens at most per keystroke (line-break stop mid-line), draft {draft} tokens, "
          f"{time.perf_counter() - t0:.0f} s")
    for name, rows in results.items():
        n = len(replays[name])
        print()
        print(format_table(f"{name}: {n} spans, {rows[0]['keystrokes']} keystrokes", rows))
    print("\nx p50 / x mean: plain's p50 (mean) latency over the mode's; acc/step: draft tokens kept per decode "
          "forward; identical: keystrokes whose tokens equal plain decoding's")
    return 0
