"""A least-recently-used memo bounded in bytes, for the server's per-text caches.

A language server stays up for days: a memo bounded by entry count grows with the size of what it
holds (8,192 token counts of 4 kB prompt chunks are 35 MB), so the caches that speed up prompt
building are bounded by the memory their keys and values take, as `sys.getsizeof` measures it,
and their caps count in the server's memory budget. Pure: no torch, no pygls.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def text_bytes(text: str) -> int:
    """Memory a str takes (header included)."""
    return sys.getsizeof(text)


class ByteLRU(Generic[K, V]):
    """Maps keys to values; the least recently used entries go once the sizes exceed `max_bytes`.

    `size(key, value)` is the memory one entry holds. An entry larger than the cap is not kept.
    """

    __slots__ = ("_entries", "_size", "max_bytes", "nbytes")

    def __init__(self, max_bytes: int, size: Callable[[K, V], int]) -> None:
        assert max_bytes >= 0, f"max_bytes must be >= 0, got {max_bytes}"
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._size = size
        self.max_bytes = max_bytes
        self.nbytes = 0  # sum of the entries' sizes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value memoised for `key` (now the most recently used), or None."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: K, value: V) -> None:
        """Memoise `value`, evicting the least recently used entries past the cap."""
        size = self._size(key, value)
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.nbytes -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
