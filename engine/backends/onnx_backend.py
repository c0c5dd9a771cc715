"""The ONNX Runtime backend: the exported graph behind the torch backend's cache and decode loop.

Everything above the forward pass is shared with `TorchBackend`: tokenisation, the pure
`SlotTable` (reuse, block-hash seeding, LRU under the byte budget), `engine.generate`'s prefill
chunks, sampling, stop rules and cancellation. What differs is the forward (`OrtForward`, one
`session.run` per call) and the buffer a document's K/V live in (`OrtSlot`: per layer the key
and value arrays the graph returned, [1, kv_heads, S, head_dim] fp32). The graph returns K/V for
positions 0..P+T-1, so a slot's arrays are replaced after each call, and keeping a prefix of
length n is the slice [:, :, :n] (free for multi-query, where kv_heads is 1).

Loading never takes the server down: a missing onnxruntime, a missing, stale or corrupt export
raise `OnnxUnavailable` with a one-line reason, and `engine.select` falls back to torch on CPU.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from engine.api import Backend
from engine.backends.torch_backend import TorchBackend
from engine.cache import CacheConfig
from engine.loading import CheckpointError, LoadedModel, Progress, load_tokenizer, read_config, resolve_checkpoint
from engine.model import ModelArgs
from engine.onnx_format import (FP32_FILE, INT8_FILE, MANIFEST, ExportError, Manifest, check_export,
                                checkpoint_hash, io_names, open_session)

# (checkpoint dir, export dir, int8=..., progress=...) -> Manifest: `engine.onnx_export.export`, passed in
# by the caller that allows exporting on first use (the exporter checks its graphs with this backend)
Exporter = Callable[..., Manifest]

Quantization = Literal["auto", "none", "int8-dynamic"]


class OnnxUnavailable(Exception):
    """ONNX Runtime cannot serve this model; the message says why and what to do.

    `checkpoint`: the checkpoint to run with torch instead (the export's source when the model
    given was an export directory).
    """

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass(slots=True)
class OnnxConfig:
    """Where exports live and which graph runs."""

    export_dir: str | None = None  # None: `<checkpoint>/onnx`, or the --model directory if it is an export
    auto_export: bool = False  # backend=auto exports a missing or stale checkpoint on first use
    quantization: Quantization = "auto"  # auto: the int8 graph when the export has one, else fp32
    int8_on_export: bool = True  # an export made on first use also writes the int8 graph


class OrtSlot:
    """One document's K/V as graph inputs: per layer key, value [1, kv_heads, S, head_dim] fp32."""

    __slots__ = ("arrays", "capacity")

    device = torch.device("cpu")  # where `engine.generate` puts the ids it feeds us

    def __init__(self, args: ModelArgs, capacity: int):
        empty = np.zeros((1, args.kv_heads, 0, args.head_dim), np.float32)  # [1, KH, 0, D]
        self.arrays: list[np.ndarray] = [empty] * (2 * args.n_layer)  # key_0, value_0, key_1, ...
        self.capacity = capacity  # positions the slot table granted (arrays grow as tokens arrive)

    @property
    def length(self) -> int:
        """Positions whose K/V the arrays hold."""
        return self.arrays[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def past(self, n: int) -> list[np.ndarray]:
        """K/V of positions [0, n) as contiguous arrays (a view when kv_heads is 1)."""
        assert n <= self.length, f"the slot holds {self.length} positions, {n} were asked for"
        return [np.ascontiguousarray(a[:, :, :n]) for a in self.arrays]  # [1, KH, n, D] each

    def store(self, presents: list[np.ndarray]) -> None:
        """Take the graph's present K/V (positions 0..P+T-1) as the slot's arrays."""
        length = presents[0].shape[2]
        assert length <= self.capacity, f"{length} positions exceed the slot's capacity {self.capacity}"
        self.arrays = presents

    def grow(self, capacity: int) -> None:
        self.capacity = max(self.capacity, capacity)

    def truncate(self, n: int) -> None:
        """Keep positions [0, n): a verified draft's rejected tail must not count as held."""
        assert n <= self.length, f"the slot holds {self.length} positions, cannot keep {n}"
        self.arrays = [a[:, :, :n] for a in self.arrays]  # [1, KH, n, D] each

    def copy_prefix_from(self, other: "OrtSlot", n: int) -> None:
        """Take positions [0, n) from another document's slot (K/V depend only on the prefix)."""
        self.arrays = [a.copy() for a in other.past(n)]

    def copy_range_from(self, other: "OrtSlot", start: int, end: int) -> None:
        """Hold another slot's positions [0, end) (a beam line's parent: the same up to `start`). The
        arrays are shared, not copied: a forward replaces a slot's arrays, it never writes them."""
        assert end <= other.length, f"the slot holds {other.length} positions, {end} were asked for"
        self.arrays = [a[:, :, :end] for a in other.arrays]  # [1, KH, end, D] each


class OrtForward:
    """`Transformer`'s call signature over an ONNX Runtime session of the exported graph."""

    def __init__(self, session, args: ModelArgs):
        self.session = session
        self.args = args
        _, self.past_names, logits, present = io_names(args.n_layer)
        self.output_names = logits + present

    def run(self, ids, start: int, slot: OrtSlot, all_logits: bool = False) -> np.ndarray:
        """Feed `ids` at positions start.. over the slot's K/V [0, start); logits [T or 1, V]."""
        T = len(ids)
        assert T > 0 and start + T <= slot.capacity, f"positions {start}..{start + T - 1} do not fit the slot"
        feed = {
            "input_ids": np.asarray(ids, dtype=np.int64).reshape(1, T),  # [1, T]
            "position_ids": np.arange(start, start + T, dtype=np.int64)[None],  # [1, T]
            "logit_positions": np.arange(T, dtype=np.int64) if all_logits else np.array([T - 1], np.int64),  # [K]
        }
        feed.update(zip(self.past_names, slot.past(start)))
        logits, *presents = self.session.run(self.output_names, feed)  # [1, K, V], 2L x [1, KH, P+T, D]
        slot.store(presents)
        return logits[0]  # [K, V]

    def __call__(self, input_ids: Tensor, input_pos: Tensor, kv: OrtSlot, start: int,
                 last_only: bool = False) -> Tensor:
        """As `Transformer.forward`: input_ids, input_pos [T]; logits [T, V] or [1, V]."""
        return torch.from_numpy(self.run(input_ids.numpy(), start, kv, all_logits=not last_only))

    def forward_rows(self, input_ids: Tensor, input_pos: Tensor, kvs: list[OrtSlot]) -> Tensor:
        """As `Transformer.forward_rows` (a beam's lines), one graph run a row: logits [R, V]."""
        ids, positions = input_ids.tolist(), input_pos.tolist()
        return torch.from_numpy(np.concatenate([self.run([i], p, kv) for i, p, kv in zip(ids, positions, kvs)]))


class OnnxBackend(TorchBackend):
    """`engine.api.Backend` over an ONNX Runtime session; the torch backend's cache and decoding."""

    def __init__(self, session, export_dir: Path, manifest: Manifest, quantization: str,
                 cache: CacheConfig | None = None, why: str = "", speculate: int = 0):
        config = read_config(export_dir)
        forward = OrtForward(session, config.args)
        loaded = LoadedModel(model=forward, tokenizer=load_tokenizer(export_dir), path=export_dir,
                             layout=config.layout, stored_dtype=torch.float32, device=torch.device("cpu"),
                             dtype=torch.float32)
        super().__init__(loaded, cache=cache, kv_dtype=torch.float32, model_name=manifest.source, why=why,
                         speculate=speculate)
        provider = session.get_providers()[0]
        self.info = replace(self.info, backend="onnx", device="cpu" if provider.startswith("CPU") else "cuda",
                            dtype="int8" if quantization == "int8-dynamic" else "float32",
                            why=f"{why} ({provider})")
        self.manifest = manifest

    def new_buffer(self, capacity: int) -> OrtSlot:
        return OrtSlot(self.model.args, capacity)


def export_dir_for(path: Path, config: OnnxConfig) -> tuple[Path, bool]:
    """(where the export is, whether `path` is that export rather than its source checkpoint)."""
    if (path / MANIFEST).is_file():
        return path, True
    return (Path(config.export_dir) if config.export_dir else path / "onnx"), False


def choose_graph(manifest: Manifest, config: OnnxConfig, dtype: str) -> str:
    """The quantisation to run: --dtype float32 or quantization=none forces fp32."""
    if config.quantization == "none" or dtype == "float32":
        return "none"
    if config.quantization == "int8-dynamic" and "int8-dynamic" not in manifest.files:
        raise OnnxUnavailable("int8 was asked for but the export has no int8 graph; "
                              "export again with fim-lsp export-onnx --int8")
    return "int8-dynamic" if "int8-dynamic" in manifest.files else "none"


def providers_for(device: str) -> list[str]:
    """CUDA execution provider for cuda (or auto, when onnxruntime-gpu sees CUDA), else CPU."""
    import onnxruntime as ort

    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxUnavailable(f"--device {device}: this onnxruntime has no CUDA execution provider "
                                  f"(install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def locate_export(model: str, revision: str | None, config: OnnxConfig, dtype: str, exporter: Exporter | None,
                  say: Progress) -> tuple[Path, Manifest, str, str]:
    """(export directory, its manifest, the quantisation to run, why) for `model`.

    A missing or stale export is made first by `exporter` when one is given, else it is a reason to decline.
    """
    if dtype not in ("auto", "float32"):
        raise OnnxUnavailable(f"the ONNX export runs in float32 or int8, not {dtype}")
    try:
        import onnxruntime  # noqa: F401  (checked here so that its absence is a reason, not a crash)
    except ImportError:
        raise OnnxUnavailable("onnxruntime is not installed (pip install onnxruntime)") from None
    say("checking the ONNX export", 0.1)
    path = resolve_checkpoint(model, revision)
    out, given_export = export_dir_for(path, config)
    source_hash = None
    if not given_export:
        if not (out / MANIFEST).is_file() and exporter is None:
            raise OnnxUnavailable(f"no ONNX export for this checkpoint in {out} "
                                  f"(make one with: fim-lsp export-onnx --model {path} --out {out})")
        source_hash = checkpoint_hash(path)
    try:
        manifest = check_export(out, source_hash)
        why = f"ONNX Runtime export in {out}"
    except ExportError as stale:
        if given_export or exporter is None:
            raise
        manifest = exporter(path, out, int8=config.int8_on_export,
                          progress=lambda step: say(f"exporting: {step}", 0.2))
        why = f"exported to ONNX in {out} on first use ({stale})"
    quantization = choose_graph(manifest, config, dtype)
    agreement = f", {manifest.int8_agreement:.0%} greedy agreement with fp32" if manifest.int8_agreement else ""
    why += f"; {'int8 weights' + agreement if quantization != 'none' else 'fp32'}"
    return out, manifest, quantization, why


def load_onnx_backend(model: str, device: str = "auto", dtype: str = "auto", revision: str | None = None,
                      progress: Progress | None = None, cache: CacheConfig | None = None,
                      config: OnnxConfig | None = None, exporter: Exporter | None = None,
                      speculate: int = 0) -> Backend:
    """An OnnxBackend for `model` (a checkpoint or an export directory), or OnnxUnavailable."""
    say = progress or (lambda _msg, _frac: None)
    try:
        out, manifest, quantization, why = locate_export(model, revision, config or OnnxConfig(), dtype,
                                                         exporter, say)
        file = out / (INT8_FILE if quantization == "int8-dynamic" else FP32_FILE)
        say(f"opening {file.name} in ONNX Runtime", 0.5)
        session = open_session(file, providers_for(device))
        say("loaded", 1.0)
        return OnnxBackend(session, out, manifest, quantization, cache=cache, why=why, speculate=speculate)
    except (ExportError, CheckpointError, OSError, OnnxUnavailable) as exc:
        raise OnnxUnavailable(str(exc), source_of(model)) from None


def describe_onnx(model: str, revision: str | None = None, dtype: str = "auto", explicit: bool = False,
                  config: OnnxConfig | None = None) -> dict:
    """What `load_onnx_backend` would run, for `fim-lsp status`, without opening a session.

    Raises OnnxUnavailable as loading would; `explicit` (--backend onnx) exports on first use.
    """
    config = config or OnnxConfig()
    try:
        out, manifest, quantization, why = locate_export(model, revision, config, dtype, None,
                                                         lambda _msg, _frac: None)
    except OnnxUnavailable as exc:
        if not explicit or "no ONNX export" not in str(exc):
            raise
        return {"backend": "onnx", "model": model, "why": f"{exc}: --backend onnx makes one on first use"}
    except (ExportError, CheckpointError, OSError) as exc:
        raise OnnxUnavailable(str(exc)) from None
    return {"backend": "onnx", "model": manifest.source, "export": str(out), "device": "cpu",
            "dtype": "int8" if quantization == "int8-dynamic" else "float32", "n_ctx": manifest.n_positions,
            "int8_agreement": manifest.int8_agreement, "why": why}


def source_of(model: str) -> str | None:
    """The checkpoint an export directory was made from (None: `model` is no readable export)."""
    try:
        return Manifest.read(Path(model)).source
    except ExportError:
        return None
