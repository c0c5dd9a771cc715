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
# draft still widens the forward (`fim-lsp bench speculative`, docs/speculative.md).
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
    where it was not measured (docs/speculative.md).
    """
    assert runtime in ("torch", "onnx"), f"no speculation default for runtime {runtime!r}"
    return DEFAULT_DRAFT if device == "cpu" else 0
