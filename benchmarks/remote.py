"""`fim-lsp bench remote`: per-keystroke latency through the remote path next to the in-process one.

The same keystroke replay as `bench keystrokes` (HumanEval spans typed back one character at a
time, prompts from the language server's prompt core) through, on one checkpoint:

- the engine in this process;
- `fim-lsp engine` (started here on 127.0.0.1) through our endpoint, which carries the document id;
- the same daemon through plain `/v1/completions` (what vLLM or llama.cpp would be sent);
- two clients typing the same documents at once into that daemon (one engine, separate slots);
- with `--url`, any other OpenAI-compatible server holding the same model (e.g. a llama.cpp
  server on a GGUF conversion of it).

Every row is checked against the in-process text. The difference between the first rows is what
the HTTP hop costs per keystroke; prefill and hit
rate show that the remote path keeps its prefix cache (figures from the server where it reports
them; llama.cpp does not, so its prefill shows the whole prompt).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace as dc_replace
from pathlib import Path

from benchmarks.keystroke_replay import ModeRun, format_table, keystrokes, load_problems, replay, summarize
from engine.api import CancelToken, CompletionRequest, CompletionResult

MAX_NEW_TOKENS = 16
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 600


class Recorded:
    """A backend that keeps every result's text; plain /v1/completions results get ids re-encoded from it."""

    def __init__(self, backend, tokenizer) -> None:
        self.backend, self.tokenizer = backend, tokenizer
        self.info, self.fim = backend.info, backend.fim
        self.texts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return self.backend.count_tokens(text)

    def complete(self, request: CompletionRequest, cancel: CancelToken | None = None) -> CompletionResult:
        result = self.backend.complete(request, cancel)
        self.texts.append(result.text)
        if result.token_ids or not result.text:
            return result
        return dc_replace(result, token_ids=self.tokenizer.encode(result.text, add_special_tokens=False).ids)

    def drop(self, doc_id) -> None:
        self.backend.drop(doc_id)

    def cache_stats(self) -> dict[str, int]:
        return self.backend.cache_stats()


def same_text(a: str, b: str) -> bool:
    """Equal texts, U+FFFD aside: llama.cpp drops a token's incomplete UTF-8 bytes where we print U+FFFD."""
    return a.replace("\ufffd", "") == b.replace("\ufffd", "")


def start_daemon(model: str, args) -> tuple[subprocess.Popen, str]:
    """`fim-lsp engine` on a free loopback port with the benchmark's model options; (process, url)."""
    cmd = [sys.executable, "-m", "fim_lsp.cli", "engine", "--listen", "127.0.0.1:0", "--model", model]
    for flag in ("backend", "device", "dtype", "threads", "revision"):
        value = getattr(args, flag, None)
        if value is not None and value != "auto":
            cmd += [f"--{flag}", str(value)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if (m := LISTENING.search(line)) is not None:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep its pipe drained
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"the engine daemon did not start:\n{''.join(seen)}")


def concurrent_clients(problems, backends: dict, n_ctx: int, max_keys: int | None) -> list[ModeRun]:
    """Each backend (a client of the daemon) replays the same problems, all at the same time."""
    runs: dict[str, list[ModeRun]] = {}
    errors: list[BaseException] = []

    def work(name: str, backend) -> None:
        try:
            runs[name] = replay(problems, {name: backend}, n_ctx, MAX_NEW_TOKENS, max_keys)
        except BaseException as exc:  # surfaced after the join
            errors.append(exc)

    threads = [threading.Thread(target=work, args=item) for item in backends.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [runs[name][0] for name in backends]


def main(args) -> int:
    import torch

    from engine.backends.openai_backend import load_backend as load_remote
    from benchmarks.cli import bench_model
    from engine.loading import CheckpointError
    from engine.select import load_backend

    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.backend == "openai":
        print("fim-lsp bench remote: --backend names the in-process engine (auto, torch, onnx); "
              "give the server to compare with as --url", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = bench_model(args, say)
        local = load_backend(model=model, backend=args.backend, device=args.device, dtype=args.dtype,
                             revision=args.revision)
    except (CheckpointError, ValueError) as exc:
        print(f"fim-lsp bench: {exc}", file=sys.stderr)
        return 2
    say("starting fim-lsp engine on 127.0.0.1")
    proc, url = start_daemon(model, args)
    try:
        tokenizer = local.tokenizer.tokenizer
        affinity = load_remote(url=url)
        plain = load_remote(url=url)
        plain.mode = "openai"  # plain /v1/completions, as a generic client
        modes = {"in-process": local, "daemon, fim-lsp": affinity, "daemon, /v1/compl.": plain}
        if args.url:
            local_dir = model if (Path(model) / "tokenizer.json").is_file() else None
            modes["--url server"] = load_remote(model=local_dir, url=args.url)
        modes = {name: Recorded(b, tokenizer) for name, b in modes.items()}
        n_ctx = local.info.n_ctx
        problems = load_problems(args.problems)
        total = sum(len(list(keystrokes(p, args.max_keys))) for p in problems)
        say(f"{len(problems)} problems, {total} keystrokes per mode, {local.info.backend} {local.info.device} "
            f"{local.info.dtype}, {torch.get_num_threads()} threads")
        runs = replay(problems, modes, n_ctx, MAX_NEW_TOKENS, args.max_keys)
        say("two clients typing at once")
        pair = {name: Recorded(load_remote(url=url), tokenizer) for name in ("2 at once: A", "2 at once: B")}
        runs += concurrent_clients(problems, pair, n_ctx, args.max_keys)
        with urllib.request.urlopen(f"{url}/v1/fim-lsp/stats", timeout=10) as r:
            stats = json.loads(r.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = summarize(runs)
    reference = modes["in-process"].texts
    for row, backend in zip(rows, [*modes.values(), *pair.values()]):
        row["identical"] = sum(same_text(a, b) for a, b in zip(backend.texts, reference)) / max(1, len(reference))
    if args.json:
        print(json.dumps({"rows": rows, "model": model, "daemon": url, "daemon_stats": stats}, indent=2))
        return 0
    print(f"remote path: {model}\n{len(problems)} problems, {total} keystrokes, {MAX_NEW_TOKENS} greedy tokens each, "
          f"{local.info.backend} {local.info.device} {local.info.dtype}, {torch.get_num_threads()} threads")
    print(format_table(rows))
    print("latency: request to answer as the language server sees it (HTTP included for remote rows); "
          "same tokens: share of keystrokes whose text equals in-process (U+FFFD aside); "
          "2 at once: two clients typing the same documents into one daemon, each with its own slots")
    print(f"daemon at the end: {stats['cache'].get('slots')} slots, {len(stats['clients'])} clients")
    return 0
