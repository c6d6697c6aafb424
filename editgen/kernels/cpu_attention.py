"""Decode self-attention over an int8 K/V cache on the CPU: the C++ kernel
(cpu/kv8_attention.h, its formula and layout in the file's header; built on first use by
editgen.kernels.cpu_library), and its numpy reference. Torch-free.
"""

from __future__ import annotations

import numpy as np

from editgen.kernels.cpu_library import load

HEAD_DIMS = (16, 32, 64, 128)  # the kernel's specializations (MusicGen: 64; random:tiny: 16)
BLOCK = 16  # positions per transposed K block


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
    cpu/kv8_attention.h says, without the cache write."""
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
