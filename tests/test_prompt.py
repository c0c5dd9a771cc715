"""The prompt window with a real tokenizer: budgets hold and typing keeps the cached head."""
from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from engine.fim import fim_tokens_from_vocab
from lsp_server.core.context import CursorContext
from lsp_server.core.memo import text_bytes
from lsp_server.core.prompt import (ENTRY_OVERHEAD, PromptConfig, TokenCounter, build_prompt, chunk_lines_for,
                               memoize_counts, window_prefix, window_suffix)
from tests.conftest import kit

TYPED = (
    "def keystroke_handler(event, state):\n"
    "    if event.key == 'enter':\n"
    "        state.submit(event.text)\n"
    "    elif event.key in ('up', 'down'):\n"
    "        state.move(event.key, wrap=True)\n"
    "    return state.updated()\n"
)


def five_thousand_lines() -> str:
    blocks = (
        f"def handler_{i}(value):\n"
        f"    total = value * {i % 97} + {i % 13}\n"
        f"    return total if total > {i % 7} else -total\n"
        "\n"
        for i in range(1250)
    )
    return "".join(blocks)


@pytest.fixture(scope="module")
def starcoder_tokenizer():
    path = kit(shape="tiny", family="starcoder")
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    n_positions = json.loads((path / "config.json").read_text())["n_positions"]
    return tokenizer, fim_tokens_from_vocab(tokenizer.get_vocab()), n_positions


def test_five_thousand_line_fixture_is_what_the_test_claims():
    assert len(TYPED) >= 200 and five_thousand_lines().count("\n") == 5000


@pytest.mark.parametrize("n_ctx", ["model", 8192])
@pytest.mark.parametrize("where", ["end", "middle"])
def test_typing_200_characters_rarely_moves_the_prompt_head(starcoder_tokenizer, n_ctx, where):
    tokenizer, fim, n_positions = starcoder_tokenizer
    n_ctx = n_positions if n_ctx == "model" else n_ctx
    document = five_thousand_lines()
    cut = len(document) if where == "end" else document.index("def handler_700(")
    before, after = document[:cut], document[cut:]
    counter = memoize_counts(lambda text: len(tokenizer.encode(text).ids))
    config = PromptConfig()
    prompts = []
    for typed in range(len(TYPED) + 1):
        ctx = CursorContext(prefix=before + TYPED[:typed], suffix=after)
        prompts.append(build_prompt(ctx, fim, counter, n_ctx, config, path="handlers.py"))
    calls_after_first = counter.calls

    head_changes = sum(1 for old, new in zip(prompts, prompts[1:]) if not new.text.startswith(old.text))
    assert head_changes <= 3, f"the prompt's head changed on {head_changes} of 200 keystrokes"
    assert all(p.mode == "spm" and p.prefix_start_line % p.chunk_lines == 0 for p in prompts)
    # every keystroke after the first counts about one new chunk (the cursor's), not the window
    assert calls_after_first <= len(prompts) * 3 + 40, calls_after_first
    for prompt in prompts[::20] + prompts[-1:]:
        used = len(tokenizer.encode(prompt.text).ids)
        assert used <= n_ctx - config.max_new_tokens, f"{used} prompt tokens exceed the window"
        assert used >= (n_ctx - config.max_new_tokens) * 0.8, f"only {used} of {n_ctx} tokens used"


def test_fim_tokens_of_the_kit_encode_to_single_ids(starcoder_tokenizer):
    tokenizer, fim, _ = starcoder_tokenizer
    prompt = build_prompt(CursorContext("a = ", "\n"), fim, lambda t: len(tokenizer.encode(t).ids), 512,
                          PromptConfig(), path="x.py")
    ids = tokenizer.encode(prompt.text).ids
    for token in (fim.filename, fim.prefix, fim.suffix, fim.middle):
        assert ids.count(tokenizer.token_to_id(token)) == 1


def test_token_counter_memoises_and_evicts():
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return len(text)

    counter = TokenCounter(count, max_bytes=2 * (text_bytes("cde") + ENTRY_OVERHEAD))  # room for two short texts
    assert [counter("ab"), counter("ab"), counter("cde"), counter("f"), counter("ab")] == [2, 2, 3, 1, 2]
    assert seen == ["ab", "cde", "f", "ab"] and counter.calls == 4
    assert memoize_counts(counter) is counter


def test_prefix_window_halves_a_chunk_that_does_not_fit():
    prefix = "".join(f"line{i}\n" for i in range(10)) + "cur"
    # 4-line chunk from line 8 costs 15 > 10; 2-line chunks: line 10 (3), then 12 + 1 > 10
    assert window_prefix(prefix, 10, 10, 4, len) == ("cur", 10)
    assert window_prefix(prefix, 10, 16, 4, len) == ("line8\nline9\ncur", 8)
    assert window_prefix(prefix, 10, 0, 4, len) == ("", 10)


def test_chunks_shrink_in_small_windows():
    assert [chunk_lines_for(b, 32) for b in (0, 63, 64, 448, 2048, 8000)] == [1, 1, 1, 7, 32, 32]


def test_suffix_window_cuts_whole_lines_from_the_cursor():
    suffix = "".join(f"s{i}\n" for i in range(10))
    # a 2-line chunk (6), the next chunk (6 + 1 margin) would pass 10, one more line (3 + 1) fits
    assert window_suffix(suffix, 10, 2, len) == "s0\ns1\ns2\n"
    assert window_suffix(suffix, 0, 2, len) == ""
    assert window_suffix(suffix, 100, 2, len) == suffix


@pytest.mark.parametrize("field,value", [("fim_mode", "mps"), ("prefix_suffix_ratio", 0), ("chunk_lines", 0),
                                         ("max_new_tokens", -1), ("neighbour_tokens", -5)])
def test_bad_prompt_config_is_a_clear_error(field, value):
    with pytest.raises(ValueError, match=field):
        PromptConfig(**{field: value})


def test_bad_n_ctx_is_a_clear_error():
    fim = fim_tokens_from_vocab(["<|endoftext|>"])
    with pytest.raises(ValueError, match="n_ctx"):
        build_prompt(CursorContext("a", ""), fim, len, 0, PromptConfig())
