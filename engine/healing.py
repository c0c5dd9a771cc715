"""Token healing: the prompt's last token is backed off and the first generated tokens re-spell it.

A prompt that ends at the cursor ends wherever the user stopped typing, which is rarely where
the tokenizer would cut the finished text. After `\n        ` (a new line's indentation) the
byte-level BPE of the GPTBigCode models yields one token of a newline and eight spaces, while
in training that indentation was `\n` and seven spaces followed by ` self`: the model has hardly
ever seen a word follow the eight-space token, and small models answer it with noise. Backing
off that last token and allowing the first generated tokens only where they agree with its text
lets the model spell `\n       ` + ` self` itself. The same holds for a half-typed word
(`return sel` ends in ` sel`; ` self` starts with it).

`TokenTexts` knows every token's text; `Healing` is the constraint of one request: while some of
the backed-off text is still unspelled, only tokens compatible with it may be chosen (a token
that spells a beginning of the rest, or one that starts with all of it).
"""
from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

REPLACEMENT = "\ufffd"  # what a token holding part of a multi-byte character decodes to alone
LAST_CHARACTER = "\U0010ffff"  # every text that starts with `rest` sorts below rest + this


class TokenTexts:
    """Every token's text, indexed for the two look-ups healing needs. Specials are left out."""

    def __init__(self, texts: Sequence[str], special_ids: frozenset[int]):
        self.texts = list(texts)
        self.by_text: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            if i not in special_ids and text and REPLACEMENT not in text:
                self.by_text.setdefault(text, []).append(i)
        order = sorted((text, i) for text, ids in self.by_text.items() for i in ids)
        self.sorted_texts = [text for text, _ in order]  # the tokens starting with a text are a run of these
        self.sorted_ids = [i for _, i in order]

    def text_of(self, token: int) -> str:
        return self.texts[token]

    def compatible(self, rest: str) -> list[int]:
        """Ids of the tokens that spell a proper beginning of `rest`, or start with all of `rest`."""
        ids = [i for k in range(1, len(rest)) for i in self.by_text.get(rest[:k], ())]
        lo = bisect.bisect_left(self.sorted_texts, rest)
        hi = bisect.bisect_left(self.sorted_texts, rest + LAST_CHARACTER, lo)
        return ids + self.sorted_ids[lo:hi]


@dataclass(slots=True)
class Healing:
    """The healing constraint of one request: `text` (the backed-off token's) must be re-spelled."""

    text: str
    texts: TokenTexts
    rest: str = field(init=False)  # what is still to be spelled

    def __post_init__(self) -> None:
        self.rest = self.text

    @property
    def pending(self) -> bool:
        return bool(self.rest)

    def allowed(self) -> list[int]:
        """The ids the next token may take while pending (never empty for a `healable` text)."""
        return self.texts.compatible(self.rest)

    def chose(self, token_text: str) -> None:
        """Record the chosen token's text: it spells part of the rest, or all of it and more."""
        self.rest = left_after(self.rest, token_text)

    def strip(self, generated: str) -> str:
        """The generated text after the re-spelled part (empty while it is still being spelled)."""
        return generated[len(self.text):] if generated.startswith(self.text) else ""


def left_after(rest: str, token_text: str) -> str:
    """What is still to be spelled of `rest` once a compatible token of this text is chosen."""
    return rest[len(token_text):] if rest.startswith(token_text) else ""


def healable(text: str, texts: TokenTexts) -> bool:
    """Whether a backed-off token of this text can always be re-spelled: every character of it is
    a token by itself, so whatever part is left, some token spells its beginning."""
    return bool(text) and all(ch in texts.by_text for ch in text)
