"""The ONNX export: the graph computes the engine's forward (prefill and cached steps, MQA and MHA),
its manifest names the checkpoint it came from, and int8 quantisation keeps the embedding intact."""
import json
import shutil
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from engine.backends.onnx_backend import OrtForward, OrtSlot
from engine.loading import load_model
from engine.onnx_export import quantize, torch_logits
from engine.onnx_format import (
    FP32_FILE, INT8_FILE, MANIFEST, ExportError, Manifest, check_export, checkpoint_hash, open_session,
)
from fim_lsp import cli
from tests.conftest import kit

TOL = 1e-3  # fp32 logits, ORT against torch (the bound; seen: ~5e-6)
CPU = torch.device("cpu")


def assert_prefill_and_cached_steps_match(model, session, seed: int = 1):
    """Prefill 40 tokens, run 12 cached single-token steps, then crop to 20 and prefill 3 more."""
    a = model.args
    ids = torch.randint(20, a.vocab_size, (52,), generator=torch.Generator().manual_seed(seed)).tolist()
    expected = torch_logits(model, ids)  # [52, V]
    forward, slot = OrtForward(session, a), OrtSlot(a, capacity=64)
    prefill = forward.run(ids[:40], 0, slot, all_logits=True)  # [40, V]
    assert prefill.shape == (40, a.vocab_size)
    assert np.abs(prefill - expected[:40]).max() < TOL
    for p in range(40, 52):
        step = forward.run(ids[p:p + 1], p, slot)  # [1, V]
        assert np.abs(step[0] - expected[p]).max() < TOL, f"cached step at position {p}"
    assert slot.length == 52
    edited = ids[:20] + [21, 22, 23]  # keep a prefix, as a keystroke that edits mid-prompt does
    last = forward.run(edited[20:], 20, slot)  # [1, V], over the cropped K/V
    assert np.abs(last[0] - torch_logits(model, edited)[-1]).max() < TOL
    assert slot.length == 23


def test_multi_query_export_matches_torch_at_prefill_and_cached_steps(tiny_onnx):
    model = load_model(str(kit(shape="tiny", family="starcoder")), CPU, torch.float32).model
    assert_prefill_and_cached_steps_match(model, open_session(tiny_onnx / FP32_FILE))


def test_cli_exports_multi_head_santacoder_and_it_matches_torch(tmp_path):
    path = kit(shape="tiny", family="santacoder", mha=True)
    out = StringIO()
    with redirect_stdout(out):
        code = cli.main(["export-onnx", "--model", str(path), "--out", str(tmp_path), "--opset", "18"])
    assert code == 0
    assert f"{tmp_path / FP32_FILE}" in out.getvalue() and "max |diff|" in out.getvalue()
    manifest = check_export(tmp_path, checkpoint_hash(path))
    assert (manifest.kv_heads, manifest.files, manifest.int8_agreement) == (4, {"none": FP32_FILE}, None)
    model = load_model(str(path), CPU, torch.float32).model
    assert_prefill_and_cached_steps_match(model, open_session(tmp_path / FP32_FILE), seed=2)


def test_manifest_records_source_hash_opset_dtype_and_quantisation(tiny_onnx):
    path = kit(shape="tiny", family="starcoder")
    data = json.loads((tiny_onnx / MANIFEST).read_text())
    assert data["source"] == str(path) and data["source_hash"] == checkpoint_hash(path)
    assert (data["opset"], data["dtype"]) == (18, "float32")
    assert data["files"] == {"none": FP32_FILE, "int8-dynamic": INT8_FILE}
    assert (data["n_layer"], data["kv_heads"], data["head_dim"], data["vocab_size"]) == (2, 1, 16, 1024)
    assert data["parity_max_abs"] < TOL
    assert 0.0 <= data["int8_agreement"] <= 1.0
    assert Manifest.read(tiny_onnx).source_hash == data["source_hash"]


def test_checkpoint_hash_changes_with_one_weight_byte(tmp_path):
    src = kit(shape="tiny", family="starcoder")
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    assert checkpoint_hash(copy) == checkpoint_hash(src)
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    assert checkpoint_hash(copy) != checkpoint_hash(src)


def test_an_export_of_another_checkpoint_is_refused(tiny_onnx):
    other = checkpoint_hash(kit(shape="tiny", family="santacoder"))
    with pytest.raises(ExportError, match="made from another checkpoint"):
        check_export(tiny_onnx, other)


def test_a_directory_without_a_manifest_or_with_another_format_is_refused(tmp_path, tiny_onnx):
    with pytest.raises(ExportError, match="no ONNX export"):
        check_export(tmp_path, None)
    data = json.loads((tiny_onnx / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**data, "format_version": 0}))
    with pytest.raises(ExportError, match="exported in format 0"):
        check_export(tmp_path, None)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ExportError, match="unreadable"):
        check_export(tmp_path, None)


@pytest.mark.parametrize("damage", ["garbage", "truncated graph", "truncated weights"])
def test_a_corrupt_or_truncated_model_file_is_a_clear_error(tmp_path, tiny_onnx, damage):
    shutil.copytree(tiny_onnx, tmp_path, dirs_exist_ok=True)
    graph, data = tmp_path / FP32_FILE, tmp_path / (FP32_FILE + ".data")
    if damage == "garbage":
        graph.write_bytes(b"\x00not an onnx model" * 100)
    elif damage == "truncated graph":
        graph.write_bytes(graph.read_bytes()[:1000])
    else:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        open_session(graph)


def test_int8_graph_quantises_every_projection_and_the_tied_head(tiny_onnx):
    graph = onnx.load(str(tiny_onnx / INT8_FILE))
    ops = [n.op_type for n in graph.graph.node]
    # 2 layers x (c_attn, c_proj, c_fc, mlp c_proj) + the LM head
    assert ops.count("MatMulInteger") == 9 and "Gemm" not in ops and "DynamicQuantizeMatMul" not in ops
    embedding = next(n for n in graph.graph.node if n.op_type == "Gather" and n.input[0] == "m.wte.weight")
    table = next(t for t in graph.graph.initializer if t.name == embedding.input[0])
    assert (list(table.dims), table.data_type) == ([1024, 64], TensorProto.FLOAT), "the lookup keeps its fp32 table"


def test_quantize_gives_a_tied_head_int8_columns_and_keeps_the_embedding(tmp_path):
    w = np.array([[1.0, -2.0, 0.5], [0.25, 4.0, -1.0]], dtype=np.float32)  # [V=2, E=3], embedding and head
    nodes = [helper.make_node("Gather", ["w", "ids"], ["x"], name="embed"),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [2, 3], w.flatten())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    q = onnx.load(str(tmp_path / "int8.onnx"))
    ops = [(n.op_type, list(n.input)) for n in q.graph.node]
    assert ops[0] == ("Gather", ["w", "ids"])
    assert ("MatMulInteger", ["head.rowq.u8", "w.T.int8"]) in ops and ("Mul", ["head.rowq.accf", "w.T.scale"]) in ops
    scale = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == "w.T.scale"))
    assert np.allclose(scale, [2.0 / 127, 4.0 / 127]), "one scale per output column: max |w| / 127"
    int8 = numpy_helper.to_array(next(t for t in q.graph.initializer if t.name == "w.T.int8"))
    assert int8.dtype == np.int8 and int8.T.tolist() == [[64, -127, 32], [8, 127, -32]]
    ids = np.array([0, 1])
    got = open_session(tmp_path / "int8.onnx").run(None, {"ids": ids})[0]  # [2, 2]
    assert np.abs(got - w[ids] @ w.T).max() < 0.1


def test_export_refuses_a_directory_that_is_no_checkpoint(tmp_path):
    from engine.onnx_export import export

    with pytest.raises(ExportError, match="not a checkpoint directory"):
        export(tmp_path, tmp_path / "out")
    code = cli.main(["export-onnx", "--model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert code == 2


def test_the_int8_graph_gives_a_row_the_same_bits_alone_and_in_any_batch(tmp_path):
    """Activations quantised per row in the graph: rows of very different ranges fed together give
    exactly what each gives alone (DynamicQuantizeMatMul, one scale a call, did not: checked here)."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 48)) * 0.1).astype(np.float32)  # [in, out]
    b = (rng.standard_normal(48) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", 48])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10),
              str(tmp_path / "fp32.onnx"))
    quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    session = open_session(tmp_path / "int8.onnx")
    x = (rng.standard_normal((40, 64)) * np.logspace(-2, 2, 40)[:, None]).astype(np.float32)  # [40, 64]
    batch = session.run(None, {"x": x})[0]  # [40, 48]
    alone = np.concatenate([session.run(None, {"x": x[t:t + 1]})[0] for t in range(40)])
    assert np.array_equal(batch, alone)
    assert np.abs(batch - (x @ w + b)).max() <= 0.03 * np.abs(x @ w + b).max(axis=1).max()
    w_scale = (np.abs(w).max(0) / 127).astype(np.float32)  # [out]
    weights = [numpy_helper.from_array(np.clip(np.rint(w / w_scale), -127, 127).astype(np.int8), "w.int8"),
               numpy_helper.from_array(w_scale, "w.scale"), numpy_helper.from_array(b, "b")]
    per_call = helper.make_model(helper.make_graph(
        [helper.make_node("DynamicQuantizeMatMul", ["x", "w.int8", "w.scale", "", "b"], ["y"], domain="com.microsoft")],
        "g", graph.input, graph.output, weights),
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    onnx.save(per_call, str(tmp_path / "per_call.onnx"))
    old = open_session(tmp_path / "per_call.onnx")
    assert not np.array_equal(old.run(None, {"x": x})[0][:1], old.run(None, {"x": x[:1]})[0]), \
        "the per-call kernel should depend on the batch (else this test shows nothing)"


# The bundled trained model's int8 graph against torch fp32 over docs/benchmarks/keystrokes.md's
# replay (20 HumanEval problems x 12 keys, 8 greedy tokens a keystroke, 1 thread): measured
# AGREEMENT_MEASURED of tokens and KEYSTROKES_MEASURED of keystrokes on 2026-12-07, 2-core AMD EPYC
# (AVX2); the floors sit a little under them. ONNX Runtime's own per-call graph (quantize_dynamic)
# scored 84.0% / 71.9% on the same replay: the keystroke floor is the one that tells them apart.
AGREEMENT_MEASURED, AGREEMENT_FLOOR = 0.848, 0.83
KEYSTROKES_MEASURED, KEYSTROKES_FLOOR = 0.769, 0.75


def test_the_int8_graph_of_the_bundled_model_agrees_with_fp32_as_documented(tmp_path, one_thread):
    from benchmarks.backends import Task, agreement, load_mode
    from benchmarks.keystroke_replay import load_problems, replay
    from engine.select import DEFAULT_MODEL_DIR

    def backend(mode: str):
        return load_mode(Task(mode, str(DEFAULT_MODEL_DIR), str(tmp_path / "onnx"), 20, 12, 1, timings=False))

    fp32, int8 = backend("torch fp32"), backend("onnx int8")  # the second exports the checkpoint first
    assert (int8.info.backend, int8.info.dtype) == ("onnx", "int8")
    assert Manifest.read(tmp_path / "onnx").source_hash == checkpoint_hash(DEFAULT_MODEL_DIR)
    runs = replay(load_problems(20), {"fp32": fp32, "int8": int8}, fp32.info.n_ctx, 8, 12)
    same_keystrokes, same_tokens = agreement(*[[s.token_ids for s in r.samples] for r in runs])
    assert len(runs[0].samples) > 200, "every problem typed back, up to 12 keys each"
    print(f"ONNX int8 vs torch fp32: {same_tokens:.1%} of tokens, {same_keystrokes:.1%} of keystrokes")
    assert same_tokens >= AGREEMENT_FLOOR, (
        f"ONNX int8 agrees with fp32 on {same_tokens:.1%} of tokens ({same_keystrokes:.1%} of keystrokes); "
        f"measured {AGREEMENT_MEASURED:.1%}: the int8 graph regressed")
    assert same_keystrokes >= KEYSTROKES_FLOOR, (
        f"ONNX int8 gives fp32's tokens at {same_keystrokes:.1%} of keystrokes; measured "
        f"{KEYSTROKES_MEASURED:.1%}: the int8 graph regressed (a per-call graph scores ~72%)")
