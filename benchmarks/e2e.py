"""What a user gets: whole edits end to end, and many edits at once.

    python -m benchmarks.e2e --exports /tmp/exports --out bench-e2e      # random:small, ~25 min on 2 cores
    python -m benchmarks.e2e --quick --out /tmp/e2e                      # random:tiny, seconds

1. Edit latency: one Prompt-to-Prompt edit (source + target, CFG: 4 rows) of 10 s and
   30 s through the public API (`editgen.edit`: text encoding, every step, EnCodec decode
   of both clips), ORT fp32 and int8 (as `open_backend` runs them: int8 as the C++ int8
   step where the CPU kernels build), next to transformers' `generate` of the same rows
   (two prompts with guidance: 4 rows, sampling, its own decode). Per-step times along
   the request are recorded too (steps/s at each position: the step-level figures).
2. Throughput: 1, 2, 4, 8 concurrent 10 s edits submitted at once to one EngineCore;
   every request's rows share each step. Total audio seconds (the edited clips) per wall
   second, row-steps per second.
Results: results.json and e2e.png in --out. Each configuration runs once (a 30 s edit is
minutes on 2 cores); the machine should be otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import SOURCE, TARGETS
from editgen.engine.core import StepObserver

PROG = "python -m benchmarks.e2e"
FULL = dict(preset="small", seconds=[10.0, 30.0], concurrency=[1, 2, 4, 8], concurrency_seconds=10.0)
QUICK = dict(preset="tiny", seconds=[1.0, 2.0], concurrency=[1, 2, 4], concurrency_seconds=1.0)


class StepTimer(StepObserver):
    """Records (the batch's highest position, seconds of the backend step) per step."""

    def __init__(self):
        self.trace = []

    def after_step(self, batch, outputs, seconds, requests):
        self.trace.append((int(batch.positions.max()), seconds))


def edit_latency(engine_dir: str, seconds: float, threads: int) -> dict:
    import editgen
    from editgen.engine.runtime import open_backend

    with open_backend(engine=engine_dir, threads=threads) as ort_backend:  # int8: the int8 step on CPU
        timer = StepTimer()
        options = editgen.GenerationOptions(seconds=seconds, seed=0)
        start = time.perf_counter()
        result = editgen.edit(ort_backend, [editgen.EditSpec(source=SOURCE, target=TARGETS[0])], options,
                              observers=[timer])
        steps_done = time.perf_counter()
        ort_backend.decode_audio(np.concatenate([result.source_codes[None], result.edited_codes]))
        wall = time.perf_counter() - start
        restrides = ort_backend.pool.restrides if ort_backend.pool is not None else None
    positions, step_s = map(np.asarray, zip(*timer.trace))
    return {"backend": type(ort_backend).__name__, "seconds": seconds, "steps": len(step_s), "rows": 4, "wall_s": wall,
            "decode_s": wall - (steps_done - start),
            "steps_s": len(step_s) / wall, "rtf": seconds / wall, "step_ms_sum": float(step_s.sum() * 1e3),
            "pool_restrides": restrides, "trace": _trace(positions, step_s)}


def _trace(positions: np.ndarray, step_s: np.ndarray, window: int = 25) -> dict:
    """Median step time in windows of `window` steps (positions and ms)."""
    edges = range(0, len(step_s), window)
    return {"position": [int(positions[i]) for i in edges],
            "step_ms": [float(np.median(step_s[i:i + window]) * 1e3) for i in edges]}


def transformers_latency(preset: str, seconds: float, threads: int) -> dict:
    import torch

    from benchmarks.baselines import e2e
    from editgen.model.loading import load_musicgen

    torch.set_num_threads(threads)
    loaded = load_musicgen(f"random:{preset}")
    steps = loaded.shapes.steps_for_frames(round(seconds * loaded.shapes.frame_rate))
    wall = e2e(loaded, "generate", 2, steps)  # two prompts with guidance: the edit's 4 rows
    return {"seconds": seconds, "steps": steps, "rows": 4, "wall_s": wall, "steps_s": steps / wall,
            "rtf": seconds / wall}


def concurrent_edits(engine_dir: str, count: int, seconds: float, threads: int) -> dict:
    import editgen
    from editgen.engine.runtime import open_backend

    with open_backend(engine=engine_dir, threads=threads) as backend:
        timer = StepTimer()
        core = editgen.EngineCore(backend, max_rows=4 * count, observers=[timer])
        jobs = [editgen.edit_job(backend, [editgen.EditSpec(source=SOURCE, target=TARGETS[i % len(TARGETS)])],
                                 editgen.GenerationOptions(seconds=seconds, seed=i)) for i in range(count)]
        start = time.perf_counter()
        for job in jobs:
            core.submit(job.request)
        while core.has_work:
            core.step()
        for job in jobs:
            r = job.result()
            backend.decode_audio(np.concatenate([r.source_codes[None], r.edited_codes]))
        wall = time.perf_counter() - start
    step_s = np.asarray([s for _, s in timer.trace])
    rows = sum(job.request.rows for job in jobs)
    steps = jobs[0].request.steps
    return {"backend": type(backend).__name__, "requests": count, "rows": rows, "seconds_each": seconds,
            "wall_s": wall,
            "audio_s_per_s": count * seconds / wall, "row_steps_s": rows * steps / wall,
            "step_ms_median": float(np.median(step_s) * 1e3), "step_ms_sum": float(step_s.sum() * 1e3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="random:tiny, short clips: checks the script works")
    p.add_argument("--exports", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "exports",
                   help="where <preset>_fp32 / <preset>_int8 engine directories are, or get exported to")
    p.add_argument("--out", type=Path, default=Path("bench-e2e"), help="output directory (created)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="intra-op threads (ORT and torch)")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers baseline")
    args = p.parse_args(argv)
    from benchmarks.run import UsageError, check_output_dir, ensure_export, machine_info

    try:
        check_output_dir(args.out)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(exist_ok=True)
    d = QUICK if args.quick else FULL
    results = {"config": {**d, "threads": args.threads, "model": f"random:{d['preset']}"}, "machine": machine_info(),
               "latency": [], "concurrency": []}
    dirs = {v: str(ensure_export(d["preset"], v, args.exports)) for v in ("fp32", "int8")}

    def save():
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    for seconds in d["seconds"]:
        for variant, engine_dir in dirs.items():
            r = {"engine": f"ort-{variant}", **edit_latency(engine_dir, seconds, args.threads)}
            results["latency"].append(r)
            print(f"ort-{variant} {seconds:g} s edit: {r['wall_s']:.1f} s ({r['steps_s']:.2f} steps/s)", file=sys.stderr)
            save()
        if not args.no_transformers:
            r = {"engine": "transformers", **transformers_latency(d["preset"], seconds, args.threads)}
            results["latency"].append(r)
            print(f"transformers {seconds:g} s generate (4 rows): {r['wall_s']:.1f} s", file=sys.stderr)
            save()
    for count in d["concurrency"]:
        r = {"engine": "ort-int8", **concurrent_edits(dirs["int8"], count, d["concurrency_seconds"], args.threads)}
        results["concurrency"].append(r)
        print(f"ort-int8 {count} x {d['concurrency_seconds']:g} s edits: {r['wall_s']:.1f} s, "
              f"{r['audio_s_per_s']:.2f} audio s/s, {r['row_steps_s']:.0f} row-steps/s", file=sys.stderr)
        save()
    save()
    plot(results, args.out / "e2e.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'e2e.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    seconds = sorted({r["seconds"] for r in results["latency"]})
    engines = sorted({r["engine"] for r in results["latency"]})
    width = 0.8 / max(1, len(engines))
    for i, engine in enumerate(engines):
        walls = [next((r["wall_s"] for r in results["latency"] if r["engine"] == engine and r["seconds"] == s), 0)
                 for s in seconds]
        a.bar(np.arange(len(seconds)) + i * width, walls, width, label=engine)
    a.set_xticks(np.arange(len(seconds)) + width * (len(engines) - 1) / 2, [f"{s:g} s" for s in seconds])
    a.set_ylabel("wall seconds (lower is better)")
    a.set_title("one edit, end to end (4 rows)")
    a.legend()
    for r in results["latency"]:
        if "trace" in r and r["seconds"] == max(seconds):
            b.plot(r["trace"]["position"], r["trace"]["step_ms"], label=r["engine"])
    b.set_xlabel("position (frames of past)")
    b.set_ylabel("step ms (median of 25)")
    b.set_title(f"step time along a {max(seconds):g} s edit")
    b.legend()
    conc = results["concurrency"]
    c.plot([r["requests"] for r in conc], [r["audio_s_per_s"] for r in conc], "o-", label="audio s / wall s")
    c.set_xlabel("concurrent edits")
    c.set_ylabel("edited audio seconds per wall second")
    c.set_title("throughput, ORT int8")
    fig.suptitle(f"{results['config']['model']} (random weights), {results['machine']['cpu']}, "
                 f"{results['config']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
