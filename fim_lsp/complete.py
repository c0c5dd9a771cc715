"""`fim-lsp complete`: complete a file at one or more cursor positions, through the same pipeline
the language server uses, and print each suggestion with what it cost.

Positions are 0-based lines and columns counted in code points (`--line 3 --character 8`,
repeatable). Anything wrong with the input or the model ends in one line on stderr and a non-zero
exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lsp_server import pipeline
from lsp_server.config import ConfigError, config_from_args
from lsp_server.documents import repo_name, uri_to_path

EXIT_BAD_INPUT = 2


class CompleteError(Exception):
    """Something the user can fix; the message says what."""


def main_complete(args: argparse.Namespace) -> int:
    try:
        positions = cursor_positions(args.line, args.character)
        text = read_source(Path(args.file))
        config = config_from_args(args)
    except (CompleteError, ConfigError) as exc:
        return fail(str(exc))
    try:
        backend = pipeline.load_model(config.model)
    except Exception as exc:  # every loader failure becomes one line the user can act on
        return fail(f"cannot load the model: {exc}")
    if (problem := pipeline.missing_fim(backend, "fim-lsp needs a FIM-trained GPTBigCode checkpoint such as "
                                                 "SantaCoder or StarCoder")):
        return fail(problem)
    run_config = pipeline.pipeline_config(config.completion)
    path = prompt_path(Path(args.file))
    repo = repo_name(Path(args.file).resolve().as_uri(), workspace_roots(Path(args.file)))
    for line, character in positions:
        try:
            outcome = pipeline.complete(backend, args.file, text, line, character, encoding="utf-32",
                                        config=run_config, path=path, repo=repo)
        except Exception as exc:  # a model or prompt failure at one position: say which, stop
            return fail(f"{args.file}:{line}:{character}: {type(exc).__name__}: {exc}")
        print_outcome(args, line, character, outcome, backend.info)
    return 0


def prompt_path(file: Path, cwd: Path | None = None) -> str:
    """The name the prompt gives `file`, as the server names an open document: relative to its
    workspace folder, here the enclosing git repository or else the current directory, and by its
    file name when it lies outside both."""
    return uri_to_path(file.resolve().as_uri(), workspace_roots(file, cwd))


def workspace_roots(file: Path, cwd: Path | None = None) -> list[str]:
    """What stands in for the editor's workspace folders: the enclosing git repository of `file`,
    then the current directory (as URIs). The innermost holding the file names it, and is the
    `<reponame>` of its prompt, as in the server."""
    file = file.resolve()
    cwd = (cwd or Path.cwd()).resolve()
    root = next((d for d in file.parents if (d / ".git").exists()), None)
    return [r.as_uri() for r in (root, cwd) if r is not None]


def cursor_positions(lines: list[int] | None, characters: list[int] | None) -> list[tuple[int, int]]:
    """Pair the repeated --line and --character values."""
    lines, characters = lines or [], characters or []
    if not lines or len(lines) != len(characters):
        raise CompleteError(f"give --line and --character the same number of times (got {len(lines)} "
                            f"--line and {len(characters)} --character)")
    for line, character in zip(lines, characters):
        if line < 0 or character < 0:
            raise CompleteError(f"positions are 0-based and cannot be negative: --line {line} --character {character}")
    return list(zip(lines, characters))


def read_source(path: Path) -> str:
    """The file's text exactly (line endings kept), or CompleteError."""
    if not path.is_file():
        raise CompleteError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise CompleteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CompleteError(f"{path}: {exc.strerror}") from None


def print_outcome(args: argparse.Namespace, line: int, character: int, outcome: pipeline.Outcome, info) -> None:
    """One JSON object per position with --json, else a short readable block."""
    result = outcome.result
    text = outcome.suggestion.text if outcome.suggestion is not None else ""
    if args.json:
        print(json.dumps({
            "file": args.file, "line": line, "character": character,
            "text": text, "raw": outcome.raw, "prompt": outcome.prompt.text if outcome.prompt else "",
            "replace_chars": outcome.suggestion.replace_chars if outcome.suggestion is not None else 0,
            "prompt_tokens": result.prompt_tokens, "prefill_tokens": result.prefill_tokens,
            "reused_tokens": result.reused_tokens, "generated_tokens": result.generated_tokens,
            "stop_reason": result.stop_reason, "latency_ms": round(result.latency_ms, 2),
            "min_token_probability": outcome.confidence, "beam": outcome.beam,
            "model": info.model, "backend": info.backend, "device": info.device, "dtype": info.dtype,
        }, ensure_ascii=False))
        return
    shown = text if text else "(no suggestion)"
    sure = "" if outcome.confidence is None else f", least sure token p={outcome.confidence:.2f}"
    sure += f", likeliest of {outcome.beam} lines" if outcome.beam > 1 else ""
    print(f"{args.file}:{line}:{character}  {result.latency_ms:.0f} ms  prompt {result.prompt_tokens} tokens, "
          f"prefilled {result.prefill_tokens}, generated {result.generated_tokens}{sure}")
    for row in shown.split("\n"):
        print(f"    | {row}")


def fail(message: str) -> int:
    print(f"fim-lsp complete: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
