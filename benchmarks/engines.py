"""Our engines (torch reference backend, ORT fp32 / int8) and the per-configuration worker.

Steady-state step time at past length P: a real request stepped by the engine core to
position P, then bursts of N engine-core steps (backend step reading and writing its own
pool, CFG, top-k sampling). End to end: `generate_codes` / `edit` plus the EnCodec
decode, as the CLI runs them.

`run_worker(spec)` runs one engine x workload in this process (the runner starts one
process per configuration so that peak resident memory is per configuration) and returns
a JSON-ready dict.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np

from benchmarks import common
from benchmarks.common import GUIDANCE, SOURCE, TOP_K, peak_rss_mb, repeat_timing, reset_peak_rss

TTFF_FRAMES = 5  # frames of the time-to-first-audio request
ENGINES = ("transformers", "torch", "ort-fp32", "ort-int8")
WORKLOADS = ("generate", "edit")


class OurStepBench:
    """Steady-state steps of one real request driven by the engine core: the request
    (`batch` targets of an edit, or `batch` plain prompts, with CFG) is stepped `past`
    times untimed, then each `burst(n)` is n more `EngineCore.step()` calls: schedule,
    the backend step (reading and writing its own pool), CFG, top-k sampling, hooks.
    `capacity` is the cache positions the timed steps read (the pool's length)."""

    def __init__(self, backend, workload: str, batch: int, past: int, burst: int, timed_steps: int):
        from editgen.engine.contract import MIN_ROWS
        from editgen.engine.contract import attended_positions
        from editgen.engine.core import EngineCore
        from editgen.engine.edit import EditBatch, EditSpec
        from editgen.engine.jobs import compile_specs
        from editgen.engine.options import GenerationOptions
        from editgen.engine.requests import Request

        shapes = backend.shapes
        frames = past + timed_steps + 1  # the request outlives the timed steps
        options = GenerationOptions(seconds=frames / shapes.frame_rate, guidance_scale=GUIDANCE, top_k=TOP_K)
        if workload == "edit":
            plans = compile_specs(backend, [EditSpec(source=SOURCE, target=t) for t in common.targets(batch)])
            edits = EditBatch(plans, cfg=True, num_heads=shapes.num_heads)
            prompts = [plans[0].source] + [p.target for p in plans]
        else:
            edits = None
            prompts = [backend.tokenizer.encode(p) for p in common.plain_prompts(batch)]
        self.request = Request(shapes, prompts, options, edits=edits)
        self.rows = self.request.rows
        self.core = EngineCore(backend, max_rows=max(self.rows, MIN_ROWS))
        self.core.submit(self.request)
        for _ in range(past):
            self.core.step()
        pool = getattr(backend, "pool", None)  # ORT: the pool's current length is what a step reads
        self.capacity = pool.positions if pool is not None else attended_positions(past + timed_steps)

    def burst(self, steps: int) -> None:
        for _ in range(steps):
            self.core.step()


def our_e2e(backend, workload: str, batch: int, seconds: float) -> float:
    from editgen.engine.edit import EditSpec
    from editgen.engine.jobs import edit
    from editgen.engine.generate import generate_codes
    from editgen.engine.options import GenerationOptions

    options = GenerationOptions(seconds=seconds, guidance_scale=GUIDANCE, top_k=TOP_K, seed=0)
    start = time.perf_counter()
    if workload == "edit":
        r = edit(backend, [EditSpec(source=SOURCE, target=t) for t in common.targets(batch)], options,
                 progress=False)
        codes = np.concatenate([r.source_codes[None], r.edited_codes])
    else:
        prompts = [backend.tokenizer.encode(p) for p in common.plain_prompts(batch)]
        codes = generate_codes(backend, prompts, options, progress=False).codes
    backend.decode_audio(codes)
    return time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def _load(model: str):
    from editgen.model.loading import load_musicgen

    return load_musicgen(model)


def open_engine(spec: dict):
    """-> (backend or loaded model, weight bytes, label)."""
    from benchmarks import roofline

    engine = spec["engine"]
    if engine in ("transformers", "torch"):
        loaded = _load(spec["model"])  # cached: --in-process runs reuse the model
        weights = roofline.torch_weight_bytes(loaded.model)
        if engine == "transformers":
            return loaded, weights
        from editgen.engine.backends.torch_backend import TorchBackend

        return TorchBackend(loaded), weights
    from editgen.engine.backends.ort_backend import OrtBackend

    backend = OrtBackend(spec["engine_dir"], threads=spec["threads"])
    step_file = backend.manifest.root / backend.manifest.graphs["decoder_step"].file
    return backend, roofline.onnx_weight_bytes(step_file)


def run_worker(spec: dict) -> dict:
    """spec: engine, workload, model, engine_dir, points [[frames, batch], ...] (run in this
    order), burst, warmup, repeats, e2e_seconds, e2e_repeats, threads."""
    import torch

    torch.set_num_threads(spec["threads"])
    engine, workload = spec["engine"], spec["workload"]
    start = time.perf_counter()
    obj, weights = open_engine(spec)
    load_s = time.perf_counter() - start
    shapes = obj.shapes
    points = []
    for frames, batch in spec["points"]:
        can_reset = reset_peak_rss()
        if engine == "transformers":
            from benchmarks.baselines import StepBench

            bench = StepBench(obj, workload, batch, frames)
            capacity = frames + spec["burst"]
        else:
            timed = spec["burst"] * (spec["warmup"] + spec["repeats"])
            bench = OurStepBench(obj, workload, batch, frames, spec["burst"], timed)
            capacity = bench.capacity
        t = repeat_timing(lambda: bench.burst(spec["burst"]), warmup=spec["warmup"], repeats=spec["repeats"])
        step = {k: (v / spec["burst"] if k != "all" else [x / spec["burst"] for x in v]) for k, v in t.items()}
        points.append({
            "frames": frames, "batch": batch, "rows": bench.rows, "past": frames, "capacity": capacity,
            "step_s": step, "steps_s": 1.0 / step["min"], "steps_s_median": 1.0 / step["median"],
            "peak_rss_mb": peak_rss_mb(), "peak_rss_scope": "point" if can_reset else "process",
        })
        del bench
        print(f"  {engine} {workload} frames {frames} batch {batch}: {points[-1]['steps_s']:.2f} steps/s",
              file=sys.stderr, flush=True)
    e2e = None
    if spec.get("e2e_seconds"):
        try:
            e2e = _e2e(obj, engine, workload, shapes, spec)
        except Exception as exc:  # recorded; the step timings above still count
            e2e = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    if hasattr(obj, "close"):
        obj.close()
    return {"engine": engine, "workload": workload, "load_s": load_s, "points": points, "e2e": e2e,
            "weights": {"dense_bytes": weights.dense, "gathered_row_bytes": weights.gathered_row,
                        "source": weights.source},
            "shapes": shapes.to_dict(), "pid": os.getpid()}


def _e2e(obj, engine: str, workload: str, shapes, spec: dict) -> dict:
    """One short request at batch 1 (min of repeats), and a TTFF_FRAMES-frame request for
    the time to first audio (text encoder, cross K/V, the K - 1 + TTFF_FRAMES steps that
    complete those frames under the delay pattern, EnCodec decode). Not one frame: the
    exported EnCodec decoder's reflect padding rejects inputs shorter than a few frames."""
    seconds = spec["e2e_seconds"]
    frames = max(1, round(seconds * shapes.frame_rate))
    steps = shapes.steps_for_frames(frames)
    first = TTFF_FRAMES / shapes.frame_rate
    reset_peak_rss()
    if engine == "transformers":
        from benchmarks import baselines

        run = lambda: baselines.e2e(obj, workload, 1, steps)  # noqa: E731
        run_first = lambda: baselines.e2e(obj, workload, 1, shapes.steps_for_frames(TTFF_FRAMES))  # noqa: E731
    else:
        run = lambda: our_e2e(obj, workload, 1, seconds)  # noqa: E731
        run_first = lambda: our_e2e(obj, workload, 1, first)  # noqa: E731
    walls = [run() for _ in range(spec["e2e_repeats"])]
    best = min(walls)
    result = {"batch": 1, "audio_seconds": frames / shapes.frame_rate, "frames": frames, "steps": steps,
              "wall_s": {"min": best, "median": float(np.median(walls)), "all": walls},
              "rtf": frames / shapes.frame_rate / best, "steps_s": steps / best, "ttff_frames": TTFF_FRAMES}
    try:
        ttff = [run_first() for _ in range(max(3, spec["e2e_repeats"]))]
        result["ttff_s"] = {"min": min(ttff), "median": float(np.median(ttff)), "all": ttff}
    except Exception as exc:
        result["ttff_error"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    result["peak_rss_mb"] = peak_rss_mb()
    return result
