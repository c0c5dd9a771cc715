"""`fim-lsp serve` end to end: pytest-lsp drives the real server over stdio with a kit model.

The oracle is the same pipeline run in this process on the same checkpoint: after each edit the
server's inline completion must carry exactly the text the pipeline produces for the client's
copy of the document, placed at the cursor (plus any closing characters it replaces).
"""
from __future__ import annotations

import asyncio
import sys

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from fim_lsp.demo import fetch_status, wait_until_loaded
from lsp_server.core.context import offset_to_position, position_to_offset
from lsp_server.documents import excluded, uri_to_path
from lsp_server.core.notebook import Cell, map_cell_position, notebook_style, notebook_text
from lsp_server.core.postprocess import ShownSuggestion
from tests.conftest import kit

TINY = str(kit(shape="tiny", family="starcoder"))
MAX_NEW_TOKENS = 8
OPTIONS = {"maxNewTokens": MAX_NEW_TOKENS}


def serve_command(model: str = TINY, backend: str = "auto") -> list[str]:
    return [sys.executable, "-m", "fim_lsp.cli", "serve", "--model", model, "--backend", backend,
            "--dtype", "float32"]


@pytest.fixture(scope="module", params=["auto", "onnx"])
def runtime(request) -> tuple[str, str]:
    """(model, backend) the server runs: the kit checkpoint as `auto` picks it (torch on the CPU:
    it has no export), or ONNX Runtime on an export of it (fp32: the same tokens as torch)."""
    if request.param == "onnx":
        return str(request.getfixturevalue("tiny_onnx")), "onnx"
    return TINY, "auto"


def capabilities(encoding: str = "utf-16") -> types.ClientCapabilities:
    """An editor with inline completion, notebook sync and server-initiated progress."""
    return types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[encoding]),
        window=types.WindowClientCapabilities(work_done_progress=True),
        text_document=types.TextDocumentClientCapabilities(
            inline_completion=types.InlineCompletionClientCapabilities(),
            completion=types.CompletionClientCapabilities(),
        ),
        notebook_document=types.NotebookDocumentClientCapabilities(
            synchronization=types.NotebookDocumentSyncClientCapabilities()),
    )


async def start_session(client: LanguageClient, encoding: str = "utf-16", options: dict | None = None) -> dict:
    """initialize + initialized, then wait for the model; returns the ready status."""
    result = await client.initialize_session(types.InitializeParams(
        capabilities=capabilities(encoding), initialization_options=OPTIONS if options is None else options))
    assert result.capabilities.position_encoding == encoding
    return await wait_until_loaded(client, timeout_s=120)


@pytest.fixture(scope="module")
def engine(runtime):
    """The oracle: the same checkpoint, backend and dtype, in this process."""
    model, backend = runtime
    return pipeline.load_model(ModelConfig(model=model, backend=backend, dtype="float32"))


class Mirror:
    """The client's copy of its documents, and what the server must answer for them."""

    def __init__(self, client: LanguageClient, engine, encoding: str = "utf-16",
                 settings: CompletionSettings = CompletionSettings(max_new_tokens=MAX_NEW_TOKENS)):
        self.client, self.engine, self.encoding = client, engine, encoding
        self.config = pipeline.pipeline_config(settings)
        self.docs: dict[str, str] = {}
        self.versions: dict[str, int] = {}
        self.shown: dict[str, ShownSuggestion] = {}
        self.snippets: dict[str, tuple] = {}
        self.exclude: tuple[str, ...] = ()  # the server's exclude setting, as the client set it

    def close_all(self) -> None:
        """didClose every document this mirror opened (the session outlives the test)."""
        for uri in self.docs:
            self.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        self.docs.clear()

    def open(self, uri: str, text: str) -> None:
        self.docs[uri], self.versions[uri] = text, 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))

    def type(self, uri: str, offset: int, typed: str, delete: int = 0) -> int:
        """Replace `delete` characters at `offset` by `typed` with one incremental change; new cursor offset."""
        text = self.docs[uri]
        start = offset_to_position(text, offset, self.encoding)
        end = offset_to_position(text, offset + delete, self.encoding)
        self.versions[uri] += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(*start), types.Position(*end)), text=typed)]))
        self.docs[uri] = text[:offset] + typed + text[offset + delete:]
        return offset + len(typed)

    def position(self, uri: str, offset: int) -> types.Position:
        return types.Position(*offset_to_position(self.docs[uri], offset, self.encoding))

    def expect(self, uri: str, offset: int) -> types.InlineCompletionList:
        """What the server must answer for an inline completion at `offset` in `uri`."""
        text = self.docs[uri]
        line, character = offset_to_position(text, offset, self.encoding)
        others = [(uri_to_path(u), t) for u, t in self.docs.items()
                  if u != uri and not excluded(uri_to_path(u), self.exclude)]
        outcome = pipeline.complete(
            self.engine, uri, text, line, character, encoding=self.encoding, config=self.config,
            path=uri_to_path(uri), others=others, previous_snippets=self.snippets.get(uri, ()),
            shown=self.shown.get(uri))
        return self.record(uri, outcome, text, offset)

    def record(self, key: str, outcome: pipeline.Outcome, text: str, offset: int) -> types.InlineCompletionList:
        self.snippets[key] = outcome.snippets
        if outcome.suggestion is None:
            self.shown.pop(key, None)
            return types.InlineCompletionList(items=())
        self.shown[key] = ShownSuggestion(outcome.context.prefix, outcome.context.suffix, outcome.suggestion)
        end = offset + outcome.suggestion.replace_chars
        rng = types.Range(types.Position(*offset_to_position(text, offset, self.encoding)),
                          types.Position(*offset_to_position(text, end, self.encoding)))
        return types.InlineCompletionList(
            items=(types.InlineCompletionItem(insert_text=outcome.suggestion.text, range=rng),))

    async def inline(self, uri: str, offset: int) -> types.InlineCompletionList:
        answer = await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=self.position(uri, offset),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        for item in answer.items:  # the accept command's arguments vary; check its name and drop it
            assert item.command is not None and item.command.command == "fim-lsp.accepted"
            item.command = None
        return answer


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(runtime):
    """One utf-16 session per runtime, shared by the tests below (each closes what it opens)."""
    lsp_client = await ClientServerConfig(server_command=serve_command(*runtime)).start()
    ready = await start_session(lsp_client)
    assert ready["state"] == "ready", ready
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def utf8_client(runtime):
    """A session of its own for an editor that negotiates utf-8 (Neovim)."""
    lsp_client = await ClientServerConfig(server_command=serve_command(*runtime)).start()
    ready = await start_session(lsp_client, encoding="utf-8")
    assert ready["state"] == "ready", ready
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


CODE = (
    "import os\n"
    "\n"
    "def read_lines(path):\n"
    "    with open(path) as f:\n"
    "        return [line.rstrip() for line in f]\n"
    "\n"
    "def main():\n"
    "    lines = read_lines(os.path.join('data', 'x.txt'))\n"
    "    print(len(lines))\n"
)


async def test_progress_while_loading_then_the_status_names_the_model(client: LanguageClient, engine):
    status = await fetch_status(client)
    assert status["state"] == "ready" and status["position_encoding"] == "utf-16"
    assert (status["model"], status["backend"], status["device"], status["dtype"]) == (
        TINY, engine.info.backend, "cpu", "float32")

    # $/progress while the model loaded: begin at 0 %, percentages that never go down, an end
    reports = [r for token, rs in client.progress_reports.items() if str(token).startswith("fim-lsp/load") for r in rs]
    assert isinstance(reports[0], types.WorkDoneProgressBegin) and reports[0].percentage == 0
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    percentages = [r.percentage for r in reports[:-1] if r.percentage is not None]
    assert percentages == sorted(percentages) and len(percentages) >= 2 and percentages[-1] <= 100


async def test_typing_inline_completion_fallback_and_acceptance(client: LanguageClient, engine):
    before = await fetch_status(client)
    mirror = Mirror(client, engine)
    uri = "file:///work/project/reader.py"
    mirror.open(uri, CODE)
    cursor = mirror.docs[uri].index("    print(len(lines))")
    for key in "    total = ":  # typed key by key, a completion after each
        cursor = mirror.type(uri, cursor, key)
    cursor = mirror.type(uri, cursor, "su")
    cursor = mirror.type(uri, cursor - 2, "", delete=2)  # backspace twice
    cursor = mirror.type(uri, cursor, "len(")
    answer = await mirror.inline(uri, cursor)
    assert answer == mirror.expect(uri, cursor)
    assert answer.items, "the kit model produces some text here"

    # the completion fallback: one item whose text edit carries the same text at the same range
    cursor = mirror.type(uri, cursor, "l")
    expected = mirror.expect(uri, cursor).items
    listing = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=mirror.position(uri, cursor)))
    assert isinstance(listing, types.CompletionList) and len(listing.items) == len(expected) == 1
    item = listing.items[0]
    assert item.text_edit == types.TextEdit(range=expected[0].range, new_text=expected[0].insert_text)
    assert "AI suggestion" in item.detail and item.command.command == "fim-lsp.accepted"

    # the client accepts: the command comes back and is counted
    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=item.command.command, arguments=item.command.arguments))
    status = await fetch_status(client)
    accepted = {k: status["acceptance"][k] - before["acceptance"][k] for k in ("accepted", "accepted_chars")}
    assert accepted == {"accepted": 1, "accepted_chars": len(expected[0].insert_text)}
    assert status["latency"]["count"] == before["latency"]["count"] + 2
    assert 0 < status["latency"]["p50_ms"] <= status["latency"]["p95_ms"]
    assert status["cache_slots"] >= 1 and status["cache_bytes"] > 0
    assert status["last"]["prompt_tokens"] > status["last"]["prefill_tokens"] >= 1  # the cache served the rest
    assert 0 < status["last"]["min_token_probability"] <= 1  # what minTokenProbability is compared with
    # the kit model is small: a beam of 3, settled once two finished lines beat the partial ones
    assert 2 <= status["last"]["beam"] <= 3
    mirror.close_all()


async def test_cancel_mid_decode_answers_32800_and_the_next_request_is_right(client: LanguageClient, engine):
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"maxNewTokens": 300, "multiline": "always"}))
    mirror = Mirror(client, engine)
    uri = "file:///work/project/slow.py"
    mirror.open(uri, CODE)
    cursor = mirror.docs[uri].index("    print")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=mirror.position(uri, cursor),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    # send_request writes the request before it returns (a task wrapping send_request_async would
    # write it only when the loop next runs, after the cancel below)
    request = asyncio.wrap_future(client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1"))
    # sent right behind the request, no delay guessed: whether the server has it queued, prefilling
    # or decoding (300 tokens), the answer is -32800 and the slot stays consistent; the engine's
    # stop between decode steps is tests/test_scheduler.py's and tests/test_faults.py's
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(request, timeout=60)  # only a hang takes this long
    assert getattr(info.value, "code", None) == -32800

    # the slot stays consistent: a fresh request equals a full recompute in this process
    cursor = mirror.type(uri, cursor, "x")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"maxNewTokens": 8}))
    mirror.config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, multiline="always"))
    assert await mirror.inline(uri, cursor) == mirror.expect(uri, cursor)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"multiline": "auto"}))
    mirror.close_all()


async def test_two_documents_are_served_concurrently(client: LanguageClient, engine):
    mirror = Mirror(client, engine)
    a, b = "file:///work/project/a.py", "file:///work/project/b.py"
    mirror.open(a, "def square(x):\n    return x * x\n\nprint(square(3))\n")
    mirror.open(b, "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.\n")
    ca, cb = mirror.docs[a].index("\n\nprint"), len(mirror.docs[b]) - 1
    answers = await asyncio.gather(mirror.inline(a, ca), mirror.inline(b, cb))
    assert list(answers) == [mirror.expect(a, ca), mirror.expect(b, cb)]
    mirror.close_all()


async def test_an_excluded_document_is_not_completed_nor_read_for_another(client: LanguageClient, engine):
    """exclude: a document whose path matches gets no suggestion (inline or listed), and its text
    stays out of the snippets other documents' prompts carry."""
    mirror = Mirror(client, engine)
    secret, code = "file:///work/project/.env.py", "file:///work/project/app.py"
    # the secret file shares the code around the cursor, so it would be the snippet chosen
    mirror.open(secret, CODE + "API_TOKEN = 'sk-live-0123456789abcdef'\nDB_PASSWORD = 'hunter2'\n")
    mirror.open(code, CODE)
    cursor = mirror.docs[code].index("    print(len(lines))")
    await mirror.inline(code, cursor)
    with_secret = (await fetch_status(client))["last"]["prompt_tokens"]
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"exclude": [".env*"]}))
    # new settings: the server forgets the suggestion shown and the snippets quoted under the old ones
    mirror.exclude, mirror.snippets, mirror.shown = (".env*",), {}, {}
    cursor = mirror.type(code, cursor, " ")
    assert await mirror.inline(code, cursor) == mirror.expect(code, cursor)
    without = (await fetch_status(client))["last"]["prompt_tokens"]
    assert 0 < without < with_secret - 20, "the excluded file's text left the prompt"
    end = len(mirror.docs[secret])
    assert not (await mirror.inline(secret, end)).items
    listing = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=secret), position=mirror.position(secret, end)))
    assert listing is None or not listing.items
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"exclude": []}))
    mirror.close_all()


async def test_inline_and_completion_requests_for_one_keystroke_share_the_answer(client: LanguageClient, engine):
    # VS Code asks for both at each key of a word; the second must not cancel the first (the
    # ghost text would never show while the user types an identifier)
    mirror = Mirror(client, engine)
    uri = "file:///work/project/both.py"
    mirror.open(uri, CODE)
    cursor = mirror.docs[uri].index("    print(len(lines))")
    for key in "    tot":
        cursor = mirror.type(uri, cursor, key)
        expected = mirror.expect(uri, cursor)
        position = mirror.position(uri, cursor)
        inline, listing = await asyncio.gather(
            mirror.inline(uri, cursor),
            client.text_document_completion_async(types.CompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri), position=position)))
        assert inline == expected, key
        assert [i.text_edit.new_text for i in listing.items] == [i.insert_text for i in expected.items], key
    assert expected.items, "the kit model produces some text here"
    mirror.close_all()


async def test_invoking_by_hand_while_sampling_asks_the_model_again_typing_on_reuses(client: LanguageClient, engine):
    """An unchanged buffer and cursor get the suggestion already shown (VS Code re-asks as the
    cursor blinks back), except when the user invokes a suggestion by hand at temperature > 0:
    that asks for another sample. At temperature 0 the model would answer the same, so it reuses."""
    mirror = Mirror(client, engine)
    uri = "file:///work/project/sample.py"
    mirror.open(uri, CODE)
    position = mirror.position(uri, mirror.docs[uri].index("    print(len(lines))"))

    async def ask(kind: types.InlineCompletionTriggerKind) -> tuple[bool, bool]:
        """(answered with a suggestion, served from the one shown)"""
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=kind)))
        return bool(answer.items), (await fetch_status(client))["last"]["reused"]

    automatic, invoked = types.InlineCompletionTriggerKind.Automatic, types.InlineCompletionTriggerKind.Invoked
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"temperature": 0.8}))
    try:
        for _ in range(20):  # a sample may be empty (nothing shown, nothing to reuse): ask until one shows
            if (await ask(automatic))[0]:
                break
        else:
            raise AssertionError("20 samples of the kit model were all empty")
        assert await ask(automatic) == (True, True)
        assert (await ask(invoked))[1] is False
    finally:
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"temperature": 0}))
    first = await ask(automatic)
    assert first[0], "the kit model's greedy answer here is not empty"
    assert await ask(invoked) == (True, True)
    mirror.close_all()


async def test_an_unsure_suggestion_is_hidden_unless_the_user_asks_for_it(client: LanguageClient, engine):
    """minTokenProbability hides an automatic suggestion whose least sure token is below it; invoking
    by hand shows it anyway, the same text as with no threshold."""
    mirror = Mirror(client, engine)
    uri = "file:///work/project/unsure.py"
    mirror.open(uri, CODE)
    position = mirror.position(uri, mirror.docs[uri].index("    print(len(lines))"))
    expected = mirror.expect(uri, mirror.docs[uri].index("    print(len(lines))")).items
    assert expected, "the kit model's greedy answer here is not empty"

    async def ask(kind: types.InlineCompletionTriggerKind) -> list[types.InlineCompletionItem]:
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=kind)))
        return answer.items

    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"minTokenProbability": 0.99}))
    try:
        assert not await ask(types.InlineCompletionTriggerKind.Automatic)
        sure = (await fetch_status(client))["last"]["min_token_probability"]
        assert sure < 0.99, "the kit model is that unsure of some token here"
        shown = await ask(types.InlineCompletionTriggerKind.Invoked)  # the best first, then alternatives
        assert (shown[0].insert_text, shown[0].range) == (expected[0].insert_text, expected[0].range)
    finally:
        client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"minTokenProbability": 0}))
    mirror.close_all()


async def test_asking_by_hand_offers_the_other_lines_the_beam_found_then_the_next_first_tokens(
        client: LanguageClient, engine):
    """An automatic request gets one suggestion; one made by hand (greedy) gets it first, then the
    other lines the pipeline compared (the kit model is small, so a beam of 3: likeliest line
    first), then greedy suggestions from the first tokens ranked after, 3 in all, each text once; a
    completion request keeps to one item."""
    mirror = Mirror(client, engine)
    uri = "file:///work/project/alternatives.py"
    mirror.open(uri, CODE)
    offset = mirror.docs[uri].index("    print(len(lines))")
    position = mirror.position(uri, offset)

    async def ask(kind: types.InlineCompletionTriggerKind) -> list[types.InlineCompletionItem]:
        answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=position,
            context=types.InlineCompletionContext(trigger_kind=kind)))
        return answer.items

    automatic = await ask(types.InlineCompletionTriggerKind.Automatic)
    assert len(automatic) == 1
    invoked = await ask(types.InlineCompletionTriggerKind.Invoked)

    def expected(rank: int = 0) -> pipeline.Outcome:
        return pipeline.complete(engine, f"{uri}#expected", mirror.docs[uri], position.line, position.character,
                                 config=mirror.config, path=uri_to_path(uri), first_token_rank=rank)

    best = expected()
    assert 2 <= best.beam <= 3, "auto beam for a small model: a beam of 3 lines, settled at 2 or more"
    more = [o for o in best.other_lines if o.suggestion.text != best.suggestion.text][:2]
    further = [expected(rank) for rank in range(best.beam, best.beam + 2 - len(more))]
    texts = list(dict.fromkeys(o.suggestion.text for o in (best, *more, *further) if o.suggestion is not None))
    assert [i.insert_text for i in invoked] == texts and len(texts) >= 2, "the kit model starts differently"
    assert invoked[0].insert_text == automatic[0].insert_text
    assert len({i.command.arguments[0]["id"] for i in invoked}) == len(invoked)  # each accept is told apart
    listing = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position))
    assert [i.text_edit.new_text for i in listing.items] == [texts[0]]
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"alternatives": 1}))
    try:  # the setting: only the best
        assert [i.insert_text for i in await ask(types.InlineCompletionTriggerKind.Invoked)] == texts[:1]
    finally:
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"alternatives": 3}))
    mirror.close_all()


async def test_notebook_cells_see_the_cells_around_them(client: LanguageClient, engine):
    nb = "file:///work/project/analysis.ipynb"
    cells = [("nb-cell:1", "code", "import math\nradius = 2.0\n"),
             ("nb-cell:2", "markdown", "# Area of the circle"),
             ("nb-cell:3", "code", "area = math.")]
    client.notebook_document_did_open(types.DidOpenNotebookDocumentParams(
        notebook_document=types.NotebookDocument(
            uri=nb, notebook_type="jupyter-notebook", version=1,
            cells=[types.NotebookCell(kind=(types.NotebookCellKind.Code if k == "code"
                                            else types.NotebookCellKind.Markup),
                                      document=u) for u, k, _ in cells]),
        cell_text_documents=[types.TextDocumentItem(uri=u, language_id="python" if k == "code" else "markdown",
                                                    version=1, text=t) for u, k, t in cells]))
    # edit the last cell incrementally through the notebook change
    client.notebook_document_did_change(types.DidChangeNotebookDocumentParams(
        notebook_document=types.VersionedNotebookDocumentIdentifier(version=2, uri=nb),
        change=types.NotebookDocumentChangeEvent(cells=types.NotebookDocumentCellChanges(text_content=[
            types.NotebookDocumentCellContentChanges(
                document=types.VersionedTextDocumentIdentifier(uri="nb-cell:3", version=2),
                changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(0, 12), types.Position(0, 12)), text="pi * radius")])]))))
    cell_text = "area = math.pi * radius"
    answer = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri="nb-cell:3"), position=types.Position(0, len(cell_text)),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked)))

    notebook_cells = [Cell("code", cells[0][2]), Cell("markdown", cells[1][2]), Cell("code", cell_text)]
    style = notebook_style(engine.fim)
    assert style == "jupyter"  # the kit's StarCoder-family tokenizer has the Jupyter tokens
    text, _ = notebook_text(notebook_cells, "python", style)
    line, character = map_cell_position(notebook_cells, "python", 2, 0, len(cell_text), "utf-16", style)
    assert text.startswith("<jupyter_start><jupyter_code>import math\nradius = 2.0\n")
    assert "<jupyter_text># Area of the circle\n" in text  # markdown as text, not comments
    outcome = pipeline.complete(engine, nb, text, line, character, config=Mirror(client, engine).config,
                                path=uri_to_path(nb))
    assert outcome.context.prefix.endswith("<jupyter_code>area = math.pi * radius")
    expected = Mirror(client, engine).record(nb, outcome, cell_text, len(cell_text))
    for item in answer.items:
        item.command = None
    assert answer.items[:1] == expected.items  # asked by hand: alternatives may follow the best
    client.notebook_document_did_close(types.DidCloseNotebookDocumentParams(
        notebook_document=types.NotebookDocumentIdentifier(nb),
        cell_text_documents=[types.TextDocumentIdentifier(u) for u, _, _ in cells]))


async def test_emoji_and_cjk_before_the_cursor_in_utf16(client: LanguageClient, engine):
    await check_emoji_and_cjk(client, engine, "utf-16")


async def test_emoji_and_cjk_before_the_cursor_in_utf8(utf8_client: LanguageClient, engine):
    await check_emoji_and_cjk(utf8_client, engine, "utf-8")


async def check_emoji_and_cjk(client: LanguageClient, engine, encoding: str) -> None:
    mirror = Mirror(client, engine, encoding=encoding)
    uri = "file:///work/project/greet.py"
    mirror.open(uri, "def greet(name):\n    return f'😀 你好, {name}' + \n\nprint(greet('世界'))\n")
    cursor = mirror.docs[uri].index(" + \n") + 3
    cursor = mirror.type(uri, cursor, "'🎉")  # an edit whose range is measured in the session's units
    position = mirror.position(uri, cursor)
    # 31 code points before the cursor: 😀 and 🎉 take 2 UTF-16 units and 4 UTF-8 bytes, 你 and 好 3 bytes
    assert position.character == {"utf-16": 33, "utf-8": 41}[encoding]
    assert position_to_offset(mirror.docs[uri], position.line, position.character, encoding) == cursor
    assert await mirror.inline(uri, cursor) == mirror.expect(uri, cursor)
    mirror.close_all()
