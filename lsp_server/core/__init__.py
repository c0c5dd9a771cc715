"""The pure prompt core: cursor context, prompt building, notebooks, neighbour snippets, post-processing.

Plain functions over plain data; no torch, no pygls (tests/test_core_purity.py).
"""
