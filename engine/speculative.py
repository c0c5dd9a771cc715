"""Prompt-lookup drafting: guess the next tokens by finding the text's own tail earlier in it.

Code repeats itself (a name typed again, a line copied and changed, the suffix below the
cursor), so the tokens that followed the last occurrence of the current n-gram are a cheap
guess at what comes next. `engine.generate` feeds such a draft after the last sampled token in
one forward and keeps the longest run the model agrees with, so a wrong guess costs only the
wider forward, never a different output. Pure: plain lists of token ids, no torch.
"""
from __future__ import annotations

from collections.abc import Sequence

DEFAULT_DRAFT = 4  # tokens proposed per step when the caller does not say
# The engine matches tails of 2 or 3 tokens: a single recurring token predicts little, and a wrong
# draft still widens the forward (`fim-lsp bench speculative`, docs/benchmarks/speculative.md).
ENGINE_NGRAM_MIN = 2


def draft_tokens(context_ids: Sequence[int], ngram_max: int = 3, ngram_min: int = 1,
                 k: int = DEFAULT_DRAFT) -> list[int]:
    """Up to `k` tokens that followed the most recent earlier occurrence of the context's tail.

    The tail n-grams are tried longest first (`ngram_max` down to `ngram_min` tokens); for the
    first length that occurs earlier in `context_ids`, the occurrence nearest the end wins and
    the tokens after it are the draft (fewer than `k` when the context ends sooner). No match: [].
    """
    if not 1 <= ngram_min <= ngram_max:
        raise ValueError(f"n-gram lengths must satisfy 1 <= ngram_min <= ngram_max, got {ngram_min}..{ngram_max}")
    if k < 0:
        raise ValueError(f"the draft length k must be >= 0, got {k}")
    end = len(context_ids)
    if k == 0:
        return []
    ids = list(context_ids)
    reversed_ids = ids[::-1]  # list.index scans forward in C: search the reversed list for the latest hit
    for n in range(min(ngram_max, end - 1), ngram_min - 1, -1):
        tail = ids[end - n:]
        # An occurrence ending at index i must end before the tail's own last token (i <= end - 2, so at
        # least one token follows it) and start inside the context (i >= n - 1); j = end - 1 - i.
        j = 1
        while True:
            try:
                j = reversed_ids.index(tail[-1], j, end - n + 1)
            except ValueError:
                break
            i = end - 1 - j
            if ids[i - n + 1:i + 1] == tail:
                return ids[i + 1:i + 1 + k]
            j += 1
    return []


class PromptLookup:
    """`draft_tokens` over a context that grows one token at a time, without rescanning it.

    Keeps, for every n-gram of `ngram_min`..`ngram_max` tokens, where its latest occurrence that
    has a token after it ends; built in C-speed passes over the prompt (~1 ms for 4k tokens),
    then one dictionary entry per length per appended token. A request's decode loop asks for a
    draft every step, and rescanning a 4k-token prompt each time cost ~0.2 ms a step.
    """

    __slots__ = ("ids", "latest", "ngram_max", "ngram_min")

    def __init__(self, context_ids: Sequence[int], ngram_max: int = 3, ngram_min: int = 1):
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"n-gram lengths must satisfy 1 <= ngram_min <= ngram_max, got {ngram_min}..{ngram_max}")
        self.ids = list(context_ids)
        self.ngram_max, self.ngram_min = ngram_max, ngram_min
        # n-gram -> index of its last token, for occurrences ending at 0..len-2 (a later one overwrites)
        self.latest: dict[tuple[int, ...], int] = {}
        followed = self.ids[:-1]
        for n in range(ngram_min, ngram_max + 1):
            starts = [followed[i:] for i in range(n)]
            self.latest.update(zip(zip(*starts), range(n - 1, len(followed))))

    def append(self, token: int) -> None:
        """The context grew by `token`: the n-grams ending at the previous last token now have a follower."""
        ids = self.ids
        for n in range(self.ngram_min, min(self.ngram_max, len(ids)) + 1):
            self.latest[tuple(ids[len(ids) - n:])] = len(ids) - 1
        ids.append(token)

    def draft(self, k: int) -> list[int]:
        """What `draft_tokens(context, ngram_max, ngram_min, k)` returns for the context so far."""
        if k <= 0:
            return []
        ids, end = self.ids, len(self.ids)
        for n in range(min(self.ngram_max, end - 1), self.ngram_min - 1, -1):
            i = self.latest.get(tuple(ids[end - n:]))
            if i is not None:
                return ids[i + 1:i + 1 + k]
        return []


def next_draft_length(length: int, drafted: int, kept: int, limit: int) -> int:
    """The draft length for the next step: one more after a wholly kept draft, one less after a miss.

    `length` is the current one, `drafted`/`kept` what the last step proposed and kept, `limit`
    the configured maximum; it never drops below 1, so a text that starts repeating is caught.
    """
    if drafted == 0:
        return length
    return min(limit, length + 1) if kept == drafted else max(1, length - 1)


def default_speculate(runtime: str, device: str) -> int:
    """Draft tokens per greedy step when the configuration does not say (0: speculation off).

    On for the CPU runtimes (torch in fp32 or bf16, ONNX Runtime), where `fim-lsp bench
    speculative` measured the trained default model 1.7-2.2x faster per keystroke; off on CUDA,
    where it was not measured (docs/benchmarks/speculative.md).
    """
    assert runtime in ("torch", "onnx"), f"no speculation default for runtime {runtime!r}"
    return DEFAULT_DRAFT if device == "cpu" else 0
