"""The reference backend: greedy tokens equal a hand-rolled argmax loop over full forwards."""
import torch
from transformers import AutoModelForCausalLM

from engine.api import CancelToken, Cancelled, CompletionRequest, DocId
from engine.backends.reference import ReferenceBackend

import pytest


def test_greedy_tokens_equal_an_argmax_loop(tiny_starcoder):
    backend = ReferenceBackend.load(tiny_starcoder)
    fim = backend.fim
    prompt = f"{fim.prefix}{fim.suffix}\n    return total\n{fim.middle}def add(a, b):\n"
    result = backend.complete(CompletionRequest(DocId("a"), prompt, max_new_tokens=12))
    model = AutoModelForCausalLM.from_pretrained(tiny_starcoder)
    ids = backend.tokenizer.encode(prompt)
    expected = []
    with torch.inference_mode():
        for _ in range(12):
            nxt = int(model(torch.tensor([ids + expected])).logits[0, -1].argmax())
            if nxt in backend.tokenizer.stop_ids():
                break
            expected.append(nxt)
    assert result.token_ids == expected
    assert result.text == backend.tokenizer.decode(expected)
    assert (result.prompt_tokens, result.prefill_tokens, result.reused_tokens) == (len(ids), len(ids), 0)


def test_stop_string_cuts_the_text(tiny_starcoder):
    backend = ReferenceBackend.load(tiny_starcoder)
    free = backend.complete(CompletionRequest(DocId("a"), "def f(x):\n", max_new_tokens=20))
    assert len(free.text) > 2
    stop = free.text[1:3]
    cut = backend.complete(CompletionRequest(DocId("a"), "def f(x):\n", max_new_tokens=20, stop_strings=(stop,)))
    assert cut.stop_reason == "stop_string" and cut.text == free.text[: free.text.index(stop)]


def test_cancel_raises(tiny_starcoder):
    backend = ReferenceBackend.load(tiny_starcoder)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        backend.complete(CompletionRequest(DocId("a"), "x = ", max_new_tokens=5), token)
