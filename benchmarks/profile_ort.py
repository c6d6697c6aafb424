"""Where the ORT decoder step spends its time: onnxruntime's profiler on the edit step.

    python -m benchmarks.profile_ort /tmp/exports/small_fp32 --past 500 --batch 1

Runs the decoder_step graph of an engine directory with the same inputs as the benchmark
(`OurStepBench`: edit of `batch` targets with CFG, static cache of capacity past + steps)
and prints the kernel time per op type, per kind (`KINDS`: weight matmuls, self-attention
over the cache, cross-attention, other; classified on the graph as ONNX Runtime optimized
it) and the slowest nodes. --threads sets the intra-op threads; --json writes the summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def profile(engine_dir: str, *, past: int, batch: int, steps: int, workload: str = "edit",
            threads: int = 0) -> dict:
    import onnxruntime as ort

    from benchmarks.engines import OurStepBench
    from editgen.engine.backend import step_kv_views
    from editgen.engine.backends.ort_backend import OrtBackend

    backend = OrtBackend(engine_dir)
    bench = OurStepBench(backend, workload, batch, past, steps)
    step_file = backend.manifest.root / backend.manifest.graphs["decoder_step"].file
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_profiling = True
        opts.intra_op_num_threads = threads
        opts.profile_file_prefix = os.path.join(tmp, "step")
        opts.log_severity_level = 3
        opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # node names as profiled
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.data")
        sess = ort.InferenceSession(str(step_file), opts, providers=["CPUExecutionProvider"])
        kinds = node_kinds(opts.optimized_model_filepath)
        feed = {"codes": bench.frame, "position": np.array(past, dtype=np.int64), "text_mask": bench.mask,
                **step_kv_views(bench.cache.array, bench.cross_k, bench.cross_v),  # per-layer views, no copy
                **bench.edits.inputs(past, bench.capacity).as_feed()}
        names = {i.name for i in sess.get_inputs()}
        feed = {k: v for k, v in feed.items() if k in names}
        sess.run(None, feed)  # warm
        for _ in range(steps):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    backend.close()
    by_op, by_node, by_kind, runs = collections.Counter(), collections.Counter(), collections.Counter(), []
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            by_op[e["args"].get("op_name", "?")] += e["dur"]
            by_node[node] += e["dur"]
            by_kind[kinds.get(node, "other")] += e["dur"]
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            runs.append(e["dur"])
    kernel_us = sum(by_op.values())
    timed = runs[1:] or runs  # the first model_run is the warm one
    per_run_us = float(np.mean(timed)) if timed else 0.0
    return {
        "engine_dir": str(engine_dir), "threads": threads or "default", "past": past, "batch": batch, "rows": bench.rows, "runs": len(runs),
        "model_run_ms_mean": per_run_us / 1e3,
        "kernel_ms_per_run": kernel_us / max(1, len(runs)) / 1e3,
        "by_op_type": [{"op": op, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                       for op, us in by_op.most_common()],
        "by_kind": [{"kind": k, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                    for k, us in by_kind.most_common()],
        "top_nodes": [{"node": n, "ms_per_run": us / max(1, len(runs)) / 1e3, "share": us / kernel_us}
                      for n, us in by_node.most_common(15)],
    }


KINDS = {
    "weights": "MatMul/MatMulNBits/Gemm on a constant weight (projections, FFN, lm heads)",
    "self_attention_kv": "ops reading a past_key_i / past_value_i input (q K^T, P V over the cache)",
    "cross_attention_kv": "ops reading a cross_key_i / cross_value_i input",
    "other": "everything else (norms, softmax, the edit, embeddings, reshapes)",
}


def node_kinds(optimized_path: str) -> dict[str, str]:
    """Node name -> KINDS key, from the graph as ONNX Runtime optimized it."""
    import onnx

    model = onnx.load(optimized_path, load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if any(x.startswith(("past_key_", "past_value_")) for x in node.input):
            kinds[node.name] = "self_attention_kv"
        elif any(x.startswith(("cross_key_", "cross_value_")) for x in node.input):
            kinds[node.name] = "cross_attention_kv"
        elif node.op_type in ("MatMul", "MatMulNBits", "Gemm", "FusedMatMul", "MatMulInteger",
                              "DynamicQuantizeMatMul") and any(x in weights for x in node.input[1:]):
            kinds[node.name] = "weights"
        else:
            kinds[node.name] = "other"
    return kinds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_ort", description=__doc__.split("\n")[0])
    p.add_argument("engine_dir")
    p.add_argument("--past", type=int, default=500)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    p.add_argument("--json", type=Path, help="write the summary here")
    a = p.parse_args(argv)
    s = profile(a.engine_dir, past=a.past, batch=a.batch, steps=a.steps, threads=a.threads)
    print(f"{a.engine_dir}: edit, {s['rows']} rows, past {a.past}: model_run {s['model_run_ms_mean']:.1f} ms, "
          f"kernels {s['kernel_ms_per_run']:.1f} ms per run")
    for row in s["by_op_type"][:12]:
        print(f"  {row['op']:<28} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    print("by kind:")
    for row in s["by_kind"]:
        print(f"  {row['kind']:<28} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    print("slowest nodes:")
    for row in s["top_nodes"][:8]:
        print(f"  {row['node'][:60]:<60} {row['ms_per_run']:8.2f} ms  {100 * row['share']:5.1f}%")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(s, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
