"""Int8 weight matmuls on ONNX Runtime CPU: the methods, timed by rows, and row invariance.

    python -m benchmarks.int8_methods --threads 2 --out bench-int8

The decoder step's weight matmuls at random:small's shapes, random weights: per layer six
1024 x 1024 (q, k, v, out, cross q, cross out; the step fuses q, k, v into one) and the
FFN's 1024 x 4096 and 4096 x 1024, chained with a Tanh between matmuls so that each gets
its own input, as in the step. Methods:
- fp32: plain MatMul;
- rowwise: the export's default (editgen.export.int8_rowwise), activations per row;
- matmul_nbits: MatMulNBits bits=8 (the previous default);
- dynamic (not offered): onnxruntime's quantize_dynamic, one activation scale per tensor.
Each is timed at 1, 4, 8, 16, 32 rows (median of `--repeats` runs after warm-up), and
checked for row invariance: row 0 must get the same bits with 2 rows as with 3..32.
Results: results.json and int8_methods.png in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, FFN = 24, 1024, 4096
SHAPES = [(HIDDEN, HIDDEN)] * 6 + [(HIDDEN, FFN), (FFN, HIDDEN)]  # per layer
ROWS = (1, 4, 8, 16, 32)
METHODS = ("fp32", "rowwise", "matmul_nbits", "dynamic")


def chain_model(path: Path, layers: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for i in range(layers):
        for j, (k, n) in enumerate(SHAPES):
            name = f"w{i}_{j}"
            weights.append(numpy_helper.from_array((rng.standard_normal((k, n)) * 0.02).astype(np.float32), name))
            nodes.append(helper.make_node("MatMul", [x, name], [name + "_mm"]))
            nodes.append(helper.make_node("Tanh", [name + "_mm"], [name + "_out"]))
            x = name + "_out"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["r", 1, HIDDEN])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["r", 1, HIDDEN])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, location=path.name + ".data")


def quantized(src: Path, method: str) -> Path:
    if method == "fp32":
        return src
    dst = src.with_name(f"{method}.onnx")
    if method == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         use_external_data_format=True, extra_options={"MatMulConstBOnly": True})
    else:
        from editgen.export.quantize import quantize_step_graph

        quantize_step_graph(src, dst, method, external_data=True)
    return dst


def measure(path: Path, threads: int, repeats: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((max(ROWS), 1, HIDDEN)).astype(np.float32)
    ms = {}
    for rows in ROWS:
        feed = {"x": x[:rows]}
        for _ in range(3):
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        ms[rows] = float(np.median(times) * 1e3)
    first = session.run(None, {"x": x[:2]})[0][0]
    invariant = all(np.array_equal(session.run(None, {"x": x[:r]})[0][0], first) for r in (3, 4, 8, 16, 32))
    return {"ms_by_rows": ms, "row_invariant": invariant}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_methods", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--layers", type=int, default=LAYERS, help="decoder layers (24: random:small)")
    p.add_argument("--out", type=Path, default=Path("bench-int8"))
    args = p.parse_args(argv)
    import logging

    logging.getLogger().setLevel(logging.WARNING)  # quantize_dynamic logs a line per tensor at INFO
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"threads": args.threads, "layers": args.layers, "rows": list(ROWS), "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        chain_model(src, args.layers)
        for method in METHODS:
            r = measure(quantized(src, method), args.threads, args.repeats)
            results["methods"][method] = r
            print(f"{method:13s} " + " ".join(f"{k} rows {v:6.1f} ms" for k, v in r["ms_by_rows"].items())
                  + f"  row-invariant: {r['row_invariant']}", file=sys.stderr)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "int8_methods.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'int8_methods.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, r in results["methods"].items():
        rows = [int(k) for k in r["ms_by_rows"]]
        label = method + ("" if r["row_invariant"] else " (not row-invariant)")
        ax.plot(rows, list(r["ms_by_rows"].values()), marker="o", label=label)
    ax.set_xlabel("rows per step")
    ax.set_ylabel(f"ms for the {results['layers']} layers' weight matmuls")
    ax.set_title(f"int8 methods, ONNX Runtime CPU, {results['threads']} threads")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
