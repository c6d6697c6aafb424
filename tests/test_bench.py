"""The benchmark runner works (`--quick`: random:tiny, small sweeps); the numbers are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_results_and_plot(tmp_path):
    start = time.perf_counter()
    # transformers + torch only: ORT needs an export (minutes of its own), run in the full bench.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path),
         "--engines", "transformers,torch", "--exports", str(tmp_path / "exports")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elapsed = time.perf_counter() - start
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("config", "machine", "bandwidth", "runs", "summary", "roofline_lines"):
        assert key in results, key
    for key in ("cpu", "cores", "ram_gb", "torch", "onnxruntime", "transformers"):
        assert key in results["machine"], key
    assert results["bandwidth"]["limit_gb_s"] > 0
    labels = {(r["engine"], r["workload"]) for r in results["runs"]}
    assert labels == {("transformers", "generate"), ("transformers", "edit"), ("torch", "generate"),
                      ("torch", "edit")}
    for run in results["runs"]:
        assert "skipped" not in run, run.get("skipped")
        assert len(run["points"]) == len(results["config"]["points"])
        for p in run["points"]:
            for key in ("frames", "batch", "rows", "steps_s", "step_s", "peak_rss_mb", "roofline_steps_s",
                        "roofline_fraction", "bytes_per_step"):
                assert key in p, key
            assert len(p["step_s"]["all"]) >= 3
            assert p["step_s"]["min"] <= p["step_s"]["median"]
        e = run["e2e"]
        for key in ("rtf", "ttff_s", "steps_s", "peak_rss_mb"):
            assert key in e, (key, e)
    png = tmp_path / "steps_per_second.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps/s" in proc.stdout
    assert elapsed < 90, f"--quick took {elapsed:.0f} s"


def test_cli_bench_is_registered():
    from editgen.cli.bench import register
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--out", "x", "--frames", "8,16"])
    assert args.quick and str(args.out) == "x" and args.frames == [8, 16]
