"""The fill-in-the-middle special tokens of a tokenizer, read from its vocabulary.

GPTBigCode families spell their FIM tokens differently (SantaCoder uses hyphens, StarCoder
underscores plus `<filename>`), so nothing here hard-codes a family: we look the spellings up in
the tokenizer's special tokens and report what was found. Pure: no torch, no tokenizers import.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Family = Literal["santacoder", "starcoder", "none"]

EOD_TOKEN = "<|endoftext|>"
_SPELLINGS: dict[str, tuple[str, str, str, str]] = {
    # family: (prefix, middle, suffix, pad)
    "starcoder": ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"),
    "santacoder": ("<fim-prefix>", "<fim-middle>", "<fim-suffix>", "<fim-pad>"),
}


class MissingSpecialToken(ValueError):
    """A tokenizer lacks a special token the product needs."""


@dataclass(frozen=True, slots=True)
class FimTokens:
    """The special-token strings of one model family; `None` where the tokenizer has none."""

    family: Family
    eod: str
    prefix: str | None = None
    middle: str | None = None
    suffix: str | None = None
    pad: str | None = None
    filename: str | None = None
    file_sep: str | None = None

    @property
    def has_fim(self) -> bool:
        """True when prefix, middle and suffix tokens all exist."""
        return self.prefix is not None and self.middle is not None and self.suffix is not None

    def stop_tokens(self) -> tuple[str, ...]:
        """Every special token that ends a middle: end of text, FIM markers, file headers."""
        found = (self.eod, self.prefix, self.middle, self.suffix, self.pad, self.filename, self.file_sep)
        return tuple(t for t in found if t is not None)


def fim_tokens_from_vocab(tokens: Iterable[str]) -> FimTokens:
    """Find the FIM tokens among `tokens` (a tokenizer's vocabulary or its special tokens).

    Raises MissingSpecialToken when `<|endoftext|>` is absent or a family's FIM set is only
    partly present (a broken tokenizer); a tokenizer with no FIM tokens at all gives family
    "none", which callers serve as left-to-right completion.
    """
    vocab = set(tokens)
    if EOD_TOKEN not in vocab:
        raise MissingSpecialToken(
            f"the tokenizer has no {EOD_TOKEN!r} token; GPTBigCode checkpoints end documents with it"
        )
    for family, (prefix, middle, suffix, pad) in _SPELLINGS.items():
        present = [t for t in (prefix, middle, suffix) if t in vocab]
        if len(present) == 3:
            return FimTokens(
                family=family,  # type: ignore[arg-type]
                eod=EOD_TOKEN,
                prefix=prefix,
                middle=middle,
                suffix=suffix,
                pad=pad if pad in vocab else None,
                filename="<filename>" if "<filename>" in vocab else None,
                file_sep="<file_sep>" if "<file_sep>" in vocab else None,
            )
        if present:
            missing = sorted({prefix, middle, suffix} - vocab)
            raise MissingSpecialToken(
                f"the tokenizer has {present} but lacks {missing}: a {family} FIM tokenizer needs all three"
            )
    return FimTokens(family="none", eod=EOD_TOKEN)
