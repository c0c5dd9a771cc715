"""What the model receives, read at the backend boundary of the real server (`tests.support.prompt_log`).

`fim-lsp serve` over stdio with a kit model; every prompt the server hands its backend is written
down before the model sees it, so these tests check the prompt text itself, not its length:
- an excluded file's text never reaches another file's prompt (with the positive control, in a
  second session of the same test without the exclude, that it does);
- a model without fill-in-the-middle completes left to right end to end: the prompt is the text
  before the cursor only (no FIM token, nothing of the suffix) and the answer is a suggestion.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import ClientServerConfig

from engine.fim import SPELLINGS
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from lsp_server.core.context import offset_to_position
from lsp_server.documents import uri_to_path
from tests.conftest import kit
from tests.support.prompt_log import read_prompts
from tests.test_server_e2e import CODE, start_session

MARKER = "SECRET-MARKER-7f3a9c"  # only the excluded file holds it
FIM_SPELLINGS = [s for spellings in SPELLINGS.values() for s in spellings]


def logging_server(log: Path, model: str) -> ClientServerConfig:
    return ClientServerConfig(server_command=[sys.executable, "-m", "tests.support.prompt_log", str(log),
                                             "--model", model, "--dtype", "float32"])


def open_doc(client, uri: str, text: str) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))


async def inline(client, uri: str, text: str, offset: int) -> types.InlineCompletionList | None:
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(*offset_to_position(text, offset)),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


def completions_for(log: Path, uri: str) -> list[str]:
    """The prompts of the `complete` requests logged for `uri` so far."""
    return [r["prompt"] for r in read_prompts(log) if r["method"] == "complete" and r["doc"] == uri]


async def type_and_ask(log: Path, options: dict) -> list[dict]:
    """A session of the logging server: a secret file (the marker in the code the cursor's file
    shares, so it is the neighbour chosen) and the file typed into; two keystrokes asked for.
    Returns every request the backend received, background work (idle prefill, prefetch) included."""
    client = await logging_server(log, str(kit(shape="tiny", family="starcoder"))).start()
    try:
        ready = await start_session(client, options=options)
        assert ready["state"] == "ready", ready
        secret_text = CODE.replace("def main():\n", f"def main():\n    token = '{MARKER}'\n")
        open_doc(client, SECRET, secret_text)
        open_doc(client, APP, CODE)
        cursor = CODE.index("    print(len(lines))")
        await inline(client, APP, CODE, cursor)
        text = CODE[:cursor] + " " + CODE[cursor:]  # a keystroke, so the answer is computed again
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=APP, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)]))
        await inline(client, APP, text, cursor + 1)
        answer = await inline(client, SECRET, secret_text, len(secret_text))
        if "exclude" in options:
            assert not answer.items, "an excluded document gets no suggestion"
        await client.shutdown_session()
    finally:
        await client.stop()
    return read_prompts(log)  # read once the server has exited: nothing more can be added


SECRET, APP = "file:///work/project/.env.py", "file:///work/project/app.py"


async def test_an_excluded_file_is_never_quoted_in_the_prompt_text(tmp_path):
    # positive control: the same session without `exclude` quotes the secret file in app.py's prompt
    control = await type_and_ask(tmp_path / "control.jsonl", {"maxNewTokens": 4})
    assert any(MARKER in r["prompt"] for r in control if r["doc"] == APP), "the neighbour was not quoted"
    excluded = await type_and_ask(tmp_path / "excluded.jsonl", {"maxNewTokens": 4, "exclude": [".env*"]})
    assert any(r["method"] == "complete" and r["doc"] == APP for r in excluded), "app.py's request reached the model"
    assert all(MARKER not in r["prompt"] for r in excluded), "an excluded file's text reached the model"
    assert all(r["doc"] != SECRET for r in excluded), "the excluded file itself reached the model"


def no_fim_revision(tmp_path: Path) -> str:
    """bigcode/santacoder@no-fim as the hub cache holds it: the tokenizer has FIM tokens, the
    revision's name says they were never trained (engine.revisions)."""
    repo = tmp_path / "hub" / "models--bigcode--santacoder"
    shutil.copytree(kit(shape="tiny", family="santacoder"), repo / "snapshots" / "c0ffee")
    (repo / "refs").mkdir()
    (repo / "refs" / "no-fim").write_text("c0ffee")
    return str(repo / "snapshots" / "c0ffee")


def no_fim_tokens(tmp_path: Path) -> str:
    """A StarCoder-family kit model whose tokenizer has no FIM tokens at all."""
    out = tmp_path / "no-fim-tokens"
    shutil.copytree(kit(shape="tiny", family="starcoder"), out)
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if not t["content"].startswith("<fim")]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    return str(out)


@pytest.mark.parametrize("make_model", [no_fim_revision, no_fim_tokens])
async def test_a_model_without_fim_completes_left_to_right_over_stdio(tmp_path, make_model):
    model = make_model(tmp_path)
    engine = pipeline.load_model(ModelConfig(model=model, dtype="float32"))
    assert not engine.fim.has_fim, "the server completes this model left to right"
    log = tmp_path / "prompts.jsonl"
    client = await logging_server(log, model).start()
    uri = "file:///work/project/reader.py"
    suffix_mark = "SUFFIX-ONLY-3e1d"  # in the text after the cursor only
    text = CODE + f"\nprint('{suffix_mark}')\n"
    config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8))
    try:
        ready = await start_session(client, options={"maxNewTokens": 8})
        assert ready["state"] == "ready", ready
        open_doc(client, uri, text)
        suggested = 0
        for anchor in ("    print(len(lines))", "    lines = read_lines(", "def main():\n"):
            cursor = text.index(anchor) + len(anchor) if anchor.endswith("(") else text.index(anchor)
            answer = await inline(client, uri, text, cursor)
            line, character = offset_to_position(text, cursor)
            expected = pipeline.complete(engine, f"{uri}#{cursor}", text, line, character, config=config,
                                         path=uri_to_path(uri))
            assert expected.prompt is not None and expected.prompt.mode == "l2r"
            assert expected.prompt.text.endswith(text[:cursor]), "the prompt is the text before the cursor"
            assert expected.prompt.text in completions_for(log, uri), "the server's backend got that prompt"
            got = [item.insert_text for item in answer.items] if answer else []
            assert got == ([expected.suggestion.text] if expected.suggestion else []), (anchor, got)
            suggested += bool(got)
        assert suggested, "a left-to-right model suggests something"
        await client.shutdown_session()
    finally:
        await client.stop()
    sent = [r["prompt"] for r in read_prompts(log)]  # after exit: background work (prefetch) included
    assert sent and not any(s in p for p in sent for s in FIM_SPELLINGS), sent
    assert not any(suffix_mark in p for p in sent), "text after the cursor reached the model"
