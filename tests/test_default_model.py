"""The bundled default model: a real GPTBigCode FIM checkpoint, small enough to ship."""
from __future__ import annotations

import json
from pathlib import Path


DEFAULT = Path(__file__).resolve().parent.parent / "engine" / "default_model"
MAX_BYTES = 25 * 1024 * 1024


def test_default_model_fits_the_size_budget():
    sizes = {p.name: p.stat().st_size for p in DEFAULT.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(sizes)
    assert sum(sizes.values()) <= MAX_BYTES, sizes


def test_default_model_is_a_multi_query_gpt_bigcode():
    config = json.loads((DEFAULT / "config.json").read_text())
    assert config["model_type"] == "gpt_bigcode"
    assert config["multi_query"] is True
    assert config["vocab_size"] == 8192


def test_default_model_loads_with_the_auto_classes():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT))
    model = AutoModelForCausalLM.from_pretrained(str(DEFAULT), dtype=torch.float32)
    assert type(model).__name__ == "GPTBigCodeForCausalLM"
    for token in ("<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>"):
        assert token in tokenizer.get_vocab(), token
    ids = tokenizer("<fim_prefix><fim_suffix>\n<fim_middle>def f(x):\n    return x", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.convert_tokens_to_ids("<fim_prefix>")
    with torch.no_grad():
        logits = model(ids).logits  # [1, S, vocab]
    assert logits.shape == (1, ids.shape[1], 8192)
    assert torch.isfinite(logits).all()


def test_model_card_records_data_loss_curve_and_scores():
    card = (DEFAULT / "README.md").read_text()
    for heading in ("## Training data", "## Loss curve", "## Evaluation"):
        assert heading in card, heading
    assert "| step |" in card
    assert "exact match" in card.lower()
