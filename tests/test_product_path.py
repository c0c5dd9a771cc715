"""The product as users run it: `fim-lsp serve` with no --model, --backend or --dtype.

That is the bundled default model, placed where `auto` puts it on the machine the tests run on,
with speculation at its default (on for the CPU runtimes), the K/V cache reused from keystroke to
keystroke, default completion settings. Over a typing replay every answer must equal a reference
that shares none of those shortcuts: the same placement, a fresh slot for every request (the whole
prompt prefilled, nothing shared between documents) and speculation off. On the int8 path that is
the batch-invariance property (a 1-token step and a long prefill quantise a row alike).
"""
from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from engine.cache import CacheConfig
from engine.select import choose_placement, load_backend, local_params, resolve_model_name
from engine.speculative import DEFAULT_DRAFT
from lsp_server import pipeline
from lsp_server.config import CompletionSettings, ModelConfig
from lsp_server.documents import uri_to_path
from tests.test_server_e2e import CODE, Mirror, start_session

SERVE_AS_USERS_DO = [sys.executable, "-m", "fim_lsp.cli", "serve"]
TYPED = "    n = len("  # typed key by key before `print(len(lines))`
URI = "file:///work/project/reader.py"

@pytest.fixture(scope="module")
def product():
    """The backend the server builds from an empty configuration (what users run)."""
    return pipeline.load_model(ModelConfig())


@pytest.fixture(scope="module")
def reference():
    """The same model and placement, no cache reuse, no block sharing, no speculation."""
    return load_backend(None, cache=CacheConfig(reuse=False, share_blocks=False), speculate=0)


class Recompute(Mirror):
    """The client's copy of the document; expectations from a fresh reference slot every time."""

    asked = 0

    def expect(self, uri: str, offset: int) -> types.InlineCompletionList:
        text = self.docs[uri]
        line, character = self.position(uri, offset).line, self.position(uri, offset).character
        Recompute.asked += 1
        key = f"{uri}#recompute-{Recompute.asked}"
        outcome = pipeline.complete(self.engine, key, text, line, character, encoding=self.encoding,
                                    config=self.config, path=uri_to_path(uri), others=[],
                                    previous_snippets=self.snippets.get(uri, ()), shown=self.shown.get(uri))
        self.engine.drop(key)
        return self.record(uri, outcome, text, offset)


def test_auto_here_is_the_placement_the_reference_uses_with_speculation_on(product, reference):
    name = resolve_model_name(None)
    placement = choose_placement("auto", "auto", local_params(name))
    assert product.info.device == reference.info.device == "cpu"
    assert product.info.dtype == reference.info.dtype
    assert product.info.dtype == ("int8" if placement.quantize else str(placement.dtype).removeprefix("torch."))
    assert product.speculate == DEFAULT_DRAFT > 0 and reference.speculate == 0


def replay_in_process(product, reference, settings) -> int:
    """Type TYPED key by key; at each key the product's suggestion and tokens must equal the
    reference's full recompute. Returns the tokens speculation drafted along the way."""
    text, cursor = CODE, CODE.index("    print(len(lines))")
    drafted = 0
    for i, key in enumerate(TYPED):
        text, cursor = text[:cursor] + key + text[cursor:], cursor + 1
        line = text.count("\n", 0, cursor)
        character = cursor - (text.rfind("\n", 0, cursor) + 1)
        served = pipeline.complete(product, URI, text, line, character, config=settings, path=uri_to_path(URI))
        fresh = pipeline.complete(reference, f"{URI}#{i}", text, line, character, config=settings,
                                  path=uri_to_path(URI))
        reference.drop(f"{URI}#{i}")
        assert served.suggestion == fresh.suggestion, (i, key)
        assert served.result.token_ids == fresh.result.token_ids, (i, key)
        drafted += int(served.result.extra.get("drafted_tokens", 0))
    return drafted


def test_speculation_and_the_cache_change_no_greedy_suggestion_over_a_typing_replay(product, reference):
    """Greedy (one branch, as a larger model or a block completion gets): speculation drafts, and
    the suggestions still equal plain decoding from a full prefill."""
    greedy = replace(pipeline.pipeline_config(CompletionSettings()), beam=1)
    drafted = replay_in_process(product, reference, greedy)
    product.drop(URI)
    assert drafted > 0, "speculation drafted no token over the replay: the test did not exercise it"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client():
    lsp_client = await ClientServerConfig(server_command=SERVE_AS_USERS_DO).start()
    ready = await start_session(lsp_client, options={})  # no settings: the defaults
    assert ready["state"] == "ready", ready
    yield lsp_client
    await lsp_client.shutdown_session()
    await lsp_client.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_default_server_answers_every_keystroke_as_a_full_recompute(client: LanguageClient, product,
                                                                              reference):
    from fim_lsp.demo import fetch_status

    status = await fetch_status(client)
    assert (status["model"], status["backend"], status["device"], status["dtype"], status["why"]) == (
        product.info.model, product.info.backend, product.info.device, product.info.dtype, product.info.why)
    mirror = Recompute(client, reference, settings=CompletionSettings())
    mirror.open(URI, CODE)
    cursor = mirror.docs[URI].index("    print(len(lines))")
    shown = 0
    for key in TYPED:
        cursor = mirror.type(URI, cursor, key)
        expected = mirror.expect(URI, cursor)
        assert await mirror.inline(URI, cursor) == expected, repr(mirror.docs[URI][:cursor][-30:])
        shown += bool(expected.items)
    assert shown >= len(TYPED) // 2, "the bundled model suggests something at most keystrokes"
    last = (await fetch_status(client))["last"]
    if not last["reused"]:
        assert last["prompt_tokens"] > last["prefill_tokens"], "the server's cache served part of the prompt"
    mirror.close_all()
