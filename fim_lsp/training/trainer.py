"""Training the bundled default model: a small GPTBigCode FIM model on code every machine has.

The corpus is the Python standard library plus the Python sources of installed packages. Each
document is cut into windows that fit one training sequence; most windows are turned into
fill-in-the-middle samples in StarCoder's two orderings (SPM and PSM), split either at random
characters or at line boundaries (one line, the rest of a line, or an indented block), which is
what an editor asks for. Samples are packed into fixed-length sequences separated by
`<|endoftext|>`.

Pure parts (`fim_sample`, `windows`) take a `random.Random` and strings; the loop in `train`
owns torch and writes the model with its tokenizer atomically every few minutes, so a usable
checkpoint exists long before training ends.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from engine.fim import FimTokens, family_tokens, fim_prompt
from engine.revisions import PROMPT_HEADERS_FILE
from fim_lsp.training.checkpoint_kit import corpus_files, save_tokenizer, specials_for, train_tokenizer

FimOrder = Literal["spm", "psm"]


@dataclass(frozen=True, slots=True)
class FimPolicy:
    """How often and how samples are split for fill-in-the-middle."""

    fim_rate: float = 0.7  # fraction of windows turned into FIM samples
    spm_rate: float = 0.5  # of those, fraction in SPM order (the rest PSM)
    char_rate: float = 0.3  # of those, fraction split at random characters
    block_rate: float = 0.3  # of those, fraction whose middle is an indented block (rest: one line)
    mid_line_rate: float = 0.5  # of line splits, fraction where the cursor sits inside the line
    filename_rate: float = 0.5  # fraction of samples headed by `<filename>path\n`, as the product prompts


@dataclass(slots=True)
class TrainConfig:
    """One training run of the default model."""

    out: Path  # where config.json, model.safetensors and the tokenizer are written
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    seq_len: int = 512  # training sequence length = the model's n_positions
    vocab_size: int = 8192
    batch_tokens: int = 16384  # tokens per optimizer step
    micro_batch: int = 16  # sequences per forward pass
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    deadline: float = 0.0  # unix time at which training stops; the cosine schedule spans it
    max_steps: int | None = None  # stop after this many optimizer steps of this run, deadline or not
    checkpoint_every_s: float = 600.0
    seed: int = 0
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bf16 (fast on CPUs with AMX/AVX512-BF16)
    compile: bool = True  # torch.compile the training step's model (1.35x tokens/s on 2 cores, ~1 min to compile)
    policy: FimPolicy = field(default_factory=FimPolicy)
    max_package_bytes: int | None = 6_000_000  # each package's share of the corpus (None: all of it)
    state: Path | None = None  # optimizer state for resuming (kept outside the repo)
    init: Path | None = None  # a checkpoint directory whose weights and tokenizer start the run


# ---------------------------------------------------------------------------------------------
# Corpus and samples (pure)


def source_roots() -> list[Path]:
    """Directories of Python sources present on this machine: stdlib and site-packages."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"]), Path(paths["purelib"])]
    for extra in ("/usr/lib/python3/dist-packages",):
        if Path(extra).is_dir():
            roots.append(Path(extra))
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def training_files(roots: list[Path], max_file_bytes: int = 300_000) -> list[Path]:
    """Every `.py` file under `roots` (deduplicated by resolved path), sorted, small enough to be code."""
    seen: dict[Path, None] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                real, size = path.resolve(), path.stat().st_size
            except OSError:
                continue
            if 200 <= size <= max_file_bytes:
                seen.setdefault(real, None)
    return sorted(seen)


def package_of(path: Path, roots: list[Path]) -> str:
    """The top-level package (or stdlib module) a source file belongs to, whichever root holds it."""
    for root in roots:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if len(parts) > 2 and parts[0] in ("site-packages", "dist-packages"):
            return parts[1]  # a site-packages directory inside the stdlib's tree
        return parts[0]
    return str(path.parent)


def capped_by_package(files: list[Path], roots: list[Path], max_package_bytes: int) -> list[Path]:
    """`files` with each package's share capped at `max_package_bytes`, so a few huge packages
    (transformers, torch, sympy) do not outweigh the standard library and the many small ones.
    Which files a package keeps is a fixed pseudo-random choice (by a hash of the path)."""
    import hashlib

    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(package_of(f, roots), []).append(f)
    kept: list[Path] = []
    for group in groups.values():
        total = 0
        for f in sorted(group, key=lambda f: hashlib.sha1(str(f).encode()).hexdigest()):
            size = f.stat().st_size
            if total + size > max_package_bytes:
                continue
            kept.append(f)
            total += size
    return sorted(kept)


def corpus(max_package_bytes: int | None) -> list[Path]:
    """The training corpus of this machine: its Python sources, each package capped (None: uncapped)."""
    roots = source_roots()
    files = training_files(roots)
    return files if max_package_bytes is None else capped_by_package(files, roots, max_package_bytes)


def windows(text: str, max_chars: int) -> Iterator[str]:
    """Consecutive runs of whole lines of `text`, each at most `max_chars` (long lines cut)."""
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        if len(line) > max_chars:
            line = line[:max_chars]
        if size + len(line) > max_chars and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield "".join(chunk)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def split_points(text: str, rng: random.Random, policy: FimPolicy) -> tuple[int, int]:
    """Character offsets (start, end) of the middle, chosen as the policy says."""
    lines = text.splitlines(keepends=True)
    if rng.random() < policy.char_rate or len(lines) < 3:
        a, b = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        return a, b
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    code_lines = [i for i, line in enumerate(lines) if line.strip()] or [0]
    k = rng.choice(code_lines)
    if rng.random() < policy.block_rate:
        # the line and every following line indented deeper (a block body), or a few lines
        end = k + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > _indent(lines[k])):
            end += 1
        if end == k + 1:
            end = min(len(lines), k + rng.randint(2, 6))
        start = starts[k]
    else:
        end = k + 1
        start = starts[k]
        if rng.random() < policy.mid_line_rate:
            body = lines[k].rstrip("\n")
            lead = _indent(body)
            start += rng.randint(lead, len(body))
    return start, starts[end]


def fim_sample(text: str, rng: random.Random, policy: FimPolicy, tokens: FimTokens,
               path: str | None = None) -> str:
    """`text` as a training sample: left to right, or FIM in SPM or PSM order; ends with EOD.

    The prompt part is `engine.fim.fim_prompt`, the template the server serves (SPM or PSM), and
    the middle follows it. Some samples are headed by `<filename>{path}\n`, the head the
    product's prompts carry.
    """
    head = f"{tokens.filename}{path}\n" if path and rng.random() < policy.filename_rate else ""
    if rng.random() >= policy.fim_rate:
        return head + text + tokens.eod
    a, b = split_points(text, rng, policy)
    prefix, middle, suffix = text[:a], text[a:b], text[b:]
    order = "spm" if rng.random() < policy.spm_rate else "psm"
    return fim_prompt(tokens, order, prefix, suffix, head) + middle + tokens.eod


def display_path(path: Path, parts: int = 3) -> str:
    """The last few components of a source path, as a project-relative name would read."""
    return "/".join(path.parts[-parts:])


def sample_stream(files: list[Path], rng: random.Random, policy: FimPolicy, max_chars: int,
                  shuffle_buffer: int = 4096) -> Iterator[str]:
    """Endless FIM samples from windows of `files`, shuffled through a buffer, epoch after epoch."""
    tokens = family_tokens("starcoder")
    buffer: list[tuple[str, str]] = []
    while True:
        order = list(files)
        rng.shuffle(order)
        for path in order:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            name = display_path(path)
            for window in windows(text, max_chars):
                buffer.append((window, name))
                if len(buffer) >= shuffle_buffer:
                    i = rng.randrange(len(buffer))
                    buffer[i], buffer[-1] = buffer[-1], buffer[i]
                    window, name = buffer.pop()
                    yield fim_sample(window, rng, policy, tokens, name)


def packed_sequences(samples: Iterator[str], encode_batch, seq_len: int, batch: int = 256) -> Iterator[list[int]]:
    """Token sequences of exactly `seq_len` ids from samples concatenated end to end."""
    pending: list[int] = []
    while True:
        texts = [next(samples) for _ in range(batch)]
        for ids in encode_batch(texts):
            pending.extend(ids)
        while len(pending) >= seq_len:
            yield pending[:seq_len]
            del pending[:seq_len]


def batch_encoder(tokenizer):
    """texts -> token id lists with a `tokenizers.Tokenizer` (batched, special tokens recognised)."""
    return lambda texts: [e.ids for e in tokenizer.encode_batch(texts)]


def validation_sequences(held_out: list[Path], encode_batch, seq_len: int, policy: FimPolicy,
                         count: int = 128) -> list[list[int]]:
    """The fixed validation set: `count` packed sequences of FIM samples drawn from windows of the
    held-out files through a 2,048-window shuffle buffer (so they span many files, not the first few)."""
    stream = packed_sequences(sample_stream(held_out, random.Random(7), policy, seq_len * 3, 2048),
                              encode_batch, seq_len, 64)
    return [next(stream) for _ in range(count)]


def sequences_loss(model, sequences, bf16: bool = True, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats) of `model` over `sequences` [N, seq_len]."""
    import torch

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = [float(model(sequences[i:i + batch], labels=sequences[i:i + batch]).loss)
                  for i in range(0, len(sequences), batch)]
    return sum(losses) / len(losses)


def held_out_loss(model_dirs: list[Path], max_package_bytes: int | None, progress=None) -> list[float]:
    """Validation loss of each checkpoint directory on this machine's held-out files (the trainer's
    validation set, tokenised with each checkpoint's own tokenizer)."""
    import torch
    from tokenizers import Tokenizer
    from transformers import GPTBigCodeForCausalLM

    held_out = corpus(max_package_bytes)[::200]
    losses = []
    for d in progress(model_dirs) if progress else model_dirs:
        tokenizer = Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
        model = GPTBigCodeForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        seq_len = model.config.n_positions
        val = torch.tensor(validation_sequences(held_out, batch_encoder(tokenizer), seq_len, FimPolicy()))
        losses.append(sequences_loss(model, val))
    return losses


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay over the wall-clock progress (0..1)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


# ---------------------------------------------------------------------------------------------
# The training loop (torch)


def model_config(cfg: TrainConfig, eos_id: int) -> dict:
    """config.json of the default model, in the same layout as the hub's gpt_bigcode files."""
    return {
        "activation_function": "gelu_pytorch_tanh",
        "architectures": ["GPTBigCodeForCausalLM"],
        "attention_softmax_in_fp32": True,
        "attn_pdrop": 0.0,
        "bos_token_id": eos_id,
        "embd_pdrop": 0.0,
        "eos_token_id": eos_id,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt_bigcode",
        "multi_query": True,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_positions": cfg.seq_len,
        "resid_pdrop": 0.0,
        "scale_attention_softmax_in_fp32": True,
        "scale_attn_weights": True,
        "torch_dtype": "float16",
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


def save_model(model, out: Path) -> None:
    """Write the weights as fp16 safetensors, replacing the previous file atomically."""
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}  # tied to transformer.wte.weight, as on the hub
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


SANITY_PROMPTS = [
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        ",
    "def mean(values):\n    total = sum(values)\n    ",
    "import os\n\ndef exists(path):\n    return os.path.",
]


def sanity_generations(model, tokenizer, eos_id: int, max_new_tokens: int = 24) -> list[str]:
    """Greedy SPM completions of a few editor-like prefixes (empty suffix), for the log."""
    import torch

    outputs = []
    for prefix in SANITY_PROMPTS:
        ids = tokenizer.encode(f"<fim_prefix><fim_suffix><fim_middle>{prefix}").ids
        x = torch.tensor([ids])
        with torch.no_grad():
            for _ in range(max_new_tokens):
                nxt = int(model(x).logits[0, -1].argmax())
                if nxt == eos_id or x.shape[1] >= model.config.n_positions:
                    break
                x = torch.cat([x, torch.tensor([[nxt]])], dim=1)
        outputs.append(tokenizer.decode(x[0, len(ids):].tolist(), skip_special_tokens=False))
    return outputs


def grown_state_dict(old: dict, fresh: dict, old_layers: int, new_layers: int) -> dict:
    """Weights of a deeper model that computes exactly what `old` computes.

    The old blocks keep their order, spread evenly among `new_layers` (old block i lands at
    i * new_layers // old_layers); every other block takes `fresh`'s initial weights with the
    output projections of its attention and MLP zeroed, so it adds nothing to the residual
    stream until training moves those projections. Both dicts are transformers' GPTBigCode names.
    """
    assert new_layers >= old_layers, f"cannot shrink {old_layers} layers to {new_layers}"
    placed = {i * new_layers // old_layers: i for i in range(old_layers)}
    grown = {k: v for k, v in old.items() if not k.startswith("transformer.h.")}
    for name, value in fresh.items():
        if not name.startswith("transformer.h."):
            continue
        index, rest = name[len("transformer.h."):].split(".", 1)
        if int(index) in placed:
            grown[name] = old[f"transformer.h.{placed[int(index)]}.{rest}"]
        elif rest.startswith(("attn.c_proj.", "mlp.c_proj.")):
            grown[name] = value.new_zeros(value.shape)
        else:
            grown[name] = value
    return grown


def train(cfg: TrainConfig, log=print) -> None:
    """Train until `cfg.deadline`, checkpointing into `cfg.out` every `checkpoint_every_s`."""
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    assert cfg.deadline > time.time(), "the deadline is in the past"
    assert cfg.batch_tokens % (cfg.micro_batch * cfg.seq_len) == 0, (
        "batch_tokens must be a multiple of micro_batch*seq_len")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)

    if cfg.init is not None:
        from tokenizers import Tokenizer

        init_config = json.loads((cfg.init / "config.json").read_text())
        shape = {k: init_config[k] for k in ("n_layer", "n_embd", "n_head", "vocab_size")}
        shape["seq_len"] = init_config["n_positions"]
        mismatched = {k: (getattr(cfg, k), v) for k, v in shape.items() if getattr(cfg, k) != v
                      and not (k == "n_layer" and getattr(cfg, k) > v)}  # a deeper model grows from it
        assert not mismatched, f"--init {cfg.init} has another shape than asked (asked, found): {mismatched}"
        log(f"tokenizer: {cfg.init / 'tokenizer.json'} (the initial weights' own)")
        tokenizer = Tokenizer.from_file(str(cfg.init / "tokenizer.json"))
    else:
        log(f"tokenizer: starcoder specials, {cfg.vocab_size} tokens, trained on the stdlib")
        tokenizer = train_tokenizer("starcoder", cfg.vocab_size, corpus_files())
    save_tokenizer(tokenizer, "starcoder", cfg.out, cfg.seq_len)
    eos_id = tokenizer.token_to_id(specials_for("starcoder")[0])
    _write_json(cfg.out / "config.json", model_config(cfg, eos_id))
    _write_json(cfg.out / "generation_config.json", {"bos_token_id": eos_id, "eos_token_id": eos_id})
    # the prompt headers these samples carry, so the server prompts the model as it was trained
    _write_json(cfg.out / PROMPT_HEADERS_FILE, {"headers": ["filename"]})

    files = corpus(cfg.max_package_bytes)
    held_out = files[::200]
    train_files = [f for i, f in enumerate(files) if i % 200]
    total_bytes = sum(f.stat().st_size for f in train_files)
    log(f"corpus: {len(train_files)} files, {total_bytes / 1e6:.1f} MB; held out: {len(held_out)} files")

    encode_batch = batch_encoder(tokenizer)

    max_chars = cfg.seq_len * 3  # about one sequence of code per window
    val = torch.tensor(validation_sequences(held_out, encode_batch, cfg.seq_len, cfg.policy))  # [128, seq_len]

    config = GPTBigCodeConfig(**{k: v for k, v in model_config(cfg, eos_id).items()
                                 if k not in ("architectures", "torch_dtype")})
    if cfg.init is not None:
        model = GPTBigCodeForCausalLM.from_pretrained(cfg.init, dtype=torch.float32)
        log(f"weights: {cfg.init} (fresh optimizer state, warm-up from step 0)")
        if model.config.n_layer < cfg.n_layer:
            deeper = GPTBigCodeForCausalLM(config)
            deeper.load_state_dict(grown_state_dict(model.state_dict(), deeper.state_dict(),
                                                    model.config.n_layer, cfg.n_layer))
            log(f"grown from {model.config.n_layer} to {cfg.n_layer} layers (new blocks start as the identity)")
            model = deeper
    else:
        model = GPTBigCodeForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.n_layer} layers x {cfg.n_embd}, {cfg.n_head} heads MQA, ctx {cfg.seq_len}, "
        f"{n_params / 1e6:.2f}M params")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    step, tokens_seen = 0, 0
    if cfg.state is not None and cfg.state.exists():
        state = torch.load(cfg.state, weights_only=True)  # tensors, numbers and the optimizer's plain dicts only
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        step, tokens_seen = state["step"], state["tokens"]
        log(f"resumed at step {step}, {tokens_seen} tokens")
    elif cfg.init is not None and (cfg.init / "training_log.tsv").exists():
        # the run goes on from the initial weights' log: its step and token counts carry on
        init_log = (cfg.init / "training_log.tsv").read_text()
        last = init_log.strip().splitlines()[-1].split("\t")
        if last[0].isdigit():
            step, tokens_seen = int(last[0]), int(last[1])
            if not (cfg.out / "training_log.tsv").exists():
                (cfg.out / "training_log.tsv").write_text(init_log)
            log(f"continuing {cfg.init}'s log at step {step}, {tokens_seen} tokens")
    resumed_at = step  # a resumed run warms up again: Adam's moments are stale for a new peak rate
    # a resumed run draws fresh windows rather than replaying the ones already trained on
    rng.seed(cfg.seed + step)
    stream = packed_sequences(sample_stream(train_files, rng, cfg.policy, max_chars), encode_batch, cfg.seq_len)

    accum = cfg.batch_tokens // (cfg.micro_batch * cfg.seq_len)
    start = time.time()
    span = cfg.deadline - start
    last_ckpt = start
    log_path = cfg.out / "training_log.tsv"
    if not log_path.exists():
        log_path.write_text("step\ttokens\tminutes\tlr\ttrain_loss\tval_loss\n")

    def evaluate() -> float:
        model.eval()
        loss = sequences_loss(model, val, cfg.bf16)
        model.train()
        return loss

    def checkpoint(train_loss: float) -> None:
        val_loss = evaluate()
        save_model(model, cfg.out)
        if cfg.state is not None:
            torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step,
                        "tokens": tokens_seen}, str(cfg.state) + ".tmp")
            os.replace(str(cfg.state) + ".tmp", cfg.state)
        with log_path.open("a") as f:
            f.write(f"{step}\t{tokens_seen}\t{(time.time() - start) / 60:.1f}\t{lr:.2e}\t"
                    f"{train_loss:.4f}\t{val_loss:.4f}\n")
        log(f"checkpoint step {step}: val loss {val_loss:.4f}")
        model.eval()
        for text in sanity_generations(model, tokenizer, eos_id):
            log(f"  sample: {text!r}")
        model.train()

    model.train()
    forward = torch.compile(model) if cfg.compile else model  # shares the weights; saving uses `model`
    running = None
    lr = cfg.lr
    tick = time.time()
    while time.time() < cfg.deadline and (cfg.max_steps is None or step - resumed_at < cfg.max_steps):
        lr = lr_at(step - resumed_at, (time.time() - start) / span, cfg)
        for group in optim.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(accum):
            x = torch.tensor([next(stream) for _ in range(cfg.micro_batch)])  # [micro_batch, seq_len]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = forward(x, labels=x).loss
            (loss / accum).backward()
            loss_sum += float(loss.detach()) / accum
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += cfg.batch_tokens
        running = loss_sum if running is None else 0.95 * running + 0.05 * loss_sum
        if step % 10 == 0:
            rate = cfg.batch_tokens * 10 / (time.time() - tick)  # tokens/s over the last 10 steps
            log(f"step {step} loss {loss_sum:.4f} (avg {running:.4f}) lr {lr:.2e} {rate:.0f} tok/s")
            tick = time.time()
        if time.time() - last_ckpt >= cfg.checkpoint_every_s:
            checkpoint(running)
            last_ckpt = time.time()
    checkpoint(running if running is not None else float("nan"))
    log("done")


def loss_table(log_tsv: str, every: int = 1) -> str:
    """The training log (step, tokens, minutes, lr, losses) as a Markdown table for the model card."""
    rows = [line.split("\t") for line in log_tsv.strip().splitlines()]
    header, body = rows[0], rows[1:]
    assert header[:2] == ["step", "tokens"], f"not a training log: {header}"
    kept = [r for i, r in enumerate(body) if i % every == 0 or i == len(body) - 1]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in kept]
    return "\n".join(lines) + "\n"


def max_package_bytes(megabytes: float) -> int | None:
    return int(megabytes * 1e6) if megabytes > 0 else None


def main(argv: list[str] | None = None) -> int:
    """Command line of scripts/train_default_model.py."""
    import argparse
    from datetime import datetime, timedelta, timezone

    p = argparse.ArgumentParser(description="Train the bundled default FIM model.")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "default_model"))
    p.add_argument("--until", help="UTC time HH:MM at which to stop (today or tomorrow)")
    p.add_argument("--max-package-mb", type=float, default=6.0,
                   help="cap on each package's sources in the corpus (0: no cap)")
    p.add_argument("--held-out-loss", nargs="+", metavar="DIR",
                   help="only print the validation loss of these checkpoint directories and exit")
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--checkpoint-every", type=float, default=600.0, help="seconds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="train eagerly (no torch.compile)")
    p.add_argument("--state", default=None, help="optimizer state file for resuming")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="start from this checkpoint's weights and tokenizer (e.g. engine/default_model); "
                        "a --state file that exists takes precedence")
    args = p.parse_args(argv)
    if args.held_out_loss:
        from tqdm import tqdm

        dirs = [Path(d) for d in args.held_out_loss]
        for d, loss in zip(dirs, held_out_loss(dirs, max_package_bytes(args.max_package_mb), progress=tqdm)):
            print(f"{loss:.4f}\t{d}", flush=True)
        return 0
    if not args.until:
        p.error("--until is required to train")

    now = datetime.now(timezone.utc)
    hh, mm = (int(x) for x in args.until.split(":"))
    deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if deadline <= now:
        deadline += timedelta(days=1)
    cfg = TrainConfig(out=Path(args.out), n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                      seq_len=args.seq_len, vocab_size=args.vocab_size, batch_tokens=args.batch_tokens,
                      micro_batch=args.micro_batch, lr=args.lr, warmup_steps=args.warmup_steps,
                      max_steps=args.max_steps,
                      deadline=deadline.timestamp(), checkpoint_every_s=args.checkpoint_every,
                      threads=args.threads, bf16=not args.no_bf16, compile=not args.no_compile,
                      max_package_bytes=max_package_bytes(args.max_package_mb),
                      state=Path(args.state) if args.state else None,
                      init=Path(args.init) if args.init else None)
    print(json.dumps({k: str(v) for k, v in asdict(cfg).items()}), flush=True)
    train(cfg, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
