"""Benchmark runner: `python -m benchmarks.run`, from a source checkout (the package
does not install `benchmarks/`, and the `editgen` CLI does not import it).

Times transformers (plain `generate`, and a hook-based Prompt-to-Prompt edit) against our
torch backend and ORT engine (fp32, int8) on random weights of real shapes, next to the
memory-bandwidth roofline measured in the same run. Method: docs/benchmarks.md.

    python -m benchmarks.run                      # full run, random:small -> ./bench-results/
    python -m benchmarks.run --quick --out /tmp/b # random:tiny, seconds; checks the runner works

Arguments and the output directory are checked before any work: a bad one is one line
on stderr and exit code 2. Results go to ./bench-results/ unless --out says otherwise;
the published numbers in docs/bench/ are only replaced by passing --out docs/bench.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks import report, roofline
from benchmarks.common import rows_for
from benchmarks.engines import ENGINES, WORKLOADS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path("bench-results")  # relative to the current directory
PROG = "python -m benchmarks.run"

FULL = dict(preset="small", frames=[250, 500, 1500], batches=[1, 4, 8], burst=4, warmup=1, repeats=3,
            e2e_seconds=0.5, e2e_repeats=3, bandwidth_mb=1024)
QUICK = dict(preset="tiny", frames=[16, 32], batches=[1, 2], burst=2, warmup=1, repeats=3,
             e2e_seconds=0.1, e2e_repeats=1, bandwidth_mb=128)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 250,500,1500")
    return values


def _names(allowed):
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}: choose from {', '.join(allowed)}")
        return names
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="random:tiny, tiny sweeps, in-process: checks the runner works (CI, < 1 min)")
    p.add_argument("--preset", help="random:<preset> model (default small; tiny with --quick)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="output directory for results.json and the PNG (created; files in it are replaced)")
    p.add_argument("--frames", type=_ints, help="frames of past to sweep at the first batch (default 250,500,1500)")
    p.add_argument("--batches", type=_ints, help="batches to sweep at the middle frames (default 1,4,8)")
    p.add_argument("--engines", type=_names(ENGINES), default=list(ENGINES), help=",".join(ENGINES))
    p.add_argument("--workloads", type=_names(WORKLOADS), default=list(WORKLOADS), help=",".join(WORKLOADS))
    p.add_argument("--burst", type=int, help="steps per timed burst (default 4)")
    p.add_argument("--repeats", type=int, help="timed bursts per point, min and median reported (default 3)")
    p.add_argument("--warmup", type=int, help="untimed bursts before timing (default 1)")
    p.add_argument("--e2e-seconds", type=float, help="audio seconds of the end-to-end request (0: skip)")
    p.add_argument("--exports", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "exports",
                   help="where <preset>_fp32 / <preset>_int8 engine directories are, or get exported to")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for torch and the bandwidth test")
    p.add_argument("--in-process", action="store_true",
                   help="run every configuration in this process (peak memory then includes earlier ones)")


def machine_info() -> dict:
    import numpy
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "ram_gb": ram, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__,
            "ort_providers": onnxruntime.get_available_providers()}


def points_for(frames: list[int], batches: list[int]) -> tuple[list[list[int]], int, int]:
    """Star sweep: frames at batches[0], batches at the middle frames; smallest first."""
    batch0, frames0 = batches[0], frames[len(frames) // 2]
    pts = {(f, batch0) for f in frames} | {(frames0, b) for b in batches}
    ordered = sorted(pts, key=lambda fb: (rows_for("edit", fb[1]) * fb[0], fb))
    return [list(p) for p in ordered], batch0, frames0


def ensure_export(preset: str, variant: str, exports: Path) -> Path:
    """exports/<preset>_<variant>, exported (in a subprocess) when missing or stale (another
    format version, or int8 by another method than the export's default)."""
    path = exports / f"{preset}_{variant}"
    if (path / "manifest.json").is_file() and _current_export(path / "manifest.json"):
        return path
    exports.mkdir(parents=True, exist_ok=True)
    tmp = exports / f".{preset}_{variant}.partial"
    quantize = "'int8'" if variant == "int8" else "None"
    code = ("from editgen.model.loading import load_musicgen\n"
            "from editgen.export.onnx_export import export_engine\n"
            f"export_engine(load_musicgen('random:{preset}'), {str(tmp)!r}, quantize={quantize})\n")
    print(f"exporting random:{preset} {variant} to {path} ...", file=sys.stderr, flush=True)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"export failed: {last}")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def _current_export(manifest_path: Path) -> bool:
    from editgen.engine.manifest import FORMAT_VERSION
    from editgen.export.quantize import METHOD

    manifest = json.loads(manifest_path.read_text())
    int8 = manifest.get("int8")
    return manifest.get("format_version") == FORMAT_VERSION and (int8 is None or int8.get("method") == METHOD)


def run_config(spec: dict, in_process: bool) -> dict:
    from benchmarks.engines import run_worker

    if in_process:
        return run_worker(spec)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_worker, spec).result()


def add_rooflines(results: dict, bandwidth: float) -> None:
    from editgen.engine.config import ModelShapes

    cfg = results["config"]
    for run in results["runs"]:
        if not run.get("points"):
            continue
        shapes = ModelShapes.from_dict(run["shapes"])
        w = roofline.WeightBytes(run["weights"]["dense_bytes"], run["weights"]["gathered_row_bytes"], "")
        for p in run["points"]:
            r = roofline.roofline(bandwidth, w, shapes, p["rows"], p["capacity"])
            p.update(r, roofline_fraction=p["steps_s"] / r["roofline_steps_s"],
                     achieved_gb_s=p["steps_s"] * r["bytes_per_step"] / 1e9)
    # Dashed lines for the plot: the edit's roofline per precision over the two sweeps.
    lines = {}
    for run in results["runs"]:
        if run["workload"] != "edit" or not run.get("points") or run["engine"] not in ("torch", "ort-int8"):
            continue
        name = "edit int8" if run["engine"] == "ort-int8" else "edit fp32"
        f = sorted((p for p in run["points"] if p["batch"] == cfg["frames_sweep_batch"]), key=lambda p: p["frames"])
        b = sorted((p for p in run["points"] if p["frames"] == cfg["batch_sweep_frames"]), key=lambda p: p["batch"])
        lines[name] = {"frames": [p["frames"] for p in f], "frames_steps_s": [p["roofline_steps_s"] for p in f],
                       "batch": [p["batch"] for p in b], "batch_steps_s": [p["roofline_steps_s"] for p in b]}
    results["roofline_lines"] = lines


def _find(results, engine, workload, frames, batch):
    for run in results["runs"]:
        if run["engine"] == engine and run["workload"] == workload:
            for p in run.get("points", []):
                if p["frames"] == frames and p["batch"] == batch:
                    return p
    return None


def add_summary(results: dict) -> None:
    cfg = results["config"]
    f0, b0 = cfg["batch_sweep_frames"], cfg["frames_sweep_batch"]
    base = _find(results, "transformers", "generate", f0, b0)
    s, lines = {"frames": f0, "batch": b0}, {}
    for engine in ("ort-fp32", "ort-int8", "torch"):
        p = _find(results, engine, "edit", f0, b0)
        if p is None:
            continue
        s[f"{engine}_edit_steps_s"] = p["steps_s"]
        s[f"{engine}_edit_roofline_fraction"] = p["roofline_fraction"]
        text = (f"{engine} edit ({p['rows']} rows) at {f0} frames: {p['steps_s']:.2f} steps/s, "
                f"{100 * p['roofline_fraction']:.0f}% of roofline ({p['roofline_steps_s']:.2f} steps/s, "
                f"{p['bytes_per_step'] / 1e9:.2f} GB/step)")
        if base is not None:
            ratio = p["steps_s"] / base["steps_s"]
            s[f"{engine}_edit_over_transformers_generate"] = ratio
            text += f"; x{ratio:.2f} the steps/s of transformers plain generation ({base['steps_s']:.2f})"
        lines[engine] = text
    fp, i8 = _find(results, "ort-fp32", "edit", f0, b0), _find(results, "ort-int8", "edit", f0, b0)
    if fp and i8:
        s["int8_over_fp32"] = i8["steps_s"] / fp["steps_s"]
        lines["int8"] = f"int8 / fp32 edit steps/s at {f0} frames: x{s['int8_over_fp32']:.2f}"
    s["lines"] = lines
    results["summary"] = s


def _write(results: dict, runs: list, bw: dict, out: Path, started: float, *, complete: bool) -> None:
    results["runs"] = runs
    results["complete"] = complete
    add_rooflines(results, bw["limit_gb_s"])
    add_summary(results)
    results["total_wall_s"] = time.time() - started
    report.write_json(out / "results.json", results)
    report.plot(results, out / "steps_per_second.png")


class UsageError(Exception):
    """Bad arguments or output path: one line, exit code 2, before any work."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message and exits; we want one line
        raise UsageError(message)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog=PROG, description=__doc__.split("\n")[0],
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
        settings(args)  # every check, before the first measurement
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    return run(args)


def settings(args: argparse.Namespace) -> dict:
    """The run's settings (--quick or full defaults, overridden by the arguments), checked
    against the model before anything runs; raises UsageError."""
    from editgen.model.presets import PRESETS

    d = dict(QUICK if args.quick else FULL)
    for key in ("preset", "frames", "batches", "burst", "repeats", "warmup", "e2e_seconds"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    if d["preset"] not in PRESETS:
        raise UsageError(f"--preset {d['preset']!r} is not a preset: choose one of {', '.join(PRESETS)}")
    for key in ("burst", "repeats"):
        if d[key] < 1:
            raise UsageError(f"--{key} is {d[key]}, must be at least 1")
    if d["warmup"] < 0 or d["e2e_seconds"] < 0:
        raise UsageError("--warmup and --e2e-seconds must be >= 0")
    # Presets keep MusicGen's 2048 positions (editgen.model.presets); a point at F frames
    # of past needs F + burst of them.
    positions = 2048
    if max(d["frames"]) + d["burst"] > positions:
        raise UsageError(f"--frames {max(d['frames'])}: the model has {positions} positions and a point needs "
                         f"frames + burst ({d['burst']}) of them: use at most {positions - d['burst']}")
    max_e2e = (positions - 3) / 50  # 4 codebooks at 50 frames/s
    if d["e2e_seconds"] > max_e2e:
        raise UsageError(f"--e2e-seconds {d['e2e_seconds']:g} is longer than the model's {max_e2e:.2f} s")
    if args.threads < 1:
        raise UsageError(f"--threads is {args.threads}, must be at least 1")
    check_output_dir(args.out)
    return d


def check_output_dir(out: Path) -> None:
    """The output directory exists and takes files, or can be created: checked by writing
    a probe file (os.access says yes to everything when running as root)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a directory")
    target = out if out.is_dir() else out.parent if str(out.parent) else Path(".")
    if not target.is_dir():
        why = "is not a directory" if target.exists() else "does not exist (create it first)"
        raise UsageError(f"cannot write to --out {out}: {target} {why}")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".probe."):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to --out {out}: {target} is not writable") from None


def run(args: argparse.Namespace) -> int:
    d = settings(args)
    if d["repeats"] < 3 and not args.quick:
        print("note: fewer than 3 repeats: min/median are not meaningful", file=sys.stderr)
    out = args.out
    out.mkdir(exist_ok=True)
    in_process = args.in_process or args.quick
    model = f"random:{d['preset']}"
    points, batch0, frames0 = points_for(d["frames"], d["batches"])
    started = time.time()
    results = {
        "config": {"model": model, "quick": args.quick, "points": points, "frames_sweep_batch": batch0,
                   "batch_sweep_frames": frames0, "burst": d["burst"], "warmup": d["warmup"],
                   "repeats": d["repeats"], "e2e_seconds": d["e2e_seconds"], "threads": args.threads,
                   "guidance": 3.0, "top_k": 250, "in_process": in_process,
                   "method": (
                       "steps/s = 1 / (min over repeats of a burst of `burst` steady-state steps after "
                       "`past` positions, divided by burst); our engines: a real request stepped to `past` "
                       "by the engine core, then EngineCore.step() (backend step reading and writing its "
                       "own pool + CFG + top-k sampling), capacity = positions the steps read; transformers: model forward on an EncoderDecoderCache whose "
                       "DynamicCache holds `past` positions (grown by torch.cat, cropped back between "
                       "bursts) + CFG + top-k + multinomial. Roofline = bandwidth / (decoder weight bytes "
                       "read per step + self K/V over capacity + cross K/V). End to end: one request of "
                       "e2e_seconds at batch 1, min of repeats; first audio = a 5-frame request "
                       "(text encoder, cross K/V, K - 1 + 5 steps, EnCodec decode). Peak RSS: VmHWM reset "
                       "before each point, one process per engine x workload.")},
        "machine": machine_info(),
    }
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores", file=sys.stderr)
    bw = roofline.measure_bandwidth(threads=args.threads, megabytes=d["bandwidth_mb"])
    results["bandwidth"] = bw
    print(f"bandwidth: {bw['limit_gb_s']:.1f} GB/s", file=sys.stderr)

    runs = []
    for engine in args.engines:
        engine_dir = None
        if engine.startswith("ort-"):
            try:
                engine_dir = str(ensure_export(d["preset"], engine.split("-", 1)[1], args.exports))
            except Exception as exc:  # recorded and printed, the other engines still run
                for workload in args.workloads:
                    runs.append({"engine": engine, "workload": workload, "skipped": str(exc)})
                print(f"skipping {engine}: {exc}", file=sys.stderr)
                continue
        for workload in args.workloads:
            spec = {"engine": engine, "workload": workload, "model": model, "engine_dir": engine_dir,
                    "points": points, "burst": d["burst"], "warmup": d["warmup"], "repeats": d["repeats"],
                    "e2e_seconds": d["e2e_seconds"], "e2e_repeats": d["e2e_repeats"], "threads": args.threads}
            t0 = time.perf_counter()
            print(f"{engine} {workload} ...", file=sys.stderr, flush=True)
            try:
                result = run_config(spec, in_process)
                result["engine_dir"] = engine_dir
            except Exception as exc:
                traceback.print_exc()
                result = {"engine": engine, "workload": workload, "skipped": f"failed: {type(exc).__name__}: {exc}"}
            result["wall_s"] = time.perf_counter() - t0
            runs.append(result)
            print(f"  done in {result['wall_s']:.0f} s", file=sys.stderr, flush=True)
            _write(results, runs, bw, out, started, complete=False)  # partial results survive an interrupt
    _write(results, runs, bw, out, started, complete=True)
    report.print_report(results)
    print(f"\nwrote {out / 'results.json'} and {out / 'steps_per_second.png'}")
    failed = [r for r in runs if r.get("skipped", "").startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
