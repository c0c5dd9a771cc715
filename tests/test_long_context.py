"""Contexts of 1k and 4k tokens on a real (kit) model: prompts longer than one prefill chunk.

The product prefills in chunks of 512 tokens (`TorchBackend.prefill_chunk`). A file of ~1k or ~4k
tokens is typed into at the cursor through the pipeline; the cached backend prefills the first
prompt in several chunks and then reuses its K/V (a keystroke prefills 1-2 tokens), while a fresh
cache-less backend prefills each whole prompt again in 512-token chunks. The tokens and the
suggestion must be the same, in fp32 and with int8 weights (per-row activation scales make a
row's int8 result independent of the chunk it is in). The model is the `small` kit shape
(4 x 256, a 4,096-token window), random weights, so each run stays CI-sized.
"""
import pytest
import torch

from benchmarks.keystroke_replay import keystrokes, load_problems, pad_problem
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import load_model
from engine.quantize import quantize_int8
from lsp_server import pipeline
from lsp_server.config import CompletionSettings
from tests.conftest import kit

CPU = torch.device("cpu")
CHUNK = 512  # the product's prefill chunk (TorchBackend's default)
KEYS = 3  # keystrokes typed after the first request at each length


@pytest.fixture(scope="module", params=["float32", "int8"])
def long_model(request):
    """The `small` kit model (n_positions 4096), in fp32 or with int8 weights over bf16 activations."""
    path = kit(shape="small", family="starcoder")
    if request.param == "float32":
        return load_model(str(path), CPU, torch.float32), torch.float32
    loaded = load_model(str(path), CPU, torch.bfloat16)
    quantize_int8(loaded.model)
    return loaded, torch.bfloat16


def backend(long_model, **cache) -> TorchBackend:
    loaded, kv_dtype = long_model
    made = TorchBackend(loaded, CacheConfig(**{"budget_bytes": 2**30, **cache}), kv_dtype=kv_dtype)
    assert made.prefill_chunk == CHUNK and loaded.model.args.n_positions >= 4096
    return made


@pytest.mark.parametrize("target_tokens", [1000, 3800], ids=["1k", "4k"])
def test_a_long_context_prefilled_in_chunks_then_reused_equals_recompute(long_model, target_tokens):
    cached = backend(long_model)
    config = pipeline.pipeline_config(CompletionSettings(max_new_tokens=8, beam=1))
    problems = load_problems(164)
    problem = pad_problem(problems[3], problems, cached.count_tokens, target_tokens)
    doc = f"file:///long-{target_tokens}.py"
    first = True
    for ctx in keystrokes(problem, max_keys=KEYS):
        text = ctx.prefix + ctx.suffix
        line, character = ctx.prefix.count("\n"), len(ctx.prefix) - (ctx.prefix.rfind("\n") + 1)  # ASCII
        got = pipeline.complete(cached, doc, text, line, character, config=config)
        expected = pipeline.complete(backend(long_model, reuse=False, share_blocks=False), doc, text, line,
                                     character, config=config)
        assert got.result.token_ids == expected.result.token_ids, ctx.prefix[-30:]
        assert got.suggestion == expected.suggestion
        prompt = expected.result.prompt_tokens
        assert prompt > 2 * CHUNK if target_tokens > 2 * CHUNK else prompt > CHUNK, "the prompt spans several chunks"
        assert prompt > 0.8 * min(target_tokens, cached.info.n_ctx - 8)
        assert expected.result.prefill_tokens == prompt  # the recompute prefilled every chunk
        if first:
            assert got.result.prefill_tokens == prompt, "the first request prefills the whole prompt in chunks"
        else:
            assert got.result.reused_tokens > prompt - CHUNK, "a keystroke reuses the cached K/V"
        first = False
