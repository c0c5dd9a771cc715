"""Completion latency with many large documents open vs one: neighbour selection must stay bounded.

`python -m benchmarks.open_documents [--model DIR] [--rounds 3] [--requests 8]`

One probed server (tests.support.probe) with the target document open. Blocks alternate between
two conditions, `--rounds` times each: **one** (only the target document is open) and **thirty**
(30 other Python documents of 1,000,000 characters each are open too, opened at the start of the
block and closed at its end). In each block `--requests` completions are asked for, each after
typing a new line at the cursor (`\n    v12 = `), as a user does: every request runs the model on a
prompt that grew by a few tokens. The first request of a thirty
block also pays for indexing the newest other document (documents are indexed once per version)
and for a new prompt head (the snippets); it is reported on its own row. Printed: median and spread
of the steady-state latency per condition
and the ratio thirty / one per round (goal: within 1.5x).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from tests.support.probe import SyncClient, probed_command

TARGET = "file:///bench/target.py"
DOC_CHARS = 1_000_000
OTHERS = 30
BODY = "".join(f"def handler_{i}(request, response):\n    data = request.json()\n    return respond(data, {i})\n\n"
               for i in range(40))
WORDS = [f"name_{i}" for i in range(4000)]


def big_document(seed: int) -> str:
    """1,000,000 characters of Python-looking code (distinct per seed, so no memo is shared)."""
    rng = random.Random(seed)
    lines, size = [], 0
    while size < DOC_CHARS:
        a, b, c = rng.choice(WORDS), rng.choice(WORDS), rng.choice(WORDS)
        line = f"    {a} = {b}({c}, {rng.randint(0, 999)})\n" if rng.random() < 0.9 else f"def {a}({b}):\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)[:DOC_CHARS]


def complete(client: SyncClient, text: str, version: int) -> tuple[str, float]:
    """Type a new line at the end of the target (the cursor), then ask for a completion there: the
    new text and the request's latency in seconds."""
    line, character = text.count("\n"), len(text.rsplit("\n", 1)[-1])
    typed = f"\n    v{version} = "
    client.notify("textDocument/didChange", {"textDocument": {"uri": TARGET, "version": version}, "contentChanges": [
        {"range": {"start": {"line": line, "character": character}, "end": {"line": line, "character": character}},
         "text": typed}]})
    text += typed
    start = time.perf_counter()
    client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": TARGET}, "position": {"line": line + 1, "character": len(typed) - 1},
        "context": {"triggerKind": 2}})
    return text, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=8)
    args = p.parse_args(argv)

    serve = ["--dtype", "float32"] + (["--model", args.model] if args.model else [])
    client = SyncClient.spawn(probed_command(*serve))
    status = client.start_session("utf-16", {"maxNewTokens": 16})
    print(f"model {status['model']} on {status['backend']} {status['device']}", file=sys.stderr)
    docs = [big_document(seed) for seed in range(OTHERS)]
    client.notify("textDocument/didOpen", {"textDocument": {"uri": TARGET, "languageId": "python", "version": 1,
                                                            "text": BODY}})
    version, text = 1, BODY
    rows: dict[str, list[float]] = {"one": [], "thirty": [], "thirty, first request": []}
    ratios = []
    for round_ in range(args.rounds):
        medians = {}
        for condition in ("one", "thirty"):
            uris = [f"file:///bench/r{round_}/other{i}.py" for i in range(OTHERS)] if condition == "thirty" else []
            for uri, text in zip(uris, docs):
                client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                                        "version": 1, "text": text}})
            assert client.status()["open_documents"] == 1 + len(uris)
            times = []
            for k in range(args.requests + (1 if uris else 0)):
                version += 1
                text, took = complete(client, text, version)
                if uris and k == 0:
                    rows["thirty, first request"].append(took)
                else:
                    times.append(took)
            rows[condition] += times
            medians[condition] = statistics.median(times)
            for uri in uris:
                client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        ratios.append(medians["thirty"] / medians["one"])
        print(f"round {round_ + 1}: one {medians['one'] * 1000:.0f} ms, thirty {medians['thirty'] * 1000:.0f} ms, "
              f"ratio {ratios[-1]:.2f}", file=sys.stderr)
    client.close()

    print("| open documents | requests | median ms | min-max ms |")
    print("|---|---|---|---|")
    for name, times in rows.items():
        label = {"one": "1 (the target only)", "thirty": "1 + 30 x 1 MB",
                 "thirty, first request": "1 + 30 x 1 MB, first request after opening"}[name]
        print(f"| {label} | {len(times)} | {statistics.median(times) * 1000:.0f} | "
              f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f} |")
    print(f"\nratio thirty / one, per round (median of {args.requests} each): "
          + ", ".join(f"{r:.2f}" for r in ratios) + "; goal <= 1.5")
    return 0 if max(ratios) <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
