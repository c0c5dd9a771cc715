"""`fim-lsp eval`: exact match (and optionally pass@1) on the HumanEval infilling problems.

Each problem is a Python function with one line (single-line) or a run of lines (multi-line)
taken out. `idioms` is fim-lsp's own short set of one-line holes any code model should fill from
the context alone (a `self.` attribute set in `__init__`, closing brackets, a `return` of the
accumulated result, `f.read()`, ...), with the cursor after the line's indentation as an editor
leaves it; it has no tests, so exact match only. The document the model sees is
`prompt + suffix` with the cursor where the middle was, and the completion goes through the
product's own path (`lsp_server.pipeline.complete`: prompt core, backend, post-processing), greedy.
Scoring follows the SantaCoder paper: a completion is an
exact match when it equals the canonical middle once both are stripped of surrounding whitespace.
Functional pass@1 runs prompt + middle + suffix + the problem's tests in the sandbox.

The problems (MIT-licensed, from OpenAI's human-eval-infilling) ship in `fim_lsp/evaluation/data/`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from lsp_server.core.postprocess import PostprocessConfig
from lsp_server.core.prompt import PromptConfig

Benchmark = Literal["single-line", "multi-line", "idioms"]

DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_FILES: dict[str, str] = {
    "single-line": "human-eval-infilling/HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "human-eval-infilling/HumanEval-MultiLineInfilling.jsonl.gz",
    "idioms": "idioms.jsonl",
}
ONE_LINE = ("single-line", "idioms")  # benchmarks whose answer is one line
EXIT_BAD_INPUT = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One infilling problem: the code before and after the hole, the hole's canonical text, tests."""

    task_id: str
    entry_point: str
    prompt: str  # the code before the hole
    suffix: str  # the code after the hole
    canonical_solution: str  # the hole's text
    test: str  # defines check(candidate)


@dataclass(frozen=True, slots=True)
class ProblemResult:
    """What the model wrote for one problem and how it scored."""

    task_id: str
    middle: str  # the suggestion's text ("" for no suggestion)
    exact: bool
    latency_ms: float
    passed: bool | None = None  # None when pass@1 was not asked for
    detail: str = ""  # the sandbox's last stderr line when the program failed
    confidence: float | None = None  # the lowest token probability of the suggestion (pipeline.Outcome)


@dataclass(slots=True)
class Report:
    """The scores of one evaluation run."""

    benchmark: str
    model: str
    backend: str
    problems: int
    exact_matches: int
    seconds: float
    passed: int | None = None
    results: list[ProblemResult] = field(default_factory=list)
    min_token_probability: float = 0.0  # suggestions less sure than this were hidden
    beam: int = 1  # the most lines a suggestion compared (the pipeline's `beam_for`)

    @property
    def shown(self) -> int:
        """Problems that got a suggestion."""
        return sum(1 for r in self.results if r.middle)

    @property
    def exact_match(self) -> float:
        return self.exact_matches / self.problems if self.problems else 0.0

    @property
    def pass_at_1(self) -> float | None:
        if self.passed is None:
            return None
        return self.passed / self.problems if self.problems else 0.0

    def summary(self) -> dict:
        """The JSON object `fim-lsp eval --json` prints."""
        out = {
            "benchmark": self.benchmark, "problems": self.problems,
            "exact_match": round(self.exact_match, 4), "exact_matches": self.exact_matches,
            "model": self.model, "backend": self.backend, "seconds": round(self.seconds, 1),
            "ms_per_problem": round(1000 * self.seconds / self.problems, 1) if self.problems else 0.0,
            "shown": self.shown, "beam": self.beam,
        }
        if self.min_token_probability:
            out["min_token_probability"] = self.min_token_probability
        if self.passed is not None:
            out["pass_at_1"] = round(self.pass_at_1 or 0.0, 4)
            out["passed"] = self.passed
        return out


def load_problems(benchmark: Benchmark, data_dir: Path = DATA_DIR, limit: int | None = None) -> list[Problem]:
    """The benchmark's problems in file order (the first `limit` of them when given)."""
    if benchmark not in DATA_FILES:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {sorted(DATA_FILES)}")
    if limit is not None and limit <= 0:
        raise ValueError(f"--limit must be a positive number of problems, got {limit}")
    path = data_dir / DATA_FILES[benchmark]
    problems = []
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                problems.append(Problem(**{k: row[k] for k in Problem.__dataclass_fields__}))
            if limit is not None and len(problems) >= limit:
                break
    return problems


def exact_match(middle: str, canonical: str) -> bool:
    """The SantaCoder paper's criterion: equal once both are stripped of surrounding whitespace."""
    return middle.strip() == canonical.strip()


def cursor_of(prefix: str) -> tuple[int, int]:
    """The (line, character in code points) of the position right after `prefix`."""
    line = prefix.count("\n")
    return line, len(prefix) - (prefix.rfind("\n") + 1)


def program_for(problem: Problem, middle: str) -> str:
    """The candidate program: the function with the middle filled in, its tests, and the check call."""
    return f"{problem.prompt}{middle}{problem.suffix}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def pipeline_config_for(benchmark: Benchmark, max_new_tokens: int, min_token_probability: float = 0.0,
                        beam: int | None = None):
    """Greedy, no neighbours or file name; one line for single-line and idioms, a block for multi-line;
    `beam` as the server's setting (None: the pipeline's default for the model)."""
    from lsp_server.pipeline import PipelineConfig

    return PipelineConfig(
        prompt=PromptConfig(max_new_tokens=max_new_tokens, neighbours=False, include_filename=False),
        postprocess=PostprocessConfig(multiline="never" if benchmark in ONE_LINE else "always", max_lines=64),
        temperature=0.0, min_token_probability=min_token_probability, beam=beam,
    )


def complete_problem(backend, problem: Problem, config) -> tuple[str, float, float | None, int]:
    """The suggestion's text for the hole (through the product pipeline), its latency in ms, the
    lowest probability the model gave one of its tokens, and how many lines it compared."""
    from lsp_server.pipeline import complete

    line, character = cursor_of(problem.prompt)
    start = time.perf_counter()
    outcome = complete(backend, problem.task_id, problem.prompt + problem.suffix, line, character,
                       encoding="utf-32", config=config)
    latency_ms = (time.perf_counter() - start) * 1000
    backend.drop(problem.task_id)  # each problem is its own document; free its cache slot
    text = outcome.suggestion.text if outcome.suggestion is not None else ""
    return text, latency_ms, outcome.confidence, outcome.beam


def evaluate(backend, problems: Iterable[Problem], benchmark: Benchmark, *, max_new_tokens: int = 128,
             pass_at_1: bool = False, run_program: Callable | None = None, progress=None,
             min_token_probability: float = 0.0, beam: int | None = None) -> Report:
    """Score `backend` on `problems`; `progress` wraps the iterable (e.g. tqdm) when given."""
    problems = list(problems)
    # one-line benchmarks stop decoding at the line end
    config = pipeline_config_for(benchmark, max_new_tokens, min_token_probability, beam)
    if pass_at_1 and run_program is None:
        from fim_lsp.evaluation.sandbox import run_program
    report = Report(benchmark=benchmark, model=backend.info.model, backend=backend.info.backend,
                    problems=len(problems), exact_matches=0, seconds=0.0, passed=0 if pass_at_1 else None,
                    min_token_probability=min_token_probability)
    start = time.perf_counter()
    iterator = progress(problems) if progress is not None else problems
    for problem in iterator:
        middle, latency_ms, confidence, beam = complete_problem(backend, problem, config)
        report.beam = max(report.beam, beam)
        exact = exact_match(middle, problem.canonical_solution)
        passed, detail = None, ""
        if pass_at_1:
            outcome = run_program(program_for(problem, middle))
            passed, detail = outcome.passed, outcome.detail
            report.passed += int(passed)
        report.exact_matches += int(exact)
        report.results.append(ProblemResult(problem.task_id, middle, exact, latency_ms, passed, detail, confidence))
        if hasattr(iterator, "set_postfix"):
            iterator.set_postfix(em=f"{report.exact_matches}/{len(report.results)}")
    report.seconds = time.perf_counter() - start
    return report


def format_report(report: Report) -> str:
    """A short table for people."""
    rows = [("benchmark", report.benchmark), ("model", report.model), ("backend", report.backend),
            ("problems", str(report.problems)),
            ("exact match", f"{report.exact_match:.1%} ({report.exact_matches}/{report.problems})"),
            ("shown", f"{report.shown}/{report.problems}" + (f" (min token probability {report.min_token_probability})"
                                                              if report.min_token_probability else "")),
            ("beam", str(report.beam))]
    if report.passed is not None:
        rows.append(("pass@1", f"{report.pass_at_1:.1%} ({report.passed}/{report.problems})"))
    per = 1000 * report.seconds / report.problems if report.problems else 0.0
    rows.append(("time", f"{report.seconds:.1f} s ({per:.0f} ms per problem)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main_eval(args: argparse.Namespace) -> int:
    """`fim-lsp eval`: load the model, score it, print a table or one JSON object."""
    from tqdm import tqdm

    from lsp_server import pipeline
    from lsp_server.config import ConfigError, config_from_args

    try:
        problems = load_problems(args.benchmark, limit=args.limit)
        config = config_from_args(args)
    except (ValueError, OSError, ConfigError) as exc:
        return fail(str(exc))
    if args.pass_at_1 and not all(p.test for p in problems):
        return fail(f"--pass-at-1: the {args.benchmark} problems have no tests; exact match only")
    if args.max_new_tokens <= 0:
        return fail(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
    if not 0 <= args.min_token_probability < 1:
        return fail(f"--min-token-probability must be >= 0 and < 1, got {args.min_token_probability}")
    try:
        backend = pipeline.load_model(config.model)
    except Exception as exc:  # every loader failure becomes one line the user can act on
        return fail(f"cannot load the model: {exc}")
    if (problem := pipeline.missing_fim(backend, "the infilling benchmark needs a FIM-trained checkpoint")):
        return fail(problem)

    def bar(items):
        return tqdm(items, desc=f"eval {args.benchmark}", unit="problem", file=sys.stderr, dynamic_ncols=True)

    try:
        report = evaluate(backend, problems, args.benchmark, max_new_tokens=args.max_new_tokens,
                          pass_at_1=args.pass_at_1, progress=bar, min_token_probability=args.min_token_probability,
                          beam=args.beam)
    except Exception as exc:  # a model or prompt failure: say what, no traceback
        return fail(f"{type(exc).__name__}: {exc}")
    if args.results:
        try:
            write_results(report, Path(args.results))
        except OSError as exc:
            return fail(f"cannot write --results: {exc}")
    print(json.dumps(report.summary()) if args.json else format_report(report))
    return 0


def write_results(report: Report, path: Path) -> None:
    """Each problem's result (task, suggestion, exact, latency, pass) as one JSON object a line."""
    with path.open("w", encoding="utf-8") as f:
        for result in report.results:
            f.write(json.dumps(asdict(result)) + "\n")


def fail(message: str) -> int:
    print(f"fim-lsp eval: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
