"""Slot bookkeeping: exact reuse counts, block hashes, seeding, LRU eviction under the budget."""

import pytest
import xxhash

from engine.api import DocId
from engine.cache import CacheBudgetError, CacheConfig, SlotTable, block_hashes, common_prefix


def byte_sum(data: bytes) -> int:
    """A hash whose values are easy to work out by hand."""
    return sum(data)


HASHES = {"xxh3": xxhash.xxh3_64_intdigest, "byte_sum": byte_sum}
A, B, C = DocId("a"), DocId("b"), DocId("c")


def table(hash_fn=xxhash.xxh3_64_intdigest, budget_tokens=1024, block=4, chunk=8, **config) -> SlotTable:
    """A table counting 1 byte per token, so budgets read as token counts."""
    return SlotTable(bytes_per_token=1, budget_bytes=budget_tokens, max_tokens=64, hash_fn=hash_fn,
                     config=CacheConfig(block_size=block, chunk_tokens=chunk, **config))


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([7, 8], [7, 8]) == 2


def test_block_hashes_chain_exact_values_with_a_hand_checkable_hash():
    # byte_sum of struct.pack("<Q2q", parent, x, y) is parent's bytes' sum + x + y (small values)
    assert block_hashes([1, 2, 3, 4, 5], 2, byte_sum) == [3, 3 + 3 + 4]
    assert block_hashes([1], 2, byte_sum) == []


def test_block_hashes_with_xxh3_exact_values():
    # literal values (worked out once with int.to_bytes(8, "little"), not with the code under test's
    # struct.pack): a change of layout, byte order or parent chaining changes them
    assert block_hashes([10, 11, 12, 13], 2, xxhash.xxh3_64_intdigest) == [17915877049156181887, 15764777212929924145]
    assert block_hashes([-1, 2**40], 2, xxhash.xxh3_64_intdigest) == [1025464016352853774]  # signed, 64-bit ids


def test_block_hashes_match_an_independent_byte_layout():
    """The layout spelled without struct: the parent as 8 unsigned little-endian bytes, then each
    token id as 8 signed little-endian bytes."""
    def independent(tokens: list[int], size: int, parent: int = 0) -> list[int]:
        out = []
        for start in range(0, len(tokens) - len(tokens) % size, size):
            raw = parent.to_bytes(8, "little") + b"".join(t.to_bytes(8, "little", signed=True)
                                                           for t in tokens[start:start + size])
            parent = xxhash.xxh3_64_intdigest(raw)
            out.append(parent)
        return out

    tokens = [7, 0, 49151, 3, 3, 3, 1, 2, 99]
    for size in (1, 2, 4):
        assert block_hashes(tokens, size, xxhash.xxh3_64_intdigest) == independent(tokens, size)


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_reuse_is_the_longest_common_prefix_and_leaves_one_token_to_run(hash_name):
    t = table(HASHES[hash_name])
    plan = t.plan(A, [1, 2, 3, 4, 5], total_tokens=10)
    assert (plan.keep, plan.reused, plan.seed_from, plan.capacity, plan.evict) == (0, 0, None, 16, ())
    t.append(A, [1, 2, 3, 4, 5, 60, 61])  # the prompt and two decoded tokens
    plan = t.plan(A, [1, 2, 3, 4, 5, 60, 9], total_tokens=12)
    assert (plan.keep, plan.reused) == (6, 6)
    assert t.slots[A].cached_tokens == [1, 2, 3, 4, 5, 60]
    t.append(A, [9])
    plan = t.plan(A, [1, 2, 3, 4, 5, 60, 9], total_tokens=12)  # identical prompt: recompute the last token
    assert plan.keep == 6
    stats = t.stats[A]
    assert (stats.requests, stats.reused, stats.seeded) == (3, 12, 0)


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_truncate_and_append_keep_the_block_index_exact(hash_name):
    hash_fn = HASHES[hash_name]
    t = table(hash_fn)
    t.plan(A, list(range(10)), 10)
    t.append(A, list(range(10)))
    assert t.slots[A].block_hashes == block_hashes(list(range(10)), 4, hash_fn)
    assert all(t.index[h] == {A} for h in t.slots[A].block_hashes)
    t.truncate(A, 5)
    assert t.slots[A].cached_tokens == [0, 1, 2, 3, 4]
    assert t.slots[A].block_hashes == block_hashes([0, 1, 2, 3], 4, hash_fn)
    assert set(t.index) == set(t.slots[A].block_hashes)


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_a_new_document_with_the_same_leading_blocks_is_seeded_by_copy(hash_name):
    t = table(HASHES[hash_name])
    header = [5, 6, 7, 8, 9, 10, 11, 12]  # two 4-token blocks
    t.plan(A, header + [1, 2, 3], 16)
    t.append(A, header + [1, 2, 3])
    plan = t.plan(B, header + [1, 2, 99, 98], 16)
    assert (plan.seed_from, plan.keep, plan.reused) == (A, 10, 0)
    assert t.slots[B].cached_tokens == header + [1, 2]
    assert t.stats[B].seeded == 10
    plan = t.plan(C, [5, 6, 7, 0] + header, 16)  # first block differs: nothing to seed
    assert (plan.seed_from, plan.keep) == (None, 0)


def test_seeding_is_off_when_disabled_and_reuse_off_means_full_prefill():
    t = table(share_blocks=False)
    t.plan(A, list(range(9)), 9)
    t.append(A, list(range(9)))
    assert t.plan(B, list(range(9)) + [50], 10).seed_from is None
    t = table(reuse=False)
    t.plan(A, [1, 2, 3], 3)
    t.append(A, [1, 2, 3])
    plan = t.plan(A, [1, 2, 3, 4], 4)
    assert plan.keep == 0 and t.slots[A].cached_tokens == []


def test_lru_eviction_keeps_the_budget_with_fifty_documents():
    t = table(budget_tokens=10 * 16, chunk=16)  # room for ten 16-position slots
    docs = [DocId(f"doc{i}") for i in range(50)]
    for i, doc in enumerate(docs):
        prompt = [i, i + 1, i + 2]
        plan = t.plan(doc, prompt, 12)
        t.append(doc, prompt)
        assert t.bytes_used <= t.budget_bytes
        if i >= 10:
            assert plan.evict == (docs[i - 10],), "the least recently used slot goes first"
    assert len(t.slots) == 10 and set(t.slots) == set(docs[40:])
    assert sum(s.evicted for s in t.stats.values()) == 40
    plan = t.plan(docs[0], [0, 1, 2], 12)  # an evicted document is recomputed, never served stale
    assert plan.keep == 0 and plan.evict == (docs[40],)


def test_touching_a_slot_protects_it_from_eviction():
    t = table(budget_tokens=2 * 8)
    t.plan(A, [1], 8)
    t.plan(B, [2], 8)
    t.plan(A, [1, 3], 8)  # A is now the most recent
    assert t.plan(C, [4], 8).evict == (B,)


def test_a_growing_slot_evicts_others_and_a_request_beyond_the_budget_is_refused():
    t = table(budget_tokens=32, chunk=8)
    t.plan(A, [1], 8)
    t.plan(B, [2], 16)
    plan = t.plan(A, [1, 2], 24)
    assert plan.capacity == 24 and plan.evict == (B,) and t.bytes_used == 24
    with pytest.raises(CacheBudgetError, match="budget"):
        t.plan(C, [1], 40)
    assert set(t.slots) == {A}, "a refused request changes nothing"


def test_seed_source_too_big_to_keep_falls_back_to_prefill():
    t = table(budget_tokens=16, chunk=8)
    header = [5, 6, 7, 8, 9]
    t.plan(A, header, 8)
    t.append(A, header)
    plan = t.plan(B, header + [1], 16)  # needs the whole budget: A must go, so no copy from it
    assert (plan.seed_from, plan.keep, plan.evict) == (None, 0, (A,))


def test_drop_forgets_stats_and_evict_keeps_them():
    t = table()
    t.plan(A, [1, 2], 4)
    t.evict(A)
    assert A not in t.slots and t.stats[A].evicted == 1
    t.drop(A)
    assert A not in t.stats and not t.index


def test_append_past_capacity_is_a_bug_caught_by_an_assert():
    t = table(chunk=8)
    t.plan(A, [1], 2)
    with pytest.raises(AssertionError, match="do not fit"):
        t.append(A, list(range(9)))


R = DocId("a\n(previous region)")


@pytest.mark.parametrize("hash_name", sorted(HASHES))
def test_a_jump_sets_the_region_aside_and_jumping_back_swaps_it_in(hash_name):
    t = table(HASHES[hash_name])
    here, there = list(range(10, 22)), list(range(50, 62))  # 12 tokens each: three 4-token blocks
    t.plan(A, here, 16)
    t.append(A, here)
    assert t.set_aside(A, R, here[:11] + [99]) is False  # typing at the same place: no jump
    assert t.set_aside(A, R, there) is True  # shares 0 of 12 tokens: the slot becomes the region
    assert A not in t.slots and t.slots[R].cached_tokens == here and t.slots[R].doc_id == R
    plan = t.plan(A, there, 16)
    assert (plan.keep, plan.seed_from) == (0, None)
    t.append(A, there)
    assert t.set_aside(A, R, here) is True  # the region matches better: they swap
    assert t.slots[A].cached_tokens == here and t.slots[R].cached_tokens == there
    assert t.match(A, here) == (11, None, 0)
    assert {d for holders in t.index.values() for d in holders} == {A, R}
    assert all(A in t.index[h] for h in t.slots[A].block_hashes)
    assert all(R in t.index[h] for h in t.slots[R].block_hashes)


def test_one_region_never_sets_aside_and_warming_is_counted_apart():
    t = table(regions=1)
    t.plan(A, list(range(10, 22)), 16)
    t.append(A, list(range(10, 22)))
    assert t.set_aside(A, R, list(range(50, 62))) is False and R not in t.slots
    t.plan(B, list(range(30, 40)), 16, warming=True)
    assert (t.stats[B].requests, t.stats[B].warmed) == (0, 9)
