"""The kernel properties batch invariance rests on, at random:small's sizes (hidden 1024,
FFN 4096, head_dim 64), where the tiny test models may take other kernel paths:

- onnxruntime's fp32 MatMul and both int8 methods of the export (per-row quantized
  MatMulIntegerToFloat, MatMulNBits) give a row the same bits for any number of rows >= 2
  (MIN_ROWS): a row's numbers do not depend on who shares its step;
- self-attention over a cache read of any multiple of POSITION_BUCKET positions gives a
  row the same bits (masked positions beyond the row's own are exact zeros), in
  onnxruntime and torch: the read length follows the longest row of the step.
If an onnxruntime or torch upgrade breaks one of these, this file says which."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.engine.contract import MIN_ROWS
from editgen.engine.contract import POSITION_BUCKET

HIDDEN, FFN, HEADS, HEAD_DIM = 1024, 4096, 16, 64
NEG = np.finfo(np.float32).min


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2  # the thread split must not matter either
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _matmul_model(weight):
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1, n])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", [None, "rowwise", "matmul_nbits"], ids=["fp32", "int8-rowwise", "int8-nbits"])
def test_weight_matmul_rows_do_not_depend_on_row_count(method, tmp_path):
    import onnx

    rng = np.random.default_rng(0)
    model = _matmul_model((rng.standard_normal((HIDDEN, FFN)) * 0.02).astype(np.float32))
    if method is not None:  # as the export quantizes its decoder step
        from editgen.export.quantize import METHODS, quantize_step_graph

        assert method in METHODS
        onnx.save(model, str(tmp_path / "fp32.onnx"))
        quantize_step_graph(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", method)
        model = onnx.load(str(tmp_path / "int8.onnx"))
        assert not any(node.op_type == "MatMul" for node in model.graph.node)
    session = _session(model)
    x = rng.standard_normal((64, 1, HIDDEN)).astype(np.float32)
    want = session.run(None, {"x": x[:MIN_ROWS]})[0][0]
    for rows in (3, 4, 5, 8, 9, 16, 17, 32, 64):
        got = session.run(None, {"x": x[:rows]})[0][0]
        np.testing.assert_array_equal(got, want, err_msg=f"{rows} rows")


def _attention_model():
    """The step's self-attention: softmax(q K^T + bias, new score last) @ [V; v_new]."""
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["past"]),
             helper.make_node("Add", ["past", "bias"], ["masked"]),
             helper.make_node("Concat", ["masked", "new"], ["scores"], axis=-1),
             helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
             helper.make_node("Slice", ["p", "zero", "minus_one", "last"], ["p_past"]),
             helper.make_node("MatMul", ["p_past", "v"], ["out"])]
    inputs = [helper.make_tensor_value_info("q", f, ["r", HEADS, 1, HEAD_DIM]),
              helper.make_tensor_value_info("k", f, ["r", HEADS, "L", HEAD_DIM]),
              helper.make_tensor_value_info("v", f, ["r", HEADS, "L", HEAD_DIM]),
              helper.make_tensor_value_info("bias", f, ["r", 1, 1, "L"]),
              helper.make_tensor_value_info("new", f, ["r", HEADS, 1, 1])]
    consts = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
              helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
              helper.make_tensor("last", TensorProto.INT64, [1], [3])]
    graph = helper.make_graph(nodes, "attn", inputs, [helper.make_tensor_value_info("out", f, None)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_attention_rows_do_not_depend_on_the_read_length():
    import torch

    rng = np.random.default_rng(1)
    full = 2048
    k = rng.standard_normal((2, HEADS, full, HEAD_DIM), dtype=np.float32)
    v = rng.standard_normal((2, HEADS, full, HEAD_DIM), dtype=np.float32)
    q = rng.standard_normal((2, HEADS, 1, HEAD_DIM), dtype=np.float32)
    new = rng.standard_normal((2, HEADS, 1, 1), dtype=np.float32)
    session = _session(_attention_model())

    def ort_run(position, length):
        bias = np.where(np.arange(length) < position, 0.0, NEG).astype(np.float32)[None, None, None].repeat(2, 0)
        feed = {"q": q, "k": np.ascontiguousarray(k[:, :, :length]), "v": np.ascontiguousarray(v[:, :, :length]),
                "bias": bias, "new": new}
        return session.run(None, feed)[0][0]

    def torch_run(position, length):
        kt, vt = torch.from_numpy(k[:1, :, :length]), torch.from_numpy(v[:1, :, :length])
        bias = torch.where(torch.arange(length) < position, 0.0, float(NEG))
        scores = torch.cat([torch.from_numpy(q[:1]) @ kt.transpose(-1, -2) + bias, torch.from_numpy(new[:1])], -1)
        return (torch.softmax(scores, -1)[..., :-1] @ vt)[0].numpy()

    for position in (1, 37, 63, 64, 65, 500, 1000, 1499):
        shortest = (position // POSITION_BUCKET + 1) * POSITION_BUCKET
        want_ort, want_torch = ort_run(position, shortest), torch_run(position, shortest)
        for length in range(shortest + POSITION_BUCKET, full + 1, 3 * POSITION_BUCKET):
            np.testing.assert_array_equal(ort_run(position, length), want_ort, err_msg=f"ort {position}/{length}")
            np.testing.assert_array_equal(torch_run(position, length), want_torch, err_msg=f"torch {position}/{length}")
