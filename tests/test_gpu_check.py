"""benchmarks/gpu_check.py, the script for a lent GPU, run here in --quick mode (random:tiny,
7 steps) on CPU under Triton's interpreter: every section's code path runs and writes its
figures, so the device session does not find a broken script. What the figures say on
CPU means nothing (the interpreter is slow); the kernel errors and code comparisons are
real checks at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Not imported here: a worker that imports triton before TRITON_INTERPRET=1 is set would
# compile the kernels of test_triton_kernels.py for a GPU (the script runs in a subprocess).
if importlib.util.find_spec("triton") is None or importlib.util.find_spec("matplotlib") is None:
    pytest.skip("needs triton and matplotlib (the kernels and cli extras)", allow_module_level=True)
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_runs_every_section(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    # The script as `python -m benchmarks.gpu_check`, with tests/triton_interpreter.py's speed-up.
    script = ("import runpy, sys; from tests.triton_interpreter import speed_up; speed_up(); "
              "sys.argv[0] = 'gpu_check'; runpy.run_module('benchmarks.gpu_check', run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", script, "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "gpu_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kernels = results["kernels"]
    assert kernels["float32"]["cross_out"] < 1e-5 and kernels["float32"]["self_out"] < 1e-5
    assert kernels["float16"]["cross_out"] < 5e-3 and kernels["bfloat16"]["self_out"] < 5e-2
    # fp32 triton backend vs the torch reference: the same greedy codes at tiny sizes
    assert all(c["identical"] for c in results["codes"].values()), results["codes"]
    assert set(results["agreement"]) == {"float16"}  # --quick: one half dtype (the full run: fp16 and bf16)
    t = results["timings"]
    assert t["edit_e2e_s"] > 0 and set(t["steps_per_s"]) == {"4"} and t["floor_ms_per_step"] > 0
    assert t["transformers_float32_s"] > 0 and t["transformers_float16_s"] > 0
    # The CUDA C++ library's comparison needs a GPU: the section says so instead of a number.
    assert results["cuda_lib"] == {"skipped": "no CUDA device: the CUDA C++ library runs only on an NVIDIA GPU"}


def test_gpu_check_refuses_cpu_without_the_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--quick", "--out", str(tmp_path / "x")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "TRITON_INTERPRET=1" in run.stderr
    assert not (tmp_path / "x").exists()
