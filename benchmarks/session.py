"""`fim-lsp bench session`: what a person feels while typing, through the real server, in wall-clock time.

Every other table times completions back to back on a warm cache. This one drives `fim-lsp serve`
over stdio as an editor does, through one seeded editing session built from real files (HumanEval
infilling solutions, several to a file, some functions' bodies removed): open a file, read (2-5 s),
type a body at human speed (gaps of 80-250 ms with bursts and pauses), delete and retype, jump to
another function, switch to the other file, accept a suggestion with Tab some of the time and type
on. Each keystroke sends `didChange` and an inline completion request, cancelling the one before,
as VS Code does. For every pause of >= 300 ms it records the time from the last keystroke to that
keystroke's answer (what the client would draw; an answer after the pause ended counts as never),
and sets the first pause after an open, jump or switch ("first") apart from the others ("warm").
The server's CPU seconds per minute of session count the work thrown away by cancellation too.

Modes run the same script on a fresh server each: today's behaviour (no hints, one prompt per
document, no adaptive wait), then each mechanism (`lsp_server.pacing`, `lsp_server.prefill`) on; in the modes with
hints the driver sends `fim-lsp/cursor` on open, jump and switch, as the editor clients do.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from benchmarks.keystroke_replay import Problem, load_problems

PAUSE_S = 0.3  # a gap at least this long is a pause: the person looks for a suggestion
SHOWN_WITHIN_S = 1.0
EventKind = Literal["open", "jump", "switch", "key", "delete", "tab"]

# mode -> (server settings, whether the driver sends cursor hints)
TODAY = {"adaptiveWait": False, "idlePrefill": False, "prefetch": False, "cacheRegions": 1}
MODES: dict[str, tuple[dict, bool]] = {
    "today": (TODAY, False),
    "+ adaptive wait": ({**TODAY, "adaptiveWait": True}, False),
    "+ idle prefill, hints": ({**TODAY, "idlePrefill": True}, True),
    "+ idle prefill, hints, two regions": ({**TODAY, "idlePrefill": True, "cacheRegions": 2}, True),
    "defaults (+ prefetch while shown)": ({"idlePrefill": True, "prefetch": True, "cacheRegions": 2}, True),
}


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the person does, then `gap_s` seconds until the next."""

    kind: EventKind
    gap_s: float
    file: int = 0  # open/jump/switch: which file
    hole: int = 0  # open/jump/switch: which removed body the cursor goes to
    char: str = ""  # key: the character typed
    accept: bool = False  # the pause after this key ends with a Tab (a "tab" event follows)
    first: bool = False  # the first key after an open, jump or switch


@dataclass(slots=True)
class SourceFile:
    """A file of whole HumanEval solutions with some bodies removed (`holes`)."""

    uri: str
    text: str
    holes: list[Problem]  # whose middles were removed, in file order


@dataclass(slots=True)
class Pause:
    kind: Literal["first", "warm", "tab"]
    gap_ms: float
    latency_ms: float | None  # keystroke -> answer; None: no answer within the pause
    shown: bool  # the answer carried a suggestion


@dataclass(slots=True)
class ModeResult:
    mode: str
    pauses: list[Pause] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    status: dict = field(default_factory=dict)


def build_files(problems: list[Problem], files: int, target_tokens: int, count_tokens, holes: int = 2,
                ) -> list[SourceFile]:
    """`files` files of about `target_tokens` tokens each, `holes` bodies removed from each (the
    removed functions sit after the others, so their prompts see the whole file above them)."""
    out, pool = [], iter(problems)
    for f in range(files):
        removed = [next(pool) for _ in range(holes)]
        lead, used = [], sum(count_tokens(p.prefix + p.suffix) for p in removed)
        for other in pool:
            if used >= target_tokens:
                break
            text = other.prefix + other.middle + other.suffix + "\n\n"
            lead.append(text)
            used += count_tokens(text)
        body = "".join(lead)
        for i, p in enumerate(removed):
            body += p.prefix + p.suffix + "\n\n"
            if i < len(removed) - 1:  # a hole between functions, another nearer the end
                body += "".join(lead[: max(1, len(lead) // (2 * holes))])
        out.append(SourceFile(uri=f"file:///session/file_{f}.py", text=body, holes=removed))
    return out


def script(files: list[SourceFile], seed: int, keys_per_visit: int, visits: list[tuple[str, int, int]]) -> list[Event]:
    """The seeded session: for each (how, file, hole) visit, go there, read, then type part of the
    removed body with bursts, pauses, a delete-and-retype, and accepts."""
    rng = random.Random(seed)
    events: list[Event] = []
    for how, f, h in visits:
        events.append(Event(how, rng.uniform(2.0, 5.0), file=f, hole=h))  # read
        middle = files[f].holes[h].middle.lstrip("\n")[:keys_per_visit]
        since_pause = 0
        for k, ch in enumerate(middle):
            first = k == 0
            if first:
                gap = rng.uniform(0.8, 1.5)  # the first key, then a look at the suggestion
            elif since_pause >= rng.randint(5, 12):
                gap = rng.uniform(0.4, 1.6)  # a pause in thought
            elif rng.random() < 0.3:
                gap = rng.uniform(0.06, 0.09)  # a burst
            else:
                gap = min(max(rng.gauss(0.15, 0.05), 0.08), 0.25)
            since_pause = 0 if gap >= PAUSE_S else since_pause + 1
            accept = gap >= PAUSE_S and not first and rng.random() < 0.25
            events.append(Event("key", gap, char=ch, accept=accept, first=first))
            if accept:  # Tab at the end of the pause, then a look at the next suggestion
                events.append(Event("tab", rng.uniform(0.6, 1.5)))
            if k == len(middle) // 2 and k > 2:  # a typo: delete two characters and retype them
                events.append(Event("delete", 0.18))
                events.append(Event("delete", 0.22))
                events.append(Event("key", 0.16, char=middle[k - 1]))
                events.append(Event("key", 0.14, char=ch))
    return events


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; `inf` stands for a pause with no answer."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def summarize(run: ModeResult) -> dict:
    lat = [p.latency_ms if p.latency_ms is not None else math.inf for p in run.pauses]
    first = [p.latency_ms if p.latency_ms is not None else math.inf for p in run.pauses if p.kind == "first"]
    warm = [p.latency_ms if p.latency_ms is not None else math.inf for p in run.pauses if p.kind == "warm"]
    tab = [p.latency_ms if p.latency_ms is not None else math.inf for p in run.pauses if p.kind == "tab"]
    late = sum(1 for p in run.pauses if p.latency_ms is None or p.latency_ms > SHOWN_WITHIN_S * 1000)
    f50, w50 = percentile(first, 50), percentile(warm, 50)
    ahead = run.status.get("ahead", {})
    return {
        "mode": run.mode, "dtype": run.status.get("dtype"), "pauses": len(run.pauses),
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99), "nothing_within_1s": late / len(run.pauses) if run.pauses else None,
        "first_p50_ms": f50, "first_count": len(first), "warm_p50_ms": w50,
        "tab_p50_ms": percentile(tab, 50), "tab_count": len(tab),
        "first_over_warm": f50 / w50 if f50 is not None and w50 else None,
        "p95_over_p50": (percentile(lat, 95) / percentile(lat, 50)) if lat and percentile(lat, 50) else None,
        "cpu_s_per_min": run.cpu_s / (run.wall_s / 60) if run.wall_s else None, "session_s": run.wall_s,
        "ahead": {k: ahead.get(k) for k in ("prefills", "prefill_saved_tokens", "prefetches", "prefetch_served")},
        "prefilled_tokens": run.status.get("engine", {}).get("prefilled_tokens"),
    }


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (its threads included)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(name: str, serve: list[str], settings: dict, hints: bool, files: list[SourceFile],
             events: list[Event], say) -> ModeResult:
    """Drive one fresh server through the script; the pauses it measured."""
    from tests.support.probe import ServerGone, SyncClient

    client = SyncClient.spawn(serve)
    result = ModeResult(name)
    try:
        client.start_session(options=settings)
        texts = {f.uri: f.text for f in files}
        versions = {f.uri: 0 for f in files}
        opened: set[str] = set()
        uri, cursor = files[0].uri, 0
        last_id: int | None = None
        last_key_at = 0.0
        on_screen: dict | None = None  # the one-line suggestion drawn in the last pause

        def position(text: str, offset: int) -> dict:
            line = text.count("\n", 0, offset)
            column = text[text.rfind("\n", 0, offset) + 1:offset]
            return {"line": line, "character": len(column.encode("utf-16-le")) // 2}

        def offset(text: str, pos: dict) -> int:
            start = 0
            for _ in range(pos["line"]):
                start = text.index("\n", start) + 1
            units = pos["character"]
            end = start
            while units > 0:
                units -= len(text[end].encode("utf-16-le")) // 2
                end += 1
            return end

        def edit(start: int, end: int, new: str) -> None:
            nonlocal cursor
            text = texts[uri]
            versions[uri] += 1
            client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": versions[uri]},
                                                     "contentChanges": [{"range": {"start": position(text, start),
                                                                                   "end": position(text, end)},
                                                                         "text": new}]})
            texts[uri] = text[:start] + new + text[end:]
            cursor = start + len(new)

        def ask() -> int:
            nonlocal last_id
            if last_id is not None:
                client.cancel(last_id)  # VS Code cancels the request of the keystroke before
            last_id = client.send("textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": position(texts[uri], cursor),
                "context": {"triggerKind": 2}})
            return last_id

        start_cpu, start = cpu_seconds(client.proc.pid), time.monotonic()
        due = start
        for event in events:
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if event.kind in ("open", "jump", "switch"):
                uri = files[event.file].uri
                if uri not in opened:
                    client.notify("textDocument/didOpen", {"textDocument": {
                        "uri": uri, "languageId": "python", "version": 0, "text": texts[uri]}})
                    opened.add(uri)
                hole = files[event.file].holes[event.hole]
                anchor = hole.prefix[-120:]
                cursor = texts[uri].index(anchor) + len(anchor)
                while texts[uri][cursor:cursor + 1] not in ("\n", ""):  # past what was typed here before
                    cursor += 1
                if hints:
                    client.notify("fim-lsp/cursor", {"textDocument": {"uri": uri},
                                                     "position": position(texts[uri], cursor)})
            elif event.kind == "delete":
                edit(cursor - 1, cursor, "")
                on_screen = None
                ask()
                last_key_at = time.monotonic()
            elif event.kind == "tab":
                if on_screen is None:
                    due += event.gap_s
                    continue  # nothing shown to accept: the person types on after the look
                item, on_screen = on_screen, None
                edit(offset(texts[uri], item["range"]["start"]), offset(texts[uri], item["range"]["end"]),
                     item["insertText"])  # the client inserts the suggestion, runs its command, asks again
                client.send("workspace/executeCommand", {"command": item["command"]["command"],
                                                         "arguments": item["command"]["arguments"]})
                ask()
                last_key_at = time.monotonic()
            else:
                edit(cursor, cursor, event.char)
                on_screen = None
                ask()
                last_key_at = time.monotonic()
            due += event.gap_s
            if event.kind in ("key", "delete", "tab") and event.gap_s >= PAUSE_S and last_id is not None:
                try:
                    answer = client.wait(last_id, timeout_s=max(due - time.monotonic(), 0.001))
                    latency = (time.monotonic() - last_key_at) * 1000
                    items = answer["items"] if answer else []
                except ServerGone:
                    if client.proc.poll() is not None:
                        raise
                    latency, items = None, []
                if latency is not None and latency > event.gap_s * 1000:
                    latency = None  # it came after the pause: the person was already typing
                kind = "tab" if event.kind == "tab" else "first" if event.first else "warm"
                result.pauses.append(Pause(kind, event.gap_s * 1000, latency, bool(items)))
                last_id = None if latency is not None else last_id
                if latency is not None and items and "\n" not in items[0]["insertText"]:
                    on_screen = items[0]  # what a Tab at the end of this pause accepts
        result.wall_s = time.monotonic() - start
        result.cpu_s = cpu_seconds(client.proc.pid) - start_cpu
        result.status = client.status()
    finally:
        client.close()
    say(f"{name}: {len(result.pauses)} pauses in {result.wall_s:.0f} s")
    return result


def format_table(rows: list[dict]) -> str:
    def ms(v):
        return "-" if v is None else ("never" if math.isinf(v) else f"{v:,.0f}")

    def ratio(v):
        return "-" if v is None or math.isinf(v) or math.isnan(v) else f"{v:.2f}"

    head = ("| mode | pauses | p50 ms | p95 ms | p99 ms | nothing within 1 s | first p50 ms (n) | warm p50 ms | "
            "after Tab p50 ms (n) | first/warm | p95/p50 | CPU s per min | prompt tokens prefilled | "
            "warmed ahead, saved | prefetched, served |")
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        a = r["ahead"]
        lines.append(
            f"| {r['mode']} | {r['pauses']} | {ms(r['p50_ms'])} | {ms(r['p95_ms'])} | {ms(r['p99_ms'])} | "
            f"{r['nothing_within_1s']:.0%} | {ms(r['first_p50_ms'])} ({r['first_count']}) | {ms(r['warm_p50_ms'])} | "
            f"{ms(r['tab_p50_ms'])} ({r['tab_count']}) | {ratio(r['first_over_warm'])} | "
            f"{ratio(r['p95_over_p50'])} | {r['cpu_s_per_min']:.1f} | "
            f"{r['prefilled_tokens']} | {a['prefills']}, {a['prefill_saved_tokens']} | "
            f"{a['prefetches']}, {a['prefetch_served']} |")
    return "\n".join(lines)


def parse_modes(text: str) -> tuple[list[str], list[str]]:
    """The modes a comma-separated `--modes` names (a mode's own name may hold commas: the longest
    known name at each place is taken), and the pieces that name none."""
    wanted, unknown, rest = [], [], text.strip()
    while rest:
        name = next((m for m in sorted(MODES, key=len, reverse=True)
                     if rest == m or (rest.startswith(m) and rest[len(m):].lstrip().startswith(","))), None)
        if name is None:
            name, _, _ = rest.partition(",")
            unknown.append(name.strip())
        else:
            wanted.append(name)
        rest = rest[len(name):].lstrip().removeprefix(",").strip()
    return wanted, unknown


def main(args) -> int:
    from benchmarks.cli import bench_model
    from engine.tokenizer import CheckpointTokenizer

    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    model = bench_model(args, say)
    tokenizer = CheckpointTokenizer.from_dir(model)
    count = lambda text: len(tokenizer.encode(text))  # noqa: E731
    target = args.context or 1024
    files = build_files(load_problems(164), 2, target, count)
    visits = [("open", 0, 1), ("jump", 0, 0), ("switch", 1, 1), ("switch", 0, 1), ("jump", 0, 0)]
    events = script(files, args.seed, args.max_keys or 24, visits)
    planned = sum(e.gap_s for e in events)
    say(f"files of {[count(f.text) for f in files]} tokens; {len(events)} events, {planned:.0f} s per mode")
    serve = [sys.executable, "-m", "fim_lsp.cli", "serve", "--model", model, "--dtype", args.dtype,
             *(["--threads", str(args.threads)] if getattr(args, "threads", None) else [])]
    wanted, unknown = parse_modes(args.modes) if args.modes else (list(MODES), [])
    if unknown:
        print(f"fim-lsp bench session: unknown mode(s) {unknown}; known: {list(MODES)}", file=sys.stderr)
        return 2
    budget = getattr(args, "time_budget_ms", None)
    common = {"maxNewTokens": args.max_new_tokens, **({"timeBudgetMs": budget} if budget else {})}
    rows = []
    for name in wanted:
        settings, hints = MODES[name]
        run = run_mode(name, serve, {**common, **settings}, hints, files, events, say)
        rows.append(summarize(run))
    if args.json:
        print(json.dumps({"model": model, "dtype": args.dtype, "seed": args.seed, "session_s": planned,
                          "time_budget_ms": budget,
                          "file_tokens": [count(f.text) for f in files], "rows": rows}, indent=2,
                         default=lambda v: None))
        return 0
    print(f"session bench: {model}, --dtype {args.dtype}, seed {args.seed}, files of "
          f"{[count(f.text) for f in files]} tokens, {planned:.0f} s session per mode, "
          f"{args.max_new_tokens} new tokens per suggestion"
          + (f", timeBudgetMs {budget}" if budget else ""))
    print(format_table(rows))
    return 0
