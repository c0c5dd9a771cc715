"""A model reload while a request runs, over the real server (stdio, tests.support.probe).

A completion is held mid-decode on the old model (`fim-lsp-probe/hold`: its second forward blocks
until released, so "still decoding" is an event, not a guessed delay); `workspace/didChangeConfiguration`
names another model; once the server serves it, the held request is let go. The held request
must end cleanly (an answer, never a hang or a crash), and every completion after the reload must
equal a cache-less recompute with the new model: nothing computed with the old one (its
suggestion shown, its run in flight) is reused.
"""
from __future__ import annotations

import pytest

from engine.cache import CacheConfig
from engine.select import load_backend
from lsp_server import pipeline
from lsp_server.config import CompletionSettings
from lsp_server.core.postprocess import ShownSuggestion
from lsp_server.documents import uri_to_path
from tests.conftest import kit
from tests.support.probe import HELD, HOLD, RELEASE, LspError, SyncClient, probed_command
from tests.test_server_e2e import CODE, TINY

OLD, NEW = TINY, str(kit(shape="tiny", family="starcoder", mha=True))  # same tokenizer, other weights
MAX_NEW_TOKENS = 8
HANG_S = 120  # only a hang takes this long
REQUEST_CANCELLED = -32800


@pytest.fixture(scope="module")
def oracles():
    """Each model without K/V reuse: what a cache-less recompute answers."""
    return {model: load_backend(model=model, backend="torch", dtype="float32",
                                cache=CacheConfig(reuse=False, share_blocks=False)) for model in (OLD, NEW)}


class Doc:
    """The client's copy of one document, and the suggestion the oracle says is on screen."""

    def __init__(self, client: SyncClient, uri: str, typed: str) -> None:
        self.client, self.uri, self.version = client, uri, 1
        at = CODE.index("    print(len(lines))")
        self.text, self.cursor = CODE[:at] + typed + CODE[at:], at + len(typed)
        self.shown: ShownSuggestion | None = None
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": self.text}})

    def position(self) -> dict:
        line = self.text.count("\n", 0, self.cursor)
        return {"line": line, "character": self.cursor - (self.text.rfind("\n", 0, self.cursor) + 1)}

    def type(self, key: str) -> None:
        self.version += 1
        here = self.position()
        self.client.notify("textDocument/didChange", {"textDocument": {"uri": self.uri, "version": self.version},
                                                      "contentChanges": [{"range": {"start": here, "end": here},
                                                                          "text": key}]})
        self.text, self.cursor = self.text[:self.cursor] + key + self.text[self.cursor:], self.cursor + len(key)

    def send(self) -> int:
        return self.client.send("textDocument/inlineCompletion", {
            "textDocument": {"uri": self.uri}, "position": self.position(), "context": {"triggerKind": 2}})

    def expect(self, oracle, shown: ShownSuggestion | None = None) -> list[str]:
        """The oracle's answer here, with `shown` the suggestion on screen (None: nothing shown)."""
        p = self.position()
        outcome = pipeline.complete(oracle, "oracle", self.text, p["line"], p["character"],
                                    config=pipeline.pipeline_config(CompletionSettings(max_new_tokens=MAX_NEW_TOKENS)),
                                    path=uri_to_path(self.uri), shown=shown)
        oracle.drop("oracle")
        self.shown = None if outcome.suggestion is None else ShownSuggestion(
            outcome.context.prefix, outcome.context.suffix, outcome.suggestion)
        return [outcome.suggestion.text] if outcome.suggestion else []


def texts(answer: dict) -> list[str]:
    return [item["insertText"] for item in answer["items"]]


def ended_cleanly(client: SyncClient, msg_id: int) -> list[str] | None:
    """The held request's answer once released (None: cancelled); fails on a hang or another error."""
    try:
        return texts(client.wait(msg_id, HANG_S))
    except LspError as exc:
        assert exc.code == REQUEST_CANCELLED, f"the held request failed: {exc}"
        return None


def reload(client: SyncClient, model: str) -> None:
    """Ask for `model` through the settings and wait for the server's word that it serves it."""
    logged = len(client.messages("window/logMessage"))
    client.notify("workspace/didChangeConfiguration", {"settings": {"model": model}})
    client.wait_message(lambda text: text.startswith(f"fim-lsp: {model} ready on ") or "could not load" in text,
                        after=logged, timeout_s=HANG_S)
    status = client.status()
    assert (status["state"], status["model"]) == ("ready", model), status


def hold_then_reload(client: SyncClient, doc: Doc, model: str) -> int:
    """Start a completion in `doc`, hold it mid-decode, reload `model`; the held request's id."""
    client.request(HOLD, {"doc": doc.uri})
    msg_id = doc.send()
    assert client.request(HELD, {"doc": doc.uri}, timeout_s=HANG_S + 10)["held"], "the request never decoded"
    reload(client, model)
    return msg_id


def test_a_reload_mid_request_ends_it_cleanly_and_later_completions_use_the_new_model_only(oracles):
    client = SyncClient.spawn(probed_command("--model", OLD, "--dtype", "float32", "--backend", "torch"))
    try:
        assert client.start_session("utf-16", {"maxNewTokens": MAX_NEW_TOKENS})["model"] == OLD

        # 1. the held request finishes after the swap: what it computed with the old model is
        # neither shown as the new model's nor kept as the suggestion the user types into
        doc = Doc(client, "file:///work/project/first.py", "    n = ")
        old = doc.expect(oracles[OLD])
        assert old and old != doc.expect(oracles[NEW]), "the two models must disagree here, or the test proves nothing"
        held = hold_then_reload(client, doc, NEW)
        client.request(RELEASE, {"doc": doc.uri})
        assert ended_cleanly(client, held) in ([], None), "the replaced model's answer is not shown"
        doc.type(old[0][0])  # typing into the old model's suggestion, had it been kept
        assert texts(client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": doc.uri}, "position": doc.position(), "context": {"triggerKind": 2}},
            HANG_S)) == doc.expect(oracles[NEW])
        shown = doc.shown
        doc.type("x")  # the new model's own suggestion is the one kept now
        assert texts(client.wait(doc.send(), HANG_S)) == doc.expect(oracles[NEW], shown)
        client.notify("textDocument/didClose", {"textDocument": {"uri": doc.uri}})  # no neighbour for the next one

        # 2. a request identical to the held one, sent after the swap, gets its own run on the new
        # model (it does not share the old model's run in flight)
        doc = Doc(client, "file:///work/project/second.py", "    x")
        new = doc.expect(oracles[NEW])
        assert new != doc.expect(oracles[OLD]), "the two models must disagree here, or the test proves nothing"
        held = hold_then_reload(client, doc, OLD)
        again = doc.send()  # the same text, position and settings as the held request
        client.request(RELEASE, {"doc": doc.uri})
        assert ended_cleanly(client, held) in ([], None), "the replaced model's answer is not shown"
        assert texts(client.wait(again, HANG_S)) == doc.expect(oracles[OLD])
        status = client.status()
        assert (status["state"], status["model"], status["error"]) == ("ready", OLD, None)
    finally:
        assert client.close() == 0, client.stderr_text()[-3000:]
