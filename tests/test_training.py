"""The default model's training data: windows, FIM splits in both orders, packing, schedule."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from engine.fim import family_tokens

from fim_lsp.training.trainer import (
    FimPolicy, TrainConfig, display_path, fim_sample, lr_at, packed_sequences,
    split_points, windows,
)

TEXT = (
    "class Point:\n"
    "    def __init__(self, x, y):\n"
    "        self.x = x\n"
    "        self.y = y\n"
    "\n"
    "    def norm(self):\n"
    "        return (self.x ** 2 + self.y ** 2) ** 0.5\n"
)
TOKENS = family_tokens("starcoder")


def unpack(sample: str, order: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of a FIM sample in `order` (an empty PSM prefix reads like SPM)."""
    assert sample.endswith(TOKENS.eod), sample
    body = sample[: -len(TOKENS.eod)]
    if order == "spm":
        assert body.startswith(TOKENS.prefix + TOKENS.suffix), body
        suffix, rest = body[len(TOKENS.prefix + TOKENS.suffix):].split(TOKENS.middle)
        return "", rest, suffix  # SPM: prefix and middle run together after <fim_middle>
    assert body.startswith(TOKENS.prefix), body
    prefix, rest = body[len(TOKENS.prefix):].split(TOKENS.suffix)
    suffix, middle = rest.split(TOKENS.middle)
    return prefix, middle, suffix


def test_windows_keep_whole_lines_under_the_limit():
    chunks = list(windows(TEXT, 60))
    assert "".join(chunks) == TEXT
    assert all(len(c) <= 60 for c in chunks)
    assert all(c.endswith("\n") for c in chunks)
    assert list(windows("x" * 25 + "\n", 10)) == ["x" * 10]  # an overlong line is cut


@pytest.mark.parametrize("seed", range(20))
def test_line_splits_take_one_whole_line(seed):
    policy = FimPolicy(char_rate=0.0, block_rate=0.0, mid_line_rate=0.0)
    a, b = split_points(TEXT, random.Random(seed), policy)
    assert TEXT[a:b] in TEXT.splitlines(keepends=True)
    assert TEXT[a:b].strip()  # never an empty line
    assert a == 0 or TEXT[a - 1] == "\n"


@pytest.mark.parametrize("seed", range(20))
def test_mid_line_splits_run_to_the_end_of_the_line(seed):
    policy = FimPolicy(char_rate=0.0, block_rate=0.0, mid_line_rate=1.0)
    a, b = split_points(TEXT, random.Random(seed), policy)
    assert TEXT[a:b].endswith("\n") and "\n" not in TEXT[a:b - 1]


def test_block_splits_take_the_indented_body():
    policy = FimPolicy(char_rate=0.0, block_rate=1.0)
    seen = {TEXT[slice(*split_points(TEXT, random.Random(s), policy))] for s in range(50)}
    body = "    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    assert body in seen


@pytest.mark.parametrize("spm_rate, order", [(1.0, "spm"), (0.0, "psm")])
def test_fim_samples_in_both_orders_reassemble_the_text(spm_rate, order):
    policy = FimPolicy(fim_rate=1.0, spm_rate=spm_rate, filename_rate=0.0)
    for seed in range(30):
        sample = fim_sample(TEXT, random.Random(seed), policy, TOKENS)
        prefix, middle, suffix = unpack(sample, order)
        assert sample.count(TOKENS.middle) == 1
        if order == "psm":
            assert prefix + middle + suffix == TEXT
        else:
            assert middle + suffix == TEXT  # prefix+middle after <fim_middle>, then the suffix


def test_spm_sample_has_starcoders_layout():
    policy = FimPolicy(fim_rate=1.0, spm_rate=1.0, char_rate=0.0, block_rate=0.0, mid_line_rate=0.0,
                       filename_rate=1.0)
    sample = fim_sample(TEXT, random.Random(3), policy, TOKENS, path="geometry/point.py")
    head = "<filename>geometry/point.py\n"
    assert sample.startswith(head + "<fim_prefix><fim_suffix>")
    suffix, tail = sample[len(head + "<fim_prefix><fim_suffix>"):].split("<fim_middle>")
    assert tail.endswith("<|endoftext|>")
    assert tail[: -len("<|endoftext|>")] + suffix == TEXT


def test_left_to_right_samples_are_the_text_and_eod():
    policy = FimPolicy(fim_rate=0.0, filename_rate=0.0)
    assert fim_sample(TEXT, random.Random(0), policy, TOKENS) == TEXT + "<|endoftext|>"


def test_packed_sequences_have_the_exact_length_and_lose_nothing():
    samples = iter(["abcdefg", "hij", "klmnopqrstu"] * 100)
    encode = lambda texts: [[ord(c) for c in t] for t in texts]  # noqa: E731
    seqs = packed_sequences(samples, encode, seq_len=8, batch=3)
    first = [next(seqs) for _ in range(3)]
    assert all(len(s) == 8 for s in first)
    assert "".join(chr(i) for s in first for i in s) == "abcdefghijklmnopqrstuabc"


def test_display_path_keeps_the_last_components():
    assert display_path(Path("/usr/lib/python3.11/json/encoder.py")) == "python3.11/json/encoder.py"


def test_lr_warms_up_then_follows_the_cosine_to_the_floor():
    cfg = TrainConfig(out=Path("unused"), lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 0.0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 0.01, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 0.0, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 0.5, cfg) == pytest.approx(0.55e-3)
    assert lr_at(100, 1.0, cfg) == pytest.approx(1e-4)
    assert lr_at(100, 2.0, cfg) == pytest.approx(1e-4)  # past the deadline it stays at the floor


def test_loss_table_renders_the_log_as_markdown():
    from fim_lsp.training.trainer import loss_table

    log = ("step\ttokens\tminutes\tlr\ttrain_loss\tval_loss\n10\t100\t1.0\t1e-3\t5.0\t5.1\n"
           "20\t200\t2.0\t9e-4\t4.0\t4.2\n")
    assert loss_table(log) == (
        "| step | tokens | minutes | lr | train_loss | val_loss |\n"
        "|---|---|---|---|---|---|\n"
        "| 10 | 100 | 1.0 | 1e-3 | 5.0 | 5.1 |\n"
        "| 20 | 200 | 2.0 | 9e-4 | 4.0 | 4.2 |\n"
    )
    with pytest.raises(AssertionError, match="not a training log"):
        loss_table("a\tb\n1\t2\n")


def test_the_validation_set_is_fixed_and_the_bundled_model_beats_an_untrained_one_on_it():
    import sysconfig

    import torch
    from tokenizers import Tokenizer
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    from engine.select import DEFAULT_MODEL_DIR
    from fim_lsp.training.trainer import FimPolicy, sequences_loss, validation_sequences

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-c]*.py"))[:12]
    tokenizer = Tokenizer.from_file(str(DEFAULT_MODEL_DIR / "tokenizer.json"))
    encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts)]  # noqa: E731
    first = validation_sequences(files, encode, 512, FimPolicy(), count=8)
    assert first == validation_sequences(files, encode, 512, FimPolicy(), count=8)
    assert len(first) == 8 and all(len(s) == 512 for s in first)
    val = torch.tensor(first)
    trained = GPTBigCodeForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    torch.manual_seed(0)
    untrained = GPTBigCodeForCausalLM(GPTBigCodeConfig(**trained.config.to_dict())).eval()
    trained_loss, untrained_loss = sequences_loss(trained, val), sequences_loss(untrained, val)
    assert untrained_loss > 8.5  # about ln(8192): no better than a uniform guess
    assert trained_loss < 4.5 < untrained_loss


def test_each_package_is_capped_and_the_choice_is_fixed(tmp_path):
    from fim_lsp.training.trainer import capped_by_package, package_of

    stdlib, site = tmp_path / "lib", tmp_path / "site"
    files = []
    for root, package, count in ((stdlib, "json", 3), (stdlib, "site-packages/huge", 40), (site, "huge", 40),
                                 (site, "small", 2)):
        for i in range(count):
            f = root / package / f"m{i}.py"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text("x = 1\n" * 100)  # 600 bytes
            files.append(f)
    roots = [stdlib, site]
    assert package_of(stdlib / "site-packages/huge/m0.py", roots) == package_of(site / "huge/m1.py", roots) == "huge"
    assert package_of(stdlib / "json/m0.py", roots) == "json"
    kept = capped_by_package(sorted(files), roots, max_package_bytes=6000)
    by_package = {p: [f for f in kept if package_of(f, roots) == p] for p in ("json", "huge", "small")}
    assert [len(v) for v in by_package.values()] == [3, 10, 2]  # both copies of `huge` share one cap
    assert kept == sorted(kept) == capped_by_package(sorted(files), roots, max_package_bytes=6000)


def test_a_run_started_from_a_checkpoint_keeps_its_tokenizer_and_continues_its_log(tmp_path, monkeypatch):
    """--init: the run trains the checkpoint's weights with its own tokenizer, and its step and
    token counts carry on from the checkpoint's training log."""
    import shutil
    import time

    import torch
    from safetensors.torch import load_file

    from fim_lsp.training import trainer as training
    from fim_lsp.training.checkpoint_kit import corpus_files
    from tests.conftest import kit

    init = tmp_path / "init"
    shutil.copytree(kit(shape="tiny", family="starcoder"), init)
    (init / "training_log.tsv").write_text("step\ttokens\tminutes\tlr\ttrain_loss\tval_loss\n"
                                           "7\t7168\t1.0\t1.00e-03\t5.0\t5.0\n")
    config = json.loads((init / "config.json").read_text())
    monkeypatch.setattr(training, "corpus", lambda cap: corpus_files(400_000))  # a few stdlib files
    out = tmp_path / "out"
    cfg = TrainConfig(out=out, n_layer=config["n_layer"], n_embd=config["n_embd"], n_head=config["n_head"],
                      seq_len=config["n_positions"], vocab_size=config["vocab_size"],
                      batch_tokens=2 * config["n_positions"], micro_batch=2, warmup_steps=2,
                      deadline=time.time() + 3600, max_steps=2, checkpoint_every_s=1e9, threads=1,
                      compile=False, init=init)  # bounded by steps; the deadline only catches a hang
    training.train(cfg, log=lambda msg: None)

    rows = [line.split("\t") for line in (out / "training_log.tsv").read_text().strip().splitlines()]
    assert rows[1][:2] == ["7", "7168"]  # the checkpoint's own history is kept
    step, tokens = int(rows[-1][0]), int(rows[-1][1])
    assert step == 7 + 2 and tokens == 7168 + 2 * cfg.batch_tokens
    assert (out / "tokenizer.json").read_text() == (init / "tokenizer.json").read_text()
    before, after = load_file(str(init / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert not torch.equal(before["transformer.h.0.mlp.c_fc.weight"], after["transformer.h.0.mlp.c_fc.weight"])


def test_a_checkpoint_of_another_shape_is_refused_before_training(tmp_path):
    import time

    from fim_lsp.training import trainer as training
    from tests.conftest import kit

    cfg = TrainConfig(out=tmp_path / "out", n_layer=3, deadline=time.time() + 60,
                      init=kit(shape="tiny", family="starcoder"))
    with pytest.raises(AssertionError, match="another shape than asked"):
        training.train(cfg, log=lambda msg: None)


def test_a_deeper_model_grown_from_a_checkpoint_computes_what_the_checkpoint_computes():
    """--init with more layers: the old blocks keep their order and the new ones start as the
    identity, so the grown model's logits equal the checkpoint's before any training."""
    import torch
    from transformers import GPTBigCodeForCausalLM

    from fim_lsp.training.trainer import grown_state_dict
    from tests.conftest import kit

    old = GPTBigCodeForCausalLM.from_pretrained(kit(shape="tiny", family="starcoder"), dtype=torch.float32)
    config = old.config.to_dict()
    config["n_layer"] = 2 * old.config.n_layer + 1
    torch.manual_seed(0)
    deeper = GPTBigCodeForCausalLM(type(old.config).from_dict(config))
    grown = grown_state_dict(old.state_dict(), deeper.state_dict(), old.config.n_layer, config["n_layer"])
    assert grown.keys() == deeper.state_dict().keys()
    deeper.load_state_dict(grown)
    deeper.eval()  # the kit's config has dropout, like the real ones
    assert torch.equal(deeper.transformer.h[0].attn.c_attn.weight, old.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(deeper.transformer.h[2].mlp.c_fc.weight, old.transformer.h[1].mlp.c_fc.weight)
    assert not torch.equal(deeper.transformer.h[1].mlp.c_fc.weight, old.transformer.h[0].mlp.c_fc.weight)
    ids = torch.tensor([[1, 5, 9, 200, 7, 3, 42, 11]])
    with torch.no_grad():
        assert torch.allclose(deeper(ids).logits, old(ids).logits, atol=1e-5)
    with pytest.raises(AssertionError, match="cannot shrink"):
        grown_state_dict(old.state_dict(), old.state_dict(), 3, 2)
