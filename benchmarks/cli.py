"""`fim-lsp bench WHICH`: run a benchmark and print its table.

`keystrokes` replays typing HumanEval spans through three modes on one checkpoint (see
`benchmarks.keystroke_replay`). Without `--model` it uses a random-weight checkpoint-kit model of
`--shape`: latency depends on the shape, not on the weights' values. `session` drives the real
server through a scripted editing session in wall-clock time (see `benchmarks.session`).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys

# benchmark -> (module, function taking the parsed args); others arrive with their issues
BENCHES: dict[str, tuple[str, str]] = {
    "keystrokes": ("benchmarks.cli", "bench_keystrokes"),
    "backends": ("benchmarks.backends", "main"),
    "remote": ("benchmarks.remote", "main"),
    "peer": ("benchmarks.peer", "main"),
    "soak": ("benchmarks.soak", "main"),
    "speculative": ("benchmarks.speculative", "main"),
    "beam": ("benchmarks.beam", "main"),
    "session": ("benchmarks.session", "main"),
}
MAX_NEW_TOKENS = 16


def main_bench(args) -> int:
    module_name, func_name = BENCHES[args.which]
    if importlib.util.find_spec(module_name) is None:
        print(f"fim-lsp bench {args.which}: not available in this build", file=sys.stderr)
        return 3
    return int(getattr(importlib.import_module(module_name), func_name)(args) or 0)


def bench_model(args, say) -> str:
    """The checkpoint a benchmark runs: --model, or the kit model of --shape (written once, cached)."""
    from fim_lsp.training.checkpoint_kit import CheckpointSpec, ensure_checkpoint

    if args.model:
        return args.model
    family = "santacoder" if args.shape == "santacoder" else "starcoder"
    say(f"checkpoint-kit model, shape {args.shape} ({family}); written once, then cached")
    return str(ensure_checkpoint(CheckpointSpec(shape=args.shape, family=family)))


def bench_keystrokes(args) -> int:
    """Replay keystrokes through ours, ours without reuse, and transformers generate()."""
    import torch
    from tqdm import tqdm

    from benchmarks.keystroke_replay import (
        format_table, keystrokes, load_problems, measure_bandwidth, pad_problem, percentile, prefill_counts, replay,
        summarize,
    )
    from engine.backends.reference import ReferenceBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.cache import CacheConfig
    from engine.loading import CheckpointError, load_model
    from engine.select import choose_placement, local_params

    if args.threads:
        torch.set_num_threads(args.threads)
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        model = bench_model(args, say)
        placement = choose_placement(args.device, args.dtype, local_params(model))
        loaded = load_model(model, placement.device, placement.dtype, revision=args.revision,
                            progress=lambda msg, frac: say(f"{msg} ({frac:.0%})"))
    except (CheckpointError, ValueError) as exc:
        print(f"fim-lsp bench: {exc}", file=sys.stderr)
        return 2
    dtype_name = str(placement.dtype).removeprefix("torch.")
    ours_name = "ours"
    if placement.quantize:  # int8/int4 weights for our modes; transformers runs the activations' dtype
        from engine.int4 import quantize_int4
        from engine.quantize import quantize_int8

        (quantize_int4 if placement.quantize == "int4" else quantize_int8)(loaded.model)
        ours_name = f"ours {placement.quantize}"
    speculate = args.speculate or 0
    if speculate:
        ours_name += f" spec{speculate}"
    modes = {
        ours_name: TorchBackend(loaded, CacheConfig(), kv_dtype=placement.kv_dtype, speculate=speculate),
        "ours, no reuse": TorchBackend(loaded, CacheConfig(reuse=False), kv_dtype=placement.kv_dtype),
    }
    if loaded.layout == "gpt_bigcode" and placement.device.type == "cpu":
        modes["transformers"] = ReferenceBackend.load(loaded.path, dtype=dtype_name)
    else:
        say("transformers generate() skipped: it needs a gpt_bigcode checkpoint on the CPU")

    n_window = loaded.model.args.n_positions
    problems = load_problems(args.problems)
    n_ctx = n_window
    if args.context:
        if args.context + MAX_NEW_TOKENS > n_window:
            print(f"fim-lsp bench: --context {args.context} + {MAX_NEW_TOKENS} new tokens exceeds the "
                  f"model's {n_window}-token window", file=sys.stderr)
            return 2
        n_ctx = args.context + MAX_NEW_TOKENS
        pool = load_problems(164)
        count = modes[ours_name].count_tokens
        problems = [pad_problem(p, pool, count, args.context) for p in problems]
    total = sum(len(list(keystrokes(p, args.max_keys))) for p in problems)
    say(f"{len(problems)} problems, {total} keystrokes, prompt window {n_ctx} tokens, "
        f"{placement.device} {dtype_name}, {torch.get_num_threads()} threads")
    with tqdm(total=total, desc="keystrokes", file=sys.stderr) as bar:
        runs = replay(problems, modes, n_ctx, MAX_NEW_TOKENS, args.max_keys, progress=bar.update)
    rows = summarize(runs)
    typed = prefill_counts(problems, loaded.tokenizer.fim, loaded.tokenizer.encode, n_ctx, MAX_NEW_TOKENS)

    bandwidth = measure_bandwidth(threads=torch.get_num_threads()) if placement.device.type == "cpu" else float("nan")
    weight_bytes = loaded.model.args.param_count() * ({"int8": 1, "int4": 0.5}.get(placement.quantize) or
                                                      torch.empty((), dtype=placement.dtype).element_size())
    floor_ms = weight_bytes / bandwidth * 1e3  # one decode step reads every weight once
    step_ms = rows[0]["decode_step_ms"]
    if args.json:
        print(json.dumps({"rows": rows, "bandwidth_gb_s": bandwidth / 1e9, "weight_bytes": weight_bytes,
                          "decode_floor_ms": floor_ms, "n_ctx": n_ctx, "device": str(placement.device),
                          "dtype": dtype_name, "model": model, "full_typing_prefill": typed}, indent=2))
        return 0
    print(f"keystroke replay: {model}\n{len(problems)} problems, {total} keystrokes, "
          f"{MAX_NEW_TOKENS} greedy tokens each, "
          f"prompt window {n_ctx} tokens, {placement.device} {dtype_name}, {torch.get_num_threads()} threads")
    print(format_table(rows))
    print("speed-up: p50 of the last mode over each mode's p50; same tokens: share of keystrokes whose tokens "
          "equal the first mode's")
    print(f"memory bandwidth (torch sum, {torch.get_num_threads()} threads): {bandwidth / 1e9:.1f} GB/s; weights "
          f"{weight_bytes / 1e9:.2f} GB -> decode floor {floor_ms:.1f} ms/token; measured cached step "
          f"{step_ms:.1f} ms ({step_ms / floor_ms:.2f}x the floor)")
    print(f"full typing of these {len(problems)} spans ({len(typed)} keystrokes, cache policy only, no model): "
          f"prefilled tokens per keystroke median {percentile(typed, 50):.0f}, p95 {percentile(typed, 95):.0f}")
    return 0
