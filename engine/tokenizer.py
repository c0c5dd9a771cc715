"""A checkpoint's tokenizer, loaded with `tokenizers` alone, and its FIM tokens.

Every backend encodes prompts the same way: special tokens spelled in the text (`<fim_prefix>`)
become their single ids, and nothing is prepended. Decoding drops special tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.fim import FimTokens, MissingSpecialToken, fim_tokens_from_vocab


@dataclass(slots=True)
class CheckpointTokenizer:
    """Encode/decode for one checkpoint, with its FIM tokens and special ids."""

    tokenizer: object  # tokenizers.Tokenizer
    fim: FimTokens
    special_ids: frozenset[int]  # ids of every added special token
    eod_id: int
    _texts: object = field(default=None, repr=False)  # engine.healing.TokenTexts, built at first use

    @classmethod
    def from_dir(cls, path: str | Path) -> "CheckpointTokenizer":
        """Load `path/tokenizer.json`; raise MissingSpecialToken or FileNotFoundError clearly."""
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path} has no tokenizer.json (a GPTBigCode checkpoint ships one)")
        tok = Tokenizer.from_file(str(file))
        added = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        fim = fim_tokens_from_vocab(added)
        for name in fim.stop_tokens():
            if name not in added:
                raise MissingSpecialToken(f"{name!r} is in the vocabulary but not a special token in {file}")
        return cls(tokenizer=tok, fim=fim, special_ids=frozenset(added.values()), eod_id=added[fim.eod])

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; spelled-out special tokens map to their ids; no BOS added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` with special tokens removed."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        """The id of a token string, or None."""
        return self.tokenizer.token_to_id(token)

    def token_texts(self):
        """Every token's text (an `engine.healing.TokenTexts`), built once (a batch decode of the vocabulary)."""
        if self._texts is None:
            from engine.healing import TokenTexts

            size = self.tokenizer.get_vocab_size()
            texts = self.tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
            self._texts = TokenTexts(texts, self.special_ids)
        return self._texts

    def stop_ids(self) -> frozenset[int]:
        """Ids whose generation ends a middle (end of text, FIM markers, file headers)."""
        return frozenset(i for t in self.fim.stop_tokens() if (i := self.tokenizer.token_to_id(t)) is not None)
