"""`fim-lsp bench peer`: our CPU backends next to llama.cpp on the same checkpoint, in one table.

llama.cpp (through llama-cpp-python) is what users compare a local completion engine with. The
checkpoint (a checkpoint-kit model of `--shape`, or `--model`) is converted to GGUF f16 and q8_0
with llama.cpp's own converter and quantised from the f16 to Q4_0 and Q4_K_M with llama.cpp's
quantiser (`benchmarks.gguf`, cached by the checkpoint's hash), and driven with the token ids our
tokenizer produces, so both sides see the same sequence. llama.cpp keeps one KV sequence and
reuses its longest common token prefix with the previous request (`Llama.generate`), which is
what its server does per slot.

Every row is loaded once, in a worker process of its own that stays alive
(`benchmarks.peer_workers`), and the rows are then asked in turn, never two at once, on
`--threads` (default 2) threads each, over `--passes` (default 3) passes. A pass is:
- prefill 1k: one forward over 1,024 tokens of real code (HumanEval), logits of the last only;
- +1 on 1k: one more token on that cache (for llama.cpp through its prefix reuse, and its own
  counter checks that one token was evaluated);
- decode: the mean of 16 further single-token greedy steps;
  (each row does these three in turn, the order reversed every other pass), then
- keystroke p50/p95: HumanEval problems padded to ~1k tokens typed back one character at a time
  (`benchmarks.keystroke_replay`), 8 greedy tokens per keystroke; every keystroke goes to every
  row before the next one, the rows in ABBA order (`peer_workers.round_order`); the first request
  of each document (a cold prefill) is left out of the percentiles.
Per row the table gives each figure's median over passes; ratios to llama.cpp q8_0 and Q4_K_M are
taken within each pass and given as median [min-max] over passes (`benchmarks.peer_summary`).
Weight bytes (what a decode step reads) set the floor: bytes / memory bandwidth, measured with
`keystroke_replay.measure_bandwidth` at the start of each pass (the median is used).
"""
from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.peer_summary import Q4_K_M, Q8, RowRun, format_table, is_peer, pass_figures, summarize
from benchmarks.peer_workers import RowFailed, RowWorker, round_order
from engine.api import BackendInfo, CancelToken, Cancelled, CompletionRequest, CompletionResult, DocId

CONTEXT_TOKENS = 1024  # the prompt length every column is measured at
REPLAY_TOKENS = 8  # greedy tokens per keystroke
DECODE_STEPS = 16  # single-token steps timed for decode s/token
PLUS_ONE_TRIALS = 3  # +1-token requests timed (median): the first after a prefill also sets up the decode graph
N_BATCH = 512  # llama.cpp's prompt batch (its default)
PASSES = 3  # default --passes
OURS = ("torch fp32", "torch bf16", "onnx int8", "torch int8", "torch int4")
PEERS = ("llama.cpp f16", "llama.cpp q8_0", "llama.cpp Q4_0", "llama.cpp Q4_K_M")
GGUF_TYPE = {"llama.cpp f16": "f16", "llama.cpp q8_0": "q8_0", "llama.cpp Q4_0": "q4_0", "llama.cpp Q4_K_M": "q4_k_m"}
DEFAULT_ROWS = ("torch int8", "torch int4", *PEERS)  # our fastest CPU rows against each llama.cpp setting
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
    """One backend of the table, loaded in a worker process of its own."""

    mode: str  # one of OURS or PEERS
    model: str  # checkpoint directory
    gguf: str | None  # the GGUF file for llama.cpp rows
    context: int  # prompt tokens the timings use
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
    # int8 (and int4): packed weights and scales are buffers or counted by model_bytes
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
               "torch int8": {"dtype": "int8"},  # int8 weights, bf16 activations (engine.quantize)
               "torch int4": {"dtype": "int4"}}[row.mode]  # 4-bit weights: the engine's --dtype int4
    return load_backend(row.model, backend=runtime, device="cpu", threads=row.threads,
                        cache=CacheConfig(budget_bytes=2**30), speculate=row.speculate, **options)


class RowRunner:
    """Worker side of one row: its backend, loaded once; one method per coordinator command."""

    def __init__(self, row: Row):
        import torch

        from benchmarks.backends import code_ids

        torch.set_num_threads(row.threads)
        self.row = row
        started = time.perf_counter()
        self.backend = load_row(row)
        self.load_s = time.perf_counter() - started
        self.ids = code_ids(self.backend, row.context + 1)
        if row.gguf:  # a batch of 2: where llama.cpp's AMX kernel crashes (see docs), crash at load, not mid-pass
            self.backend.llm.eval(self.ids[:2])
            self.backend.llm.reset()

    def describe(self) -> dict:
        from benchmarks.gguf import describe_report, quantize_report

        report = quantize_report(Path(self.row.gguf)) if self.row.gguf else None
        return {"why": self.backend.info.why, "weight_bytes": weight_bytes(self.row, self.backend),
                "load_s": self.load_s, "quantization": describe_report(report) if report else None}

    def time(self, _=None) -> dict[str, float]:
        """Prefill 1k, +1 on 1k, decode s/token."""
        if self.row.gguf:
            return time_llama(self.backend, self.ids)
        return time_ours(self.backend, self.row.context)

    def complete(self, request: CompletionRequest) -> dict:
        """One keystroke's request; its latency (as the backend measures it), prefill and tokens."""
        result = self.backend.complete(request)
        return {"latency_s": result.latency_ms / 1e3, "prefill_tokens": result.prefill_tokens,
                "token_ids": list(result.token_ids)}

    def drop(self, doc_id: DocId) -> None:
        self.backend.drop(doc_id)


@dataclass(frozen=True, slots=True)
class Keystroke:
    """One request of the replay, the same for every row."""

    request: CompletionRequest
    warm: bool  # False: the first request of its document (a cold prefill), left out of the percentiles
    last: bool  # its document's last: every row drops the document after it


def keystroke_requests(problems: Sequence, tokenizer, n_ctx: int, max_keys: int) -> list[Keystroke]:
    """The replay's requests, built once from the language server's prompt core (as `keystroke_replay.replay`)."""
    from benchmarks.keystroke_replay import keystrokes
    from lsp_server.core.prompt import PromptConfig, build_prompt

    config = PromptConfig(max_new_tokens=REPLAY_TOKENS, neighbours=False)
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    out = []
    for problem in problems:
        doc = DocId(f"file:///{problem.task_id}.py")
        contexts = list(keystrokes(problem, max_keys))
        for k, ctx in enumerate(contexts):
            prompt = build_prompt(ctx, tokenizer.fim, count, n_ctx, config).text
            out.append(Keystroke(CompletionRequest(doc_id=doc, prompt=prompt, max_new_tokens=REPLAY_TOKENS),
                                 warm=k > 0, last=k == len(contexts) - 1))
    return out


def start_row(row: Row, say: Callable[[str], None]) -> RowWorker:
    """A worker with the row loaded; a llama.cpp row that crashes at load is started again without
    llama.cpp's extra buffer types (seen with q8_0 on AMX CPUs: a segfault in ggml_backend_amx_mul_mat)."""
    try:
        return RowWorker(row.mode, RowRunner, row)
    except RowFailed as exc:
        if not (row.gguf and row.extra_buffers and str(exc).startswith("worker died")):
            raise
        say(f"{row.mode}: llama.cpp crashed ({exc}); again without its extra buffer types (AMX, repacking)")
        return RowWorker(row.mode, RowRunner, replace(row, extra_buffers=False))


class Bench:
    """The coordinator: one worker per row, asked in turn, pass after pass."""

    def __init__(self, rows: Sequence[Row], say: Callable[[str], None]):
        self.say = say
        self.runs = {row.mode: RowRun(row.mode) for row in rows}
        self.workers: dict[str, RowWorker] = {}
        for row in rows:  # one at a time: loading is work too
            run = self.runs[row.mode]
            try:
                worker = start_row(row, say)
            except RowFailed as exc:
                run.error = str(exc)
                say(f"{row.mode}: not run: {exc}")
                continue
            self.workers[row.mode] = worker
            run.why, run.weight_bytes = worker.described["why"], worker.described["weight_bytes"]
            run.quantization = worker.described["quantization"]
            say(f"{row.mode}: loaded in {worker.described['load_s']:.1f} s; {run.why}")
        self.rounds = 0  # keystroke rounds so far, over all passes: sets each round's order

    def ask(self, mode: str, command: str, argument=None, during: str = ""):
        """One command to one row; a row that fails is dropped from the rest of the run (None)."""
        try:
            return self.workers[mode].call(command, argument)
        except RowFailed as exc:
            self.runs[mode].error = f"{during}: {exc}" if during else str(exc)
            self.say(f"{mode}: dropped, {self.runs[mode].error}")
            del self.workers[mode]
            return None

    def run_pass(self, index: int, keys: Sequence[Keystroke]) -> None:
        """Timings, each row in turn, then every keystroke through every row; figures onto each RowRun."""
        during = f"pass {index + 1}"
        timings = {mode: self.ask(mode, "time", during=during) for mode in round_order(list(self.workers), index)}
        samples: dict[str, list[dict]] = {mode: [] for mode in self.workers}
        for key in keys:
            for mode in round_order(list(self.workers), self.rounds):
                sample = self.ask(mode, "complete", key.request, during)
                if sample is not None and key.last:
                    self.ask(mode, "drop", key.request.doc_id, during)
                if sample is not None:
                    samples[mode].append({**sample, "warm": key.warm})
            self.rounds += 1
        for mode in self.workers:
            warm = [s for s in samples[mode] if s["warm"]]
            run = self.runs[mode]
            run.passes.append(pass_figures(timings[mode], [s["latency_s"] for s in warm],
                                           [s["prefill_tokens"] for s in warm]))
            if index == 0:
                run.tokens = [s["token_ids"] for s in samples[mode]]

    def stop(self) -> None:
        for mode, worker in self.workers.items():
            try:
                self.runs[mode].idle_cpu_s = worker.stop()["idle_cpu_s"]
            except RowFailed as exc:
                self.say(f"{mode}: its worker did not stop cleanly ({exc})")
        self.workers.clear()


def parse_rows(text: str | None) -> tuple[str, ...]:
    """`--rows`: comma-separated row names (None: DEFAULT_ROWS); ValueError naming the choices."""
    if not text:
        return DEFAULT_ROWS
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in OURS + PEERS]
    if unknown or not modes:
        raise ValueError(f"unknown rows {unknown}; the rows are {', '.join(OURS + PEERS)}")
    return modes


def pick_problems(model: Path, count: int, context: int) -> list:
    """`count` HumanEval problems, each padded with others' code to ~`context` tokens of our tokenizer."""
    from benchmarks.keystroke_replay import load_problems, pad_problem
    from engine.loading import load_tokenizer

    encode = load_tokenizer(model).encode
    pool = load_problems(164)
    return [pad_problem(p, pool, lambda text: len(encode(text)), context) for p in pool[:count]]


def pass_line(runs: dict[str, RowRun], index: int) -> str:
    """This pass's keystroke p50 per row and our rows' ratio to llama.cpp q8_0 (for the progress line)."""
    done = {m: r.passes[index] for m, r in runs.items() if r.error is None and len(r.passes) > index}
    parts = [f"{m} {p['keystroke_p50_s']:.3g}" for m, p in done.items()]
    line = "keystroke p50 s: " + ", ".join(parts)
    for peer in (Q8, Q4_K_M):
        if peer in done:
            ratios = [f"{m} {p['keystroke_p50_s'] / done[peer]['keystroke_p50_s']:.2f}"
                      for m, p in done.items() if not is_peer(m)]
            if ratios:
                line += f"; / {peer.split()[1]}: " + ", ".join(ratios)
    return line


def main(args) -> int:
    """`fim-lsp bench peer [--shape S] [--model M] [--rows R] [--passes N] [--problems N] [--max-keys K] [--json]`."""
    from benchmarks.backends import checkpoint_for
    from benchmarks.gguf import ensure_gguf
    from benchmarks.keystroke_replay import measure_bandwidth
    from engine.loading import load_tokenizer, read_config

    if importlib.util.find_spec("llama_cpp") is None:
        print(f"fim-lsp bench peer: {INSTALL}", file=sys.stderr)
        return 2
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        modes = parse_rows(getattr(args, "rows", None))
    except ValueError as exc:
        print(f"fim-lsp bench peer: {exc}", file=sys.stderr)
        return 2
    passes = getattr(args, "passes", None) or PASSES
    if passes < 1:
        print(f"fim-lsp bench peer: --passes must be at least 1, got {passes}", file=sys.stderr)
        return 2
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
    big = args.shape == "santacoder" and not args.model
    keys = args.max_keys if args.max_keys is not None else (6 if big else 8)  # ~0.1-0.25 s a token: a short replay
    problems = pick_problems(model, min(args.problems, 2) if big and args.max_keys is None else args.problems, context)
    threads = args.threads or 2
    gguf = {mode: str(ensure_gguf(model, GGUF_TYPE[mode], say=say)) for mode in PEERS if mode in modes}
    requests = keystroke_requests(problems, load_tokenizer(model), context + REPLAY_TOKENS, keys)
    rows = [Row(mode, str(model), gguf.get(mode), context, threads, speculate=getattr(args, "speculate", None))
            for mode in modes]
    say(f"{len(rows)} rows, each in its own worker; {passes} passes of: timings, then {len(requests)} requests "
        f"({len(problems)} problems x {keys} keystrokes + a cold first request each) at ~{context} tokens, "
        f"every request through every row in turn")
    bench = Bench(rows, say)
    bandwidths = []
    try:
        for index in range(passes):
            started = time.perf_counter()
            bandwidths.append(measure_bandwidth(threads=threads))  # every worker idle
            bench.run_pass(index, requests)
            took = time.perf_counter() - started
            say(f"pass {index + 1}/{passes} in {took:.0f} s (bandwidth {bandwidths[-1] / 1e9:.1f} GB/s; "
                f"~{took * (passes - index - 1):.0f} s to go): {pass_line(bench.runs, index)}")
    finally:
        bench.stop()
    summary = summarize(list(bench.runs.values()), bandwidths)
    summary.update(model=str(model), context=context, threads=threads, keys_per_problem=keys, problems=len(problems),
                   requests_per_pass=len(requests))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"peer: {model}\n~{context}-token prompts, {threads} threads, {len(problems)} problems x {keys} keystrokes, "
          f"{REPLAY_TOKENS} greedy tokens each, {passes} passes, rows interleaved request by request; "
          f"memory bandwidth {summary['bandwidth_gb_s']:.1f} GB/s (median of passes)")
    print(format_table(summary))
    print("figures: median over passes; keystroke: request to last token, first request of each document left out; "
          "ratios: ours / llama.cpp within each pass, median [min-max] over passes; floor: weight bytes / "
          "bandwidth; same tokens: replay tokens equal to torch fp32's, position-wise")
    for row in summary["rows"]:
        if row.get("quantization"):
            print(f"{row['mode']}: {row['quantization']}")
    for peer in ("q8_0", "q4_k_m"):
        key = f"keystroke_p50_ratio_vs_llamacpp_{peer}"
        if key in summary:
            print(f"keystroke p50, our fastest ({summary['fastest_ours']}) / llama.cpp {peer}: median "
                  f"{summary[key]:.2f}, passes {summary[key + '_min']:.2f}-{summary[key + '_max']:.2f}")
    return 0
