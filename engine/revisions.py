"""Which published revision a checkpoint directory holds, and what that revision was trained on.

SantaCoder (`bigcode/santacoder`) was published with one branch per ablation: `main`, `mha`,
`no-fim`, `fim`, `stars`, `fertility`, `comments`, `dedup-alt`, ... All share one tokenizer, so
the `no-fim` model's tokenizer has FIM tokens it never saw in training, and its config says
nothing either: the revision's name is the only evidence. A hub-cache snapshot
(`.../models--ORG--NAME/snapshots/COMMIT`, what `--model ORG/NAME --revision R` resolves to)
records it: `refs/R` holds COMMIT. A directory copied out of the cache (or downloaded with
`--local-dir`) loses that; serve it from the cache, or note that it completes as if FIM-trained.
"""
from __future__ import annotations

import json

from pathlib import Path

# (hub id, revision) pairs trained without fill-in-the-middle (the model card's table: no-fim: AR only)
TRAINED_WITHOUT_FIM = frozenset({("bigcode/santacoder", "no-fim")})


def hub_snapshot_of(path: Path) -> tuple[str, frozenset[str]] | None:
    """(hub id, the revision names pointing at it) for a hub-cache snapshot directory, else None."""
    snapshots = path.parent
    repo_dir = snapshots.parent
    if snapshots.name != "snapshots" or not repo_dir.name.startswith("models--"):
        return None
    repo_id = repo_dir.name.removeprefix("models--").replace("--", "/")
    refs = repo_dir / "refs"
    names = set()
    if refs.is_dir():
        for ref in refs.rglob("*"):
            try:
                if ref.is_file() and ref.read_text().strip() == path.name:
                    names.add(str(ref.relative_to(refs)))
            except OSError:
                continue
    return repo_id, frozenset(names)


def trained_without_fim(path: Path) -> str | None:
    """Why the checkpoint at `path` must complete left to right (a revision trained without FIM), or None."""
    found = hub_snapshot_of(path)
    if found is None:
        return None
    repo_id, revisions = found
    for revision in sorted(revisions):
        if (repo_id, revision) in TRAINED_WITHOUT_FIM:
            return f"{repo_id}@{revision} was trained without FIM: left-to-right completion"
    return None


PROMPT_HEADERS_FILE = "fim-lsp-prompt.json"  # {"headers": [...]}: the prompt headers a checkpoint was trained with


def trained_headers(path: Path) -> frozenset[str] | None:
    """The prompt headers (`filename`, `reponame`, `jupyter`) the checkpoint at `path` was trained
    with, where it says so (fim-lsp's own trainer writes PROMPT_HEADERS_FILE); None: not said, so
    every header its tokenizer has is used, as for the published StarCoder checkpoints."""
    file = path / PROMPT_HEADERS_FILE
    if not file.is_file():
        return None
    try:
        return frozenset(json.loads(file.read_text())["headers"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: expected {{\"headers\": [...]}}: {exc}") from None
