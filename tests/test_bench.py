"""The benchmark runner (`python -m benchmarks.run`, from a checkout): `--quick` works
(random:tiny, small sweeps; the numbers are not checked), writes to the current
directory by default, and refuses bad arguments in one line before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from benchmarks import run as bench

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "docs" / "bench"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_quick_bench_writes_results_and_plot_in_the_current_directory(tmp_path, monkeypatch, capsys):
    published = digest(PUBLISHED)
    monkeypatch.chdir(tmp_path)
    # transformers + torch only: ORT needs an export (minutes of its own), run in the full bench.
    code = bench.main(["--quick", "--engines", "transformers,torch", "--exports", str(tmp_path / "exports"),
                       "--threads", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert digest(PUBLISHED) == published  # the committed results and chart are untouched
    out = tmp_path / "bench-results"
    results = json.loads((out / "results.json").read_text())
    for key in ("config", "machine", "bandwidth", "runs", "summary", "roofline_lines"):
        assert key in results, key
    for key in ("cpu", "cores", "ram_gb", "torch", "onnxruntime", "transformers"):
        assert key in results["machine"], key
    assert results["complete"] is True and results["bandwidth"]["limit_gb_s"] > 0
    labels = {(r["engine"], r["workload"]) for r in results["runs"]}
    assert labels == {("transformers", "generate"), ("transformers", "edit"), ("torch", "generate"),
                      ("torch", "edit")}
    repeats = results["config"]["repeats"]
    for run in results["runs"]:
        assert "skipped" not in run, run.get("skipped")
        assert [[p["frames"], p["batch"]] for p in run["points"]] == results["config"]["points"]
        for p in run["points"]:
            for key in ("rows", "steps_s", "peak_rss_mb", "roofline_steps_s", "roofline_fraction", "bytes_per_step"):
                assert p[key] > 0, (key, p)
            times = p["step_s"]["all"]
            # min and median are those of the recorded repeats, and steps/s is the min's.
            assert len(times) == repeats and p["step_s"]["min"] == min(times)
            assert p["step_s"]["median"] == sorted(times)[len(times) // 2]
            assert p["steps_s"] == pytest.approx(1 / p["step_s"]["min"])
        e = run["e2e"]
        for key in ("rtf", "ttff_s", "steps_s", "peak_rss_mb"):
            assert key in e, (key, e)
    png = out / "steps_per_second.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "steps/s" in printed.out


def run_bad(capsys, argv) -> str:
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m benchmarks.run: error: "), err
    return err[0]


@pytest.fixture
def no_work(monkeypatch):
    """Any measurement or export would fail the test: arguments are checked first."""
    def forbidden(*args, **kwargs):
        pytest.fail("the benchmark started before its arguments were checked")

    monkeypatch.setattr(bench.roofline, "measure_bandwidth", forbidden)
    monkeypatch.setattr(bench, "ensure_export", forbidden)
    monkeypatch.setattr(bench, "run_config", forbidden)
    monkeypatch.setattr(bench, "machine_info", forbidden)


@pytest.mark.parametrize("case, argv, message", [
    ("preset", ["--preset", "huge"], r"--preset 'huge' is not a preset: choose one of tiny, tiny2, tiny-stereo, small"),
    ("frames", ["--frames", "5000"], r"--frames 5000: the model has 2048 positions .* use at most 2046"),
    ("frames syntax", ["--frames", "a,b"], r"'a,b' is not a comma-separated list of integers"),
    ("burst", ["--burst", "0"], r"--burst is 0, must be at least 1"),
])
def test_bad_arguments_one_line_before_any_work(case, argv, message, tmp_path, capsys, no_work):
    import re

    out = tmp_path / "out"
    line = run_bad(capsys, ["--quick", "--out", str(out), *argv])
    assert re.search(message, line), line
    assert not out.exists()


def test_output_path_is_checked_before_any_work(tmp_path, capsys, no_work):
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    assert "is a file: give a directory" in run_bad(capsys, ["--quick", "--out", str(existing)])
    assert existing.read_text() == "{}"
    missing_parent = tmp_path / "missing" / "out"
    assert "does not exist" in run_bad(capsys, ["--quick", "--out", str(missing_parent)])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (read-only even for root)")
def test_read_only_output_directory_is_refused(capsys, no_work):
    # /proc takes no new files, even as root, where os.access would say it is writable.
    assert "is not writable" in run_bad(capsys, ["--quick", "--out", "/proc/editgen-bench"])


def test_default_output_is_in_the_current_directory():
    args = bench._Parser()
    bench.add_arguments(args)
    assert args.parse_args([]).out == Path("bench-results")  # relative: the current directory


def test_e2e_quick_writes_latency_throughput_and_plot(tmp_path, exported):
    """benchmarks.e2e on random:tiny: every configuration measured, PNG written."""
    from benchmarks import e2e

    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "tiny_fp32").symlink_to(exported("random:tiny"))
    (exports / "tiny_int8").symlink_to(exported("random:tiny", quantize="int8"))
    out = tmp_path / "e2e"
    assert e2e.main(["--quick", "--exports", str(exports), "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    latency = {(r["engine"], r["seconds"]): r for r in results["latency"]}
    # what the runtime opens: the int8 export on CPU runs the path its export found faster
    from editgen.engine.backends.int8_step_backend import use_int8_step

    want = "Int8StepBackend" if use_int8_step(exports / "tiny_int8") else "OrtBackend"
    assert {r["backend"] for r in results["latency"] if r["engine"] == "ort-int8"} == {want}
    assert set(latency) == {(e, s) for e in ("ort-fp32", "ort-int8", "transformers") for s in e2e.QUICK["seconds"]}
    for (engine, seconds), r in latency.items():
        assert r["steps"] == round(seconds * 50) + 3 and r["rows"] == 4 and r["wall_s"] > 0
        if engine != "transformers":  # one backend step per decoder step, all timed
            assert len(r["trace"]["step_ms"]) == -(-r["steps"] // 25) and r["decode_s"] > 0
    assert [r["requests"] for r in results["concurrency"]] == e2e.QUICK["concurrency"]
    for r in results["concurrency"]:
        assert r["rows"] == 4 * r["requests"]
        assert r["audio_s_per_s"] == pytest.approx(r["requests"] * r["seconds_each"] / r["wall_s"])
    assert (out / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_methods_times_every_method_and_checks_row_invariance(tmp_path):
    """benchmarks.int8_methods on one layer: every method timed at every row count; the
    export's methods are row-invariant (onnxruntime's per-tensor dynamic one is reported,
    whatever it gives)."""
    from benchmarks import int8_methods

    out = tmp_path / "int8"
    assert int8_methods.main(["--layers", "1", "--repeats", "1", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(int8_methods.METHODS)
    for method, r in results["methods"].items():
        assert [int(k) for k in r["ms_by_rows"]] == list(int8_methods.ROWS) and min(r["ms_by_rows"].values()) > 0
        if method != "dynamic":
            assert r["row_invariant"] is True, method
    assert (out / "int8_methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attention_options_times_every_option_with_the_int8_kv_kernel(tmp_path):
    """benchmarks.attention_options on one layer and a short request: every option timed,
    the int8 KV kernel among them, PNG written."""
    from benchmarks import attention_options

    out = tmp_path / "attn"
    assert attention_options.main(["--seconds", "0.6", "--every", "10", "--layers", "1", "--threads", "1",
                                   "--out", str(out)]) == 0
    results = json.loads((out / "attention_options.json").read_text())
    assert set(results["totals_s"]) >= {"capacity", "buckets", "gqa", "mha", "kv8"}
    assert all(s["kv8"] > 0 for s in results["samples_ms"]) and len(results["samples_ms"]) == 4
    assert (out / "attention_options.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
