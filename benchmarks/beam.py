"""`fim-lsp bench beam`: what a beam search over one line costs next to greedy decoding.

Two tables for one checkpoint (`--model`, or the kit model of `--shape`; latency depends on the
shape, not on the weights' values):

- one decode step: `Transformer.forward_rows` with 1 to 4 rows (a beam's lines, each over its own
  copy of a cached prompt of `--context` tokens), against the plain one-token forward; median of
  repeated steps. This is the price of keeping more lines: on a CPU a one-token forward reads every
  weight for little arithmetic, and the rows share that read.
- one-line requests: HumanEval single-line holes (the first `--problems`), prompt built by the
  prompt core and cached first, then the line decoded greedily and by beams of 2 to 4 (the
  pipeline's `beam`); median and p95 latency, decode forwards per request, generated tokens.
  A random-weight model rarely ends its line, so its lines run to the token budget: an upper bound.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

WIDTHS = (1, 2, 3, 4)
STEP_REPEATS = 30
LINE_TOKENS = 24  # one-line budget: a line that has not ended by then is cut


def step_table(model, context: int, repeats: int = STEP_REPEATS) -> list[dict]:
    """Median ms of one decode step with R rows (R in WIDTHS) and of the plain forward."""
    import torch

    from engine.model import KVBuffer

    args = model.args
    dtype = model.wte.weight.dtype
    ids = torch.randint(20, args.vocab_size, (context,), generator=torch.Generator().manual_seed(0))
    base = KVBuffer(args, context + 1, dtype)
    with torch.inference_mode():
        model(ids, torch.arange(context), base, 0, last_only=True)
        rows = []
        for width in (0, *WIDTHS):  # 0: the plain forward one greedy step makes
            bufs = []
            for _ in range(max(width, 1)):
                buf = KVBuffer(args, context + 1, dtype)
                buf.copy_prefix_from(base, context)
                bufs.append(buf)
            token = ids[-1:].repeat(max(width, 1))
            pos = torch.full((max(width, 1),), context)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                if width == 0:
                    model(token, pos, bufs[0], context)
                else:
                    model.forward_rows(token, pos, bufs)
                times.append((time.perf_counter() - t) * 1e3)
            rows.append({"rows": width, "ms": statistics.median(times)})
    one = rows[0]["ms"]
    for row in rows:
        row["x_greedy"] = row["ms"] / one
    return rows


def line_table(backend, problems, widths=WIDTHS) -> list[dict]:
    """Per beam width: latency of one-line requests over cached prompts, forwards and tokens."""
    from engine.api import CompletionRequest, DocId
    from lsp_server.core.context import cursor_context
    from fim_lsp.evaluation.evaluate import cursor_of
    from lsp_server.pipeline import token_counter
    from lsp_server.core.prompt import PromptConfig, build_prompt

    count = token_counter(backend)
    config = PromptConfig(max_new_tokens=LINE_TOKENS, neighbours=False, include_filename=False)
    prompts = []
    for p in problems:
        line, character = cursor_of(p.prompt)
        ctx = cursor_context(p.prompt + p.suffix, line, character, "utf-32")
        prompts.append(build_prompt(ctx, backend.fim, count, backend.info.n_ctx, config).text)
    rows = []
    for width in widths:
        latencies, steps, tokens = [], [], []
        for i, prompt in enumerate(prompts):
            doc = DocId(f"beam-{width}-{i}")
            backend.complete(CompletionRequest(doc, prompt, max_new_tokens=0))  # the prompt, cached
            result = backend.complete(CompletionRequest(doc, prompt, max_new_tokens=LINE_TOKENS, heal=True,
                                                        stop_at_line_end=True, stop_at_loop=True, beam=width))
            backend.drop(doc)
            latencies.append(result.latency_ms)
            steps.append(result.extra.get("decode_steps", 0.0))
            tokens.append(result.generated_tokens)
        latencies.sort()
        rows.append({"beam": width, "p50_ms": statistics.median(latencies),
                     "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                     "forwards": statistics.mean(steps), "tokens": statistics.mean(tokens)})
    base = rows[0]["p50_ms"]
    for row in rows:
        row["x_greedy"] = row["p50_ms"] / base
    return rows


def main(args) -> int:
    from benchmarks.cli import bench_model
    from engine.loading import CheckpointError
    from engine.select import load_backend
    from fim_lsp.evaluation.evaluate import load_problems

    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        model = bench_model(args, say)
        backend = load_backend(model=model, backend="torch", device=args.device, dtype=args.dtype,
                               revision=args.revision, threads=args.threads,
                               progress=lambda msg, frac: say(f"{msg} ({frac:.0%})"))
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"fim-lsp bench: {exc}", file=sys.stderr)
        return 2
    info = backend.info
    context = args.context or min(1024, info.n_ctx // 2)
    say(f"{info.backend} {info.dtype} on {info.device}: decode steps over {context} cached tokens")
    steps = step_table(backend.model, context)
    problems = load_problems("single-line", limit=args.problems)
    say(f"{len(problems)} one-line requests per beam width")
    lines = line_table(backend, problems)
    if args.json:
        print(json.dumps({"model": model, "dtype": info.dtype, "context": context, "steps": steps, "lines": lines},
                         indent=2))
        return 0
    print(f"beam search over one line: {model}\n{info.backend} {info.dtype} on {info.device}, "
          f"{info.params / 1e6:.1f} M parameters\n")
    print(f"one decode step over {context} cached tokens (median of {STEP_REPEATS})")
    print(f"{'rows':<22}{'ms':>8}{'x greedy':>10}")
    for row in steps:
        name = "greedy forward" if row["rows"] == 0 else f"forward_rows x{row['rows']}"
        print(f"{name:<22}{row['ms']:>8.2f}{row['x_greedy']:>9.2f}x")
    print(f"\none-line requests, cached prompt, {len(problems)} HumanEval single-line holes, "
          f"{LINE_TOKENS} tokens at most")
    print(f"{'beam':<8}{'p50 ms':>9}{'p95 ms':>9}{'x p50':>8}{'forwards':>10}{'tokens':>8}")
    for row in lines:
        print(f"{row['beam']:<8}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}{row['x_greedy']:>7.2f}x"
              f"{row['forwards']:>10.1f}{row['tokens']:>8.1f}")
    print("\nbeam 1 is greedy decoding; forwards: decode forwards per request (one a step for all lines)")
    return 0
