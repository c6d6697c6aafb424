"""Decode self-attention over an int8 K/V cache on the CPU: the C++ kernel
(cpu/kv8_attention.cc, its formula and layout in the file's header), built on first use,
and its numpy reference.

Torch-free (the ORT engine uses it). The kernel is compiled with the system's C++
compiler (`$CXX`, else `c++`) with -march=native and its own worker threads, once per source, compiler
and CPU, into `$EDITGEN_CACHE_DIR/kernels` (default ~/.cache/editgen/kernels), and
loaded with ctypes: no onnxruntime headers are needed and nothing is compiled at install.
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

import numpy as np

from editgen.errors import EditGenError

SOURCE = Path(__file__).with_name("cpu") / "kv8_attention.cc"
FLAGS = ("-O3", "-march=native", "-pthread", "-shared", "-fPIC", "-std=c++17", "-w")
HEAD_DIMS = (16, 32, 64, 128)  # the kernel's specializations (MusicGen: 64; random:tiny: 16)
BLOCK = 16  # positions per transposed K block


class KernelBuildError(EditGenError):
    """The CPU attention kernel cannot be compiled or loaded here."""

    code = "kernel_unavailable"


def cache_dir() -> Path:
    root = os.environ.get("EDITGEN_CACHE_DIR") or Path.home() / ".cache" / "editgen"
    return Path(root) / "kernels"


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))][:2]
    return "\n".join(keep)


@functools.lru_cache(maxsize=1)
def load() -> ctypes.CDLL:
    """The compiled kernel library (built on first call). KernelBuildError when there is no
    compiler or the build fails."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise KernelBuildError(f"no C++ compiler {compiler!r} for the int8 KV attention kernel: install g++ "
                               "(or set CXX), or run the engine's standard step")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(source + repr((FLAGS, version, _cpu_id())).encode()).hexdigest()[:16]
    lib = cache_dir() / f"kv8_attention-{key}.so"
    if not lib.is_file():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
            out = Path(tmp) / lib.name
            done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(out)], capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error" in line), lines[-1])
                raise KernelBuildError(f"building the int8 KV attention kernel with {compiler} failed: {first.strip()}")
            os.replace(out, lib)  # atomic: concurrent first uses both end with a whole file
    try:
        dll = ctypes.CDLL(str(lib))
    except OSError as exc:
        raise KernelBuildError(f"cannot load the int8 KV attention kernel {lib}: {exc}") from None
    p = ctypes.c_void_p
    dll.editgen_kv8_attention.argtypes = [ctypes.c_int] * 5 + [p] * 11 + [ctypes.c_int]
    dll.editgen_kv8_attention.restype = ctypes.c_int
    return dll


@functools.lru_cache(maxsize=1)
def build_error() -> str | None:
    """Why the kernel cannot be used here (one line), or None. Tried once per process."""
    try:
        load()
    except KernelBuildError as exc:
        return str(exc)
    return None


def available() -> bool:
    return build_error() is None


def _ptr(a: np.ndarray, dtype, name: str) -> int:
    if a.dtype != dtype or not a.flags.c_contiguous:
        raise AssertionError(f"kv8_attention: {name} must be a contiguous {np.dtype(dtype).name} array")
    return a.ctypes.data


def kv8_attention(qkv: np.ndarray, positions: np.ndarray, write: np.ndarray, src_row: np.ndarray, self_b: np.ndarray,
                  k8: np.ndarray, kscale: np.ndarray, v8: np.ndarray, vscale: np.ndarray, scratch: np.ndarray,
                  out: np.ndarray, threads: int) -> None:
    """One layer for rows 0..R-1 (slots 0..R-1 of the cache arrays), in place.

    qkv: float32 [R, 1, 3 * hidden] (q pre-scaled); positions: int64 [R]; write: uint8 [R]
    (rows whose new K/V is written at their position); src_row: int64 [R]; self_b: float32
    [R]; the cache (P positions, S >= R slots, blocks of 16 positions): k8 int8 [P / 16, S,
    heads, head_dim, 16], v8 int8 [P / 16, S, heads, 16, head_dim], kscale, vscale float32
    [P / 16, S, heads, 16]; scratch: float32 [>= R * heads * (P + 16)]; out: float32
    [R, 1, hidden]."""
    rows = qkv.shape[0]
    blocks, slots, heads, head_dim = k8.shape[:4]
    positions_axis = blocks * BLOCK
    assert positions.shape == (rows,) and int(positions.max(initial=0)) < positions_axis and rows <= slots
    assert v8.shape == (blocks, slots, heads, BLOCK, head_dim) and kscale.shape == vscale.shape == (blocks, slots, heads, BLOCK)
    assert scratch.size >= rows * heads * (positions_axis + BLOCK) and out.size == rows * heads * head_dim
    status = load().editgen_kv8_attention(
        rows, slots, heads, head_dim, positions_axis, _ptr(positions, np.int64, "positions"),
        _ptr(write, np.uint8, "write"), _ptr(qkv, np.float32, "qkv"), _ptr(src_row, np.int64, "src_row"),
        _ptr(self_b, np.float32, "self_b"), _ptr(k8, np.int8, "k8"), _ptr(kscale, np.float32, "kscale"),
        _ptr(v8, np.int8, "v8"), _ptr(vscale, np.float32, "vscale"), _ptr(scratch, np.float32, "scratch"),
        _ptr(out, np.float32, "out"), int(threads))
    if status != 0:
        raise ValueError(f"the int8 KV kernel has no head_dim {head_dim} (it has {HEAD_DIMS})")


# -- numpy reference (tests) ---------------------------------------------------------------

def quantize_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [..., head_dim] -> int8 [..., head_dim], scale [...]: absmax / 127, round half to even."""
    m = np.abs(x).max(axis=-1)
    inv = np.where(m > 0, np.float32(127) / np.where(m > 0, m, 1), 0).astype(np.float32)
    return np.rint(x * inv[..., None]).astype(np.int8), (m / np.float32(127)).astype(np.float32)


def k_positions(k8: np.ndarray) -> np.ndarray:
    """K [P / 16, S, heads, head_dim, 16] as [S, heads, P, head_dim]."""
    blocks, slots, heads, d, b = k8.shape
    return k8.transpose(1, 2, 0, 4, 3).reshape(slots, heads, blocks * b, d)


def v_positions(v8: np.ndarray) -> np.ndarray:
    """V [P / 16, S, heads, 16, head_dim] as [S, heads, P, head_dim]."""
    blocks, slots, heads, b, d = v8.shape
    return v8.transpose(1, 2, 0, 3, 4).reshape(slots, heads, blocks * b, d)


def scale_positions(scale: np.ndarray) -> np.ndarray:
    """Scales [P / 16, S, heads, 16] as [S, heads, P]."""
    blocks, slots, heads, b = scale.shape
    return scale.transpose(1, 2, 0, 3).reshape(slots, heads, blocks * b)


def kv8_attention_ref(qkv, positions, src_row, self_b, k8, kscale, v8, vscale) -> np.ndarray:
    """The kernel's output (float64 [R, 1, hidden]) for rows 0..R-1, as the formula in
    cpu/kv8_attention.cc says, without the cache write."""
    rows, heads, head_dim = qkv.shape[0], k8.shape[2], k8.shape[3]
    q, k_new, v_new = qkv.reshape(rows, 3, heads, head_dim).astype(np.float64).transpose(1, 0, 2, 3)
    keys = k_positions(k8).astype(np.float64) * scale_positions(kscale)[..., None]
    values = v_positions(v8).astype(np.float64) * scale_positions(vscale)[..., None]
    probs = []
    for r in range(rows):
        n = int(positions[r])
        s = np.concatenate([np.einsum("hd,htd->ht", q[r], keys[r, :, :n]), (q[r] * k_new[r]).sum(-1)[:, None]], -1)
        e = np.exp(s - s.max(-1, keepdims=True))
        probs.append(e / e.sum(-1, keepdims=True))  # [heads, n + 1]
    out = np.zeros((rows, heads, head_dim))
    for r in range(rows):
        n = int(positions[r])
        p = probs[r] - self_b[r] * (probs[r] - probs[src_row[r]])
        out[r] = np.einsum("ht,htd->hd", p[:, :n], values[r, :, :n]) + p[:, n:] * v_new[r]
    return out.reshape(rows, 1, heads * head_dim)
