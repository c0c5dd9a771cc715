"""Work ahead of requests over the real server (`fim-lsp serve` on stdio, the tiny kit model, fp32):
a cursor hint warms the prompt, a request during the warm waits for at most one chunk, superseded
requests cost nothing beyond the step in flight, and suggestions are the same with and without."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import kit
from tests.support.probe import HELD, HOLD, RELEASE, SyncClient, probed_command
from tests.support.prompt_log import read_prompts

TINY = str(kit(shape="tiny", family="starcoder"))
TODAY = {"idlePrefill": False, "prefetch": False, "cacheRegions": 1}  # the server before work ahead
AUTOMATIC = 2  # InlineCompletionTriggerKind.Automatic
SETTLE_S = 60

# a file of several functions, long enough that its prompt fills most of the tiny model's window
FUNCTIONS = "".join(
    f"def step_{i}(values, scale={i}):\n"
    f"    total = 0\n"
    f"    for value in values:\n"
    f"        total += value * scale\n"
    f"    return total - {i}\n\n\n"
    for i in range(14))
OTHER = ("import math\n\n\ndef area(radius):\n    return math.pi * radius ** 2\n\n\n"
         "def perimeter(radius):\n    return 2 * math.pi * radius\n")
A, B = "file:///work/project/steps.py", "file:///work/project/circle.py"


def serve(options: dict) -> SyncClient:
    client = SyncClient.spawn(probed_command("--model", TINY, "--dtype", "float32"))  # the real server, readable
    client.start_session(options={"maxNewTokens": 8, "beam": 1, **options})
    return client


def open_doc(client: SyncClient, uri: str, text: str) -> None:
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": text}})


def position_of(text: str, needle: str, after: bool = True) -> dict:
    offset = text.index(needle) + (len(needle) if after else 0)
    line = text.count("\n", 0, offset)
    return {"line": line, "character": offset - (text.rfind("\n", 0, offset) + 1)}


def hint(client: SyncClient, uri: str, position: dict) -> None:
    client.notify("fim-lsp/cursor", {"textDocument": {"uri": uri}, "position": position})


def inline(client: SyncClient, uri: str, position: dict) -> list[str]:
    result = client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": AUTOMATIC}})
    return [item["insertText"] for item in result["items"]]


def until(client: SyncClient, done: Callable[[dict], bool], what: str) -> dict:
    """Poll `fim-lsp/status` until `done` holds (the server's own report is the synchronisation)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        status = client.status()
        if done(status):
            return status
        assert time.monotonic() < deadline, f"the server never reached: {what}; status {status}"


def settled(status: dict) -> bool:
    return not status["ahead"]["working"]


@pytest.fixture(scope="module")
def ahead():
    client = serve({})
    yield client
    client.close()


def test_a_cursor_hint_warms_the_prompt_and_the_request_prefills_a_few_tokens(ahead):
    open_doc(ahead, A, FUNCTIONS)
    here = position_of(FUNCTIONS, "def step_9(values, scale=9):\n    ")
    before = ahead.status()
    hint(ahead, A, here)
    warmed = until(ahead, lambda s: s["ahead"]["prefills"] > before["ahead"]["prefills"] and settled(s),
                   "a warm prompt")
    assert warmed["engine"]["runs"] == before["engine"]["runs"], "a hint runs no request"
    assert warmed["ahead"]["hints"] == before["ahead"]["hints"] + 1
    assert warmed["ahead"]["last_hint"] == {"uri": A, **here}, "status names where the newest hint pointed"
    assert warmed["ahead"]["prefill_tokens"] > 200
    assert inline(ahead, A, here) is not None
    status = ahead.status()
    assert status["last"]["prefill_tokens"] <= 2, status["last"]
    assert status["last"]["reused_tokens"] >= warmed["ahead"]["prefill_tokens"] - before["ahead"]["prefill_tokens"]
    assert status["ahead"]["prefill_saved_tokens"] - before["ahead"]["prefill_saved_tokens"] == \
        warmed["ahead"]["prefill_tokens"] - before["ahead"]["prefill_tokens"]
    ahead.notify("textDocument/didClose", {"textDocument": {"uri": A}})


def test_hints_that_are_malformed_or_for_unknown_documents_are_dropped_and_change_nothing(ahead):
    open_doc(ahead, B, OTHER)
    before = ahead.status()
    hint(ahead, B, {"line": 3, "character": 2})
    taken = until(ahead, lambda s: s["ahead"]["hints"] == before["ahead"]["hints"] + 1, "the hint taken")
    assert taken["ahead"]["last_hint"] == {"uri": B, "line": 3, "character": 2}
    before = until(ahead, settled, "its warm done")
    hint(ahead, "file:///work/project/never-opened.py", {"line": 0, "character": 0})
    ahead.notify("fim-lsp/cursor", {"textDocument": {"uri": B}, "position": {"line": -1, "character": 0}})
    ahead.notify("fim-lsp/cursor", {"position": {"line": 0, "character": 0}})
    ahead.notify("fim-lsp/cursor", None)
    status = until(ahead, lambda s: s["ahead"]["hints_dropped"] - before["ahead"]["hints_dropped"] == 4,
                   "four hints dropped")
    assert status["ahead"]["hints"] == before["ahead"]["hints"]
    assert status["ahead"]["last_hint"] == taken["ahead"]["last_hint"], "a dropped hint is not the newest"
    assert status["engine"]["forwards"] == before["engine"]["forwards"]
    assert ahead.texts([B]) == {B: OTHER}
    assert sum("malformed fim-lsp/cursor hint" in m for m in ahead.messages("window/logMessage")) == 3
    ahead.notify("textDocument/didClose", {"textDocument": {"uri": B}})


def test_a_request_during_a_background_prefill_waits_for_at_most_one_chunk():
    # a warm of many small chunks: the request lands mid-way (no prefetch after the answer: its run
    # would count among the engine's runs)
    client = serve({"prefillChunkTokens": 2, "prefetch": False})
    try:
        open_doc(client, A, FUNCTIONS)
        here = position_of(FUNCTIONS, "def step_11(values, scale=11):\n    ")
        hint(client, A, here)
        midway = until(client, lambda s: s["ahead"]["chunks"] >= 3, "a warm under way")
        assert midway["ahead"]["prefills"] == 0, "the warm finished before the request was sent"
        assert inline(client, A, here) is not None
        status = client.status()
        assert 0 <= status["ahead"]["most_chunks_waited"] <= 1
        assert status["engine"]["runs"] == 1 and status["ahead"]["prefills"] == 0, "the warm yielded to the request"
        assert status["last"]["prefill_tokens"] < status["last"]["prompt_tokens"] - 4, "the request used the chunks"
    finally:
        client.close()


def test_superseded_requests_cost_no_forward_beyond_the_one_in_flight():
    client = serve({**TODAY, "maxNewTokens": 200, "multiline": "always"})
    try:
        open_doc(client, A, FUNCTIONS)
        here = position_of(FUNCTIONS, "def step_3(values, scale=3):\n")
        client.request(HOLD, {"doc": A})  # the first request blocks mid-decode until released
        ids = [client.send("textDocument/inlineCompletion", {
            "textDocument": {"uri": A}, "position": {**here, "character": 0}, "context": {"triggerKind": AUTOMATIC}})]
        assert client.request(HELD, {"doc": A})["held"], "the first request never decoded"
        for k in range(1, 4):  # the user typed on: three newer requests, each superseding the one before
            client.notify("textDocument/didChange", {"textDocument": {"uri": A, "version": k + 1}, "contentChanges": [
                {"range": {"start": here, "end": here}, "text": "x"}]})
            here = {**here, "character": here["character"] + 1}
            ids.append(client.send("textDocument/inlineCompletion", {
                "textDocument": {"uri": A}, "position": here, "context": {"triggerKind": AUTOMATIC}}))
        # read after the three requests, so answered once the server has taken them (however slowly
        # they arrived): the two in between were superseded while they waited for the engine
        assert client.request(HELD, {"doc": A})["held"]
        client.request(RELEASE, {"doc": A})
        answers = [client.wait(i) for i in ids]
        assert [a["items"] for a in answers[:3]] == [[], [], []], "superseded requests show nothing"
        status = client.status()
        engine = status["engine"]
        assert engine["runs"] == 2, "only the request in flight and the newest reached the model"
        assert engine["forwards_after_cancel"] <= 1
        last = status["last"]  # the newest request's own forwards: its prefill (one chunk) and its steps
        assert engine["forwards"] - engine["forwards_after_cancel"] >= 1 + last["generated_tokens"] - 1
    finally:
        client.close()


def test_pressing_tab_finds_the_next_suggestion_computed_while_the_shown_one_was_read():
    docs = {}
    for name, options in (("today", TODAY), ("ahead", {})):
        client = serve({**options, "multiline": "never", "idlePrefill": False})  # the prefetch alone: no edit hints
        try:
            open_doc(client, B, OTHER)
            here = position_of(OTHER, "return 2 * math.pi")
            result = client.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": B}, "position": here, "context": {"triggerKind": AUTOMATIC}})
            assert result["items"], "the tiny model suggests something here"
            item = result["items"][0]
            before = until(client, settled, "the prefetch of what follows the shown suggestion")
            # Tab: the client inserts the text, runs the command, and asks at the new cursor
            text = item["insertText"]
            start, end = item["range"]["start"], item["range"]["end"]
            client.notify("textDocument/didChange", {"textDocument": {"uri": B, "version": 2}, "contentChanges": [
                {"range": {"start": start, "end": end}, "text": text}]})
            client.request("workspace/executeCommand", {"command": item["command"]["command"],
                                                        "arguments": item["command"]["arguments"]})
            after = {**start, "character": start["character"] + len(text)}
            answer = inline(client, B, after)
            # the answer shown now starts its own prefetch: the engine's runs are read once it is done
            docs[name] = (text, answer, before, until(client, settled, "the prefetch after the new answer"))
        finally:
            client.close()
    (text, today, _, today_status), (ahead_text, ahead, before, status) = docs["today"], docs["ahead"]
    assert ahead_text == text and ahead == today, "work ahead changed what is shown"
    assert before["ahead"]["prefetches"] >= 1, "the suggestion after the shown one was computed while it was read"
    assert status["ahead"]["prefetch_served"] == before["ahead"]["prefetch_served"] + 1
    assert status["last"]["prefetched"] and not today_status["last"]["prefetched"]
    # every engine run since is a prefetch (of what follows the answer after Tab), none the request's
    assert status["engine"]["runs"] - before["engine"]["runs"] <= \
        status["ahead"]["prefetches"] - before["ahead"]["prefetches"], "the request after Tab ran nothing on the engine"


def session(client: SyncClient) -> tuple[list[list[str]], dict, bool]:
    """An editing session: open, hint, ask, type, jump away and back, switch files, accept and go on.
    The suggestions it saw, the status at its end, and whether a suggestion was accepted."""
    docs = {A: FUNCTIONS, B: OTHER}
    version = {A: 1, B: 1}
    open_doc(client, A, FUNCTIONS)
    open_doc(client, B, OTHER)
    seen: list[list[str]] = []

    def settle():
        until(client, settled, "work ahead done")

    def ask(uri: str, position: dict) -> list[str]:
        seen.append(inline(client, uri, position))
        return seen[-1]

    def type_at(uri: str, position: dict, text: str) -> dict:
        version[uri] += 1
        client.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version[uri]},
                                                 "contentChanges": [{"range": {"start": position, "end": position},
                                                                     "text": text}]})
        lines = docs[uri].split("\n")
        line = lines[position["line"]]
        lines[position["line"]] = line[:position["character"]] + text + line[position["character"]:]
        docs[uri] = "\n".join(lines)
        return {**position, "character": position["character"] + len(text)}

    first = position_of(FUNCTIONS, "def step_10(values, scale=10):\n    ")
    second = position_of(FUNCTIONS, "def step_4(values, scale=4):\n    ")
    hint(client, A, first)
    settle()
    ask(A, first)
    here = first
    for ch in "tot":
        here = type_at(A, here, ch)
        ask(A, here)
    hint(client, A, second)  # jump to another function
    settle()
    ask(A, second)
    ask(A, here)  # and back, no hint
    where_b = position_of(OTHER, "return 2 * math.pi")
    hint(client, B, where_b)  # switch files
    settle()
    shown = ask(B, where_b)
    result = client.request("textDocument/inlineCompletion", {
        "textDocument": {"uri": B}, "position": where_b, "context": {"triggerKind": AUTOMATIC}})
    accepted = False
    if result["items"]:  # accept it: the client inserts the text, then runs the command
        item = result["items"][0]
        after = type_at(B, where_b, item["insertText"]) if "\n" not in item["insertText"] else None
        if after is not None:
            client.request("workspace/executeCommand", {"command": item["command"]["command"],
                                                        "arguments": item["command"]["arguments"]})
            settle()
            ask(B, after)
            accepted = True
    seen.append(shown)
    return seen, client.status(), accepted


def test_suggestions_are_the_same_with_and_without_work_ahead_and_it_did_work():
    results = {}
    for name, options in (("today", TODAY), ("ahead", {})):
        client = serve(options)
        try:
            results[name] = session(client)
        finally:
            client.close()
    (today, today_status, accepted), (ahead, ahead_status, _) = results["today"], results["ahead"]
    assert ahead == today
    assert accepted, "the session accepted a suggestion (a one-line one, on this model)"
    assert ahead_status["ahead"]["prefetches"] >= 1 and ahead_status["ahead"]["prefetch_served"] >= 1
    assert any(items for items in ahead), "the session saw suggestions"
    assert today_status["ahead"]["prefills"] == 0 and today_status["ahead"]["prefetches"] == 0
    assert ahead_status["ahead"]["prefills"] >= 3 and ahead_status["ahead"]["prefill_saved_tokens"] > 0
    assert ahead_status["engine"]["prefilled_tokens"] < today_status["engine"]["prefilled_tokens"]


# Neighbour snippets: the first function shares words with both neighbours (both quoted, and kept
# while they stay as good), the second only with BETA (30 lines below: out of the first's reach).
ALPHA = "def alpha(alpha_one, alpha_two):\n    return alpha_one - alpha_two\n"
BETA = "def beta(beta_one, beta_two):\n    return beta_one / beta_two\n"
BOTH = ("def first(alpha_one, alpha_two, beta_one, beta_two):\n"
        "    return alpha_one + alpha_two + beta_one + beta_two\n" + "\n" * 30 +
        "def second(beta_one, beta_two):\n    return beta_one * beta_two\n")


def test_work_ahead_never_changes_the_neighbour_snippets_a_later_prompt_quotes(tmp_path):
    """A hint's warm in the second function quotes BETA alone; the request after it, back in the
    first function, quotes what the request before the hint quoted (both neighbours, kept), as the
    server without work ahead does: the prompts each backend received, logged, are the same."""
    logs = {}
    for name, options in (("today", TODAY), ("ahead", {"prefetch": False})):
        logs[name] = tmp_path / f"{name}.jsonl"
        client = SyncClient.spawn([sys.executable, "-m", "tests.support.prompt_log", str(logs[name]),
                                   "--model", TINY, "--dtype", "float32"])
        try:
            client.start_session(options={"maxNewTokens": 8, "beam": 1, **options})
            for uri, text in ((f"{A[:-8]}alpha.py", ALPHA), (f"{A[:-8]}beta.py", BETA), (A, BOTH)):
                open_doc(client, uri, text)
            inline(client, A, position_of(BOTH, "    return alpha_one"))
            hint(client, A, position_of(BOTH, "    return beta_one * "))
            until(client, settled, "the warm at the hint")
            inline(client, A, position_of(BOTH, "    return alpha_one", after=False))
        finally:
            client.close()
    prompts = {name: read_prompts(log) for name, log in logs.items()}
    asked = {name: [r["prompt"] for r in logged if r["method"] == "complete"] for name, logged in prompts.items()}
    warmed = [r["prompt"] for r in prompts["ahead"] if r["method"] == "warm"]
    assert len(asked["today"]) == 2 and "alpha_one - alpha_two" in asked["today"][1] \
        and "beta_one / beta_two" in asked["today"][1], "both neighbours, kept"
    assert warmed and "beta_one / beta_two" in warmed[-1] and "alpha_one - alpha_two" not in warmed[-1], \
        "the warm at the hint quoted BETA alone"
    assert asked["ahead"] == asked["today"], "the warm changed what a later prompt quotes"


def test_a_background_step_is_sized_to_take_about_a_tenth_of_a_second_at_the_measured_speed():
    from lsp_server.prefill import CHUNK_MS, MIN_CHUNK_TOKENS, chunk_size

    assert chunk_size(64, None) == MIN_CHUNK_TOKENS, "the first step, before any speed is known, is the smallest"
    assert chunk_size(64, 0.5) == 64, "a fast model: the setting's most"
    assert chunk_size(64, 17.0) == CHUNK_MS // 17, "a slow one (1.1B int8 on two AVX2 cores): about 100 ms of tokens"
    assert chunk_size(64, 500.0) == MIN_CHUNK_TOKENS and chunk_size(2, 500.0) == 2 and chunk_size(2, None) == 2
