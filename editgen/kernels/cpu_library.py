"""The CPU kernels' library (cpu/*.cc: the int8 K/V attention, the int8 step, the codec's
int8 LSTM), built on
first use and loaded with ctypes.

Torch-free (the ORT engines use it). The sources are compiled with the system's C++
compiler (`$CXX`, else `c++`) with -march=native, once per source, compiler and CPU, into
`$EDITGEN_CACHE_DIR/kernels` (default ~/.cache/editgen/kernels): no onnxruntime headers are
needed and nothing is compiled at install. The library has its own worker threads
(cpu/workers.h says why not OpenMP).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from editgen.errors import EditGenError

SOURCE_DIR = Path(__file__).with_name("cpu")
FLAGS = ("-O3", "-pthread", "-shared", "-fPIC", "-std=c++17", "-w")
MARCH = "native"  # what the library is compiled for (tests build other targets with `build`)


class KernelBuildError(EditGenError):
    """The CPU kernels cannot be compiled or loaded here."""

    code = "kernel_unavailable"


def cache_dir() -> Path:
    root = os.environ.get("EDITGEN_CACHE_DIR") or Path.home() / ".cache" / "editgen"
    return Path(root) / "kernels"


def sources() -> list[Path]:
    """The library's sources: every .cc and .h of cpu/ (the .h files only count in the key)."""
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cc", ".h"))


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


def build(march: str = MARCH) -> Path:
    """The compiled library for -march=`march` (built unless cached). KernelBuildError when
    there is no compiler or the build fails."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler {compiler!r} for the CPU kernels: install g++ (or set CXX), "
                               "or run the engine's standard step")
    files = sources()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(repr((FLAGS, march, version, _cpu_id())).encode())
    lib = cache_dir() / f"editgen_cpu-{march}-{digest.hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        out = Path(tmp) / lib.name
        units = [str(p) for p in files if p.suffix == ".cc"]
        done = subprocess.run([compiler, *FLAGS, f"-march={march}", *units, "-o", str(out)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            first = next((line for line in lines if "error" in line), lines[-1])
            raise KernelBuildError(f"building the CPU kernels with {compiler} failed: {first.strip()}")
        os.replace(out, lib)  # atomic: concurrent first uses both end with a whole file
    return lib


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built library and declare its entry points."""
    try:
        dll = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelBuildError(f"cannot load the CPU kernels {path}: {exc}") from None
    p, i = ctypes.c_void_p, ctypes.c_int
    dll.editgen_kv8_attention.argtypes = [i] * 5 + [p] * 11 + [i]
    dll.editgen_kv8_attention.restype = i
    dll.editgen_cpu_isa.restype = ctypes.c_char_p
    dll.editgen_int8_step_workspace.argtypes = [p, i, i]
    dll.editgen_int8_step_workspace.restype = ctypes.c_size_t
    dll.editgen_int8_step.argtypes = [p, p]
    dll.editgen_int8_step.restype = i
    dll.editgen_int8_linear.argtypes = [p, p, i, p, ctypes.c_size_t, p, p, i, i]
    dll.editgen_int8_linear.restype = None
    dll.editgen_int8_lstm_workspace.argtypes = [p, i, i]
    dll.editgen_int8_lstm_workspace.restype = ctypes.c_size_t
    dll.editgen_int8_lstm.argtypes = [p, p, p, i, i, p, i]
    dll.editgen_int8_lstm.restype = i
    return dll


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """This machine's library (built on first call). KernelBuildError when there is no
    compiler or the build fails."""
    return open_library(build())


@functools.lru_cache(maxsize=1)
def build_error() -> str | None:
    """Why the kernels cannot be used here (one line), or None. Tried once per process."""
    try:
        load()
    except KernelBuildError as exc:
        return str(exc)
    return None


def available() -> bool:
    return build_error() is None


def isa() -> str:
    """The instruction set the library's int8 matmuls use here (cpu/int8_matmul.h)."""
    return load().editgen_cpu_isa().decode()


def usable_cpus() -> int:
    """The CPUs this process may run on (the kernels' default thread count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
