"""The export's per-row int8 matmul (editgen.export.int8_rowwise) against its formula."""

from __future__ import annotations

import numpy as np
import pytest

from editgen.export.int8_rowwise import EPS, WEIGHT_MAX, ZERO_POINT, quantize_weight, rowwise_int8

K, N = 96, 40


def _graph(tmp_path, weight, *, weight_also_added: bool = False, opset: int = 17, matmuls: int = 1):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1, N])]
    if weight_also_added:  # the weight read by another node too: its initializer must stay
        nodes.append(helper.make_node("Add", ["w", "w"], ["w2"], name="add"))
        outputs.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [K, N]))
    for i in range(1, matmuls):  # more matmuls sharing the weight
        nodes.append(helper.make_node("MatMul", ["x", "w"], [f"y{i}"], name=f"mm{i}"))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", 1, N]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 1, K])],
                              outputs, [numpy_helper.from_array(weight, "w")])
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(src))
    assert rowwise_int8(src, dst, external_data=False) == matmuls
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    int8 = [t for t in model.graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8) == 1  # a shared weight is quantized once
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == 1  # and their shared input x
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"])


def _reference(x, weight):
    """The module docstring's formula in numpy (float64 after the exact integer product)."""
    wq, w_scale = quantize_weight(weight)
    s = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(EPS)) * np.float32(1 / 127)
    q = np.clip(np.rint(x / s) + ZERO_POINT, 0, 255)  # rint: round half to even, as QuantizeLinear
    acc = (q.astype(np.int64) - ZERO_POINT) @ wq.astype(np.int64)  # exact
    return acc * w_scale.astype(np.float64) * s


def test_weight_quantization_is_symmetric_per_column():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    w[:, 3] = 0.0  # a zero column gets scale 1, not a division by zero
    wq, scale = quantize_weight(w)
    assert wq.dtype == np.int8 and scale.shape == (N,) and scale[3] == 1.0
    assert np.abs(wq).max() == WEIGHT_MAX and not (wq[:, 3]).any()
    assert np.all(np.abs(wq * scale - w) <= scale / 2 + 1e-7)
    # MLAS's u8 x s8 kernels without VNNI add two products in int16 with saturation: the
    # largest pair (activations up to 255) must fit.
    assert 2 * 255 * WEIGHT_MAX <= np.iinfo(np.int16).max


@pytest.mark.parametrize("opset", [17, 18])
def test_opsets_and_shared_weights(tmp_path, opset):
    """ReduceMax's axes are an attribute up to opset 17 and an input from 18; two matmuls
    reading one weight and one input share the int8 copy of each; both outputs equal the
    formula."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((3, 1, K)).astype(np.float32)
    y, y1 = _graph(tmp_path, weight, opset=opset, matmuls=2).run(None, {"x": x})
    np.testing.assert_allclose(y, _reference(x, weight), rtol=1e-5, atol=0)
    np.testing.assert_array_equal(y1, y)


def test_matmul_equals_its_formula_and_stays_near_fp32(tmp_path):
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((K, N)) * 0.1).astype(np.float32)
    x = rng.standard_normal((5, 1, K)).astype(np.float32) * np.array([1, 10, 0.01, 3, 100], np.float32)[:, None, None]
    got = _graph(tmp_path, weight).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, _reference(x, weight), rtol=1e-5, atol=0)
    exact = x.astype(np.float64) @ weight
    # Error bound of the two roundings (half a step of x's row scale, of W's column scale).
    half_x = np.abs(x).max(axis=-1, keepdims=True) / 127 / 2  # [rows, 1, 1]
    half_w = quantize_weight(weight)[1] / 2  # [N]
    bound = half_x * np.abs(weight).sum(0) + np.abs(x).sum(-1, keepdims=True) * half_w + K * half_x * half_w
    assert np.all(np.abs(got - exact) <= bound + 1e-6)
    assert np.abs(got - exact).max() > 0  # it is quantized, not passed through


def test_zero_row_gives_zeros_and_other_rows_are_untouched(tmp_path):
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((3, 1, K)).astype(np.float32)
    session = _graph(tmp_path, weight)
    alone = session.run(None, {"x": x[1:2]})[0]
    x[0] = 0.0
    got = session.run(None, {"x": x})[0]
    assert np.all(got[0] == 0.0)
    np.testing.assert_array_equal(got[1:2], alone)


@pytest.mark.parametrize("rows", [1, 2, 7])
def test_a_weight_read_elsewhere_keeps_its_initializer(tmp_path, rows):
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    x = rng.standard_normal((rows, 1, K)).astype(np.float32)
    y, w2 = _graph(tmp_path, weight, weight_also_added=True).run(None, {"x": x})
    np.testing.assert_array_equal(w2, weight + weight)
    assert y.shape == (rows, 1, N)
