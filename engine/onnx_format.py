"""The ONNX export's on-disk format: file names, the manifest and its checks, opening a graph.

Both the exporter (`engine.onnx_export`) and the ONNX Runtime backend read this module; neither
imports the other for it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import xxhash

MANIFEST = "fim-lsp-onnx.json"
FORMAT_VERSION = 2  # bump when the graph's inputs, outputs or arithmetic change (2: int8 activations per row)
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
COPIED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PARITY_TOL = 1e-3  # fp32 logits, ORT against torch, checked after every export
Quantization = Literal["none", "int8-dynamic"]


class ExportError(Exception):
    """An export that cannot be made or used; the message says what was wrong and what to do."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an export directory holds and what it was made from (fim-lsp-onnx.json)."""

    format_version: int
    source: str  # the checkpoint directory exported
    source_hash: str  # xxh3-128 of the checkpoint's config, tokenizer and weight files
    opset: int
    dtype: str  # of the fp32 graph's weights and K/V
    files: dict[str, str]  # quantisation ("none", "int8-dynamic") -> file name in this directory
    n_layer: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    n_positions: int
    parity_max_abs: float  # fp32 ORT vs torch logits on the export check
    int8_agreement: float | None = None  # greedy top-1 agreement of int8 with fp32 on the export check
    exporter: str = ""  # torch / onnx / onnxruntime versions

    def write(self, out: Path) -> None:
        tmp = out / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(out / MANIFEST)

    @classmethod
    def read(cls, out: Path) -> "Manifest":
        """The manifest in `out`; ExportError when missing or unreadable."""
        file = out / MANIFEST
        if not file.is_file():
            raise ExportError(f"{out} holds no ONNX export ({MANIFEST} missing)")
        try:
            data = json.loads(file.read_text())
            known = {f.name for f in fields(cls)}
            manifest = cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError) as exc:
            raise ExportError(f"{file} is unreadable ({exc}); export again with fim-lsp export-onnx") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ExportError(f"{out} was exported in format {manifest.format_version}, this build reads "
                              f"{FORMAT_VERSION}; export again with fim-lsp export-onnx")
        return manifest


# ---------------------------------------------------------------------------------------------
# Identity of a checkpoint


def checkpoint_files(path: Path) -> list[Path]:
    """The files whose bytes determine a checkpoint's function: config, tokenizer, weights."""
    from engine.loading import weight_files

    return [path / "config.json", path / "tokenizer.json", *weight_files(path)]


def checkpoint_hash(path: Path, chunk: int = 1 << 24) -> str:
    """xxh3-128 over the checkpoint's files (names and bytes), as 32 hex digits."""
    digest = xxhash.xxh3_128()
    for file in checkpoint_files(path):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def check_export(out: Path, source_hash: str | None) -> Manifest:
    """The manifest of a usable export in `out`, or ExportError saying why it is not usable.

    `source_hash` is the checkpoint's current hash (None: the export directory was given on
    its own, and its source is checked only when the source still exists).
    """
    manifest = Manifest.read(out)
    if source_hash is None and (Path(manifest.source) / "config.json").is_file():
        source_hash = checkpoint_hash(Path(manifest.source))
    if source_hash is not None and source_hash != manifest.source_hash:
        raise ExportError(f"the export in {out} was made from another checkpoint (hash {manifest.source_hash[:12]}, "
                          f"the checkpoint's is {source_hash[:12]}); export again with fim-lsp export-onnx")
    for name in manifest.files.values():
        if not (out / name).is_file():
            raise ExportError(f"{out / name} is missing; export again with fim-lsp export-onnx")
    return manifest


# ---------------------------------------------------------------------------------------------
# The graph


def open_session(file: Path, providers: list[str] | None = None, threads: int | None = None):
    """An onnxruntime InferenceSession for `file`; ExportError if the file does not load."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; a failed load raises anyway
    # Worker threads sleep between calls instead of spinning: the cores are shared with the editor
    # and the language server, and a keystroke's work arrives in bursts.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(file), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{file} does not load in ONNX Runtime ({first}); the file is corrupt or truncated — "
                          f"export again with fim-lsp export-onnx") from None


def io_names(n_layer: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """(fixed inputs, past K/V inputs, logits output, present K/V outputs); K/V names go
    key_0, value_0, key_1, ... as the slot's arrays do."""
    past = [f"past_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(n_layer) for kind in ("key", "value")]
    return ["input_ids", "position_ids", "logit_positions"], past, ["logits"], present
