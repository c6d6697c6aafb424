"""The CUDA C++ library (CMakeLists.txt, csrc/) and its ctypes binding (editgen.kernels.cuda_lib).

Without a GPU (the development machine, CI) this builds the library with CMake and nvcc,
runs ctest (the API test and the kernel's device code under a CPU emulation pass, the
kernel test reports itself skipped), compiles the header as C and C++, links a C program
against the installed library through find_package, and checks the binding's errors. With a
GPU the ctest kernel test must pass, the `gpu` tests compare the kernel with a float64 torch
reference of the formula, and the triton backend with its cross-attention through the
library (cross_attention="cuda-lib") with the Triton kernel's.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from editgen.kernels import cuda_lib

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "csrc" / "include" / "editgen_kernels.h"
API = {"editgen_edited_cross_attention", "editgen_last_error"}


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


CUDA = _torch_cuda()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: torch.cuda.is_available() is False")


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)


def _ok(result: subprocess.CompletedProcess) -> str:
    """The output of a command that must succeed; its tail in the failure message if not."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(result.args)} exited {result.returncode}:\n{output[-3000:]}"
    return output


@dataclass(frozen=True)
class Build:
    dir: Path
    seconds: float  # configure + build, as measured by the process that built it


def _build(build_dir: Path) -> float:
    start = time.perf_counter()
    # Warnings are errors here; one GPU generation (the default, sm_90) keeps it short.
    _ok(_run(["cmake", "-S", ROOT, "-B", build_dir, "-DEDITGEN_WERROR=ON"]))
    _ok(_run(["cmake", "--build", build_dir, "-j", "2"]))
    return time.perf_counter() - start


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Build:
    """The library and its C++ test programs, built once per run (~15 s on 2 busy cores).
    Under pytest-xdist each worker has its own session: the first to get the lock builds
    in the run's shared temporary directory, the others wait and reuse that build."""
    missing = [tool for tool in ("cmake", "nvcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH: the CUDA library cannot be built here")
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    root = tmp_path_factory.getbasetemp().parent if shared else tmp_path_factory.mktemp("cuda_lib")
    build_dir, done = root / "editgen_kernels_build", root / "editgen_kernels_build.json"
    with open(root / "editgen_kernels_build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # written only after a successful build
            done.write_text(json.dumps({"seconds": _build(build_dir)}))
    return Build(build_dir, json.loads(done.read_text())["seconds"])


# --- the build, ctest, C and C++ consumers ---------------------------------------------


@pytest.mark.slow
def test_builds_the_library_and_its_test_programs(built):
    library = built.dir / cuda_lib.LIBRARY_NAME
    assert library.is_file(), sorted(p.name for p in built.dir.iterdir())
    for program in ("test_edited_cross_attention", "test_emulated_block"):  # compiled and linked
        assert (built.dir / program).is_file() and os.access(built.dir / program, os.X_OK), program
    print(f"configure + build: {built.seconds:.1f} s")
    if shutil.which("nm"):  # the library exports its C API and nothing else
        symbols = _ok(_run(["nm", "-D", "--defined-only", library])).split("\n")
        exported = {line.split()[-1] for line in symbols if re.match(r"^[0-9a-f]+ T ", line)}
        assert exported == API


@pytest.mark.slow
def test_ctest_runs_the_api_and_emulated_tests_and_skips_the_kernel_test_without_a_gpu(built):
    output = _ok(_run(["ctest", "--test-dir", built.dir, "-V"]))  # a skipped test is no failure
    statuses = dict(re.findall(r"Test +#\d+: (\w+) \.+\**\s*(\w+)", output))
    assert statuses == {
        "edited_cross_attention_api": "Passed",
        "edited_cross_attention_emulated": "Passed",  # the device code on the CPU, every edit op
        "edited_cross_attention_kernel": "Passed" if CUDA else "Skipped",
    }, output
    if CUDA:
        assert "device 0: " in output
    else:
        assert "SKIP: no CUDA device" in output  # the reason, printed by the program


@pytest.mark.parametrize("language", ["c", "c++"])
def test_header_compiles_as_c_and_cpp(language):
    compiler, standard = ("gcc", "-std=c99") if language == "c" else ("g++", "-std=c++11")
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not on PATH")
    _ok(_run([compiler, "-fsyntax-only", "-x", language, standard, "-Wall", "-Wextra", "-Werror", "-pedantic", HEADER]))


@pytest.mark.slow
def test_installed_library_links_from_c_through_find_package(built, tmp_path):
    prefix, consumer = tmp_path / "prefix", tmp_path / "consumer"
    _ok(_run(["cmake", "--install", built.dir, "--prefix", prefix]))
    assert (prefix / "include" / "editgen_kernels.h").is_file()
    assert list(prefix.glob(f"lib*/{cuda_lib.LIBRARY_NAME}")), sorted(str(p) for p in prefix.rglob("*"))
    assert list(prefix.glob("lib*/cmake/editgen_kernels/editgen_kernelsConfig.cmake"))
    _ok(_run(["cmake", "-S", ROOT / "tests" / "cpp" / "consumer", "-B", consumer, f"-DCMAKE_PREFIX_PATH={prefix}"]))
    _ok(_run(["cmake", "--build", consumer]))
    output = _ok(_run([consumer / "api_from_c"]))
    assert output.rstrip().endswith("PASSED")


def test_ctypes_struct_matches_the_header(tmp_path):
    """cuda_lib.CrossArgs has the C struct's fields, offsets and size (as gcc lays it out)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not on PATH")
    fields = [name for name, _ in cuda_lib.CrossArgs._fields_]
    source = tmp_path / "offsets.c"
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include <editgen_kernels.h>\nint main(void) {\n"
                      + "".join(f'  printf("{f} %zu\\n", offsetof(EditgenCrossArgs, {f}));\n' for f in fields)
                      + '  printf("sizeof %zu\\n", sizeof(EditgenCrossArgs));\n  return 0;\n}\n')
    _ok(_run(["gcc", "-std=c99", "-I", HEADER.parent, source, "-o", tmp_path / "offsets"]))
    layout = dict(line.split() for line in _ok(_run([tmp_path / "offsets"])).splitlines())
    assert {f: int(layout[f]) for f in fields} == {f: getattr(cuda_lib.CrossArgs, f).offset for f in fields}
    assert int(layout["sizeof"]) == ctypes.sizeof(cuda_lib.CrossArgs)
    # And every field of the C struct is in the ctypes one (none missing at the end).
    struct = re.search(r"typedef struct EditgenCrossArgs \{(.+?)\} EditgenCrossArgs;", HEADER.read_text(), re.S).group(1)
    declared = re.findall(r"\*?(\w+);", re.sub(r"/\*.*?\*/", "", struct, flags=re.S))
    assert declared == fields


def test_csrc_and_the_cpp_tests_are_not_packaged():
    from setuptools import find_packages

    packages = find_packages(str(ROOT), include=["editgen*"])  # what pyproject.toml installs
    assert packages and all(p.split(".")[0] == "editgen" for p in packages)
    assert not list((ROOT / "csrc").rglob("__init__.py")) and not list((ROOT / "tests" / "cpp").rglob("__init__.py"))


# --- the binding -----------------------------------------------------------------------


def test_binding_says_how_to_build_a_missing_library(tmp_path, monkeypatch):
    with pytest.raises(cuda_lib.CudaLibraryError, match=r"does not exist: build it with `cmake -S \. -B build"):
        cuda_lib.load(tmp_path)
    monkeypatch.delenv(cuda_lib.LIBRARY_ENV, raising=False)
    with pytest.raises(cuda_lib.CudaLibraryError, match=f"set {cuda_lib.LIBRARY_ENV}="):
        cuda_lib.load()
    (tmp_path / cuda_lib.LIBRARY_NAME).write_text("not a library")
    with pytest.raises(cuda_lib.CudaLibraryError, match="cannot load .*: rebuild it on this machine"):
        cuda_lib.load(tmp_path)


@pytest.mark.slow
def test_binding_loads_the_library_and_refuses_clearly(built, monkeypatch):
    """Loading needs no GPU; every call that cannot run is a one-line exception."""
    lib = cuda_lib.load(built.dir)
    monkeypatch.setenv(cuda_lib.LIBRARY_ENV, str(lib.path))
    assert cuda_lib.load().path == lib.path

    # The raw C call: refused arguments are ValueErrors with the library's message.
    with pytest.raises(ValueError, match="q is NULL"):
        lib.call(cuda_lib.CrossArgs(rows=2, heads=3, tokens=5, head_dim=24, scale=0.2), None)
    with pytest.raises(ValueError, match="tokens = 1025 exceeds the kernel's limit EDITGEN_MAX_TOKENS"):
        lib.call(cuda_lib.CrossArgs(rows=2, heads=3, tokens=1025, head_dim=24, scale=0.2), None)
    # Arguments that pass every host check, on host memory: no launch either way.
    host = (ctypes.c_float * 4)()
    pointers = {name: ctypes.addressof(host) for name, _ in cuda_lib.CrossArgs._fields_[5:]}
    args = cuda_lib.CrossArgs(rows=2, heads=3, tokens=5, head_dim=24, scale=0.2, **pointers)
    if CUDA:
        with pytest.raises(ValueError, match="q is not device memory"):
            lib.call(args, None)
    else:
        with pytest.raises(cuda_lib.CudaLibraryError, match=r"^editgen_edited_cross_attention: no usable CUDA device"):
            lib.call(args, None)

    # The torch entry point: well-formed CPU tensors.
    torch = pytest.importorskip("torch")
    inputs, scale = make_inputs(torch, device="cpu")
    if CUDA:
        with pytest.raises(ValueError, match="the CUDA kernels take CUDA tensors"):
            lib.edited_cross_attention(**inputs, scale=scale)
    else:
        with pytest.raises(cuda_lib.CudaLibraryError, match=r"^no CUDA device \(torch.cuda.is_available\(\) is False\)"):
            lib.edited_cross_attention(**inputs, scale=scale)


@pytest.mark.slow
@pytest.mark.parametrize("change, error, message", [
    ({"k": "transpose"}, ValueError, r"k is not contiguous: pass k.contiguous\(\)"),
    ({"src_row": "int32"}, ValueError, r"src_row is torch.int32, expected torch.int64"),
    ({"text_mask": "int64"}, ValueError, r"text_mask is torch.int64, expected torch.float32"),
    ({"mapper": "short"}, ValueError, r"mapper has shape \(4, 12, 11\), expected \(4, 12, 12\)"),
    ({"alpha": "list"}, TypeError, r"alpha must be a torch tensor, got list"),
    ({"q": "2d"}, ValueError, r"q must be a tensor \[rows, heads, head_dim\], got \(4, 72\)"),
])
def test_binding_checks_the_tensors_before_the_call(built, change, error, message):
    torch = pytest.importorskip("torch")
    inputs, scale = make_inputs(torch, device="cpu")
    (name, how), = change.items()
    x = inputs[name]
    inputs[name] = {"transpose": lambda: x.transpose(-1, -2).contiguous().transpose(-1, -2),
                    "int32": lambda: x.int(), "int64": lambda: x.long(), "short": lambda: x[..., :-1],
                    "list": lambda: x.tolist(), "2d": lambda: x.flatten(1)}[how]()
    with pytest.raises(error, match=message):
        cuda_lib.load(built.dir).edited_cross_attention(**inputs, scale=scale)


# --- the kernel on a GPU ---------------------------------------------------------------

OPS = ["identity", "replace", "refine", "reweight-2", "reweight0.5", "reweight2", "captured", "masked"]


def make_inputs(torch, *, op="replace", keep=0.0, window="on", rows=4, heads=3, tokens=12, head_dim=24,
                device="cuda", seed=0):
    """Keyword arguments of edited_cross_attention and the scale. Row 0 is the source
    (unedited), rows 1 and 2 do `op` (row 2 with padded text), row 3 has all text masked
    (a null-text row: identity, or edited too for op "masked")."""
    R, H, T, D = rows, heads, tokens, head_dim
    g = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return torch.rand(*shape, generator=g) * 2 - 1

    x = dict(q=uniform(R, H, D), k=uniform(R, H, T, D), v=uniform(R, H, T, D))
    x["text_mask"] = torch.ones(R, T)
    x["text_mask"][2, T - 3:] = 0
    x["text_mask"][3] = 0
    x["src_row"] = torch.arange(R)
    x["use_captured"] = torch.zeros(R)
    x["captured"] = torch.softmax(2 * uniform(R, H, T), dim=-1)
    x["mapper"] = torch.eye(T).repeat(R, 1, 1)
    x["alpha"], x["weight"] = torch.ones(R, T), torch.ones(R, T)
    x["window"] = {"on": torch.ones(R, T), "off": torch.zeros(R, T),
                   "mixed": (torch.arange(T) % 2 == 0).float().repeat(R, 1)}[window]
    x["keep"] = torch.full((R,), float(keep))

    edited = [1, 2, 3] if op == "masked" else [1, 2]
    permutation = torch.eye(T)[:, torch.roll(torch.arange(T), -1)]  # target t <- source t + 1
    for r in edited if op != "identity" else []:
        x["src_row"][r] = 0
        if op in ("replace", "masked", "captured"):
            x["mapper"][r] = permutation
        elif op == "refine":  # target token 1 is new (no source: alpha 0), later ones shift by one
            x["mapper"][r] = 0
            x["mapper"][r, 0, 0] = 1
            x["mapper"][r, torch.arange(1, T - 1), torch.arange(2, T)] = 1  # [source, target]
            x["alpha"][r, 1] = 0
        elif op.startswith("reweight"):
            x["weight"][r, 1] = float(op[len("reweight"):])
        if op == "captured":
            x["use_captured"][r] = 1
            x["src_row"][r] = -1  # not read where captured
    return {name: t.to(device) for name, t in x.items()}, D**-0.5


def reference(x: dict, scale: float):
    """The formula of the eager cross-attention (editgen.model.attention) in float64 (out [R, H, D], p [R, H, T])."""
    import torch

    d = {name: t.double() if t.is_floating_point() else t for name, t in x.items()}
    alpha, weight, window = d["alpha"][:, None], d["weight"][:, None], d["window"][:, None]  # [R, 1, T]
    scores = scale * (d["q"][:, :, None, :] @ d["k"].transpose(-1, -2))[:, :, 0]  # [R, H, T]
    scores = scores + (1 - d["text_mask"][:, None]) * torch.finfo(torch.float32).min
    p_own = torch.softmax(scores, dim=-1)
    p_src = torch.where(d["use_captured"][:, None, None] > 0.5, d["captured"], p_own[d["src_row"].clamp(min=0)])
    base = (p_src[:, :, None, :] @ d["mapper"][:, None])[:, :, 0]
    inj = (alpha * base + (1 - alpha) * p_own) * weight
    inj = window * inj + (1 - window) * p_own
    p = p_own - (1 - d["keep"][:, None, None]) * (p_own - inj)
    return (p[:, :, None, :] @ d["v"])[:, :, 0], p


@pytest.mark.parametrize("op", OPS)
def test_the_gpu_tests_inputs_and_reference_on_the_cpu(op):
    """What the GPU tests compare with, run here: keep 0, window on, so row 1 is the pure
    edit of the source row 0 (or of the captured map)."""
    torch = pytest.importorskip("torch")
    x, scale = make_inputs(torch, op=op, device="cpu")
    out, p = reference(x, scale)
    assert out.shape == (4, 3, 24) and p.shape == (4, 3, 12) and torch.isfinite(out).all()
    torch.testing.assert_close(p[0].sum(-1), torch.ones(3, dtype=torch.float64))  # the source: a softmax
    if op != "masked":  # all text masked, unedited: uniform
        torch.testing.assert_close(p[3], torch.full((3, 12), 1 / 12, dtype=torch.float64))
    source = x["captured"][1].double() if op == "captured" else p[0]
    if op in ("replace", "captured", "masked"):  # target t <- source t + 1
        torch.testing.assert_close(p[1], source.roll(-1, dims=-1))
    if op.startswith("reweight"):  # token 1 scaled by c, the others the source's
        expected = source.clone()
        expected[:, 1] *= float(op[len("reweight"):])
        torch.testing.assert_close(p[1], expected)
    if op == "refine":  # target 0 <- 0, t > 1 <- t - 1; token 1 (new) is the row's own
        torch.testing.assert_close(p[1][:, 2:], source[:, 1:-1])
        torch.testing.assert_close(p[1][:, 0], source[:, 0])


# fp32 kernel vs float64 reference: scores, exp and sums of a few ulp each (the C++ test's
# tolerance and reasoning).
ATOL = 1e-5


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_kernel_matches_the_torch_reference(built, op):
    import torch

    lib = cuda_lib.load(built.dir)
    for keep in (0.0, 0.5, 1.0):
        for window in ("on", "mixed"):  # "off": test_kernel_keeps_the_exact_forms
            x, scale = make_inputs(torch, op=op, keep=keep, window=window)
            out, probs = lib.edited_cross_attention(**x, scale=scale)
            torch.cuda.synchronize()
            ref_out, ref_probs = reference(x, scale)
            case = f"{op}, keep {keep}, window {window}"
            torch.testing.assert_close(probs.double(), ref_probs, atol=ATOL, rtol=0, msg=lambda m: f"{case}: probs: {m}")
            torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=0, msg=lambda m: f"{case}: out: {m}")


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
def test_kernel_at_musicgen_shapes_on_a_side_stream_and_without_probs(built):
    import torch

    lib = cuda_lib.load(built.dir)
    x, scale = make_inputs(torch, op="refine", keep=0.5, window="mixed", rows=8, heads=16, tokens=64, head_dim=64)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, probs = lib.edited_cross_attention(**x, scale=scale)
        out_only, none = lib.edited_cross_attention(**x, scale=scale, probs=False)
    stream.synchronize()
    ref_out, ref_probs = reference(x, scale)
    torch.testing.assert_close(probs.double(), ref_probs, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.double(), ref_out, atol=ATOL, rtol=0)
    assert none is None and torch.equal(out_only, out)


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
@pytest.mark.parametrize("op", OPS)
def test_kernel_keeps_the_exact_forms(built, op):
    """docs/design.md, "The edit": keep 1 and window 0 give p_own bit for bit on every row;
    identity rows (0, and 3 unless edited) give it for any keep and window."""
    import torch

    lib = cuda_lib.load(built.dir)
    runs = {}
    for keep, window in [(1.0, "on"), (0.0, "off"), (0.5, "mixed"), (0.0, "on")]:
        x, scale = make_inputs(torch, op=op, keep=keep, window=window)
        runs[keep, window] = lib.edited_cross_attention(**x, scale=scale)[1]
    own = runs[1.0, "on"]
    assert torch.equal(runs[0.0, "off"], own)
    identity_rows = [0, 1, 2, 3] if op == "identity" else [0] if op == "masked" else [0, 3]
    for p in runs.values():
        assert torch.equal(p[identity_rows], own[identity_rows])


# --- the library as the triton backend's cross-attention, on a GPU ------------------------


@pytest.mark.gpu
@pytest.mark.slow
@requires_cuda
def test_triton_backend_through_the_library_matches_the_triton_kernel(built, monkeypatch):
    """KernelBackend(cross_attention="cuda-lib") against the Triton kernel, both fp32 on the
    GPU: tests/test_onnx.py's script (two requests joining, edits in every row, maps
    wanted), logits and maps at every step (greedy codes: benchmarks/gpu_check.py, which
    reports a first divergence with its logit gap instead of failing on a near-tie)."""
    pytest.importorskip("triton")
    from editgen.engine.backends.kernel_backend import KernelBackend
    from tests.conftest import loaded_model
    from tests.test_onnx import scripted_steps

    monkeypatch.setenv(cuda_lib.LIBRARY_ENV, str(built.dir / cuda_lib.LIBRARY_NAME))
    loaded = loaded_model("random:tiny")
    triton, library = KernelBackend(loaded), KernelBackend(loaded, cross_attention="cuda-lib")
    want = scripted_steps(triton, loaded.shapes, 5, edited=True, steps=3)
    got = scripted_steps(library, loaded.shapes, 5, edited=True, steps=3)
    for (gl, gm), (wl, wm) in zip(got, want):
        np.testing.assert_allclose(gl, wl, atol=1e-4, rtol=0)
        np.testing.assert_allclose(gm, wm, atol=ATOL, rtol=0)
