import pytest

from engine.fim import FimTokens, MissingSpecialToken, family_tokens, fim_tokens_from_vocab


def test_starcoder_spelling():
    vocab = ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>", "a"]
    assert fim_tokens_from_vocab(vocab) == FimTokens(
        family="starcoder", eod="<|endoftext|>", prefix="<fim_prefix>", middle="<fim_middle>",
        suffix="<fim_suffix>", pad="<fim_pad>", filename="<filename>", file_sep=None,
    )


def test_santacoder_spelling_and_stop_tokens():
    vocab = ["<|endoftext|>", "<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"]
    fim = fim_tokens_from_vocab(vocab)
    assert fim.family == "santacoder" and fim.has_fim and fim.filename is None
    assert fim.stop_tokens() == ("<|endoftext|>", "<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>")


def test_no_fim_tokens_is_left_to_right():
    fim = fim_tokens_from_vocab(["<|endoftext|>", "x"])
    assert fim.family == "none" and not fim.has_fim and fim.stop_tokens() == ("<|endoftext|>",)


def test_partial_fim_set_is_an_error():
    with pytest.raises(MissingSpecialToken, match="lacks"):
        fim_tokens_from_vocab(["<|endoftext|>", "<fim_prefix>", "<fim_middle>"])


def test_missing_eod_is_an_error():
    with pytest.raises(MissingSpecialToken, match="endoftext"):
        fim_tokens_from_vocab(["<fim_prefix>", "<fim_middle>", "<fim_suffix>"])


@pytest.mark.parametrize("order", ["spm", "psm"])
def test_the_trainers_samples_and_the_servers_prompts_have_one_form(order):
    """A training sample is exactly the server's prompt for the same prefix, suffix and file name,
    followed by the middle and end of text: the bundled model is trained on what we serve."""
    import random

    from fim_lsp.training.trainer import FimPolicy, fim_sample, split_points
    from lsp_server.core.context import cursor_context
    from lsp_server.core.prompt import PromptConfig, build_prompt

    tokens = family_tokens("starcoder")
    text = "def area(r):\n    pi = 3.14159\n    return pi * r * r\n\n\nprint(area(2))\n"
    policy = FimPolicy(fim_rate=1.0, spm_rate=1.0 if order == "spm" else 0.0, filename_rate=1.0)
    sample = fim_sample(text, random.Random(7), policy, tokens, path="geometry/area.py")
    rng = random.Random(7)
    rng.random(), rng.random()  # the draws fim_sample makes before it splits: file name, FIM or not
    a, b = split_points(text, rng, policy)
    prefix, middle = text[:a], text[a:b]
    line = prefix.count("\n")
    character = len(prefix) - (prefix.rfind("\n") + 1)
    ctx = cursor_context(text[:a] + text[b:], line, character, "utf-32")
    prompt = build_prompt(ctx, tokens, lambda s: len(s), 100_000, PromptConfig(fim_mode=order, neighbours=False),
                          path="geometry/area.py")
    assert prompt.mode == order
    assert sample == prompt.text + middle + tokens.eod
    assert prompt.text.startswith("<filename>geometry/area.py\n<fim_prefix>")


def test_family_tokens_are_the_spellings_the_tokenizers_carry():
    assert family_tokens("santacoder").prefix == "<fim-prefix>" and family_tokens("santacoder").filename is None
    assert family_tokens("starcoder").middle == "<fim_middle>" and family_tokens("starcoder").filename == "<filename>"
    with pytest.raises(ValueError, match="choose starcoder or santacoder"):
        family_tokens("codellama")
