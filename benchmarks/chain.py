"""Old engine against this one: the same edits, each run in its own process, back to back.

    git worktree add /work/wt/old21c0855 21c0855
    python -m benchmarks.chain --old /work/wt/old21c0855 --exports /tmp/chain --out docs/bench/int8_step

Each chain runs, alternating the engines (old first in odd chains, new first in even
ones): a 10 s and a 30 s edit of random:small (source + target with guidance: 4 rows),
ORT int8 export of each engine's own version, 2 threads, end to end (text, every step,
EnCodec decode of both clips: `benchmarks.e2e.edit_latency`, which both versions have);
then this engine's 1 and 8 concurrent 10 s edits (`benchmarks.e2e.concurrent_edits`; with
--concurrency-on both, the old engine's too).
Every run records /proc/loadavg before and after; the read bandwidth is measured in this
process before and after each chain (benchmarks.roofline.measure_bandwidth), and each new
run's step time is given as a multiple of its bytes floor at that bandwidth: the int8
weights plus each row's int8 K/V up to its position, per step, summed over the edit.
Writes chain.json and chain.png into --out, after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg

PROG = "python -m benchmarks.chain"
HERE = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
from benchmarks.e2e import concurrent_edits, edit_latency
spec = json.loads(sys.argv[1])
if spec["count"]:
    out = concurrent_edits(spec["engine"], spec["count"], spec["seconds"], spec["threads"])
else:
    out = edit_latency(spec["engine"], spec["seconds"], spec["threads"])
import editgen
out["editgen"] = editgen.__file__
print("RESULT " + json.dumps(out))
"""


def export(checkout: Path, out: Path) -> Path:
    """The checkout's own random:small int8 export (made once, in its own process)."""
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "editgen.cli", "export", "--model", "random:small", "--quantize", "int8",
                        "-o", str(out)], cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)}, check=True)
    return out


def run(checkout: Path, engine: Path, seconds: float, threads: int, count: int = 0) -> dict:
    """One edit (or `count` concurrent edits) in a new process of `checkout`."""
    spec = {"engine": str(engine), "seconds": seconds, "threads": threads, "count": count}
    before = loadavg()
    done = subprocess.run([sys.executable, "-c", WORKER, json.dumps(spec)], cwd=checkout, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(checkout)})
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: {done.stderr.strip().splitlines()[-1:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[len("RESULT "):]), "loadavg_before": before, "loadavg_after": loadavg()}


def floor_ratio(result: dict, engine: Path, bandwidth_gb_s: float) -> dict:
    """The edit's summed step time over its summed bytes floor (benchmarks.step_parts'
    floor: int8 weights, int8 K/V of 4 rows up to each position; cross K/V left out)."""
    from benchmarks.step_parts import step_weight_bytes
    from editgen.engine.manifest import load_manifest

    s = load_manifest(engine).shapes
    kv_per_position = s.num_layers * s.num_heads * (2 * s.head_dim + 8)
    positions = np.arange(result["steps"])
    floor_bytes = result["steps"] * step_weight_bytes(str(engine)) + (result["rows"] * positions * kv_per_position).sum()
    floor_s = floor_bytes / (bandwidth_gb_s * 1e9)
    return {"floor_s": float(floor_s), "steps_s_sum": result["step_ms_sum"] / 1e3,
            "steps_over_floor": result["step_ms_sum"] / 1e3 / float(floor_s)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--old", type=Path, required=True, help="a checkout of the old engine (git worktree add ...)")
    p.add_argument("--exports", type=Path, required=True, help="where old/ and new/ int8 exports are, or are made")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--seconds", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--concurrency", type=int, default=8,
                   help="concurrent 10 s edits (0: none), on this engine or both (--concurrency-on)")
    p.add_argument("--concurrency-on", choices=("new", "both"), default="new",
                   help="both: the old engine's concurrent edits too (it needs benchmarks.e2e.concurrent_edits)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    from benchmarks.roofline import measure_bandwidth

    engines = {"old": (a.old.resolve(), export(a.old.resolve(), a.exports / "old")),
               "new": (HERE, export(HERE, a.exports / "new"))}
    a.out.mkdir(parents=True, exist_ok=True)
    results = {"what": "random:small edits, ORT int8 exports of each engine, end to end, each run its own process",
               "old": str(a.old), "new": str(HERE), "threads": a.threads, "chains": []}

    def save():
        (a.out / "chain.json").write_text(json.dumps(results, indent=1) + "\n")
        plot(results, a.out / "chain.png")

    for c in range(a.chains):
        chain = {"bandwidth_before": measure_bandwidth(threads=a.threads, megabytes=512), "runs": []}
        results["chains"].append(chain)
        order = ("old", "new") if c % 2 == 0 else ("new", "old")
        for seconds in a.seconds:
            for label in order:
                checkout, engine = engines[label]
                r = {"label": label, **run(checkout, engine, seconds, a.threads)}
                if label == "new":
                    r["floor"] = floor_ratio(r, engine, chain["bandwidth_before"]["read_gb_s"])
                chain["runs"].append(r)
                print(f"chain {c + 1} {label} {seconds:g} s: {r['wall_s']:.1f} s (load {r['loadavg_before'][0]:.2f})",
                      file=sys.stderr)
                save()
        for label in order if a.concurrency_on == "both" else ("new",):
            for count in (1, a.concurrency) if a.concurrency else ():
                checkout, engine = engines[label]
                r = {"label": label, **run(checkout, engine, 10.0, a.threads, count=count)}
                chain["runs"].append(r)
                print(f"chain {c + 1} {label} {count} x 10 s: {r['audio_s_per_s']:.3f} audio s/s", file=sys.stderr)
                save()
        chain["bandwidth_after"] = measure_bandwidth(threads=a.threads, megabytes=512)
        save()
    print(f"wrote {a.out / 'chain.json'} and {a.out / 'chain.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for c, chain in enumerate(results["chains"]):
        for label, marker in (("old", "s"), ("new", "o")):
            runs = [r for r in chain["runs"] if r["label"] == label and "requests" not in r]
            a.plot([r["seconds"] for r in runs], [r["wall_s"] for r in runs], marker, ls="-",
                   label=f"chain {c + 1} {label}")
        conc = [r for r in chain["runs"] if "requests" in r]
        b.bar([f"{r['label']}, {r['requests']}\nchain {c + 1}" for r in conc], [r["audio_s_per_s"] for r in conc],
              color=["tab:gray" if r["label"] == "old" else "tab:blue" for r in conc])
    a.set_xlabel("edit length (s)")
    a.set_ylabel("wall seconds, end to end (lower is better)")
    a.set_title("one edit, 4 rows, ORT int8, each run its own process")
    a.legend(fontsize=7)
    b.set_ylabel("edited audio s per wall s")
    b.set_title("concurrent 10 s edits")
    if not any("requests" in r for chain in results["chains"] for r in chain["runs"]):
        b.axis("off")
        b.text(0.5, 0.5, "not run (--concurrency 0)", ha="center", va="center", transform=b.transAxes)
    b.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
