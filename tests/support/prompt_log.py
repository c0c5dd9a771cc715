"""`fim-lsp serve` that writes down every prompt its model receives, for tests of what a prompt holds.

The real server, with one change: the backend it loads has its `complete` and `warm` (idle prefill)
wrapped so that each request's prompt text is appended, as one JSON line
`{"method": ..., "doc": ..., "prompt": ...}`, to the file named by the first argument before the
model sees it. The backend object is the server's own (same class, same capabilities), so the
server behaves as it does for users. Run it as `python -m tests.support.prompt_log LOG [serve options]`.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
from pathlib import Path


def record_prompts(backend, log: Path):
    """Wrap `backend.complete` and `backend.warm` (where it has one) to log each request's prompt."""
    lock = threading.Lock()

    def logged(method: str, call):
        @functools.wraps(call)
        def wrapper(request, *args, **kwargs):
            line = json.dumps({"method": method, "doc": request.doc_id, "prompt": request.prompt})
            with lock, log.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
            return call(request, *args, **kwargs)
        return wrapper

    for method in ("complete", "warm"):
        if hasattr(backend, method):
            setattr(backend, method, logged(method, getattr(backend, method)))
    return backend


def read_prompts(log: Path) -> list[dict]:
    """The logged requests, oldest first (none yet: an empty list)."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str]) -> int:
    from fim_lsp.cli import build_parser
    from fim_lsp.serve import main_serve
    from lsp_server import pipeline

    log, options = Path(argv[0]), argv[1:]
    load = pipeline.load_model
    pipeline.load_model = lambda config, progress=None: record_prompts(load(config, progress), log)
    return main_serve(build_parser().parse_args(["serve", *options]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
