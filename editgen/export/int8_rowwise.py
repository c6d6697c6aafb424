"""Int8 weight matmuls with activations quantized per row: fast and batch-invariant on CPU.

Every MatMul whose weight is a 2-D initializer W [K, N] becomes, for its input x [..., K]:

    s   = max(max|x| over K, EPS) / 127             per row          [..., 1]
    q   = QuantizeLinear(x / s, 1, 128)              uint8, zero point 128
    y   = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * s
    Wq  = round(W / w_scale) in [-63, 63],  w_scale = max|W[:, n]| / 63   per output column

Weights use 7 bits (WEIGHT_MAX = 63), as onnxruntime's `reduce_range`: on x86 CPUs without
VNNI, MLAS's u8 x s8 kernels add pairs of products in 16 bits with saturation
(vpmaddubsw), and 2 * 255 * 127 overflows it; 2 * 255 * 63 = 32130 does not. With VNNI
(or AMX) the products go straight into 32 bits, so the bound costs only the weights' eighth bit.

onnxruntime runs MatMulIntegerToFloat on MLAS's u8 x s8 GEMM (VNNI / AMX where the CPU has
them), whose cost barely grows with the rows. Its own dynamic quantization
(DynamicQuantizeMatMul) is as fast but takes one scale for the whole [rows, K] input, so a
row's numbers would depend on the rows sharing its step; here every op is row-wise and the
integer accumulation is exact, so a row's result is the same bits whatever the other rows
(tests/test_kernel_invariance.py). Measurements: docs/benchmarks.md, "int8 methods".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

METHOD_NOTE = "int8 weights (7 bits, one scale per output column), activations quantized per row"
EPS = 1e-30  # an all-zero row quantizes to zeros instead of dividing by zero
ZERO_POINT = 128
WEIGHT_MAX = 63  # 2 * 255 * WEIGHT_MAX must fit int16 (see above)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] float -> (int8 [K, N] in [-WEIGHT_MAX, WEIGHT_MAX], float32 scale [N]),
    symmetric per output column."""
    scale = np.abs(w).max(axis=0) / WEIGHT_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scale


def rowwise_int8(src: Path, dst: Path, *, external_data: bool) -> int:
    """Rewrite the graph at `src` into `dst`; returns the number of matmuls quantized."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2}
    consts = [numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "rowq_inv127"),
              numpy_helper.from_array(np.array(EPS, np.float32), "rowq_eps"),
              numpy_helper.from_array(np.array(1.0, np.float32), "rowq_one"),
              numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "rowq_zero_point")]
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        consts.append(numpy_helper.from_array(np.array([-1], np.int64), "rowq_last_axis"))
    nodes, replaced, used, quantized, activations = [], 0, set(), {}, {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        x, w_name, y = node.input[0], node.input[1], node.output[0]
        p = f"{node.name or y}/rowq/"
        if w_name not in quantized:  # a weight shared by several matmuls is quantized once
            wq, w_scale = quantize_weight(numpy_helper.to_array(weights[w_name]).astype(np.float32))
            consts += [numpy_helper.from_array(wq, p + "w"), numpy_helper.from_array(w_scale, p + "w_scale")]
            quantized[w_name] = (p + "w", p + "w_scale")
        wq_name, scale_name = quantized[w_name]
        used.add(w_name)
        if x not in activations:  # an input read by several matmuls is quantized once
            nodes += _quantize_rows(helper, x, p, opset)
            activations[x] = (p + "q", p + "scale")
        q_name, row_scale = activations[x]
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [q_name, wq_name, "rowq_one", scale_name, "rowq_zero_point"],
                             [p + "y"], name=p + "MatMulIntegerToFloat", domain="com.microsoft"),
            helper.make_node("Mul", [p + "y", row_scale], [y], name=p + "RowScale"),
        ]
        replaced += 1
    # Top-level nodes only: the decoder step has no subgraphs (If/Loop), whose matmuls this
    # would neither rewrite nor see reading a weight.
    still_read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in used or t.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept + consts)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if external_data:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(dst).name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
    return replaced


def _quantize_rows(helper, x: str, p: str, opset: int) -> list:
    """Nodes computing `p`scale (per row, [..., 1]) and `p`q (uint8) of input `x`."""
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        reduce_max = helper.make_node("ReduceMax", [p + "abs", "rowq_last_axis"], [p + "max"], name=p + "ReduceMax",
                                      keepdims=1)
    else:
        reduce_max = helper.make_node("ReduceMax", [p + "abs"], [p + "max"], name=p + "ReduceMax", axes=[-1],
                                      keepdims=1)
    return [
        helper.make_node("Abs", [x], [p + "abs"], name=p + "Abs"),
        reduce_max,
        helper.make_node("Max", [p + "max", "rowq_eps"], [p + "max_eps"], name=p + "Max"),
        helper.make_node("Mul", [p + "max_eps", "rowq_inv127"], [p + "scale"], name=p + "Scale"),
        helper.make_node("Div", [x, p + "scale"], [p + "scaled"], name=p + "Div"),
        helper.make_node("QuantizeLinear", [p + "scaled", "rowq_one", "rowq_zero_point"], [p + "q"],
                         name=p + "QuantizeLinear"),
    ]
