"""`fim-lsp bench soak`: a long session against the real server, checking it never desyncs, leaks or dies.

A probed server (tests.support.probe) gets `--docs` documents (HumanEval programs, some of them
several joined into a long file) and `--edits` random edits: mostly typing and backspacing at a
cursor, with new lines, pasted blocks, deleted ranges, emoji and CRLF line breaks. After a third
of the edits a completion is requested at the cursor, and a third of those are cancelled at
once (a cancel storm). Every 1,500 edits the settings change; halfway through, the model is
swapped for another checkpoint of the same shape (a reload). Every 250 edits the server's text of
the documents edited since the last check is compared with the client's.

Printed: one row per 1,000 edits (completions, cancels, errors, p50/p95 completion latency,
server RSS, K/V bytes held), then crashes and desyncs. A PNG plots latency and RSS against the
memory budget: RSS after a warm-up (the first third of the edits, at most 1,000: documents open,
the longest prompts prefilled) plus the K/V cache budget (`cacheBytes`) plus the caps of the prompt
builder's memos (token counts, neighbour windows; they fill slowly and may still be filling after
the warm-up); RSS after the warm-up must stay under it, through the reload too.
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.probe import LspError, ServerGone, SyncClient, probed_command, rss_bytes
from benchmarks.keystroke_replay import load_problems, percentile

CHECK_EVERY = 250  # edits between desync checks
WINDOW = 1000  # edits per table row
SETTINGS_EVERY = 1500
COMPLETE_SHARE, CANCEL_SHARE = 1 / 3, 1 / 3
REQUEST_CANCELLED = -32800
OPS = {"type": 60, "backspace": 15, "newline": 8, "paste": 4, "delete_range": 5, "emoji": 4, "crlf": 4}
TYPED = "abcdefghijklmnopqrstuvwxyz_ ()=.,:+1234567890"


@dataclass(slots=True)
class Window:
    """What happened over one run of WINDOW edits."""

    edits: int  # edits done at the end of the window
    completions: int = 0
    cancelled: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rss_mib: float = 0.0
    kv_mib: float = 0.0
    desyncs: int = 0

    def row(self) -> dict:
        lat = sorted(self.latencies_ms)
        return {"edits": self.edits, "completions": self.completions, "cancelled": self.cancelled,
                "errors": self.errors, "p50_ms": percentile(lat, 50) if lat else None,
                "p95_ms": percentile(lat, 95) if lat else None, "rss_mib": self.rss_mib, "kv_mib": self.kv_mib,
                "desyncs": self.desyncs}


@dataclass(slots=True)
class Doc:
    """The client's copy of one document and where its user types."""

    uri: str
    text: str
    cursor: int
    version: int = 1


def utf16_position(text: str, offset: int) -> dict:
    """LSP position (UTF-16 units; lines end at \\n, \\r\\n or \\r) of `offset`."""
    line = text.count("\n", 0, offset) + text.count("\r", 0, offset) - text.count("\r\n", 0, offset)
    start = max(text.rfind("\n", 0, offset), text.rfind("\r", 0, offset)) + 1
    return {"line": line, "character": len(text[start:offset].encode("utf-16-le")) // 2}


def seed_documents(count: int, rng: random.Random) -> list[str]:
    """`count` Python files built from HumanEval programs; every fifth joins a dozen into a long one."""
    programs = [p.prefix + p.middle + p.suffix for p in load_problems(164)]
    return ["\n\n".join(rng.sample(programs, 12)) if i % 5 == 4 else programs[i % len(programs)]
            for i in range(count)]


def random_edit(doc: Doc, rng: random.Random) -> tuple[int, int, str]:
    """(start, end, new text) of one user edit at or around the cursor."""
    text, at = doc.text, doc.cursor
    op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
    if op == "backspace" and at > 0:
        return at - 1 - (text[at - 2:at] == "\r\n"), at, ""
    if op == "newline":
        return at, at, "\n" + " " * rng.choice([0, 4, 8])
    if op == "paste":
        lines = text.splitlines(keepends=True)
        start = rng.randrange(len(lines)) if lines else 0
        return at, at, "".join(lines[start:start + rng.randint(1, 40)])
    if op == "delete_range":
        return at, min(len(text), at + rng.randint(1, 200)), ""
    if op == "emoji":
        return at, at, rng.choice(["😀", "# 🎉 ", "'你好'", "é"])
    if op == "crlf":
        return at, at, "\r\n"
    return at, at, rng.choice(TYPED)


def snap(text: str, offset: int) -> int:
    """Never between the \\r and \\n of one line break."""
    return offset - 1 if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n" else offset


class Soak:
    def __init__(self, args, model: str, second_model: str, budget: int, say) -> None:
        self.args, self.models, self.budget, self.say = args, (model, second_model), budget, say
        self.rng = random.Random(args.seed)
        self.options = {"maxNewTokens": 16, "cacheBytes": budget}
        self.crashes = 0
        self.desyncs = 0
        self.client: SyncClient | None = None
        self.docs: list[Doc] = []
        self.touched: set[int] = set()
        self.rss_series: list[tuple[int, float]] = []  # (edits, RSS MiB)
        self.base_rss = 0.0

    # -- the server ----------------------------------------------------------------------------------

    def start(self) -> None:
        threads = ("--threads", str(self.args.threads)) if self.args.threads else ()
        self.client = SyncClient.spawn(probed_command("--model", self.models[0], "--backend", "torch",
                                                      "--dtype", "float32", *threads))
        self.client.start_session("utf-16", self.options)
        for doc in self.docs:
            self.client.notify("textDocument/didOpen", {"textDocument": {
                "uri": doc.uri, "languageId": "python", "version": doc.version, "text": doc.text}})

    def restart_after_crash(self, where: str) -> None:
        self.crashes += 1
        code = self.client.proc.poll()
        state = f"exited with status {code}" if code is not None else "stopped answering"
        self.say(f"the server {state} ({where}); restarting:\n{self.client.stderr_text()[-2000:]}")
        self.client.close(timeout_s=5)
        self.start()

    def rss_mib(self) -> float:
        return rss_bytes(self.client.proc.pid) / 2**20

    # -- one step ------------------------------------------------------------------------------------

    def edit(self, index: int) -> None:
        doc = self.docs[index]
        start, end, new = random_edit(doc, self.rng)
        start, end = snap(doc.text, start), snap(doc.text, end)
        doc.version += 1
        change = {"range": {"start": utf16_position(doc.text, start), "end": utf16_position(doc.text, end)},
                  "text": new}
        self.client.notify("textDocument/didChange", {"textDocument": {"uri": doc.uri, "version": doc.version},
                                                      "contentChanges": [change]})
        doc.text = doc.text[:start] + new + doc.text[end:]
        doc.cursor = snap(doc.text, min(start + len(new), len(doc.text)))
        self.touched.add(index)

    def complete(self, index: int, window: Window) -> None:
        doc = self.docs[index]
        began = time.perf_counter()
        msg_id = self.client.send("textDocument/inlineCompletion", {
            "textDocument": {"uri": doc.uri}, "position": utf16_position(doc.text, doc.cursor),
            "context": {"triggerKind": 2}})
        cancel = self.rng.random() < CANCEL_SHARE
        if cancel:
            self.client.cancel(msg_id)
        window.completions += 1
        try:
            self.client.wait(msg_id, timeout_s=120)
        except LspError as exc:
            if exc.code == REQUEST_CANCELLED and cancel:
                window.cancelled += 1
            else:
                window.errors += 1
                self.say(f"completion error: {exc}")
            return
        if cancel:
            window.cancelled += 1  # answered before the cancel arrived: not a latency sample
            return
        window.latencies_ms.append((time.perf_counter() - began) * 1e3)

    def check(self, indexes) -> int:
        """Documents whose server text differs from the client's."""
        docs = [self.docs[i] for i in sorted(indexes)]
        texts = self.client.texts([d.uri for d in docs])
        bad = [d.uri for d in docs if texts[d.uri] != d.text]
        for uri in bad:
            self.say(f"DESYNC: {uri}")
        return len(bad)

    def change_settings(self) -> None:
        settings = {"maxNewTokens": self.rng.choice([8, 16, 32]), "multiline": self.rng.choice(["auto", "never"]),
                    "neighbours": self.rng.random() < 0.7}
        self.options.update(settings)
        self.client.notify("workspace/didChangeConfiguration", {"settings": settings})

    def reload(self) -> None:
        """Swap the model for the second checkpoint and wait until it serves."""
        self.client.notify("workspace/didChangeConfiguration", {"settings": {"model": self.models[1]}})
        deadline = time.monotonic() + 600
        while (status := self.client.status())["model"] != self.models[1] or status["state"] != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the reload did not finish: {status}")
            time.sleep(0.1)
        self.options["model"] = self.models[1]
        self.say(f"reloaded: {status['model']}")

    # -- the run -------------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        args = self.args
        texts = seed_documents(args.docs, self.rng)
        self.docs = [Doc(f"file:///soak/doc{i:02d}.py", t, self.rng.randrange(len(t) + 1)) for i, t in enumerate(texts)]
        for doc in self.docs:
            doc.cursor = snap(doc.text, doc.cursor)
        self.start()
        self.rss_series.append((0, self.rss_mib()))
        warm = soak_warm(args)  # RSS after this many edits is the baseline
        hot = list(range(min(5, args.docs)))  # most typing happens in a few documents
        rows, window = [], Window(edits=0)
        started = time.perf_counter()
        for n in range(1, args.edits + 1):
            index = self.rng.choice(hot) if self.rng.random() < 0.6 else self.rng.randrange(args.docs)
            try:
                self.edit(index)
                if self.rng.random() < COMPLETE_SHARE:
                    self.complete(index, window)
                if n % CHECK_EVERY == 0:
                    found = self.check(self.touched)
                    window.desyncs += found
                    self.desyncs += found
                    self.touched.clear()
                if n % SETTINGS_EVERY == 0:
                    self.change_settings()
                if n == args.edits // 2:
                    self.reload()
            except ServerGone:
                self.restart_after_crash(f"edit {n}")
            if n % 100 == 0 or n == warm:
                self.rss_series.append((n, self.rss_mib()))
            if n == warm:
                self.base_rss = self.rss_series[-1][1]
            if n % WINDOW == 0 or n == args.edits:
                window.edits = n
                window.rss_mib = self.rss_mib()
                window.kv_mib = (self.client.status()["cache_bytes"] or 0) / 2**20
                rows.append(window.row())
                self.say(f"{n} edits, {time.perf_counter() - started:.0f} s: {json.dumps(rows[-1])}")
                window = Window(edits=n)
        final = self.check(range(args.docs))
        self.desyncs += final
        rows[-1]["desyncs"] += final
        self.client.close()
        return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'edits':>6} {'compl':>6} {'cancel':>6} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} {'RSS MiB':>8} " \
             f"{'KV MiB':>7} {'desync':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        p50 = f"{r['p50_ms']:7.1f}" if r["p50_ms"] is not None else f"{'-':>7}"
        p95 = f"{r['p95_ms']:7.1f}" if r["p95_ms"] is not None else f"{'-':>7}"
        lines.append(f"{r['edits']:>6} {r['completions']:>6} {r['cancelled']:>6} {r['errors']:>6} {p50} {p95} "
                     f"{r['rss_mib']:8.1f} {r['kv_mib']:7.2f} {r['desyncs']:>6}")
    return "\n".join(lines)


def plot(rows: list[dict], rss_series: list[tuple[int, float]], budget_mib: float, kv_budget_mib: float,
         reload_at: int, path: Path) -> None:
    """Latency per window and RSS over the run, against the memory budget, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat_ax, mem_ax) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    xs = [r["edits"] for r in rows]
    lat_ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", label="p50")
    lat_ax.plot(xs, [r["p95_ms"] for r in rows], marker="o", label="p95")
    lat_ax.set_ylabel("completion latency (ms)")
    lat_ax.set_title("fim-lsp soak: latency per 1,000 edits, RSS against the memory budget")
    mem_ax.plot([e for e, _ in rss_series], [m for _, m in rss_series], label="server RSS")
    mem_ax.plot(xs, [r["kv_mib"] for r in rows], marker="o", label="K/V cache held")
    mem_ax.axhline(budget_mib, color="red", linestyle="--", label="budget: RSS after warm-up + K/V budget + memo caps")
    mem_ax.axhline(kv_budget_mib, color="gray", linestyle=":", label="K/V cache budget")
    mem_ax.set_ylabel("MiB")
    mem_ax.set_xlabel("edits")
    for ax in (lat_ax, mem_ax):
        ax.axvline(reload_at, color="black", linewidth=0.8, alpha=0.5)
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    mem_ax.annotate("model reload", (reload_at, budget_mib), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def soak_warm(args) -> int:
    """Edits of warm-up: documents open, the longest prompts seen, allocator pools grown."""
    return max(1, min(WINDOW, args.edits // 3))


def main(args) -> int:
    from benchmarks.cli import bench_model
    from fim_lsp.training.checkpoint_kit import CheckpointSpec, ensure_checkpoint
    from lsp_server.core.neighbours import WINDOWS_MEMO_BYTES
    from lsp_server.core.prompt import COUNT_MEMO_BYTES

    say = lambda msg: print(f"soak: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    if args.edits < 1 or args.docs < 1:
        print("fim-lsp bench soak: --edits and --docs must be at least 1", file=sys.stderr)
        return 2
    model = bench_model(args, say)
    if args.model:
        second = args.model  # the same checkpoint reloaded
    else:
        family = "santacoder" if args.shape != "santacoder" else "starcoder"
        second = str(ensure_checkpoint(CheckpointSpec(shape=args.shape, family=family)))
    budget = args.cache_mib * 2**20
    soak = Soak(args, model, second, budget, say)
    began = time.perf_counter()
    rows = soak.run()
    took = time.perf_counter() - began
    memo_mib = (COUNT_MEMO_BYTES + WINDOWS_MEMO_BYTES) / 2**20
    limit_mib = soak.base_rss + args.cache_mib + memo_mib
    peak = max(m for n, m in soak.rss_series if n >= min(soak_warm(args), args.edits))
    plot(rows, soak.rss_series, limit_mib, args.cache_mib, args.edits // 2, Path(args.plot))
    summary = {"edits": args.edits, "docs": args.docs, "seconds": took, "crashes": soak.crashes,
               "desyncs": soak.desyncs, "errors": sum(r["errors"] for r in rows), "rss_warm_mib": soak.base_rss,
               "rss_peak_mib": peak, "budget_mib": limit_mib, "kv_budget_mib": args.cache_mib,
               "memo_caps_mib": memo_mib, "plot": args.plot,
               "models": [model, second], "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"soak: {args.docs} documents, {args.edits} edits in {took:.0f} s; models {model} -> {second} "
              f"(reload at edit {args.edits // 2}); K/V budget {args.cache_mib} MiB")
        print(format_table(rows))
        print(f"crashes: {soak.crashes}   desyncs: {soak.desyncs}   errors: {summary['errors']}")
        print(f"RSS: {soak.base_rss:.0f} MiB after {soak_warm(args)} edits of warm-up, peak {peak:.0f} MiB after it; "
              f"budget {limit_mib:.0f} MiB (warm RSS + K/V budget + {memo_mib:.0f} MiB of memo caps): "
              f"{'within' if peak <= limit_mib else 'OVER'}")
        print(f"plot: {args.plot}")
    return 0 if soak.crashes == 0 and soak.desyncs == 0 and peak <= limit_mib else 1
