"""Host time per step: what the engine core and a backend's own Python/numpy work cost
per step, with the device work (every onnxruntime run and the int8 KV kernel) replaced by
no-ops. Edits of random:small (4 rows each: source, target and their null rows), so 1
edit is a 4-row step and 8 edits a 32-row step, on an int8 export (the int8 step; before
it, the segmented engine).

    python -m benchmarks.host_time --engine DIR [--edits 1,8] [--steps 300] [--out FILE]

It also runs the engine before contract v4 (`PYTHONPATH=<old checkout>`), so the two can
be timed back to back: the script imports what each version has."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


class _NoRun:
    """An onnxruntime session whose run does nothing (its bound outputs keep their values)."""

    def run_with_iobinding(self, binding):
        pass


class _NoKernel:
    @staticmethod
    def editgen_kv8_attention(*args):
        return 0


def _edit_job():
    try:
        from editgen.engine.jobs import edit_job
    except ImportError:  # the engine before contract v4
        from editgen.engine.editing import edit_job
    return edit_job


def _backend(engine: str):
    """The int8 export's CPU backend of this version, its device work replaced by no-ops."""
    try:
        from editgen.engine.backends.int8_step_backend import Int8StepBackend
    except ImportError:  # before the int8 step: onnxruntime segments around the K/V kernel
        from editgen.engine.backends.ort_segmented import SegmentedOrtBackend
        from editgen.kernels import cpu_attention

        backend = SegmentedOrtBackend(engine, threads=1)
        backend._step = [_NoRun() for _ in backend._step]
        cpu_attention.load = lambda: _NoKernel()  # the backend looks it up per step
        return backend
    backend = Int8StepBackend(engine, threads=1)
    backend.weights.run = lambda step: None  # the whole step is this one C call
    return backend


def measure(engine: str, edits: int, steps: int, seconds: float) -> dict:
    from editgen.engine.core import EngineCore
    from editgen.engine.edit import EditSpec
    from editgen.engine.options import GenerationOptions

    backend = _backend(engine)
    core = EngineCore(backend, max_rows=4 * edits)
    spec = EditSpec(source="lofi piano with warm drums", target="lofi guitar with warm drums", op="replace")
    edit_job = _edit_job()
    jobs = [edit_job(backend, [spec], GenerationOptions(seconds=seconds, seed=i)) for i in range(edits)]
    for job in jobs:
        core.submit(job.request)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        core.step()
        times.append(time.perf_counter() - start)
    steady = times[steps // 4:]  # after admission and the pool's first re-strides
    return {"edits": edits, "rows": 4 * edits, "steps": len(steady), "median_ms": 1e3 * statistics.median(steady),
            "min_ms": 1e3 * min(steady), "mean_ms": 1e3 * float(np.mean(steady))}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="an int8 export (editgen export --quantize int8)")
    p.add_argument("--edits", default="1,8", help="edits in one step, comma-separated (4 rows each)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seconds", type=float, default=10.0, help="each edit's duration (must exceed the steps)")
    p.add_argument("--label", default="", help="a name for this run in the output")
    p.add_argument("--out", help="append one JSON line per edit count to this file")
    a = p.parse_args(argv)
    for edits in (int(x) for x in a.edits.split(",")):
        result = {"label": a.label, **measure(a.engine, edits, a.steps, a.seconds)}
        with open("/proc/loadavg") as f:
            result["loadavg_1min"] = float(f.read().split()[0])
        print(json.dumps(result))
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
