"""Where a CPU int8 step goes, part by part, against the bytes floor measured in the same run.

    python -m benchmarks.step_parts /tmp/exports/small_int8 --rows 4 32 --past 250 --json parts.json

A real edit (`benchmarks.engines.OurStepBench`: a source and rows / 2 - 1 targets with
guidance) is stepped by the engine core to `--past`, then `--steps` steps are timed, part
by part, for each path (`--paths`):
- `int8-step` (Int8StepBackend, the C++ step): its own timers (cpu/int8_step.cc's parts,
  thread 0's wall clock with its waits at the phase barriers): `weights` (the int8
  matmuls with their epilogues), `small_ops` (layer norms and activation quantization,
  the edited cross-attention, embeddings), `kernel` (the int8 K/V self-attention);
  `dispatch` is the rest of the C call (ctypes, waking the worker threads);
- `ort-kv8` (SegmentedOrtBackend, onnxruntime segments around the K/V kernel): `kernel`,
  the kernel's calls; `weights`, `small_ops`, `dispatch`: the segments' runs, split by a
  second, profiled pass (onnxruntime's profiler: weight matmuls with their per-row
  activation quantization, every other node, and run time outside any node);
- both: `backend_host`, the rest of the backend's `step` (Python: slot table, pointers,
  bindings); `engine_host`, the engine core's step outside the backend (scheduling, CFG,
  sampling).
The bytes floor is what a step must read (int8 weights and their scales, each row's int8
K/V up to its position, the cross K/V of its real text tokens) over the read bandwidth
measured in this process (benchmarks.roofline.measure_bandwidth); each part is given in ms
and as a multiple of the whole step's floor.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROG = "python -m benchmarks.step_parts"


class _Timer:
    """Wraps `fn`; adds its wall time to `self.seconds` while `self.on`."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls, self.on = fn, 0.0, 0, False

    def __call__(self, *args):
        if not self.on:
            return self.fn(*args)
        start = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def floor_bytes(backend, weight_bytes: int) -> dict:
    """Bytes one step of the backend's current rows must read."""
    s, table = backend.shapes, backend.slots
    live = np.flatnonzero(table.admitted)
    kv_per_position = s.num_layers * s.num_heads * (2 * s.head_dim + 8)  # int8 K and V, two fp32 scales
    self_kv = int(table.length[live].sum()) * kv_per_position
    cross_kv = int(table.text_mask[live].sum()) * s.num_layers * s.num_heads * s.head_dim * 4 * 2
    return {"weights": weight_bytes, "self_kv_int8": self_kv, "cross_kv_real_tokens": cross_kv,
            "total": weight_bytes + self_kv + cross_kv}


def step_weight_bytes(engine_dir: str) -> int:
    """Dense bytes of the int8 decoder step (benchmarks.roofline.onnx_weight_bytes), plus
    the gathered embedding rows of one step are left out (a few KB)."""
    from benchmarks.roofline import onnx_weight_bytes
    from editgen.engine.manifest import load_manifest

    return onnx_weight_bytes(load_manifest(engine_dir).graph_path("decoder_step")).dense


def _segmented_parts(engine_dir: str, rows: int, past: int, steps: int, threads: int, profile_dir) -> dict:
    from benchmarks.engines import OurStepBench
    from editgen.engine.backends.ort_segmented import SegmentedOrtBackend
    from editgen.kernels import cpu_library

    backend = SegmentedOrtBackend(engine_dir, threads=threads, profile_dir=profile_dir)
    lib = cpu_library.load()
    kernel = _Timer(lib.editgen_kv8_attention)
    lib.editgen_kv8_attention = kernel
    runs = []
    for session in backend._step:  # noqa: SLF001 (a benchmark's wrap around the runs)
        runs.append(_Timer(session.run_with_iobinding))
        session.run_with_iobinding = runs[-1]
    step = _Timer(backend.step)
    backend.step = step
    try:
        bench = OurStepBench(backend, "edit", rows // 2 - 1, past, 1, steps + 3)
        bench.burst(3)  # warm: buffers of this row count, bindings
        timers = [kernel, step, *runs]
        for t in timers:
            t.on = True
        core_times = []
        for _ in range(steps):
            start = time.perf_counter()
            bench.core.step()
            core_times.append(time.perf_counter() - start)
        floor = floor_bytes(backend, 0)
        traces = backend.end_profiling() if profile_dir is not None else []
    finally:
        lib.editgen_kv8_attention = kernel.fn
        backend.close()
    segments = sum(t.seconds for t in runs)
    return {"rows": bench.rows, "steps": steps, "core_step_s": float(np.sum(core_times)),
            "backend_step_s": step.seconds, "kernel_s": kernel.seconds, "segments_s": segments,
            "kernel_calls": kernel.calls, "segment_runs": sum(t.calls for t in runs),
            "floor_without_weights": floor, "traces": [str(t) for t in traces],
            "graphs": [info.name for info in backend.manifest.segment_graphs]}


def _split_trace(traces: list[str], graphs: list[str], profile_dir: str, steps: int) -> dict:
    """Node time by kind over the last `steps` runs of each graph, and run time outside nodes."""
    from benchmarks.profile_ort import node_kinds

    by_kind, outside = collections.Counter(), 0.0
    for trace in traces:
        events = json.loads(Path(trace).read_text())
        graph = next(g for g in graphs if Path(trace).name.startswith(g + "_"))
        kinds = node_kinds(str(Path(profile_dir) / f"{graph}_optimized.onnx"))
        model_runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                            key=lambda e: e["ts"])[-steps:]
        start = model_runs[0]["ts"]
        node_us = 0.0
        for e in events:
            if e.get("ts", 0) >= start and e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                kind = kinds.get(e["name"][: -len("_kernel_time")], "other")
                by_kind["weights" if kind == "weights" else "small_ops"] += e["dur"]
                node_us += e["dur"]
        outside += sum(e["dur"] for e in model_runs) - node_us
    by_kind["dispatch"] = outside
    total = sum(by_kind.values())
    return {k: v / total for k, v in by_kind.items()}


def int8_step_profile(engine_dir: str, rows: int, past: int, steps: int, threads: int) -> dict:
    """The C++ int8 step (Int8StepBackend), part by part."""
    from benchmarks.engines import OurStepBench
    from editgen.engine.backends.int8_step_backend import Int8StepBackend
    from editgen.kernels.cpu_step import PARTS

    backend = Int8StepBackend(engine_dir, threads=threads)
    call = _Timer(backend.weights.run)
    backend.weights.run = call
    step = _Timer(backend.step)
    backend.step = step
    try:
        bench = OurStepBench(backend, "edit", rows // 2 - 1, past, 1, steps + 3)
        bench.burst(3)
        backend.profile = np.zeros(len(PARTS))
        call.on = step.on = True
        start = time.perf_counter()
        bench.burst(steps)
        core_s = time.perf_counter() - start
        floor = floor_bytes(backend, 0)
        inner = dict(zip(PARTS, backend.profile / steps))
    finally:
        backend.close()
    parts = {"weights": inner["weights"], "small_ops": inner["norms"] + inner["cross_attention"] + inner["embed"],
             "kernel": inner["self_attention"], "dispatch": call.seconds / steps - sum(inner.values()),
             "backend_host": (step.seconds - call.seconds) / steps, "engine_host": (core_s - step.seconds) / steps}
    return {"path": "int8-step (the C++ step)", "rows": bench.rows, "past": past, "steps": steps, "step_s": core_s / steps,
            "parts_s": parts, "int8_step_parts_s": inner, "floor_bytes": floor}


def segmented_profile(engine_dir: str, rows: int, past: int, steps: int, threads: int) -> dict:
    """The int8 KV engine (onnxruntime segments around the kernel), part by part."""
    timed = _segmented_parts(engine_dir, rows, past, steps, threads, None)
    with tempfile.TemporaryDirectory() as tmp:
        profiled = _segmented_parts(engine_dir, rows, past, steps, threads, tmp)
        shares = _split_trace(profiled["traces"], profiled["graphs"], tmp, steps)
    n = steps
    parts = {k: timed["segments_s"] * shares.get(k, 0.0) / n for k in ("weights", "small_ops", "dispatch")}
    parts["kernel"] = timed["kernel_s"] / n
    parts["backend_host"] = (timed["backend_step_s"] - timed["kernel_s"] - timed["segments_s"]) / n
    parts["engine_host"] = (timed["core_step_s"] - timed["backend_step_s"]) / n
    return {"path": "ort-kv8 (onnxruntime segments + int8 KV kernel)", "rows": timed["rows"], "past": past,
            "steps": steps, "step_s": timed["core_step_s"] / n, "parts_s": parts,
            "segment_shares_profiled": shares, "floor_bytes": timed["floor_without_weights"]}


def report(result: dict, bandwidth_gb_s: float, weight_bytes: int) -> dict:
    floor = dict(result.pop("floor_bytes"))
    floor["weights"] = weight_bytes
    floor["total"] = weight_bytes + floor["self_kv_int8"] + floor["cross_kv_real_tokens"]
    floor_s = floor["total"] / (bandwidth_gb_s * 1e9)
    result.update(floor_bytes=floor, floor_s=floor_s, step_over_floor=result["step_s"] / floor_s,
                  parts_over_floor={k: v / floor_s for k, v in result["parts_s"].items()})
    return result


PATHS = {"int8-step": int8_step_profile, "ort-kv8": segmented_profile}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("engine_dir", help="an int8 export (editgen export --quantize int8)")
    p.add_argument("--rows", type=int, nargs="+", default=[4, 32], help="rows of the step (even, >= 4)")
    p.add_argument("--past", type=int, default=250, help="position of the timed steps")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", nargs="+", default=["int8-step", "ort-kv8"], choices=sorted(PATHS))
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    from benchmarks.roofline import measure_bandwidth

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    bandwidth = measure_bandwidth(threads=a.threads, megabytes=512)
    weight_bytes = step_weight_bytes(a.engine_dir)
    results = []
    for rows in a.rows:
        for path in a.paths:
            r = report(PATHS[path](a.engine_dir, rows, a.past, a.steps, a.threads), bandwidth["read_gb_s"],
                       weight_bytes)
            results.append(r)
            print(f"{r['path']}: {r['rows']} rows at {a.past}: step {1e3 * r['step_s']:.1f} ms = "
                  f"{r['step_over_floor']:.2f} x the floor ({1e3 * r['floor_s']:.1f} ms at "
                  f"{bandwidth['read_gb_s']:.1f} GB/s)", file=sys.stderr)
            for k, v in r["parts_s"].items():
                print(f"  {k:<13} {1e3 * v:7.2f} ms  {r['parts_over_floor'][k]:5.2f} x floor", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    out = {"bandwidth": bandwidth, "loadavg_before": load_before, "loadavg_after": load_after,
           "threads": a.threads, "results": results}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
