"""Which token ids each document's KV slot holds, and what a new prompt may reuse of them.

Pure bookkeeping in the manner of vLLM's prefix cache: no tensors here. The engine asks for a
`Plan` (how many cached tokens to keep, whether to seed the slot by copying another slot's K/V,
which slots to evict and how large the slot must be), carries it out on its buffers, and reports
every token whose K/V it writes with `append`. Life cycle verbs: match, reuse, truncate, append,
evict, and set aside (a document keeps the prompt of the cursor region it left in a second slot).
Memory is counted in slot capacity (positions allocated) times bytes per token, and the sum never
exceeds the budget: least recently used slots go first.

Block hashes: a slot's tokens are cut into `block_size`-token blocks, each hashed together with
its parent block's hash (so a hash names a whole prefix). A document whose prompt starts like
another slot's (a license header, the same imports) finds it through the index and copies those
positions instead of prefilling them. Hashes only find candidates: the token ids are compared.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.api import DocId

HashFn = Callable[[bytes], int]  # bytes -> unsigned 64-bit hash
ROOT_HASH = 0  # the parent hash of a document's first block


class CacheBudgetError(MemoryError):
    """A single request needs more KV memory than the whole cache budget."""


@dataclass(slots=True)
class CacheConfig:
    """How the per-document KV cache is sized and shared."""

    budget_bytes: int | None = None  # KV memory for all slots; None: a share of free memory at start-up
    block_size: int = 64  # tokens per hashed block for cross-document seeding
    chunk_tokens: int = 256  # slot buffers grow in steps of this many positions
    reuse: bool = True  # False: every request prefills its whole prompt (a benchmark baseline)
    share_blocks: bool = True  # seed a slot from another document's identical leading blocks
    # cursor regions a document keeps: 2 keeps the prompt of the place the cursor left beside the
    # current one (jumping back and forth stays warm); 1: one prompt per document
    regions: int = 2


@dataclass(slots=True)
class SlotStats:
    """Token counts over a document's life (kept across evictions until the document is dropped)."""

    requests: int = 0
    reused: int = 0  # prompt tokens served from the slot's own K/V
    seeded: int = 0  # prompt tokens copied from another slot's K/V
    warmed: int = 0  # prompt tokens computed ahead of a request (engine warm: idle prefill)
    evicted: int = 0  # times the slot was evicted for memory


@dataclass(slots=True)
class Slot:
    """The K/V a document holds: `cached_tokens[p]` is the token whose K/V sit at position p."""

    doc_id: DocId
    capacity: int  # positions allocated
    cached_tokens: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # one per full block of cached_tokens
    last_used: int = 0  # tick of the last request (LRU order)


@dataclass(frozen=True, slots=True)
class Plan:
    """What the engine must do to its buffers before prefilling `tokens[keep:]`."""

    doc_id: DocId
    keep: int  # leading prompt tokens whose K/V will be in the slot (reused or seeded)
    reused: int  # of those, from the slot's own K/V
    seed_from: DocId | None  # copy positions [0, keep) from this slot first
    capacity: int  # the slot's capacity after the plan (grow the buffer to it)
    evict: tuple[DocId, ...]  # free these slots' buffers first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def block_hashes(tokens: Sequence[int], block_size: int, hash_fn: HashFn, parent: int = ROOT_HASH) -> list[int]:
    """Chained hashes of the full `block_size`-token blocks of `tokens`."""
    hashes = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start:start + block_size]
        parent = hash_fn(struct.pack(f"<Q{block_size}q", parent, *block))
        hashes.append(parent)
    return hashes


class SlotTable:
    """Slots per document under a byte budget; see the module docstring for the life cycle."""

    def __init__(self, bytes_per_token: int, budget_bytes: int, max_tokens: int, hash_fn: HashFn,
                 config: CacheConfig | None = None) -> None:
        assert bytes_per_token > 0, "a token's K/V takes some bytes"
        self.config = config or CacheConfig()
        self.bytes_per_token = bytes_per_token
        self.budget_bytes = budget_bytes
        self.max_tokens = max_tokens  # the model's context window: no slot grows past it
        self.hash_fn = hash_fn
        self.slots: dict[DocId, Slot] = {}
        self.stats: dict[DocId, SlotStats] = {}
        self.index: dict[int, set[DocId]] = {}  # block hash -> slots holding that prefix
        self.tick = 0

    # -- queries ---------------------------------------------------------------------------------

    @property
    def bytes_used(self) -> int:
        return sum(s.capacity for s in self.slots.values()) * self.bytes_per_token

    def match(self, doc_id: DocId, tokens: Sequence[int]) -> tuple[int, DocId | None, int]:
        """(tokens reusable from the slot itself, best other slot or None, tokens it could seed).

        At most len(tokens) - 1 tokens are ever reusable: the last prompt token is recomputed
        for the logits that start decoding.
        """
        limit = max(len(tokens) - 1, 0)
        if not self.config.reuse:
            return 0, None, 0
        slot = self.slots.get(doc_id)
        own = min(common_prefix(slot.cached_tokens, tokens), limit) if slot else 0
        best, best_n = None, 0
        if self.config.share_blocks:
            for h in block_hashes(tokens[:limit], self.config.block_size, self.hash_fn):
                holders = self.index.get(h, set()) - {doc_id}
                if not holders:
                    break
                candidate = max(holders, key=lambda d: self.slots[d].last_used)
                n = min(common_prefix(self.slots[candidate].cached_tokens, tokens), limit)
                if n > best_n:
                    best, best_n = candidate, n
        if best_n <= own:
            return own, None, 0
        return own, best, best_n

    # -- verbs -----------------------------------------------------------------------------------

    def plan(self, doc_id: DocId, tokens: Sequence[int], total_tokens: int, warming: bool = False) -> Plan:
        """Decide reuse, seeding, eviction and capacity for a request; updates the bookkeeping.

        `total_tokens` is the prompt plus the most tokens decoding may write. After this call the
        slot exists with `Plan.keep` cached tokens; the engine then copies (if seeding), prefills
        `tokens[keep:]` and reports what it writes with `append`. `warming`: no request, work ahead
        of one (the engine prefills `tokens[keep:-1]`); counted as `warmed`, not as a request.
        """
        assert len(tokens) <= total_tokens <= self.max_tokens, (
            f"a request of {total_tokens} tokens (prompt {len(tokens)}) exceeds the {self.max_tokens}-token window"
        )
        self.tick += 1
        own, source, seeded = self.match(doc_id, tokens)
        slot = self.slots.get(doc_id)
        needed = self.capacity_for(total_tokens)
        if needed * self.bytes_per_token > self.budget_bytes:
            raise CacheBudgetError(
                f"a {total_tokens}-token request needs {needed * self.bytes_per_token / 2**20:.1f} MiB of KV cache "
                f"but the budget is {self.budget_bytes / 2**20:.1f} MiB; raise the cache budget or shorten the context"
            )
        capacity = max(needed, slot.capacity if slot else 0)
        extra = capacity - (slot.capacity if slot else 0)
        victims = self.victims(extra, keep={doc_id, source})
        if victims is None:  # the seed source itself is in the way: prefill instead of copying
            source, seeded = None, 0
            victims = self.victims(extra, keep={doc_id})
        assert victims is not None, "a slot within the budget always fits once every other slot is gone"
        for victim in victims:
            self.evict(victim)
        keep = seeded if source is not None else own
        if slot is None:
            slot = self.slots[doc_id] = Slot(doc_id=doc_id, capacity=capacity)
        slot.capacity = capacity
        slot.last_used = self.tick
        stats = self.stats.setdefault(doc_id, SlotStats())
        stats.requests += not warming
        if source is not None:
            self.truncate(doc_id, 0)
            self.append(doc_id, self.slots[source].cached_tokens[:keep])
            self.slots[source].last_used = self.tick
            stats.seeded += keep
        else:
            self.reuse(doc_id, keep)
        if warming:
            stats.warmed += max(len(tokens) - 1 - keep, 0)
        return Plan(doc_id=doc_id, keep=keep, reused=own if source is None else 0, seed_from=source,
                    capacity=capacity, evict=tuple(victims))

    def reuse(self, doc_id: DocId, n: int) -> None:
        """Keep the slot's first `n` tokens for the current request (counted as reused)."""
        self.truncate(doc_id, n)
        self.stats.setdefault(doc_id, SlotStats()).reused += n

    def truncate(self, doc_id: DocId, n: int) -> None:
        """Forget the slot's tokens from position `n` on (their K/V become garbage)."""
        slot = self.slots[doc_id]
        assert 0 <= n <= len(slot.cached_tokens), f"cannot truncate {len(slot.cached_tokens)} tokens to {n}"
        del slot.cached_tokens[n:]
        full = n // self.config.block_size
        for h in slot.block_hashes[full:]:
            self._unindex(h, doc_id)
        del slot.block_hashes[full:]

    def append(self, doc_id: DocId, tokens: Sequence[int]) -> None:
        """Record that the K/V of `tokens` now sit at the slot's next positions."""
        slot = self.slots[doc_id]
        assert len(slot.cached_tokens) + len(tokens) <= slot.capacity, (
            f"slot {doc_id} holds {slot.capacity} positions; {len(slot.cached_tokens)} + {len(tokens)} do not fit"
        )
        slot.cached_tokens.extend(tokens)
        size = self.config.block_size
        done = len(slot.block_hashes) * size
        parent = slot.block_hashes[-1] if slot.block_hashes else ROOT_HASH
        for h in block_hashes(slot.cached_tokens[done:], size, self.hash_fn, parent):
            slot.block_hashes.append(h)
            self.index.setdefault(h, set()).add(doc_id)

    def set_aside(self, doc_id: DocId, region: DocId, tokens: Sequence[int]) -> bool:
        """Before a request for `tokens`: keep the document's other cursor region warm.

        `region` names the document's second slot. When it matches `tokens` better than the slot,
        the two swap (jumping back costs nothing); when `tokens` share less than half of the slot
        (the cursor jumped) and the slot holds at least a block, the slot becomes the region (the
        old region is evicted) and the document starts afresh, seeded where blocks match. Returns
        True when the slots changed, so the engine moves their buffers alike (`swap`).
        """
        if self.config.regions < 2 or not self.config.reuse:
            return False
        slot, other = self.slots.get(doc_id), self.slots.get(region)
        own = common_prefix(slot.cached_tokens, tokens) if slot else 0
        theirs = common_prefix(other.cached_tokens, tokens) if other else 0
        if theirs > own:
            self.swap(doc_id, region)
            return True
        held = len(slot.cached_tokens) if slot is not None else 0
        if held >= self.config.block_size and own < held // 2:
            self.evict(region)
            self.swap(doc_id, region)
            return True
        return False

    def swap(self, a: DocId, b: DocId) -> None:
        """Exchange what two slot names hold (either may hold nothing)."""
        slot_a, slot_b = self.slots.pop(a, None), self.slots.pop(b, None)
        for slot, old, new in ((slot_a, a, b), (slot_b, b, a)):
            if slot is None:
                continue
            for h in slot.block_hashes:
                self._unindex(h, old)
            slot.doc_id = new
            self.slots[new] = slot
        for slot in (slot_a, slot_b):
            if slot is not None:
                for h in slot.block_hashes:
                    self.index.setdefault(h, set()).add(slot.doc_id)

    def evict(self, doc_id: DocId) -> None:
        """Free a slot (its document stays known; its next request prefills from scratch)."""
        slot = self.slots.pop(doc_id, None)
        if slot is None:
            return
        for h in slot.block_hashes:
            self._unindex(h, doc_id)
        self.stats.setdefault(doc_id, SlotStats()).evicted += 1

    def drop(self, doc_id: DocId) -> None:
        """Forget a closed document entirely, stats included."""
        self.evict(doc_id)
        self.stats.pop(doc_id, None)

    # -- helpers ---------------------------------------------------------------------------------

    def capacity_for(self, total_tokens: int) -> int:
        """Positions to allocate for `total_tokens`: whole chunks, capped at the context window."""
        chunk = self.config.chunk_tokens
        return min(-(-total_tokens // chunk) * chunk, self.max_tokens)

    def victims(self, extra_positions: int, keep: set) -> list[DocId] | None:
        """Least recently used slots (never those in `keep`) whose eviction makes room for
        `extra_positions` more; None when evicting all of them would not be enough."""
        free = self.budget_bytes - self.bytes_used - extra_positions * self.bytes_per_token
        chosen: list[DocId] = []
        for slot in sorted(self.slots.values(), key=lambda s: s.last_used):
            if free >= 0:
                break
            if slot.doc_id not in keep:
                chosen.append(slot.doc_id)
                free += slot.capacity * self.bytes_per_token
        return chosen if free >= 0 else None

    def _unindex(self, h: int, doc_id: DocId) -> None:
        holders = self.index.get(h)
        if holders is not None:
            holders.discard(doc_id)
            if not holders:
                del self.index[h]
