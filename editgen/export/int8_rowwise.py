"""Int8 weight matmuls with activations quantized per row: fast and batch-invariant on CPU.

Every MatMul whose weight is a 2-D initializer W [K, N] becomes, for its input x [..., K]:

    s   = max(max|x| over K, EPS) / 127             per row          [..., 1]
    q   = QuantizeLinear(x / s, 1, 128)              uint8, zero point 128
    y   = MatMulIntegerToFloat(q, Wq, 1, w_scale, 128) * s
    Wq  = round(W / w_scale) int8,  w_scale = max|W[:, n]| / 127   per output column

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

EPS = 1e-30  # an all-zero row quantizes to zeros instead of dividing by zero
ZERO_POINT = 128


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w [K, N] float -> (int8 [K, N], float32 scale [N]), symmetric per output column."""
    scale = np.abs(w).max(axis=0) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def rowwise_int8(src: Path, dst: Path, *, external_data: bool) -> int:
    """Rewrite the graph at `src` into `dst`; returns the number of matmuls quantized."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer if len(t.dims) == 2}
    consts = [numpy_helper.from_array(np.array(1.0 / 127.0, np.float32), "rowq_inv127"),
              numpy_helper.from_array(np.array(EPS, np.float32), "rowq_eps"),
              numpy_helper.from_array(np.array(1.0, np.float32), "rowq_one"),
              numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "rowq_zero_point")]
    nodes, replaced, used = [], 0, set()
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        x, w_name, y = node.input[0], node.input[1], node.output[0]
        p = f"{node.name or y}/rowq/"
        wq, w_scale = quantize_weight(numpy_helper.to_array(weights[w_name]).astype(np.float32))
        consts += [numpy_helper.from_array(wq, p + "w"), numpy_helper.from_array(w_scale, p + "w_scale")]
        used.add(w_name)
        nodes += [
            helper.make_node("Abs", [x], [p + "abs"], name=p + "Abs"),
            helper.make_node("ReduceMax", [p + "abs"], [p + "max"], name=p + "ReduceMax", axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "max", "rowq_eps"], [p + "max_eps"], name=p + "Max"),
            helper.make_node("Mul", [p + "max_eps", "rowq_inv127"], [p + "scale"], name=p + "Scale"),
            helper.make_node("Div", [x, p + "scale"], [p + "scaled"], name=p + "Div"),
            helper.make_node("QuantizeLinear", [p + "scaled", "rowq_one", "rowq_zero_point"], [p + "q"],
                             name=p + "QuantizeLinear"),
            helper.make_node("MatMulIntegerToFloat", [p + "q", p + "w", "rowq_one", p + "w_scale", "rowq_zero_point"],
                             [p + "y"], name=p + "MatMulIntegerToFloat", domain="com.microsoft"),
            helper.make_node("Mul", [p + "y", p + "scale"], [y], name=p + "RowScale"),
        ]
        replaced += 1
    still_read = {name for n in nodes for name in n.input}
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
