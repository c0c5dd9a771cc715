"""`fim-lsp bench backends`: torch fp32, bf16 and int8 weights, ONNX Runtime fp32 and int8 side by side.

For each shape (checkpoint-kit models written once and cached, or `--model`), each runtime runs in
its own process so that its peak RSS is its own: a 1k-token prefill, one cached single-token step
after it, decode tokens/s over further cached steps (all through the runtime's own forward and KV
buffer, the ones the backends use), and a typing replay of HumanEval infilling problems through
the full backend (prompt core, slot cache, decode loop) whose greedy tokens are compared with
torch fp32's. ONNX exports are made on first use into the cache and reused while the checkpoint
is unchanged. A second table measures int8's agreement where it means something: on the bundled
trained model (random weights make near-ties of the argmax, which int8 flips).
"""
from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

PREFILL_TOKENS = 1024
DECODE_STEPS = 16  # cached single-token steps timed for tokens/s
REPLAY_TOKENS = 8  # greedy tokens per keystroke in the replay
VERIFY_TOKENS = (2, 4, 8)  # tokens fed in one cached step, as a speculative draft's verification does
MODES = ("torch fp32", "torch bf16", "torch int8", "torch int4", "onnx fp32", "onnx int8")
TRAINED_MODES = ("torch fp32", "torch int8", "torch int4", "onnx fp32", "onnx int8", "torch bf16")


@dataclass(frozen=True, slots=True)
class Task:
    """One runtime on one checkpoint, run in a worker process."""

    mode: str
    model: str  # checkpoint directory
    export_dir: str  # where its ONNX export lives (made on first use)
    problems: int
    max_keys: int | None
    threads: int | None
    timings: bool = True  # False: only the replay (the agreement table)


def export_dir_for(model: Path) -> Path:
    """The cached export of a checkpoint: `<fim-lsp cache>/onnx/<checkpoint directory name>`."""
    from fim_lsp.training.checkpoint_kit import default_cache_dir

    return default_cache_dir() / "onnx" / model.name


def load_mode(task: Task):
    """The backend for a mode; ONNX modes export (fp32 + int8) first when needed.

    torch int8: int8 weights (engine.quantize) over bf16 activations and K/V, what `--dtype int8` runs;
    torch int4: 4-bit group-wise weights (engine.int4), likewise what `--dtype int4` runs.
    """
    import torch

    from engine.backends.onnx_backend import OnnxConfig, load_onnx_backend
    from engine.backends.torch_backend import TorchBackend
    from engine.cache import CacheConfig
    from engine.loading import load_model

    cache = CacheConfig(budget_bytes=2**30)
    runtime, precision = task.mode.split()
    if runtime == "torch":
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        loaded = load_model(task.model, torch.device("cpu"), dtype)
        if precision == "int8":
            from engine.quantize import quantize_int8

            quantize_int8(loaded.model)
        elif precision == "int4":
            from engine.int4 import quantize_int4

            quantize_int4(loaded.model)
        return TorchBackend(loaded, cache, kv_dtype=dtype)
    from engine.onnx_export import export

    config = OnnxConfig(export_dir=task.export_dir, quantization="int8-dynamic" if precision == "int8" else "none")
    return load_onnx_backend(task.model, device="cpu", dtype="auto", cache=cache, config=config, exporter=export)


def code_ids(backend, n: int) -> list[int]:
    """`n` token ids of real code (HumanEval problems, repeated as needed)."""
    from benchmarks.keystroke_replay import load_problems

    text = "\n\n".join(p.prefix + p.middle + p.suffix for p in load_problems(164))
    ids = backend.tokenizer.encode(text)
    return (ids * (n // len(ids) + 1))[:n]


def time_forward(backend, n_prompt: int) -> dict[str, float]:
    """Prefill `n_prompt` tokens in one forward, then one cached step, then DECODE_STEPS more, then
    one cached step of each size in VERIFY_TOKENS (all logits, at the same position: best of 2)."""
    import torch

    model, kv = backend.model, backend.new_buffer(n_prompt + DECODE_STEPS + 1 + max(VERIFY_TOKENS))
    ids = torch.tensor(code_ids(backend, n_prompt))  # [T]
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(ids, torch.arange(n_prompt), kv, 0, last_only=True)[0]  # [V]
        t1 = time.perf_counter()
        steps = []
        for pos in range(n_prompt, n_prompt + DECODE_STEPS + 1):
            token = torch.tensor([int(torch.argmax(logits))])
            s = time.perf_counter()
            logits = model(token, torch.tensor([pos]), kv, pos)[0]  # [V]
            steps.append(time.perf_counter() - s)
        verify = {}
        pos = n_prompt + DECODE_STEPS + 1
        for T in VERIFY_TOKENS:
            draft, at = ids[:T], torch.arange(pos, pos + T)  # [T], [T]
            verify[T] = min(timed(lambda: model(draft, at, kv, pos)) for _ in range(2)) * 1e3
    decode = steps[1:]
    return {"prefill_s": t1 - t0, "cached_step_ms": steps[0] * 1e3, "decode_tok_s": len(decode) / sum(decode),
            "verify_ms": verify}


def timed(call) -> float:
    """Seconds one call takes."""
    s = time.perf_counter()
    call()
    return time.perf_counter() - s


def run_task(task: Task) -> dict:
    """Worker: load the mode, time it, replay typing; returns figures and the replay's tokens."""
    import torch

    from benchmarks.keystroke_replay import load_problems, replay

    if task.threads:
        torch.set_num_threads(task.threads)
    started = time.perf_counter()
    backend = load_mode(task)
    load_s = time.perf_counter() - started
    n_ctx = backend.info.n_ctx
    result: dict = {"mode": task.mode, "load_s": load_s, "why": backend.info.why}
    if task.timings:
        result.update(time_forward(backend, min(PREFILL_TOKENS, n_ctx - DECODE_STEPS - 1 - max(VERIFY_TOKENS))))
    runs = replay(load_problems(task.problems), {task.mode: backend}, n_ctx, REPLAY_TOKENS, task.max_keys)
    result["tokens"] = [s.token_ids for s in runs[0].samples]
    result["replay_p50_ms"] = sorted(s.latency_ms for s in runs[0].samples)[len(runs[0].samples) // 2]
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # KiB on Linux
    return result


def in_worker(task: Task) -> dict:
    """Run a task in a fresh process (its peak RSS is its own)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_task, task).result()


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """(share of keystrokes with identical tokens, share of reference tokens matched position-wise)."""
    same = sum(a == b for a, b in zip(reference, other))
    matched = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(reference, other))
    total = sum(max(len(a), len(b)) for a, b in zip(reference, other))
    return same / max(len(reference), 1), matched / max(total, 1)


def compare(rows: list[dict]) -> None:
    """Fill each row's agreement with the torch fp32 row of the same shape."""
    reference = {r["shape"]: r["tokens"] for r in rows if r["mode"] == "torch fp32"}
    for r in rows:
        ref = reference.get(r["shape"])
        r["same_keystrokes"], r["token_agreement"] = agreement(ref, r["tokens"]) if ref else (float("nan"),) * 2


def format_table(rows: list[dict]) -> str:
    head = ("shape", "backend", "prefill 1k s", "cached step ms", "decode tok/s",
            "step ms at " + "/".join(map(str, VERIFY_TOKENS)) + " tokens", "peak RSS GiB", "same tokens", "token agr.")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['mode']} | {r['prefill_s']:.2f} | {r['cached_step_ms']:.1f} | "
                     f"{r['decode_tok_s']:.1f} | {'/'.join(f'{ms:.0f}' for ms in r['verify_ms'].values())} | "
                     f"{r['peak_rss_gib']:.2f} | {r['same_keystrokes']:.1%} | "
                     f"{r['token_agreement']:.1%} |")
    return "\n".join(lines)


def checkpoint_for(shape: str, model: str | None) -> Path:
    from fim_lsp.training.checkpoint_kit import CheckpointSpec, ensure_checkpoint

    if model:
        return Path(model).resolve()
    family = "santacoder" if shape == "santacoder" else "starcoder"
    return ensure_checkpoint(CheckpointSpec(shape=shape, family=family))


def trained_agreement(problems: int, max_keys: int | None, threads: int | None, say,
                      modes: tuple[str, ...] = TRAINED_MODES) -> list[dict] | None:
    """int8 and int4 vs fp32 over the replay on the bundled trained model (a snapshot: training may go
    on). `modes` must hold "torch fp32", the reference."""
    from engine.select import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model.safetensors").is_file():
        say("no bundled trained model: int8 agreement on trained weights not measured")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "default_model"
        shutil.copytree(DEFAULT_MODEL_DIR, snapshot)
        rows = []
        for mode in modes:
            say(f"trained model: {mode}")
            task = Task(mode, str(snapshot), str(Path(tmp) / "onnx"), problems, max_keys, threads, timings=False)
            rows.append({"shape": "trained default", **in_worker(task)})
    compare(rows)
    return rows


def main(args) -> int:
    """`fim-lsp bench backends [--shape small,santacoder] [--model M] [--problems N] [--max-keys K]`."""
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    shapes = [s for s in args.shape.split(",") if s] if not args.model else [Path(args.model).name]
    modes = [m for m in MODES if args.backend in ("auto", m.split()[0])]
    if args.backend not in ("auto", "torch", "onnx"):
        print(f"fim-lsp bench backends: --backend {args.backend} is not compared here; use auto, torch or onnx",
              file=sys.stderr)
        return 2
    rows = []
    for shape in shapes:
        try:
            model = checkpoint_for(shape, args.model)
        except (KeyError, ValueError, OSError) as exc:
            print(f"fim-lsp bench backends: no checkpoint for shape {shape!r} ({exc})", file=sys.stderr)
            return 2
        big = shape == "santacoder" and args.max_keys is None  # ~0.3 s a token on 2 cores: a short replay
        keys = args.max_keys if args.max_keys is not None else (2 if big else 12)
        problems = min(args.problems, 2) if big else args.problems
        for mode in modes:
            say(f"{shape}: {mode} ({problems} problems x {keys} keys)")
            task = Task(mode, str(model), str(export_dir_for(model)), problems, keys, args.threads)
            row = {"shape": shape, **in_worker(task)}
            say(f"{shape}: {mode}: {row['why']}")
            rows.append(row)
    compare(rows)
    trained = None  # comes with the small shape: a quick run, while santacoder's is a long one
    if "small" in shapes and not args.model:
        trained = trained_agreement(args.problems, args.max_keys or 12, args.threads, say)
    if args.json:
        strip = lambda rs: [{k: v for k, v in r.items() if k != "tokens"} for r in rs or []]  # noqa: E731
        print(json.dumps({"rows": strip(rows), "trained": strip(trained)}, indent=2))
        return 0
    import torch

    print(f"backends: prefill {PREFILL_TOKENS} tokens in one forward, then {DECODE_STEPS + 1} cached steps; "
          f"replay {REPLAY_TOKENS} greedy tokens per keystroke; {args.threads or torch.get_num_threads()} threads")
    print(format_table(rows))
    print("same tokens / token agr.: keystrokes whose tokens equal torch fp32's / tokens equal position-wise")
    for shape in shapes:
        by = {r["mode"]: r for r in rows if r["shape"] == shape}
        for fast in ("torch int8", "torch int4", "onnx int8"):
            if "torch fp32" in by and fast in by:
                ratio = by[fast]["decode_tok_s"] / by["torch fp32"]["decode_tok_s"]
                print(f"{shape}: {fast} decodes {ratio:.2f}x as fast as torch fp32 (this run)")
    if trained:
        print(f"\nint8 on trained weights (bundled default model), replay of {args.problems} problems "
              f"x {args.max_keys or 12} keys:")
        print("| backend | same tokens | token agr. | replay p50 ms |\n|---|---|---|---|")
        for r in trained:
            print(f"| {r['mode']} | {r['same_keystrokes']:.1%} | {r['token_agreement']:.1%} "
                  f"| {r['replay_p50_ms']:.1f} |")
    return 0

