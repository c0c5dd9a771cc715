"""`fim-lsp demo`: a typing replay through the real language server over stdio.

Starts `fim-lsp serve` as a subprocess, opens a sample file with a span cut out of it, types the
span back one key at a time with incremental `didChange`, and after every key asks for an inline
completion, printing the suggestion, the round-trip latency and how many prompt tokens the engine
had to prefill (the rest came from its cache). A summary line ends the run.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from lsp_server.core.context import offset_to_position

SAMPLE = Path(__file__).resolve().parent / "samples" / "inventory.py"
LOAD_TIMEOUT_S = 900


def main_demo(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else SAMPLE
    if not path.is_file():
        print(f"fim-lsp demo: {path}: no such file", file=sys.stderr)
        return 2
    if args.keys < 1:
        print(f"fim-lsp demo: --keys must be at least 1, got {args.keys}", file=sys.stderr)
        return 2
    text = path.read_text(encoding="utf-8")
    return asyncio.run(replay(serve_command(args), path, text, args.keys))


def serve_command(args: argparse.Namespace) -> list[str]:
    """`fim-lsp serve` with the demo's model options."""
    cmd = [sys.executable, "-m", "fim_lsp.cli", "serve"]
    for flag in ("model", "revision", "backend", "device", "dtype", "url", "threads", "beam"):
        value = getattr(args, flag, None)
        if value is not None:
            cmd += [f"--{flag}", str(value)]
    return cmd


def typing_span(text: str, keys: int) -> tuple[int, int]:
    """(start, end) offsets of the text to type back: from the first `def` line past the middle."""
    lines = text.splitlines(keepends=True)
    offset, start = 0, None
    for index, line in enumerate(lines):
        if index >= len(lines) // 2 and line.lstrip().startswith("def ") and start is None:
            start = offset + len(line) - len(line.lstrip())
        offset += len(line)
    if start is None:
        start = len(text) // 2
    return start, min(len(text), start + keys)


async def replay(command: list[str], path: Path, text: str, keys: int) -> int:
    client = LanguageClient("fim-lsp-demo", "0.1.0")
    loading: dict[str, Any] = {}

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def _create(params: types.WorkDoneProgressCreateParams) -> None:
        return None

    @client.feature(types.PROGRESS)
    def _progress(params: types.ProgressParams) -> None:
        value = params.value if isinstance(params.value, dict) else {}
        if value.get("percentage") is not None:
            loading["percentage"] = value["percentage"]
            print(f"\rloading model: {value['percentage']:3d}% {value.get('message') or ''}"[:100],
                  end="", file=sys.stderr, flush=True)

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def _show(params: types.ShowMessageParams) -> None:
        print(f"\nserver: {params.message}", file=sys.stderr)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def _log(params: types.LogMessageParams) -> None:
        if params.type in (types.MessageType.Error, types.MessageType.Warning):
            print(f"\nserver: {params.message}", file=sys.stderr)

    await client.start_io(*command)
    drain = asyncio.create_task(forward_stderr(client._server.stderr))  # never let its stderr pipe fill
    try:
        return await drive(client, path, text, keys)
    finally:
        try:
            await asyncio.wait_for(client.shutdown_async(None), timeout=10)
            client.exit(None)
        except Exception:
            pass
        await client.stop()
        drain.cancel()


async def drive(client: LanguageClient, path: Path, text: str, keys: int) -> int:
    await client.initialize_async(types.InitializeParams(
        capabilities=types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True),
            general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        ),
        process_id=None, root_uri=path.parent.resolve().as_uri(),
    ))
    client.initialized(types.InitializedParams())
    status = await wait_until_loaded(client)
    print(file=sys.stderr)
    if status["state"] != "ready":
        print(f"fim-lsp demo: the model did not load: {status.get('error')}", file=sys.stderr)
        return 1
    print(f"model {status['model']} on {status['backend']} {status['device']} {status['dtype']}")
    start, end = typing_span(text, keys)
    typed, doc = text[start:end], text[:start] + text[end:]
    uri = path.resolve().as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=doc)))
    print(f"typing {len(typed)} keys into {path.name} at line {offset_to_position(doc, start)[0] + 1}\n")
    print(f"{'key':>5} {'ms':>7} {'prefilled':>12} {'p min':>5}  suggestion")  # p min: its least sure token
    latencies, prefilled, shown = [], [], 0
    cursor = start
    for version, key in enumerate(typed, start=2):
        line, character = offset_to_position(doc, cursor)
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(line, character), types.Position(line, character)), text=key)],
        ))
        doc, cursor = doc[:cursor] + key + doc[cursor:], cursor + 1
        position = types.Position(*offset_to_position(doc, cursor))
        began = time.perf_counter()
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        latency_ms = (time.perf_counter() - began) * 1000  # round trip as the editor sees it
        last = (await fetch_status(client))["last"]
        items = answer.items if isinstance(answer, types.InlineCompletionList) else (answer or [])
        suggestion = items[0].insert_text if items else ""
        shown += bool(items)
        latencies.append(latency_ms)
        prefilled.append(last.get("prefill_tokens", 0))
        tokens = (f"{last.get('prefill_tokens', 0)}/{last.get('prompt_tokens', 0)}" if not last.get("reused")
                  else "reused")
        sure = "" if last.get("min_token_probability") is None else f"{last['min_token_probability']:.2f}"
        print(f"{key!r:>5} {latency_ms:7.1f} {tokens:>12} {sure:>5}  {one_line(suggestion)}")
    print(f"\n{len(typed)} keystrokes: latency p50 {statistics.median(latencies):.1f} ms, "
          f"p95 {sorted(latencies)[max(0, round(0.95 * len(latencies)) - 1)]:.1f} ms; "
          f"prefilled tokens median {statistics.median(prefilled):.0f}, max {max(prefilled)}; "
          f"{shown} suggestions shown")
    return 0


async def fetch_status(client: LanguageClient) -> dict[str, Any]:
    """The server's `fim-lsp/status` as plain dicts (pygls' client hands back named tuples)."""
    return plain(await client.protocol.send_request_async("fim-lsp/status", {}))


def plain(value: Any) -> Any:
    """Named tuples (pygls' stand-in for JSON objects of unknown type) back to dicts, recursively."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


async def wait_until_loaded(client: LanguageClient, timeout_s: float = LOAD_TIMEOUT_S) -> dict[str, Any]:
    """Poll `fim-lsp/status` until the model is ready or failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await fetch_status(client)
        if status["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.1)


def one_line(text: str, width: int = 60) -> str:
    """A suggestion shown on one row: line breaks as ⏎, cut at `width`."""
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


async def forward_stderr(stream: asyncio.StreamReader | None) -> None:
    """Copy the server's stderr to ours (loader warnings stay visible; its pipe never fills)."""
    if stream is None:
        return
    while line := await stream.readline():
        sys.stderr.write(line.decode("utf-8", "replace"))
