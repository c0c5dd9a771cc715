"""Export the engine's GPTBigCode forward to ONNX, with its KV cache as graph inputs and outputs.

One graph serves prefill and decode: inputs `input_ids` [1, T], `position_ids` [1, T],
`logit_positions` [K] (which of the T new tokens need logits: the last one for prefill, all of
them to verify several drafted tokens) and per layer `past_key_i` / `past_value_i`
[1, kv_heads, P, head_dim]; outputs `logits` [1, K, V] and `present_key_i` / `present_value_i`
[1, kv_heads, P + T, head_dim]. T and P are dynamic (P = 0 for a fresh prompt), so cropping a
document's cache to a shared prefix is a slice of the arrays it holds.

The graph is traced from `engine.model`'s own blocks, so the exported function is the one the
torch backend runs. Next to the model a manifest records the source checkpoint's xxhash, the
opset, dtype and quantisation; `check_export` compares it with the checkpoint so that an export
of another (or an older) checkpoint is refused rather than served. `--int8` adds a copy with
int8 MatMul/Gemm weights (onnxruntime dynamic quantisation) and records its greedy agreement
with fp32.
"""
from __future__ import annotations

import gc
import logging
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.onnx_format import (MANIFEST, FORMAT_VERSION, FP32_FILE, INT8_FILE, COPIED_FILES, PARITY_TOL, ExportError,
                                Manifest, checkpoint_hash, io_names, open_session)

if TYPE_CHECKING:
    import numpy as np

def export_wrapper(model):
    """An nn.Module over `model`'s weights with the graph's inputs and outputs (see module doc)."""
    import torch
    import torch.nn.functional as F

    class CachedForward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, position_ids, logit_positions, past):
            m, a = self.m, self.m.args
            ids, pos = input_ids[0], position_ids[0]  # [T]
            T, start = ids.shape[0], past[0].shape[2]  # new tokens, cached positions P
            x = m.wte(ids) + m.wpe(pos)  # [T, E]
            presents = []
            for i, block in enumerate(m.h):
                fresh = x.new_zeros(2, a.kv_heads, T, a.head_dim)  # [2, KH, T, D], written by the block
                kv = torch.cat([torch.cat([past[2 * i], past[2 * i + 1]]), fresh], dim=2)  # [2, KH, P+T, D]
                x = block(x, pos, kv, start)
                presents += [kv[0:1], kv[1:2]]  # [1, KH, P+T, D] each
            x = x.index_select(0, logit_positions)  # [K, E]
            return (F.linear(m.ln_f(x), m.wte.weight)[None], *presents)  # [1, K, V], tied head

    return CachedForward()


def writes_as_concat() -> dict:
    """torch.export's decompositions, with in-place writes into a slice lowered to concatenation.

    The block writes its new K/V with `kv[:, :, start:end] = k`; the default lowering is an ONNX
    scatter whose index tensors span the whole cached length, which made a step's cost grow with
    the context. Writing at the end of a concatenation of the cached K/V is a plain Concat.
    """
    import torch

    def slice_scatter(input, src, dim=0, start=None, end=None, step=1):
        size = input.shape[dim]
        start = 0 if start is None else start
        end = size if end is None else min(end, size)
        return torch.cat([input.narrow(dim, 0, start), src, input.narrow(dim, end, size - end)], dim)

    def select_scatter(input, src, dim, index):
        size = input.shape[dim]
        return torch.cat([input.narrow(dim, 0, index), src.unsqueeze(dim),
                          input.narrow(dim, index + 1, size - index - 1)], dim)

    table = torch.export.default_decompositions()
    table[torch.ops.aten.slice_scatter.default] = slice_scatter
    table[torch.ops.aten.select_scatter.default] = select_scatter
    return table


def export_graph(model, file: Path, opset: int) -> None:
    """Trace `model` (fp32, CPU) and write the graph to `file` (weights as external data)."""
    import onnx
    import torch
    from torch.export import Dim

    a = model.args
    T = Dim("T", min=1, max=a.n_positions)
    P = Dim("P", min=0, max=a.n_positions)
    K = Dim("K", min=1, max=a.n_positions)
    n = 2 * a.n_layer
    # Sample shapes away from 0/1 so the tracer keeps every axis symbolic.
    past = tuple(torch.zeros(1, a.kv_heads, 3, a.head_dim) for _ in range(n))  # [1, KH, P=3, D]
    sample = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([[3, 4]]), torch.tensor([0, 1]), past)
    shapes = ({1: T}, {1: T}, {0: K}, tuple({2: P} for _ in range(n)))
    fixed_in, past_names, fixed_out, present_names = io_names(a.n_layer)
    # The exporter warns about operators of libraries we do not use (torchvision) and about its
    # own deprecations; none of it concerns the user.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.export.export(export_wrapper(model), sample, dynamic_shapes=shapes)
        traced = traced.run_decompositions(writes_as_concat())
        program = torch.onnx.export(traced, dynamo=True, input_names=fixed_in + past_names,
                                    output_names=fixed_out + present_names, opset_version=opset, verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(file), external_data=True)
    # Value infos recorded by the tracer can disagree with onnx's shape inference, which the
    # quantiser runs; the graph needs none of them to run. Rewrite the graph, not the weights.
    graph = onnx.load(str(file), load_external_data=False)
    del graph.graph.value_info[:]
    onnx.save(graph, str(file))


# ---------------------------------------------------------------------------------------------
# Checks after exporting


def check_ids(vocab: int, n: int, seed: int = 0) -> list[int]:
    """A fixed pseudo-random token sequence for parity checks (ids from 20 up: no specials)."""
    import random

    rng = random.Random(seed)
    return [rng.randrange(min(20, vocab - 1), vocab) for _ in range(n)]


def check_sequence(args, n_prompt: int = 48, n_steps: int = 8) -> tuple[list[int], int]:
    """(token ids, how many of them are prefilled at once) for the parity check."""
    n_prompt = min(n_prompt, args.n_positions - n_steps)
    return check_ids(args.vocab_size, n_prompt + n_steps), n_prompt


def torch_logits(model, ids: list[int]) -> "np.ndarray":
    """Full-recompute fp32 logits of every position: [S, V]."""
    import torch

    from engine.model import KVBuffer

    kv = KVBuffer(model.args, len(ids), torch.float32)
    with torch.no_grad():
        return model(torch.tensor(ids), torch.arange(len(ids)), kv, 0).numpy()


def ort_logits(session, args, ids: list[int], n_prompt: int) -> "np.ndarray":
    """Logits of a prefill of ids[:n_prompt], then of one cached step per further id: [S, V]."""
    import numpy as np

    from engine.backends.onnx_backend import OrtForward, OrtSlot

    forward, slot = OrtForward(session, args), OrtSlot(args, capacity=len(ids))
    got = [forward.run(ids[:n_prompt], 0, slot, all_logits=True)]  # [n_prompt, V]
    for p in range(n_prompt, len(ids)):
        got.append(forward.run(ids[p:p + 1], p, slot))  # [1, V]
    return np.concatenate(got)


def greedy_agreement(reference, candidate, args, prompts: list[list[int]], new_tokens: int) -> float:
    """Share of greedy steps where `candidate` picks the token `reference` picks.

    Both decode from the reference's own continuation (teacher forcing), so one early
    disagreement does not count against every later step.
    """
    import numpy as np

    from engine.backends.onnx_backend import OrtForward, OrtSlot

    ref, cand = OrtForward(reference, args), OrtForward(candidate, args)
    same = total = 0
    for prompt in prompts:
        slots = OrtSlot(args, args.n_positions), OrtSlot(args, args.n_positions)
        r = ref.run(prompt, 0, slots[0])[-1]
        c = cand.run(prompt, 0, slots[1])[-1]
        pos = len(prompt)
        for _ in range(new_tokens):
            token = int(np.argmax(r))
            same += token == int(np.argmax(c))
            total += 1
            if pos + 1 >= args.n_positions:
                break
            r = ref.run([token], pos, slots[0])[-1]
            c = cand.run([token], pos, slots[1])[-1]
            pos += 1
    return same / max(total, 1)


def sample_prompts(tokenizer, n_ctx: int, count: int = 6, chars: int = 600) -> list[list[int]]:
    """FIM prompts cut from this file's own source: code a tokenizer trained on code knows."""
    text = Path(__file__).read_text()
    fim = tokenizer.fim
    prompts = []
    step = max((len(text) - chars) // count, 1)
    for i in range(count):
        window = text[i * step:i * step + chars]
        cut = len(window) // 2
        prompt = f"{fim.prefix}{window[:cut]}{fim.suffix}{window[cut:]}{fim.middle}"
        prompts.append(tokenizer.encode(prompt)[: n_ctx // 2])
    return prompts


# ---------------------------------------------------------------------------------------------
# Export


Progress = Callable[[str], None]


def export(model_dir: str | Path, out: str | Path, int8: bool = False, opset: int = 18,
           progress: Progress | None = None) -> Manifest:
    """Export the checkpoint at `model_dir` into `out` (created; a stale export there is replaced)."""
    import onnx
    import onnxruntime
    import torch

    from engine.loading import CheckpointError, load_model

    say = progress or (lambda _step: None)
    src, out = Path(model_dir).resolve(), Path(out).resolve()
    if not (src / "config.json").is_file():
        raise ExportError(f"{src} is not a checkpoint directory (no config.json); pass --model DIR")
    if out == src:
        raise ExportError(f"--out {out} is the checkpoint directory itself; choose a directory of its own")
    say("hashing the checkpoint")
    source_hash = checkpoint_hash(src)
    say("loading the checkpoint (fp32)")
    try:
        loaded = load_model(str(src), torch.device("cpu"), torch.float32)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    model, args = loaded.model, loaded.model.args
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the directory is not a valid export until we finish
    for stale in [FP32_FILE, INT8_FILE]:
        for f in out.glob(stale + "*"):
            f.unlink()
    say("tracing and writing the ONNX graph")
    export_graph(model, out / FP32_FILE, opset)
    for name in COPIED_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    say("checking ONNX Runtime against torch")
    ids, n_prompt = check_sequence(args)
    expected = torch_logits(model, ids)  # [S, V]
    tokenizer = loaded.tokenizer
    del loaded, model  # the torch weights; ONNX Runtime holds its own copy from here on
    gc.collect()
    diff, agreement = check_graphs(out, args, ids, n_prompt, expected, tokenizer, int8, say)
    files = {"none": FP32_FILE, **({"int8-dynamic": INT8_FILE} if int8 else {})}
    manifest = Manifest(
        format_version=FORMAT_VERSION, source=str(src), source_hash=source_hash, opset=opset, dtype="float32",
        files=files, n_layer=args.n_layer, kv_heads=args.kv_heads, head_dim=args.head_dim,
        vocab_size=args.vocab_size, n_positions=args.n_positions, parity_max_abs=diff, int8_agreement=agreement,
        exporter=f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}",
    )
    manifest.write(out)
    return manifest


def check_graphs(out: Path, args, ids: list[int], n_prompt: int, expected, tokenizer, int8: bool,
                 say: Progress) -> tuple[float, float | None]:
    """Check the fp32 graph against torch's logits; quantise and measure int8 agreement if asked.

    (max |ORT - torch|, int8 greedy agreement or None). Only one fp32 copy of the weights is in
    memory at a time besides what the quantiser needs.
    """
    import numpy as np

    diff = float(np.abs(ort_logits(open_session(out / FP32_FILE), args, ids, n_prompt) - expected).max())
    if not diff <= PARITY_TOL:
        raise ExportError(f"the exported graph's logits differ from torch by {diff:.2e} (> {PARITY_TOL}); "
                          f"this checkpoint does not export faithfully")
    if not int8:
        return diff, None
    say("quantising weights to int8")
    gc.collect()
    quantize(out / FP32_FILE, out / INT8_FILE)
    say("measuring int8 agreement with fp32")
    agreement = greedy_agreement(open_session(out / FP32_FILE), open_session(out / INT8_FILE), args,
                                 sample_prompts(tokenizer, args.n_positions), new_tokens=16)
    return diff, agreement


def quantize(src: Path, dst: Path) -> None:
    """int8 weights for every MatMul/Gemm with a constant weight; activations quantised per row.

    Each such node becomes `row_quantized_matmul`'s few nodes over an int8 copy of its weight
    ([in, out], symmetric, one scale per output column): each row of activations is quantised on
    its own range and the int32 products come from `MatMulInteger`, so a token's result does not
    depend on the other rows of the call (onnxruntime's `DynamicQuantizeMatMul` picks one scale
    for the whole call: a prefill and a decode step quantised the same token differently).
    Everything else is unchanged and keeps reading `src`'s external data file. Weights are read
    and quantised one at a time, so memory
    stays at one fp32 weight (onnxruntime's `quantize_dynamic` holds several copies of the model:
    about 18 GB for a 1.1B-parameter one).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    producers = {out: node for node in graph.node for out in node.output}
    data_file = dst.with_name(dst.name + ".data")
    quantized: dict[str, tuple[str, str, str]] = {}  # (fp32 weight, transposed) -> int8, scale, zero-term names
    constants = False  # the per-row quantisation's shared constants are in the graph
    nodes = []
    with open(data_file, "wb") as out:
        for node in graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            plain_gemm = node.op_type == "Gemm" and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
                and not attrs.get("transA", 0)
            if node.op_type not in ("MatMul", "Gemm"):
                nodes.append(node)
                continue
            source, transposed = node.input[1], bool(attrs.get("transB", 0))
            flip = producers.get(source)  # a tied head reads the embedding through a Transpose
            if source not in weights and flip is not None and flip.op_type == "Transpose" \
                    and flip.input[0] in weights and len(weights[flip.input[0]].dims) == 2:
                source, transposed = flip.input[0], not transposed
            if not ((node.op_type == "MatMul" or plain_gemm) and source in weights):
                nodes.append(node)
                continue
            key = f"{source}{'.T' if transposed else ''}"
            if key not in quantized:
                w = read_weight(weights[source], src.parent)  # [in, out], or [out, in] when transposed
                w = w.T if transposed else w  # [in, out]
                scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0  # [out]
                q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)  # [in, out]
                qname, sname, zname = f"{key}.int8", f"{key}.scale", f"{key}.zero_terms"
                graph.initializer.append(external_tensor(q, qname, out, data_file.name))
                graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), sname))
                zero_terms = q.sum(axis=0, dtype=np.int64).astype(np.float32) * scale.astype(np.float32)  # [out]
                graph.initializer.append(numpy_helper.from_array(zero_terms.astype(np.float32), zname))
                quantized[key] = (qname, sname, zname)
            if not constants:
                graph.initializer.extend(row_quantization_constants())
                constants = True
            bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
            nodes.extend(row_quantized_matmul(node.input[0], *quantized[key], bias, node.output[0], node.name))
            readers[node.input[1]] -= 1
    outputs = {o.name for o in graph.output}
    for node in [n for n in nodes if n.op_type == "Transpose" and readers.get(n.output[0], 0) == 0
                 and n.output[0] not in outputs]:
        nodes.remove(node)  # it fed only a weight that is now int8
        readers[node.input[0]] -= 1
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if readers.get(t.name, 1) > 0]  # fp32 weights nobody reads go
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))


ROW_QMAX = 127  # activations as uint8 in [0, 127]: 7 bits, so u8 x s8 pairs never saturate (AVX2 adds them in int16)


def row_quantization_constants() -> list:
    """The scalars `row_quantized_matmul` reads: the reduced axis, 0, the range's top, the least scale."""
    import numpy as np
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array([-1], dtype=np.int64), "rowq.axes"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "rowq.zero"),
            numpy_helper.from_array(np.array(ROW_QMAX, dtype=np.float32), "rowq.qmax"),
            numpy_helper.from_array(np.array(np.finfo(np.float32).tiny, dtype=np.float32), "rowq.tiny")]


def row_quantized_matmul(x: str, weight: str, scale: str, zero_terms: str, bias: str | None, y: str,
                         name: str) -> list:
    """Nodes for y = x @ (weight * scale) + bias with x quantised per row (the last axis), asymmetric:
    s = (max(x, 0) - min(x, 0)) / 127, z = -round(min(x, 0) / s), u = clip(round(x / s) + z, 0, 127) as
    uint8, and y = s * (float(u @ weight) * scale - z * zero_terms) + bias, where zero_terms =
    sum_k weight[k, :] * scale. Every step but the exact integer MatMul is elementwise or a row's
    own min/max, so row t of y depends on row t of x alone (engine.quantize does the same in torch).
    """
    from onnx import TensorProto, helper

    p = f"{name}.rowq"
    nodes = [
        helper.make_node("ReduceMin", [x, "rowq.axes"], [f"{p}.min"], keepdims=1),  # [..., 1]
        helper.make_node("ReduceMax", [x, "rowq.axes"], [f"{p}.max"], keepdims=1),
        helper.make_node("Min", [f"{p}.min", "rowq.zero"], [f"{p}.lo"]),  # the range holds 0.0
        helper.make_node("Max", [f"{p}.max", "rowq.zero"], [f"{p}.hi"]),
        helper.make_node("Sub", [f"{p}.hi", f"{p}.lo"], [f"{p}.width"]),
        helper.make_node("Div", [f"{p}.width", "rowq.qmax"], [f"{p}.s0"]),
        helper.make_node("Max", [f"{p}.s0", "rowq.tiny"], [f"{p}.s"]),  # [..., 1] the row's scale
        helper.make_node("Div", [f"{p}.lo", f"{p}.s"], [f"{p}.lo_steps"]),
        helper.make_node("Round", [f"{p}.lo_steps"], [f"{p}.lo_round"]),
        helper.make_node("Neg", [f"{p}.lo_round"], [f"{p}.z"]),  # [..., 1] the row's zero point
        helper.make_node("Div", [x, f"{p}.s"], [f"{p}.steps"]),
        helper.make_node("Round", [f"{p}.steps"], [f"{p}.round"]),
        helper.make_node("Add", [f"{p}.round", f"{p}.z"], [f"{p}.shifted"]),
        helper.make_node("Clip", [f"{p}.shifted", "rowq.zero", "rowq.qmax"], [f"{p}.clipped"]),
        helper.make_node("Cast", [f"{p}.clipped"], [f"{p}.u8"], to=TensorProto.UINT8),
        helper.make_node("MatMulInteger", [f"{p}.u8", weight], [f"{p}.acc"]),  # int32, exact
        helper.make_node("Cast", [f"{p}.acc"], [f"{p}.accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}.accf", scale], [f"{p}.wscaled"]),
        helper.make_node("Mul", [f"{p}.z", zero_terms], [f"{p}.zterm"]),
        helper.make_node("Sub", [f"{p}.wscaled", f"{p}.zterm"], [f"{p}.centred"]),
        helper.make_node("Mul", [f"{p}.centred", f"{p}.s"], [f"{p}.y" if bias else y]),
    ]
    if bias:
        nodes.append(helper.make_node("Add", [f"{p}.y", bias], [y]))
    return nodes


def read_weight(tensor, folder: Path) -> "np.ndarray":
    """A float32 initializer's values, from the graph or memory-mapped from its external data file."""
    import numpy as np
    from onnx import numpy_helper

    if tensor.data_location != 1:  # TensorProto.EXTERNAL
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    shape = tuple(tensor.dims)
    return np.array(np.memmap(folder / info["location"], dtype=np.float32, mode="r",
                              offset=int(info.get("offset", 0)), shape=shape))


def external_tensor(array: "np.ndarray", name: str, out, location: str):
    """A TensorProto whose bytes are appended to the open file `out` (named `location`)."""
    from onnx import TensorProto

    offset = out.tell()
    out.write(array.tobytes())
    tensor = TensorProto(name=name, data_type=TensorProto.INT8, dims=array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


