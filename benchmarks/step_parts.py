"""Where a CPU int8 step goes, part by part, against the bytes floor measured in the same run.

    python -m benchmarks.step_parts /tmp/exports/small_int8 --rows 4 32 --past 250 --json parts.json

A real edit (`benchmarks.engines.OurStepBench`: a source and rows / 2 - 1 targets with
guidance) is stepped by the engine core to `--past`, then `--steps` steps are timed, part
by part, by the int8 step's own timers (cpu/int8_step.cc's parts, thread 0's wall clock
with its waits at the phase barriers): `weights` (the int8 matmuls with their epilogues),
`small_ops` (layer norms and activation quantization, the edited cross-attention,
embeddings), `kernel` (the int8 K/V self-attention); `dispatch`, the rest of the C call
(ctypes, waking the worker threads); `backend_host`, the rest of the backend's `step`
(Python: slot table, pointers); `engine_host`, the engine core's step outside the backend
(scheduling, CFG, sampling). The engine before the int8 step (onnxruntime segments around
the K/V kernel) was profiled the same way at commit d51d11b, where this script also splits
its segment runs with onnxruntime's profiler (docs/benchmarks.md).
The bytes floor is what a step must read (int8 weights and their scales, each row's int8
K/V up to its position, the cross K/V of its real text tokens) over the read bandwidth
measured in this process (benchmarks.roofline.measure_bandwidth); each part is given in ms
and as a multiple of the whole step's floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg

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


def report(result: dict, bandwidth_gb_s: float, weight_bytes: int) -> dict:
    floor = dict(result.pop("floor_bytes"))
    floor["weights"] = weight_bytes
    floor["total"] = weight_bytes + floor["self_kv_int8"] + floor["cross_kv_real_tokens"]
    floor_s = floor["total"] / (bandwidth_gb_s * 1e9)
    result.update(floor_bytes=floor, floor_s=floor_s, step_over_floor=result["step_s"] / floor_s,
                  parts_over_floor={k: v / floor_s for k, v in result["parts_s"].items()})
    return result


PATHS = {"int8-step": int8_step_profile}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("engine_dir", help="an int8 export (editgen export --quantize int8)")
    p.add_argument("--rows", type=int, nargs="+", default=[4, 32], help="rows of the step (even, >= 4)")
    p.add_argument("--past", type=int, default=250, help="position of the timed steps")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", nargs="+", default=["int8-step"], choices=sorted(PATHS))
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    from benchmarks.roofline import measure_bandwidth

    load_before = loadavg()
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
    out = {"bandwidth": bandwidth, "loadavg_before": load_before, "loadavg_after": loadavg(),
           "threads": a.threads, "results": results}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
