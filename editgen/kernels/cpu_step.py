"""The int8 decoder step on the CPU (cpu/int8_step.cc): its weights, packed for the
library's int8 matmuls, and the call. Torch-free.

Weights come from the export's `int8_step.npz` (editgen.export.int8_step writes it; names
in WEIGHT_NAMES): fp32 embeddings and layer norms, and every weight matmul as int8 W [K, N]
(the matmul's orientation, 7 bits, int8_rowwise.quantize_weight) with its per-column
scale. They are packed here, once, into the layout cpu/int8_matmul.h reads.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from editgen.kernels.cpu_library import load

_P, _I = ctypes.c_void_p, ctypes.c_int
MATRICES = ("qkv", "out", "cross_q", "cross_out", "fc1", "fc2")  # per layer, in cpu/int8_step.cc's Layer order
NORMS = ("ln_self", "ln_cross", "ln_ffn")
PARTS = ("weights", "norms", "self_attention", "cross_attention", "embed")  # cpu/int8_step.cc's Part


class Int8Matrix(ctypes.Structure):
    _fields_ = [("w", _P), ("zero_sums", _P), ("scale", _P), ("k", _I), ("n", _I), ("k_pad", _I), ("n_pad", _I)]


class Layer(ctypes.Structure):
    _fields_ = [("ln_self_g", _P), ("ln_self_b", _P), ("qkv", Int8Matrix), ("out", Int8Matrix),
                ("ln_cross_g", _P), ("ln_cross_b", _P), ("cross_q", Int8Matrix), ("cross_out", Int8Matrix),
                ("ln_ffn_g", _P), ("ln_ffn_b", _P), ("fc1", Int8Matrix), ("fc2", Int8Matrix)]


class Model(ctypes.Structure):
    _fields_ = [("layers", _I), ("hidden", _I), ("heads", _I), ("head_dim", _I), ("ffn", _I), ("codebooks", _I),
                ("vocab", _I), ("text_tokens", _I), ("ln_eps", ctypes.c_float), ("embed", _P), ("positions", _P),
                ("layer", _P), ("final_g", _P), ("final_b", _P), ("lm_head", Int8Matrix)]


class Step(ctypes.Structure):
    _fields_ = [("rows", _I), ("slots", _I), ("positions", _I), ("threads", _I),
                ("codes", _P), ("row_position", _P), ("write", _P), ("text_mask", _P),
                ("src_row", _P), ("mapper", _P), ("alpha", _P), ("weight", _P), ("window", _P), ("blend", _P),
                ("use_captured", _P), ("captured", _P), ("self_blend", _P), ("self_window", _P),
                ("k8", _P), ("v8", _P), ("kscale", _P), ("vscale", _P), ("cross_k", _P), ("cross_v", _P),
                ("logits", _P), ("maps", _P), ("workspace", _P), ("profile", _P)]


def weight_names(layers: int) -> list[str]:
    """The arrays of int8_step.npz."""
    names = ["embed", "positions", "ln_eps", "final_norm.g", "final_norm.b", "lm_head.w", "lm_head.scale"]
    for i in range(layers):
        names += [f"layers.{i}.{n}.{p}" for n in NORMS for p in ("g", "b")]
        names += [f"layers.{i}.{m}.{p}" for m in MATRICES for p in ("w", "scale")]
    return names


def ptr(a: np.ndarray) -> int:
    assert a.flags.c_contiguous, "the kernels read contiguous arrays"
    return a.__array_interface__["data"][0]


def pack(w: np.ndarray, scale: np.ndarray) -> tuple[Int8Matrix, list[np.ndarray]]:
    """W int8 [K, N], scale float32 [N] -> the matrix as cpu/int8_matmul.h reads it, and the
    arrays it points to (keep them alive): [N / 32][K / 4][32][4], zero-padded."""
    k, n = w.shape
    k_pad, n_pad = -(-k // 4) * 4, -(-n // 32) * 32
    padded = np.zeros((k_pad, n_pad), np.int8)
    padded[:k, :n] = w
    packed = np.ascontiguousarray(padded.reshape(k_pad // 4, 4, n_pad // 32, 32).transpose(2, 0, 3, 1))
    zero_sums = (128 * padded.sum(axis=0, dtype=np.int32)).astype(np.int32)
    scales = np.zeros(n_pad, np.float32)
    scales[:n] = scale
    return Int8Matrix(ptr(packed), ptr(zero_sums), ptr(scales), k, n, k_pad, n_pad), [packed, zero_sums, scales]


class Int8StepModel:
    """An int8_step.npz loaded and packed; `model` is the C struct the step reads."""

    def __init__(self, path: str | Path, *, layers: int, heads: int, codebooks: int, vocab: int, text_tokens: int):
        data = np.load(path)
        missing = [n for n in weight_names(layers) if n not in data.files]
        if missing:
            raise KeyError(f"{path} has no array {missing[0]!r}")
        self._keep: list[np.ndarray] = []

        def f32(name: str) -> int:
            a = np.ascontiguousarray(data[name], dtype=np.float32)
            self._keep.append(a)
            return ptr(a)

        def matrix(name: str) -> Int8Matrix:
            m, arrays = pack(data[f"{name}.w"], data[f"{name}.scale"])
            self._keep += arrays
            return m

        embed = data["embed"]
        hidden = embed.shape[2]
        self.layers = (Layer * layers)()
        for i, layer in enumerate(self.layers):
            for norm in NORMS:
                setattr(layer, f"{norm}_g", f32(f"layers.{i}.{norm}.g"))
                setattr(layer, f"{norm}_b", f32(f"layers.{i}.{norm}.b"))
            for name in MATRICES:
                setattr(layer, name, matrix(f"layers.{i}.{name}"))
        ffn = self.layers[0].fc1.n
        self.model = Model(layers, hidden, heads, hidden // heads, ffn, codebooks, vocab, text_tokens,
                           float(data["ln_eps"]), f32("embed"), f32("positions"), ctypes.addressof(self.layers),
                           f32("final_norm.g"), f32("final_norm.b"), matrix("lm_head"))
        self.weight_bytes = sum(a.nbytes for a in self._keep if a.dtype == np.int8)

    def workspace_bytes(self, rows: int, positions: int) -> int:
        return load().editgen_int8_step_workspace(ctypes.byref(self.model), rows, positions)

    def run(self, step: Step) -> None:
        status = load().editgen_int8_step(ctypes.byref(self.model), ctypes.byref(step))
        if status != 0:
            raise ValueError(f"the int8 step cannot run this model (status {status}): head_dim "
                             f"{self.model.head_dim}, hidden {self.model.hidden}, ffn {self.model.ffn}")


def step_args(*, threads: int, codes: np.ndarray, positions: np.ndarray, write: np.ndarray, text_mask: np.ndarray,
              edit, pool, logits: np.ndarray, maps: np.ndarray, workspace: np.ndarray,
              profile: np.ndarray | None = None) -> Step:
    """The step's arguments for rows 0..n-1: codes int64 [n, K], positions int64 [n], write
    uint8 [n], text_mask int64 [n, T], edit: EditStepInputs of n rows (src_row indexing
    them), pool: an Int8KVPool (its slots 0..n-1 are the rows), logits float32 [n, K, vocab],
    maps float32 [layers, n, heads, T], workspace: Int8StepModel.workspace_bytes(n,
    pool.positions) bytes, profile: float64 [len(PARTS)] or None."""
    return Step(
        codes.shape[0], pool.slot_capacity, pool.positions, threads,
        ptr(codes), ptr(positions), ptr(write), ptr(text_mask),
        ptr(edit.src_row), ptr(edit.mapper), ptr(edit.alpha), ptr(edit.weight), ptr(edit.window), ptr(edit.blend),
        ptr(edit.use_captured), ptr(edit.captured), ptr(edit.self_blend), ptr(edit.self_window),
        ptr(pool.k8), ptr(pool.v8), ptr(pool.kscale), ptr(pool.vscale), ptr(pool.cross_k), ptr(pool.cross_v),
        ptr(logits), ptr(maps), ptr(workspace), ptr(profile) if profile is not None else None)


def int8_linear(w: np.ndarray, scale: np.ndarray, x: np.ndarray, *, epilogue: str = "store",
                out: np.ndarray | None = None, threads: int = 1, library: ctypes.CDLL | None = None) -> np.ndarray:
    """x float32 [rows, K] @ W int8 [K, N] with the step's per-row quantization
    (cpu/int8_matmul.h): y float32 [rows, N]; "add" adds into `out`, "gelu" applies GELU.
    `library`: another build of the kernels (cpu_library.build(march)); default this machine's."""
    matrix, keep = pack(w, scale)
    rows = x.shape[0]
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = out if out is not None else np.zeros((rows, w.shape[1]), np.float32)
    q = np.zeros((rows, matrix.k_pad), np.uint8)
    s = np.zeros(rows, np.float32)
    (library or load()).editgen_int8_linear(ctypes.byref(matrix), ptr(x), rows, ptr(q), matrix.k_pad, ptr(s), ptr(y),
                               ("store", "add", "gelu").index(epilogue), threads)
    del keep
    return y


# -- numpy reference (tests) ---------------------------------------------------------------

def linear_ref(x: np.ndarray, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x [rows, K] @ W int8 [K, N] as cpu/int8_matmul.h: x quantized per row in float32
    (its codes are the kernel's for the same x), then float64."""
    x = x.astype(np.float32)
    s = np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-30)) * np.float32(1 / 127)
    q = np.rint(x / s).astype(np.int64)
    return (q @ w.astype(np.int64)) * scale.astype(np.float64) * s.astype(np.float64)


def _norm_ref(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * g + b


def int8_step_ref(arrays: dict, heads: int, codes, positions, text_mask, edit, pool_layers, cross_k, cross_v):
    """The step of cpu/int8_step.cc in float64 for rows 0..n-1 (logits [n, K * vocab], maps
    [layers, n, heads, T]), without the cache write. `arrays`: int8_step.npz's; `edit`:
    EditStepInputs of n rows; pool_layers: per layer (k8, kscale, v8, vscale) as
    cpu_attention.kv8_attention takes them; cross_k, cross_v: [layers, >= n, heads, T, D]."""
    from math import erf

    from editgen.kernels.cpu_attention import kv8_attention_ref

    n = codes.shape[0]
    embed, eps = arrays["embed"].astype(np.float64), float(arrays["ln_eps"])
    K, H = codes.shape[1], embed.shape[2]
    D = H // heads
    x = sum(embed[k][codes[:, k]] for k in range(K)) + arrays["positions"].astype(np.float64)[positions]
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
    maps = []
    for i, (k8, kscale, v8, vscale) in enumerate(pool_layers):
        def a(name):
            return arrays[f"layers.{i}.{name}"]

        def lin(h, name):
            return linear_ref(h, a(f"{name}.w"), a(f"{name}.scale"))

        qkv = lin(_norm_ref(x, a("ln_self.g"), a("ln_self.b"), eps), "qkv")
        self_b = (edit.self_blend[:, i] * edit.self_window).astype(np.float32)
        attn = kv8_attention_ref(qkv.astype(np.float32)[:, None], positions, edit.src_row, self_b, k8, kscale, v8, vscale)
        x = x + lin(attn[:, 0], "out")
        q = lin(_norm_ref(x, a("ln_cross.g"), a("ln_cross.b"), eps), "cross_q").reshape(n, heads, 1, D)
        k, v = cross_k[i, :n].astype(np.float64), cross_v[i, :n].astype(np.float64)
        scores = np.where(text_mask[:, None, None, :] > 0, q @ k.transpose(0, 1, 3, 2), np.finfo(np.float32).min)
        own = np.exp(scores - scores.max(-1, keepdims=True))
        own /= own.sum(-1, keepdims=True)  # [n, heads, 1, T]
        src = np.where(edit.use_captured[:, None, None, None] > 0.5, edit.captured[i][:, :, None], own[edit.src_row])
        base = src @ edit.mapper[:, None]
        alpha, weight, window = (t[:, None, None, :] for t in (edit.alpha, edit.weight, edit.window))
        inj = (alpha * base + (1 - alpha) * own) * weight
        inj = window * inj + (1 - window) * own
        p = own - (1 - edit.blend[:, i])[:, None, None, None] * (own - inj)
        maps.append(p[:, :, 0])
        x = x + lin((p @ v).reshape(n, H), "cross_out")
        f = gelu(lin(_norm_ref(x, a("ln_ffn.g"), a("ln_ffn.b"), eps), "fc1"))
        x = x + lin(f, "fc2")
    logits = linear_ref(_norm_ref(x, arrays["final_norm.g"], arrays["final_norm.b"], eps), arrays["lm_head.w"],
                        arrays["lm_head.scale"])
    return logits, np.stack(maps)
