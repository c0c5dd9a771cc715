"""Fill-in-the-middle, in one place: each family's special tokens and the template that uses them.

GPTBigCode families spell their FIM tokens differently (SantaCoder uses hyphens, StarCoder
underscores plus `<filename>`), so a served model's spellings are looked up in its tokenizer's
special tokens (`fim_tokens_from_vocab`), never assumed. `fim_prompt` is the template: the prompt
core serves it, the trainer writes its samples with it, the checkpoint kit and the remote backend
take their spellings from `SPELLINGS`. Pure: no torch, no tokenizers import.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Family = Literal["santacoder", "starcoder", "none"]

EOD_TOKEN = "<|endoftext|>"
# StarCoder's notebook markers: its training data held notebooks as
# <jupyter_start><jupyter_text>markdown<jupyter_code>code<jupyter_output>output...
JUPYTER_START, JUPYTER_TEXT, JUPYTER_CODE, JUPYTER_OUTPUT = (
    "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>")
JUPYTER_TOKENS = (JUPYTER_START, JUPYTER_TEXT, JUPYTER_CODE, JUPYTER_OUTPUT)
REPONAME_TOKEN = "<reponame>"
FimOrder = Literal["spm", "psm"]
SPELLINGS: dict[str, tuple[str, str, str, str]] = {
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
    jupyter: bool = False  # all four Jupyter markers are special tokens (StarCoder)
    reponame: str | None = None  # StarCoder's `<reponame>` repository header

    @property
    def has_fim(self) -> bool:
        """True when prefix, middle and suffix tokens all exist."""
        return self.prefix is not None and self.middle is not None and self.suffix is not None

    def stop_tokens(self) -> tuple[str, ...]:
        """Every special token that ends a middle: end of text, FIM markers, file headers."""
        found = (self.eod, self.prefix, self.middle, self.suffix, self.pad, self.filename, self.file_sep,
                 self.reponame, *(JUPYTER_TOKENS if self.jupyter else ()))
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
    for family, (prefix, middle, suffix, pad) in SPELLINGS.items():
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
                jupyter=all(t in vocab for t in JUPYTER_TOKENS),
                reponame=REPONAME_TOKEN if REPONAME_TOKEN in vocab else None,
            )
        if present:
            missing = sorted({prefix, middle, suffix} - vocab)
            raise MissingSpecialToken(
                f"the tokenizer has {present} but lacks {missing}: a {family} FIM tokenizer needs all three"
            )
    return FimTokens(family="none", eod=EOD_TOKEN)


def family_tokens(family: str) -> FimTokens:
    """The FIM tokens a family's tokenizer carries (for a model known by name only: a remote
    server without a local tokenizer, the trainer, the checkpoint kit)."""
    if family not in SPELLINGS:
        raise ValueError(f"family {family!r}: choose {' or '.join(SPELLINGS)}")
    extra = ("<filename>", "<file_sep>") if family == "starcoder" else ()
    return fim_tokens_from_vocab((EOD_TOKEN, *SPELLINGS[family], *extra))


def fim_prompt(fim: FimTokens, order: FimOrder, prefix: str, suffix: str, head: str = "") -> str:
    """The text a model continues with the middle: SPM (the order both families were trained on
    most, `<prefix><suffix>{suffix}<middle>{prefix}`) or PSM (`<prefix>{prefix}<suffix>{suffix}<middle>`)."""
    assert fim.has_fim, "a left-to-right model has no FIM template: its prompt is the prefix"
    if order == "spm":
        return f"{head}{fim.prefix}{fim.suffix}{suffix}{fim.middle}{prefix}"
    return f"{head}{fim.prefix}{prefix}{fim.suffix}{suffix}{fim.middle}"
