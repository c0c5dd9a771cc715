"""The byte-bounded memo behind the token-count and neighbour-window caches."""
import sys

from lsp_server.core import neighbours
from lsp_server.core.memo import ByteLRU, text_bytes


def test_evicts_least_recently_used_past_the_byte_cap():
    memo: ByteLRU[str, int] = ByteLRU(10, lambda key, value: value)
    memo.put("a", 4)
    memo.put("b", 4)
    assert memo.get("a") == 4  # "a" is now the most recent
    memo.put("c", 4)  # 12 > 10: "b" goes
    assert (memo.get("b"), memo.get("a"), memo.get("c"), memo.nbytes, len(memo)) == (None, 4, 4, 8, 2)


def test_replacing_a_key_recounts_its_size_and_oversized_entries_are_not_kept():
    memo: ByteLRU[str, int] = ByteLRU(10, lambda key, value: value)
    memo.put("a", 3)
    memo.put("a", 6)
    assert (memo.nbytes, len(memo)) == (6, 1)
    memo.put("big", 11)
    assert (memo.get("big"), memo.get("a"), memo.nbytes) == (None, 6, 6)
    memo.clear()
    assert (memo.nbytes, len(memo)) == (0, 0)


def test_text_bytes_counts_wide_characters():
    assert text_bytes("ab") == sys.getsizeof("ab")
    assert text_bytes("😀" * 10) > text_bytes("a" * 10)


def test_neighbour_windows_stay_under_their_cap():
    docs = [f"def f{i}(x):\n" + "".join(f"    y{j} = x + {i * j}\n" for j in range(400)) for i in range(300)]
    total = sum(neighbours.index_bytes(doc, neighbours._index(doc)) for doc in docs)
    assert total > neighbours.WINDOWS_MEMO_BYTES  # more than the cap went through the memo
    assert 0 < neighbours._INDEXES.nbytes <= neighbours.WINDOWS_MEMO_BYTES
    assert len(neighbours._INDEXES) < len(docs)
    assert neighbours._windows(docs[-1]) is neighbours._windows(docs[-1])  # the latest is memoised


def test_the_windows_of_the_largest_document_scanned_are_memoised():
    """A document at the size cap fits the memo with room to spare: a keystroke elsewhere does not
    rescan it (at ~0.2 s a MB)."""
    body = "".join(f"def handler_{i}(request, response):\n    return dispatch(request, route_{i % 97})\n\n"
                   for i in range(20_000))
    doc = body[:neighbours.MAX_DOCUMENT_CHARS]
    windows = neighbours._windows(doc)
    assert neighbours.index_bytes(doc, neighbours._index(doc)) < neighbours.WINDOWS_MEMO_BYTES / 2
    assert neighbours._windows(doc) is windows
