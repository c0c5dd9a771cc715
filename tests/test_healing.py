"""Token healing: the look-ups on literal token texts, and a healed request on a real (tiny) model:
its first tokens re-spell the backed-off token, its text starts after it, and the cache stays exact."""
import pytest
import torch

from engine.api import CompletionRequest, DocId
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.healing import Healing, TokenTexts, healable
from engine.loading import load_model
from tests.conftest import kit
from tests.test_speculative import typing_requests

CPU = torch.device("cpu")
CACHE = CacheConfig(budget_bytes=64 * 2**20)
TEXTS = TokenTexts(["a", "ab", "abc", "b", "c", "\n", "\n ", "\n  ", " ", " x", "<s>", "\ufffd", "ba"],
                   special_ids=frozenset({10}))


@pytest.mark.parametrize("rest, ids", [
    ("ab", [0, 1, 2]),  # "a" spells a beginning; "ab" and "abc" start with all of it
    ("abc", [0, 1, 2]),
    ("b", [3, 12]),
    ("\n  ", [5, 6, 7]),
    (" ", [8, 9]),
    ("z", []),
])
def test_compatible_tokens(rest, ids):
    assert sorted(TEXTS.compatible(rest)) == ids


def test_specials_and_broken_characters_are_never_compatible():
    assert 10 not in TEXTS.compatible("<") and 11 not in TEXTS.compatible("\ufffd")
    assert not healable("<s>", TEXTS) and not healable("\ufffd", TEXTS) and not healable("", TEXTS)
    assert healable("\n  ", TEXTS) and healable("abc", TEXTS)
    assert not healable("az", TEXTS), "no token spells 'z': a rest of 'z' could not be re-spelled"


def test_healing_tracks_the_rest_and_strips_the_respelled_text():
    heal = Healing("\n  ", TEXTS)
    assert heal.pending and heal.strip("\n") == ""
    heal.chose("\n ")
    assert heal.rest == " " and sorted(heal.allowed()) == [8, 9]
    heal.chose(" x")  # a token that spells the rest and more ends healing
    assert not heal.pending and heal.strip("\n  x = 1") == "x = 1"


@pytest.fixture(scope="module")
def model():
    return load_model(str(kit(shape="tiny")), CPU, torch.float32)


def healed(backend, prompt, **kw):
    return backend.complete(CompletionRequest(DocId("file:///a.py"), prompt, heal=True, **kw))


@pytest.mark.parametrize("tail", ["\n        ", "\n    return sel", "x = foo(ba", "    "])
def test_a_healed_generation_respells_the_last_token_and_returns_what_follows(model, tail):
    backend = TorchBackend(model, CACHE)
    f, tok = backend.fim, backend.tokenizer
    prompt = f"{f.prefix}{f.suffix}\n    return x\n{f.middle}class A:\n    def f(self):{tail}"
    ids = tok.encode(prompt)
    backed_off = tok.decode(ids[-1:])
    result = healed(backend, prompt, max_new_tokens=12)
    generated = tok.decode(result.token_ids)
    assert result.prompt_tokens == len(ids) - 1
    assert generated.startswith(backed_off), (backed_off, generated)
    assert result.text == generated[len(backed_off):]
    assert backend.slot_tokens(DocId("file:///a.py"))[:len(ids) - 1] == ids[:-1]


def test_a_prompt_ending_in_a_special_token_is_not_healed(model):
    backend = TorchBackend(model, CACHE)
    f = backend.fim
    psm = f"{f.prefix}def f(x):\n    {f.suffix}\n    return y\n{f.middle}"
    plain = backend.complete(CompletionRequest(DocId("file:///p.py"), psm, max_new_tokens=8))
    backend.drop(DocId("file:///p.py"))
    heal = backend.complete(CompletionRequest(DocId("file:///p.py"), psm, max_new_tokens=8, heal=True))
    assert (heal.token_ids, heal.text, heal.prompt_tokens) == (plain.token_ids, plain.text, plain.prompt_tokens)


def test_the_healed_line_break_does_not_fire_a_line_break_stop(model):
    backend = TorchBackend(model, CACHE)
    f = backend.fim
    prompt = f"{f.prefix}{f.suffix}{f.middle}def f(x):\n        "
    assert backend.tokenizer.decode(backend.tokenizer.encode(prompt)[-1:]) == "\n        ", (
        "the last token holds the break")
    result = healed(backend, prompt, max_new_tokens=24, stop_strings=("\n",))
    generated = backend.tokenizer.decode(result.token_ids)
    assert generated.startswith("\n        ") and "\n" not in result.text
    assert len(result.token_ids) > 1 or result.stop_reason != "stop_string"


def test_healed_requests_over_a_typing_replay_equal_recomputing_from_scratch(model, one_thread):
    cached, fresh = TorchBackend(model, CACHE), TorchBackend(model, CacheConfig(budget_bytes=64 * 2**20, reuse=False))
    reused = 0
    for request in typing_requests(cached, problems=2, max_keys=12, heal=True):
        a, b = cached.complete(request), fresh.complete(request)
        assert (a.token_ids, a.text, a.stop_reason) == (b.token_ids, b.text, b.stop_reason), request.prompt
        reused += a.reused_tokens
    assert reused > 0, "healed keystrokes still reuse the document's cache"
