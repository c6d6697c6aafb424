"""EnCodec's decoder LSTM with int8 weights on the CPU (cpu/int8_lstm.cc): its weights,
packed, the call, and a numpy reference. Torch-free.

Weights come from the export's `int8_codec.npz` (editgen.export.int8_codec writes it):
per layer `lstm.{l}.w_ih.w` / `.scale` and `lstm.{l}.w_hh.w` / `.scale` (int8 W^T [dim, 4
dim], 7 bits, one scale per column, as the step's matmuls), `lstm.{l}.bias` (b_ih + b_hh).
"""

from __future__ import annotations

import ctypes

import numpy as np

from editgen.kernels.cpu_library import load
from editgen.kernels.cpu_step import Int8Matrix, pack, ptr

_P, _I = ctypes.c_void_p, ctypes.c_int


class LstmLayer(ctypes.Structure):
    _fields_ = [("w_ih", Int8Matrix), ("w_hh", Int8Matrix), ("bias", _P)]


class Lstm(ctypes.Structure):
    _fields_ = [("layers", _I), ("dim", _I), ("layer", _P)]


def lstm_names(layers: int) -> list[str]:
    """The arrays of an LSTM of `layers` layers in int8_codec.npz."""
    return [f"lstm.{l}.{name}" for l in range(layers) for name in ("w_ih.w", "w_ih.scale", "w_hh.w", "w_hh.scale",
                                                                   "bias")]


class Int8Lstm:
    """The LSTM of an int8_codec.npz, packed; `__call__` runs it on [rows, dim, frames]."""

    def __init__(self, arrays: dict[str, np.ndarray], *, threads: int):
        layers = sum(1 for name in arrays if name.endswith(".w_ih.w"))
        self._keep: list[np.ndarray] = []
        self.layers = (LstmLayer * layers)()
        for l, layer in enumerate(self.layers):
            for name in ("w_ih", "w_hh"):
                matrix, keep = pack(arrays[f"lstm.{l}.{name}.w"], arrays[f"lstm.{l}.{name}.scale"])
                setattr(layer, name, matrix)
                self._keep += keep
            bias = np.ascontiguousarray(arrays[f"lstm.{l}.bias"], np.float32)
            layer.bias = ptr(bias)
            self._keep.append(bias)
        self.dim = self.layers[0].w_ih.k
        self.model = Lstm(layers, self.dim, ctypes.addressof(self.layers))
        self.threads = threads
        self._workspace = np.zeros(0, np.uint8)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x float32 [rows, dim, frames] -> LSTM(x) + x, the same shape."""
        x = np.ascontiguousarray(x, np.float32)
        rows, dim, frames = x.shape
        assert dim == self.dim, (dim, self.dim)
        lib = load()
        need = lib.editgen_int8_lstm_workspace(ctypes.byref(self.model), rows, frames)
        if self._workspace.size < need:
            self._workspace = np.zeros(need, np.uint8)
        y = np.empty_like(x)
        status = lib.editgen_int8_lstm(ctypes.byref(self.model), ptr(x), ptr(y), rows, frames, ptr(self._workspace),
                                       self.threads)
        if status != 0:
            raise ValueError(f"the int8 LSTM takes a dim that is a multiple of 8, not {dim}")
        return y


def lstm_ref(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """cpu/int8_lstm.cc's formula in float64 (matmul inputs quantized as the kernel does)."""
    from editgen.kernels.cpu_step import linear_ref

    rows, dim, frames = x.shape
    seq = x.transpose(2, 0, 1).astype(np.float64)  # [frames, rows, dim]
    layers = sum(1 for name in arrays if name.endswith(".w_ih.w"))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for l in range(layers):
        a = {n: arrays[f"lstm.{l}.{n}"] for n in ("w_ih.w", "w_ih.scale", "w_hh.w", "w_hh.scale", "bias")}
        gx = linear_ref(seq.reshape(-1, dim), a["w_ih.w"], a["w_ih.scale"]).reshape(frames, rows, 4 * dim)
        h, c = np.zeros((rows, dim)), np.zeros((rows, dim))
        out = np.zeros_like(seq)
        for t in range(frames):
            g = gx[t] + a["bias"] + (linear_ref(h, a["w_hh.w"], a["w_hh.scale"]) if t else 0)
            i, f, z, o = np.split(g, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(z)
            h = sigmoid(o) * np.tanh(c)
            out[t] = h
        seq = out
    return seq.transpose(1, 2, 0) + x
