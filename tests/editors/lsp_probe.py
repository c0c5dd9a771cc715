"""Ask a fresh `fim-lsp serve` for the suggestion at one position: the reference the editor tests
compare their ghost text with (greedy decoding makes the answer a function of the buffer)."""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient


async def server_suggestion(cmd: list[str], uri: str, text: str, line: int, character: int,
                            settings: dict[str, Any] | None = None, timeout_s: float = 120,
                            cells: list[str] | None = None) -> list[dict]:
    """The server's inline completion items (insertText, range) for `text` with the cursor at
    (line, character) in UTF-16 units. With `cells`, `uri` is a notebook of those code cells in
    Python and `text` the one the cursor is in (the first cell holding it)."""
    client = LanguageClient("fim-lsp-probe", "1")
    await client.start_io(cmd[0], *cmd[1:])
    try:
        await asyncio.wait_for(client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), initialization_options=settings or {},
        )), timeout_s)
        client.initialized(types.InitializedParams())
        if cells is None:
            client.text_document_did_open(types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
        else:
            docs = [types.TextDocumentItem(uri=f"{uri}#probe-{i}", language_id="python", version=1, text=cell)
                    for i, cell in enumerate(cells)]
            client.notebook_document_did_open(types.DidOpenNotebookDocumentParams(
                notebook_document=types.NotebookDocument(
                    uri=uri, notebook_type="jupyter-notebook", version=1,
                    cells=[types.NotebookCell(kind=types.NotebookCellKind.Code, document=d.uri) for d in docs]),
                cell_text_documents=docs))
            uri = docs[cells.index(text)].uri
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:  # the model loads in the background after `initialized`
            status = await client.protocol.send_request_async("fim-lsp/status", {})
            if getattr(status, "state", None) in ("ready", "failed"):
                break
            assert asyncio.get_running_loop().time() < deadline, f"model still loading: {status}"
            await asyncio.sleep(0.2)
        result = await asyncio.wait_for(client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character),
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )), timeout_s)
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        return [_plain(item) for item in items]
    finally:
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
        await client.stop()


def _plain(item: types.InlineCompletionItem) -> dict:
    text = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    r = item.range
    return {"insertText": text, "range": None if r is None else
            [r.start.line, r.start.character, r.end.line, r.end.character]}


if __name__ == "__main__":  # python -m tests.editors.lsp_probe FILE LINE CHAR -- SERVER CMD...
    path, line, char = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cmd = sys.argv[sys.argv.index("--") + 1:]
    from pathlib import Path
    print(asyncio.run(server_suggestion(cmd, Path(path).resolve().as_uri(), Path(path).read_text(), line, char,
                                        {"maxNewTokens": 6, "multiline": "never"})))
