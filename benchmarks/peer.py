"""`fim-lsp bench peer`: our CPU backends next to llama.cpp on the same checkpoint, in one table.

llama.cpp (through llama-cpp-python, in this process's children) is what users compare a local
completion engine with. The checkpoint (a checkpoint-kit model of `--shape`, or `--model`) is
converted to GGUF f16 and q8_0 with llama.cpp's own converter (`benchmarks.gguf`, cached by the
checkpoint's hash) and driven with the token ids our tokenizer produces, so both sides see the
same sequence. llama.cpp keeps one KV sequence and reuses its longest common token prefix with
the previous request (`Llama.generate`), which is what its server does per slot.

Each row runs in its own process, one after another, on `--threads` (default 2) threads:
- prefill 1k: one forward over 1,024 tokens of real code (HumanEval), logits of the last only;
- +1 on 1k: one more token on that cache (for llama.cpp through its prefix reuse, and its own
  counter checks that one token was evaluated);
- decode: the mean of 16 further single-token greedy steps;
- keystroke p50/p95: HumanEval problems padded to ~1k tokens typed back one character at a time
  (`benchmarks.keystroke_replay`), 8 greedy tokens per keystroke, the first request of each
  document (a cold prefill) left out;
- weight bytes (what a decode step reads) and the floor they set: bytes / memory bandwidth,
  measured with `keystroke_replay.measure_bandwidth` at the start of the run.
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from engine.api import BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, DocId

CONTEXT_TOKENS = 1024  # the prompt length every column is measured at
REPLAY_TOKENS = 8  # greedy tokens per keystroke
DECODE_STEPS = 16  # single-token steps timed for decode s/token
PLUS_ONE_TRIALS = 3  # +1-token requests timed (median): the first after a prefill also sets up the decode graph
N_BATCH = 512  # llama.cpp's prompt batch (its default)
OURS = ("torch fp32", "torch bf16", "onnx int8", "torch int8")
PEERS = ("llama.cpp f16", "llama.cpp q8_0")
INSTALL = """llama-cpp-python is not installed; it is a benchmark-only dependency (llama.cpp built from source).
  ./dev test installs it from the wheel it keeps in ~/.cache/fim-lsp/wheels; by hand:
    pip install --find-links ~/.cache/fim-lsp/wheels "llama-cpp-python==0.3.36"
  or build it (~7 min on two cores):
    CMAKE_ARGS=-DGGML_NATIVE=ON pip install "llama-cpp-python==0.3.36\""""


class LlamaCppBackend:
    """`engine.api.Backend` over llama-cpp-python's `Llama` on a GGUF file, fed our token ids.

    One KV sequence for all documents (as one llama.cpp server slot): each request keeps the
    longest token prefix it shares with what the sequence holds and evaluates the rest
    (`Llama.generate` with reset=True does the matching and the KV truncation).
    """

    ranks_first_token = False

    def __init__(self, gguf: Path, tokenizer, n_ctx: int, threads: int = 2, n_batch: int = N_BATCH,
                 label: str = "llama.cpp", extra_buffers: bool = True):
        import llama_cpp
        import llama_cpp.llama_cpp as api

        defaults = api.llama_model_default_params

        def model_params():  # `Llama` takes no use_extra_bufts; it starts from these defaults
            params = defaults()
            params.use_extra_bufts = extra_buffers  # weight repacking, AMX
            return params

        api.llama_model_default_params = model_params
        try:
            self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                                       n_batch=n_batch, logits_all=False, verbose=False)
        finally:
            api.llama_model_default_params = defaults
        self.tokenizer = tokenizer  # engine.tokenizer.CheckpointTokenizer: the ids our engine would feed
        self.fim = tokenizer.fim
        self.stop_ids = tokenizer.stop_ids()
        self.emittable = tokenizer.tokenizer.get_vocab_size()  # ids past it are the model's padding rows
        self.info = BackendInfo(backend="llama.cpp", model=str(gguf), device="cpu", dtype=label.split()[-1],
                                n_ctx=n_ctx, why=f"{label}, {threads} threads, n_batch {n_batch}"
                                + ("" if extra_buffers
                                   else ", without llama.cpp's extra buffer types (AMX, repacking)"))
        self.decoded = 0  # tokens passed to llama_decode (see count_decoded)
        self.count_decoded()

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def reusable(self, ids: list[int]) -> int:
        """Prompt tokens `Llama.generate` keeps from the sequence (it re-evaluates one of a full match)."""
        held = self.llm.input_ids[:self.llm.n_tokens].tolist()
        keep = self.llm.longest_token_prefix(held, ids)
        return keep - 1 if keep == len(ids) else keep

    def count_decoded(self) -> None:
        """Count every token llama-cpp-python hands to `llama_decode` in `self.decoded`."""
        ctx = self.llm._ctx
        decode = ctx.decode

        def counted(batch):
            self.decoded += batch.n_tokens()
            return decode(batch)

        ctx.decode = counted

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        start = time.perf_counter()
        ids = self.tokenizer.encode(request.prompt)
        max_new = min(request.max_new_tokens, self.info.n_ctx - len(ids))
        keep = self.reusable(ids)
        tokens: list[int] = []
        stop = "max_tokens"
        first = start
        steps = self.llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True)
        try:
            while len(tokens) < max_new:
                token = next(steps)  # the first evaluates the prompt's new tokens, each later one a step
                if not tokens:
                    first = time.perf_counter()
                if token in self.stop_ids:
                    stop = "eos"
                    break
                if token >= self.emittable:  # our engine never samples padding rows; llama.cpp can
                    stop = "stop_token"
                    break
                tokens.append(int(token))
                if cancel is not None and cancel.cancelled:
                    raise Cancelled()
        finally:
            steps.close()
        end = time.perf_counter()
        return CompletionResult(
            text=self.tokenizer.decode(tokens), token_ids=tokens, stop_reason=stop, prompt_tokens=len(ids),
            reused_tokens=keep, prefill_tokens=len(ids) - keep, generated_tokens=len(tokens),
            latency_ms=(end - start) * 1e3,
            extra={"prefill_ms": (first - start) * 1e3, "decode_ms": (end - first) * 1e3},
        )

    def drop(self, doc_id: DocId) -> None:
        """Nothing per document: the one sequence is matched by prefix on the next request."""

    def cache_stats(self) -> dict[str, int]:
        return {"slots": 1, "tokens": int(self.llm.n_tokens)}


def time_llama(backend: LlamaCppBackend, ids: list[int]) -> dict[str, float]:
    """As `benchmarks.backends.time_forward`: prefill `ids`, then +1 token through prefix reuse, then decode."""
    llm = backend.llm
    llm.reset()
    before = backend.decoded
    t0 = time.perf_counter()
    llm.eval(ids[:-1])  # [T-1] in n_batch chunks, logits of the last only
    t1 = time.perf_counter()
    prefilled = backend.decoded - before
    assert prefilled == len(ids) - 1, f"llama.cpp decoded {prefilled} tokens for a {len(ids) - 1}-token prefill"
    plus_one, evaluated = [], []
    for _ in range(PLUS_ONE_TRIALS):  # each keeps the T-1 cached tokens and evaluates the last one
        llm.n_tokens = len(ids) - 1  # as if the last one were new (a fully cached prompt skips the eval)
        before = backend.decoded
        t = time.perf_counter()
        steps = llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True)
        next(steps)
        plus_one.append(time.perf_counter() - t)
        evaluated.append(backend.decoded - before)
        steps.close()
    stamps = []
    llm.n_tokens = len(ids) - 1
    for _ in steps_of(llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True), DECODE_STEPS + 1):
        stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first stamp is one more +1 request
    return {"prefill_s": t1 - t0, "plus_one_s": statistics.median(plus_one), "plus_one_evaluated": max(evaluated),
            "decode_s": statistics.mean(gaps)}


def steps_of(generator, n: int):
    """The first `n` tokens of a `Llama.generate` generator, which is then closed."""
    try:
        for _ in range(n):
            yield next(generator)
    finally:
        generator.close()


def time_ours(backend, n: int) -> dict[str, float]:
    """`benchmarks.backends.time_forward` in this table's units; +1 is a step on the cache of n tokens."""
    from benchmarks.backends import time_forward

    t = time_forward(backend, n)
    return {"prefill_s": t["prefill_s"], "plus_one_s": t["cached_step_ms"] / 1e3, "plus_one_evaluated": 1,
            "decode_s": 1 / t["decode_tok_s"]}


@dataclass(frozen=True, slots=True)
class Row:
    """One backend of the table, run in a worker process."""

    mode: str  # one of OURS or PEERS
    model: str  # checkpoint directory
    gguf: str | None  # the GGUF file for llama.cpp rows
    problems: tuple  # keystroke_replay.Problem, padded to ~context tokens
    max_keys: int
    context: int
    threads: int
    extra_buffers: bool = True  # llama.cpp's extra buffer types (AMX, repacked weights)
    speculate: int | None = None  # our rows' draft tokens per greedy step (None: the product default)


def weight_bytes(row: Row, backend) -> int:
    """Bytes of weights one decode step reads; tables it reads one row of (position embeddings) left out.

    GGUF: the file (its position table and vocabulary are under 1% of it). ONNX: the int8 graph's
    initializers but those only gathered from. torch: parameters and buffers but `wpe` (and `wte`
    when an untied head replaces it).
    """
    if row.gguf:
        return Path(row.gguf).stat().st_size
    if row.mode.startswith("onnx"):
        from benchmarks.backends import export_dir_for
        from engine.onnx_format import INT8_FILE

        return onnx_step_bytes(export_dir_for(Path(row.model)) / INT8_FILE)
    from engine.quantize import weight_bytes as model_bytes

    model = backend.model
    gathered = {"wpe.weight"} | ({"wte.weight"} if getattr(model, "lm_head", None) is not None else set())
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    # int8: packed or buffers
    return model_bytes(model) - sum(t.nbytes for name, t in tensors.items() if name in gathered)


def onnx_step_bytes(graph: Path) -> int:
    """Bytes of a graph's initializers, but those only read by Gather (embedding tables)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph), load_external_data=False)
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in model.graph.initializer:
        if readers.get(init.name) == {"Gather"}:
            continue
        count = 1
        for d in init.dims:
            count *= d
        total += count * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def load_row(row: Row):
    """The backend a row runs: llama.cpp on the GGUF, or ours as `engine.select.load_backend` serves it."""
    from benchmarks.backends import export_dir_for
    from engine.backends.onnx_backend import OnnxConfig
    from engine.cache import CacheConfig
    from engine.loading import load_tokenizer
    from engine.select import load_backend

    if row.gguf:
        return LlamaCppBackend(Path(row.gguf), load_tokenizer(Path(row.model)), n_ctx=row.context + 64,
                               threads=row.threads, label=row.mode, extra_buffers=row.extra_buffers)
    runtime, precision = row.mode.split()
    options = {"torch fp32": {"dtype": "float32"}, "torch bf16": {"dtype": "bfloat16"},
               "onnx int8": {"onnx": OnnxConfig(export_dir=str(export_dir_for(Path(row.model))),
                                                quantization="int8-dynamic")},
               "torch int8": {"dtype": "int8"}}[row.mode]  # int8 weights, bf16 activations (engine.quantize)
    return load_backend(row.model, backend=runtime, device="cpu", threads=row.threads,
                        cache=CacheConfig(budget_bytes=2**30), speculate=row.speculate, **options)


def run_row(row: Row) -> dict:
    """Worker: load, time the forward, replay keystrokes; figures and the replay's tokens."""
    import torch

    from benchmarks.backends import code_ids
    from benchmarks.keystroke_replay import keystrokes, percentile, replay

    torch.set_num_threads(row.threads)
    started = time.perf_counter()
    backend = load_row(row)
    load_s = time.perf_counter() - started
    ids = code_ids(backend, row.context + 1)
    timing = time_llama(backend, ids) if row.gguf else time_ours(backend, row.context)
    runs = replay(row.problems, {row.mode: backend}, row.context + REPLAY_TOKENS, REPLAY_TOKENS, row.max_keys)
    samples, warm, i = runs[0].samples, [], 0
    for problem in row.problems:  # the first request of each document is a cold prefill: not a keystroke
        n = len(list(keystrokes(problem, row.max_keys)))
        warm += samples[i + 1:i + n]
        i += n
    latency = [s.latency_ms / 1e3 for s in warm]
    return {
        "mode": row.mode, "load_s": load_s, **timing,
        "keystroke_p50_s": statistics.median(latency), "keystroke_p95_s": percentile(latency, 95),
        "keystrokes": len(warm), "keystroke_prefill_median": statistics.median(s.prefill_tokens for s in warm),
        "weight_bytes": weight_bytes(row, backend), "tokens": [s.token_ids for s in samples], "why": backend.info.why,
    }


def in_worker(row: Row) -> dict:
    """Run a row in a fresh process: its memory and threads are its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_row, row).result()


def fastest_ours(rows: list[dict]) -> dict:
    """Our row with the lowest keystroke p50."""
    return min((r for r in rows if r["mode"] not in PEERS), key=lambda r: r["keystroke_p50_s"])


def format_table(rows: list[dict]) -> str:
    """The peer table in markdown."""
    head = ("backend", "prefill 1k s", "+1 on 1k s", "decode s/token", "keystroke p50 s", "keystroke p95 s",
            "weight bytes", "floor s/token", "same tokens")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        figures = [r[k] for k in ("prefill_s", "plus_one_s", "decode_s", "keystroke_p50_s", "keystroke_p95_s")]
        lines.append(f"| {r['mode']} | " + " | ".join(f"{x:.3g}" for x in figures) +
                     f" | {r['weight_bytes'] / 1e6:.1f} MB | {r['floor_s']:.3g} | {r['same_tokens']:.1%} |")
    return "\n".join(lines)


def summarize(rows: list[dict], bandwidth: float) -> dict:
    """Floors, agreement with torch fp32, and the keystroke ratio of our fastest row to llama.cpp q8_0."""
    from benchmarks.backends import agreement

    reference = next((r["tokens"] for r in rows if r["mode"] == "torch fp32"), None)
    for r in rows:
        r["floor_s"] = r["weight_bytes"] / bandwidth  # a decode step reads every weight once
        r["same_tokens"] = agreement(reference, r["tokens"])[1] if reference else float("nan")
    summary = {"rows": [{k: v for k, v in r.items() if k != "tokens"} for r in rows], "bandwidth_gb_s": bandwidth / 1e9}
    q8 = next((r for r in rows if r["mode"] == "llama.cpp q8_0"), None)
    if q8 is not None and any(r["mode"] not in PEERS for r in rows):
        best = fastest_ours(rows)
        summary["fastest_ours"] = best["mode"]
        summary["keystroke_p50_ratio_vs_llamacpp_q8_0"] = best["keystroke_p50_s"] / q8["keystroke_p50_s"]
    return summary


def pick_problems(model: Path, count: int, context: int) -> list:
    """`count` HumanEval problems, each padded with others' code to ~`context` tokens of our tokenizer."""
    from benchmarks.keystroke_replay import load_problems, pad_problem
    from engine.loading import load_tokenizer

    encode = load_tokenizer(model).encode
    pool = load_problems(164)
    return [pad_problem(p, pool, lambda text: len(encode(text)), context) for p in pool[:count]]


def main(args) -> int:
    """`fim-lsp bench peer [--shape small|santacoder] [--model M] [--problems N] [--max-keys K] [--json]`."""
    from benchmarks.backends import checkpoint_for
    from benchmarks.gguf import ensure_gguf
    from benchmarks.keystroke_replay import measure_bandwidth
    from engine.loading import read_config

    if importlib.util.find_spec("llama_cpp") is None:
        print(f"fim-lsp bench peer: {INSTALL}", file=sys.stderr)
        return 2
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        model = checkpoint_for(args.shape, args.model)
        n_positions = read_config(model).args.n_positions
    except (KeyError, ValueError, OSError) as exc:
        print(f"fim-lsp bench peer: no checkpoint for {args.model or args.shape!r} ({exc})", file=sys.stderr)
        return 2
    context = args.context or min(CONTEXT_TOKENS, n_positions - 64)
    if context + 64 > n_positions:
        print(f"fim-lsp bench peer: --context {context} leaves no room in the model's {n_positions}-token window",
              file=sys.stderr)
        return 2
    modes = OURS + PEERS
    if getattr(args, "rows", None):
        modes = tuple(m.strip() for m in args.rows.split(","))
        unknown = [m for m in modes if m not in OURS + PEERS]
        if unknown:
            print(f"fim-lsp bench peer: unknown rows {unknown}; the rows are {', '.join(OURS + PEERS)}",
                  file=sys.stderr)
            return 2
    big = args.shape == "santacoder" and not args.model
    keys = args.max_keys if args.max_keys is not None else (6 if big else 8)  # ~0.1-0.25 s a token: a short replay
    problems = pick_problems(model, min(args.problems, 2) if big and args.max_keys is None else args.problems, context)
    threads = args.threads or 2
    gguf = {mode: str(ensure_gguf(model, mode.split()[1], say=say)) for mode in PEERS if mode in modes}
    bandwidth = measure_bandwidth(threads=threads)
    say(f"memory bandwidth {bandwidth / 1e9:.1f} GB/s ({threads} threads)")
    rows = []
    for mode in modes:
        say(f"{mode}: {len(problems)} problems x {keys} keys at ~{context} tokens")
        row = Row(mode, str(model), gguf.get(mode), tuple(problems), keys, context, threads,
                  speculate=getattr(args, "speculate", None))
        try:
            rows.append(in_worker(row))
        except BrokenProcessPool:
            if not row.gguf:
                raise
            # seen with q8_0 on AMX CPUs: a segfault in ggml_backend_amx_mul_mat; run without it
            say(f"{mode}: llama.cpp crashed; again without its extra buffer types (AMX, repacking)")
            rows.append(in_worker(replace(row, extra_buffers=False)))
        say(f"{mode}: {rows[-1]['why']}")
    summary = summarize(rows, bandwidth)
    summary.update(model=str(model), context=context, threads=threads, keys_per_problem=keys, problems=len(problems))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"peer: {model}\n~{context}-token prompts, {threads} threads, {len(problems)} problems x {keys} keystrokes, "
          f"{REPLAY_TOKENS} greedy tokens each; memory bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(format_table(rows))
    print("+1 on 1k: one token on a 1k cache (llama.cpp: through its prefix reuse); keystroke: request to last "
          "token, first request of each document left out; floor: weight bytes / bandwidth; same tokens: "
          "replay tokens equal to torch fp32's, position-wise")
    if "keystroke_p50_ratio_vs_llamacpp_q8_0" in summary:
        print(f"keystroke p50, our fastest ({summary['fastest_ours']}) / llama.cpp q8_0: "
              f"{summary['keystroke_p50_ratio_vs_llamacpp_q8_0']:.2f}")
    return 0
