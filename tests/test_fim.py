import pytest

from engine.fim import FimTokens, MissingSpecialToken, fim_tokens_from_vocab


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
