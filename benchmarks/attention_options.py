"""Length-aware self-attention on ONNX Runtime CPU: the options, timed over a whole request.

    python -m benchmarks.attention_options --seconds 30 --rows 4 --threads 2 --out bench-attn

Self-attention of every decoder layer of random:small's shapes (24 layers, 16 heads,
head_dim 64; 4 rows = one edit with CFG) at every `--every`-th position of a request,
summed over the request's steps (each sample stands for `--every` steps):
- capacity: the standard graph reading the request's whole static cache every step (the
  engine before contract v3);
- buckets: the standard graph reading the pool's length (a multiple of 64 following the
  longest row, 1/8 headroom), plus the pool's re-strides (prefix copies) at boundaries,
  timed with editgen's HostKVPool (what the engine runs now);
- gqa: com.microsoft.GroupQueryAttention with past and present bound to one buffer
  (onnxruntime writes the new K/V in place) and per-row lengths (seqlens_k): reads each
  row's own length;
- mha: com.microsoft.MultiHeadAttention with past_key/past_value: its present outputs hold
  past + new, a copy of the cache per step;
- kv8: the int8 KV engine's kernel (editgen.kernels.cpu_attention) over an int8 pool of the
  same length (what `--quantize int8` runs on CPU), the new K/V written in place.
Inputs per layer: q, k_new, v_new for the rows; outputs the attention output. Weights
and everything else of the step are left out: this isolates what the options change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import repeat_timing

LAYERS, HEADS, HEAD_DIM = 24, 16, 64
HIDDEN = HEADS * HEAD_DIM


def _session(model, threads):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), o, providers=["CPUExecutionProvider"])


def standard_model(layers: int):
    """Per layer: softmax([q K^T + bias, q k_new]) @ [V; v_new], as the exported step."""
    from onnx import TensorProto, helper

    f, nodes, inputs, outputs = TensorProto.FLOAT, [], [], []
    inputs.append(helper.make_tensor_value_info("bias", f, ["r", 1, 1, "L"]))
    consts = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
              helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
              helper.make_tensor("big", TensorProto.INT64, [1], [1 << 40]),
              helper.make_tensor("axis", TensorProto.INT64, [1], [3])]
    for i in range(layers):
        q, k, v, kn, vn = (f"{n}_{i}" for n in ("q", "past_key", "past_value", "k_new", "v_new"))
        for name, shape in ((q, ["r", HEADS, 1, HEAD_DIM]), (k, ["r", HEADS, "L", HEAD_DIM]),
                            (v, ["r", HEADS, "L", HEAD_DIM]), (kn, ["r", HEADS, 1, HEAD_DIM]),
                            (vn, ["r", HEADS, 1, HEAD_DIM])):
            inputs.append(helper.make_tensor_value_info(name, f, shape))
        nodes += [helper.make_node("Transpose", [k], [f"kt{i}"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", [q, f"kt{i}"], [f"sp{i}"]),
                  helper.make_node("Add", [f"sp{i}", "bias"], [f"spb{i}"]),
                  helper.make_node("Transpose", [kn], [f"knt{i}"], perm=[0, 1, 3, 2]),
                  helper.make_node("MatMul", [q, f"knt{i}"], [f"sn{i}"]),
                  helper.make_node("Concat", [f"spb{i}", f"sn{i}"], [f"s{i}"], axis=-1),
                  helper.make_node("Softmax", [f"s{i}"], [f"p{i}"], axis=-1),
                  helper.make_node("Slice", [f"p{i}", "zero", "minus_one", "axis"], [f"pp{i}"]),
                  helper.make_node("Slice", [f"p{i}", "minus_one", "big", "axis"], [f"pn{i}"]),
                  helper.make_node("MatMul", [f"pp{i}", v], [f"o1_{i}"]),
                  helper.make_node("Mul", [f"pn{i}", vn], [f"o2_{i}"]),
                  helper.make_node("Add", [f"o1_{i}", f"o2_{i}"], [f"out_{i}"])]
        outputs.append(helper.make_tensor_value_info(f"out_{i}", f, None))
    graph = helper.make_graph(nodes, "standard", inputs, outputs, consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def contrib_model(layers: int, op: str):
    """Per layer one com.microsoft GroupQueryAttention or MultiHeadAttention node."""
    from onnx import TensorProto, helper

    f, nodes, inputs, outputs = TensorProto.FLOAT, [], [], []
    if op == "gqa":
        inputs += [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["r"]),
                   helper.make_tensor_value_info("total_len", TensorProto.INT32, [])]
    for i in range(layers):
        q, kn, vn, k, v = (f"{n}_{i}" for n in ("q", "k_new", "v_new", "past_key", "past_value"))
        inputs += [helper.make_tensor_value_info(q, f, ["r", 1, HIDDEN]),
                   helper.make_tensor_value_info(kn, f, ["r", 1, HIDDEN]),
                   helper.make_tensor_value_info(vn, f, ["r", 1, HIDDEN]),
                   helper.make_tensor_value_info(k, f, ["r", HEADS, "L", HEAD_DIM]),
                   helper.make_tensor_value_info(v, f, ["r", HEADS, "L", HEAD_DIM])]
        present = [f"present_key_{i}", f"present_value_{i}"]
        if op == "gqa":
            nodes.append(helper.make_node("GroupQueryAttention", [q, kn, vn, k, v, "seqlens_k", "total_len"],
                                          [f"out_{i}", *present], domain="com.microsoft", num_heads=HEADS,
                                          kv_num_heads=HEADS, scale=HEAD_DIM ** -0.5))
        else:
            nodes.append(helper.make_node("MultiHeadAttention", [q, kn, vn, "", "", "", k, v],
                                          [f"out_{i}", *present], domain="com.microsoft", num_heads=HEADS,
                                          scale=HEAD_DIM ** -0.5))
        outputs += [helper.make_tensor_value_info(n, f, None) for n in (f"out_{i}", *present)]
    graph = helper.make_graph(nodes, op, inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


class Timer:
    def __init__(self, threads: int, rows: int, capacity: int, layers: int):
        rng = np.random.default_rng(0)
        self.rows, self.capacity, self.layers = rows, capacity, layers
        self.small = {f"{n}_{i}": rng.standard_normal((rows, HEADS, 1, HEAD_DIM), dtype=np.float32)
                      for i in range(layers) for n in ("q", "k_new", "v_new")}
        # One cache per layer at full capacity, touched so its pages are resident.
        self.cache = rng.standard_normal((layers, 2, rows, HEADS, capacity, HEAD_DIM), dtype=np.float32)
        self.standard = _session(standard_model(layers), threads)
        self.gqa = _session(contrib_model(layers, "gqa"), threads)
        self.mha = _session(contrib_model(layers, "mha"), threads)
        self.threads = threads
        blocks = capacity // 16  # the int8 pool, filled (touched) like the fp32 cache
        self.k8 = rng.integers(-127, 128, (layers, blocks, rows, HEADS, HEAD_DIM, 16), dtype=np.int8)
        self.v8 = rng.integers(-127, 128, (layers, blocks, rows, HEADS, 16, HEAD_DIM), dtype=np.int8)
        self.kscale = np.full((layers, blocks, rows, HEADS, 16), 0.01, np.float32)
        self.vscale = self.kscale.copy()
        self.qkv = rng.standard_normal((rows, 1, 3 * HIDDEN), dtype=np.float32)

    def standard_step(self, position: int, length: int, kv: np.ndarray) -> float:
        """kv: [layers, 2, rows, heads, >= length, head_dim] contiguous at `length`."""
        bias = np.where(np.arange(length) < position, 0.0, np.finfo(np.float32).min).astype(np.float32)
        feed = {"bias": np.broadcast_to(bias, (self.rows, 1, 1, length)).copy(), **self.small}
        for i in range(self.layers):
            feed[f"past_key_{i}"], feed[f"past_value_{i}"] = kv[i, 0], kv[i, 1]
        return _timed(lambda: self.standard.run(None, feed))

    def kv8_step(self, position: int) -> float:
        """The int8 KV kernel for every layer, rows at `position`, the pool `capacity` long."""
        from editgen.kernels.cpu_attention import BLOCK, kv8_attention

        positions = np.full(self.rows, position, np.int64)
        write, src, self_b = np.ones(self.rows, np.uint8), np.arange(self.rows), np.zeros(self.rows, np.float32)
        scratch = np.empty(self.rows * HEADS * (self.capacity + BLOCK), np.float32)
        out = np.empty((self.rows, 1, HIDDEN), np.float32)

        def run():
            for i in range(self.layers):
                kv8_attention(self.qkv, positions, write, src, self_b, self.k8[i], self.kscale[i], self.v8[i],
                              self.vscale[i], scratch, out, self.threads)
        run()
        return _timed(run)

    def contrib_step(self, op: str, position: int) -> float:
        import onnxruntime as ort

        session = self.gqa if op == "gqa" else self.mha
        binding = session.io_binding()
        flat = {k: np.ascontiguousarray(v.reshape(self.rows, 1, HIDDEN)) for k, v in self.small.items()}
        keep = []
        for name, array in flat.items():
            binding.bind_cpu_input(name, array)
        for i in range(self.layers):
            if op == "gqa":  # past and present share the full-capacity buffer: in-place write
                for j, kind in enumerate(("key", "value")):
                    buf = self.cache[i, j]
                    binding.bind_input(f"past_{kind}_{i}", "cpu", 0, np.float32, buf.shape, buf.ctypes.data)
                    binding.bind_output(f"present_{kind}_{i}", "cpu", 0, np.float32, buf.shape, buf.ctypes.data)
            else:  # MHA reads `position` positions and writes position + 1 into new outputs
                for j, kind in enumerate(("key", "value")):
                    past = np.ascontiguousarray(self.cache[i, j][:, :, :position])
                    keep.append(past)
                    binding.bind_cpu_input(f"past_{kind}_{i}", past)
                    binding.bind_output(f"present_{kind}_{i}", "cpu")
            binding.bind_output(f"out_{i}", "cpu")
        if op == "gqa":
            seqlens = np.full(self.rows, position, np.int32)  # total length - 1 per row
            total = np.array(position + 1, np.int32)
            binding.bind_cpu_input("seqlens_k", seqlens)
            binding.bind_cpu_input("total_len", total)
            keep += [seqlens, total]
        session.run_with_iobinding(binding)  # warm this binding
        return _timed(lambda: session.run_with_iobinding(binding))


def _timed(fn, repeats: int = 3) -> float:
    return repeat_timing(fn, warmup=0, repeats=repeats)["min"]


def run(seconds: float, rows: int, threads: int, every: int, layers: int) -> dict:
    from editgen.engine.backends.slots import HostKVPool
    from editgen.engine.config import ModelShapes
    from editgen.engine.contract import attended_positions

    steps = round(seconds * 50) + 3
    capacity = steps
    room = attended_positions(capacity)
    timer = Timer(threads, rows, room + room // 8 + 64, layers)  # room for the pool's 1/8 headroom
    shapes = ModelShapes(num_layers=layers, hidden_size=HIDDEN, num_heads=HEADS, num_codebooks=4)
    pool = HostKVPool(shapes)
    totals = {"capacity": 0.0, "buckets": 0.0, "gqa": 0.0, "mha": 0.0, "kv8": 0.0, "buckets_restride": 0.0}
    samples = []
    for position in range(0, steps):
        attended = attended_positions(position)
        start = time.perf_counter()
        pool.ensure(rows, attended, position)  # the engine's re-strides, at their real size
        totals["buckets_restride"] += time.perf_counter() - start
        if position % every:
            continue
        full = np.ascontiguousarray(timer.cache[:, :, :, :, :capacity])  # the old static cache
        t = {"capacity": timer.standard_step(position, capacity, full),
             "buckets": timer.standard_step(position, pool.positions,
                                            np.ascontiguousarray(timer.cache[:, :, :, :, :pool.positions])),
             "gqa": timer.contrib_step("gqa", position),
             "mha": timer.contrib_step("mha", position) if position else 0.0,
             "kv8": timer.kv8_step(position)}
        del full
        for k, v in t.items():
            totals[k] += v * every
        samples.append({"position": position, "pool_positions": pool.positions, **{k: v * 1e3 for k, v in t.items()}})
        print(f"  position {position}: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items()), file=sys.stderr)
    totals["buckets_total"] = totals["buckets"] + totals["buckets_restride"]
    return {"seconds": seconds, "steps": steps, "rows": rows, "threads": threads, "layers": layers, "every": every,
            "pool_restrides": pool.restrides, "totals_s": totals, "samples_ms": samples}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attention_options", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--every", type=int, default=50, help="time every N-th position")
    p.add_argument("--layers", type=int, default=LAYERS)
    p.add_argument("--out", type=Path, default=Path("bench-attn"))
    a = p.parse_args(argv)
    a.out.mkdir(exist_ok=True)
    r = run(a.seconds, a.rows, a.threads, a.every, a.layers)
    (a.out / "attention_options.json").write_text(json.dumps(r, indent=1) + "\n")
    t = r["totals_s"]
    print(f"self-attention over a {a.seconds:g} s request ({r['steps']} steps, {a.rows} rows, {a.layers} layers): "
          f"capacity {t['capacity']:.2f} s, buckets {t['buckets_total']:.2f} s (of which re-strides "
          f"{t['buckets_restride']:.2f} s, {r['pool_restrides']} of them), gqa {t['gqa']:.2f} s, mha {t['mha']:.2f} s, "
          f"int8 KV kernel {t['kv8']:.2f} s")
    plot(r, a.out / "attention_options.png")
    return 0


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    pos = [s["position"] for s in r["samples_ms"]]
    for key in ("capacity", "buckets", "gqa", "mha", "kv8"):
        ax.plot(pos, [s[key] for s in r["samples_ms"]], label=f"{key}: {r['totals_s'][key if key != 'buckets' else 'buckets_total']:.1f} s total")
    ax.set_xlabel("position")
    ax.set_ylabel(f"self-attention ms per step ({r['layers']} layers, {r['rows']} rows)")
    ax.set_title(f"length-aware attention options, {r['seconds']:g} s request, {r['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
