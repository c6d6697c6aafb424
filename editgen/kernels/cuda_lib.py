"""ctypes binding of libeditgen_kernels, the CUDA C++ edited cross-attention
(csrc/include/editgen_kernels.h; built by the root CMakeLists.txt, never by pip).

    lib = load()                      # $EDITGEN_KERNELS_LIB, or load(build_dir="build")
    out, probs = lib.edited_cross_attention(q=q, k=k, v=v, text_mask=mask, ..., scale=0.125)

Tensors are torch CUDA tensors (torch is imported on the first call, not here); the kernel
is enqueued on torch's current stream of their device. Every check that Python can make
raises before the call (ValueError for shapes, dtypes, devices and layouts; TypeError for
non-tensors; CudaLibraryError without a CUDA device), so a mistake is a one-line exception,
never a fault on the GPU.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

LIBRARY_ENV = "EDITGEN_KERNELS_LIB"
LIBRARY_NAME = "libeditgen_kernels.so"
_BUILD_HINT = "build it with `cmake -S . -B build && cmake --build build` (README, \"CUDA C++ library\")"


class CudaLibraryError(RuntimeError):
    """The library cannot be loaded, there is no usable CUDA device, or the launch failed."""


# The C API's return codes (editgen_kernels.h); arguments it refuses are the caller's
# mistake (ValueError), the rest is the machine's (CudaLibraryError).
_INVALID_ARGUMENT, _UNSUPPORTED_SIZE = 1, 2


class CrossArgs(ctypes.Structure):
    """EditgenCrossArgs, field for field (a test compares the offsets with the C compiler's)."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("scale", ctypes.c_float),
        *((name, ctypes.c_void_p) for name in (
            "q", "k", "v", "text_mask", "src_row", "use_captured", "captured", "mapper",
            "alpha", "weight", "window", "keep", "out", "probs")),
    ]


def library_path(build_dir: str | os.PathLike | None = None) -> Path:
    """build_dir/libeditgen_kernels.so, else $EDITGEN_KERNELS_LIB; raises when neither is set."""
    if build_dir is not None:
        return Path(build_dir) / LIBRARY_NAME
    if os.environ.get(LIBRARY_ENV):
        return Path(os.environ[LIBRARY_ENV])
    raise CudaLibraryError(f"no CUDA kernel library given: {_BUILD_HINT}, then set {LIBRARY_ENV}=build/{LIBRARY_NAME}"
                           " or pass build_dir")


def load(build_dir: str | os.PathLike | None = None) -> "CudaKernels":
    """Loads the library (see library_path). Needs no GPU: the device is looked for per call."""
    path = library_path(build_dir)
    if not path.is_file():
        raise CudaLibraryError(f"{path} does not exist: {_BUILD_HINT}")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise CudaLibraryError(f"cannot load {path} ({str(exc).splitlines()[0]}): rebuild it on this machine") from exc
    return CudaKernels(lib, path)


class CudaKernels:
    """The loaded library: one method per kernel."""

    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.path = path
        self._call = lib.editgen_edited_cross_attention
        self._call.argtypes = [ctypes.POINTER(CrossArgs), ctypes.c_void_p]
        self._call.restype = ctypes.c_int
        self._last_error = lib.editgen_last_error
        self._last_error.argtypes = []
        self._last_error.restype = ctypes.c_char_p

    def call(self, args: CrossArgs, stream: int | None) -> None:
        """The C call itself on raw pointers (prefer edited_cross_attention). Raises with
        the library's message: ValueError for arguments it refuses, CudaLibraryError else."""
        code = self._call(ctypes.byref(args), stream)
        if code != 0:
            message = f"editgen_edited_cross_attention: {self._last_error().decode(errors='replace')}"
            raise ValueError(message) if code in (_INVALID_ARGUMENT, _UNSUPPORTED_SIZE) else CudaLibraryError(message)

    def edited_cross_attention(self, *, q, k, v, text_mask, src_row, use_captured, captured, mapper,
                               alpha, weight, window, keep, scale: float, probs: bool = True):
        """The edited cross-attention of one decoder layer (formula: the C header; the same
        as EagerCrossAttention in editgen.model.attention). Shapes (R rows, H heads, T tokens, D head_dim):

            q [R, H, D]; k, v [R, H, T, D]; text_mask [R, T] (1 valid, 0 padding);
            src_row [R] int64; use_captured [R]; captured [R, H, T]; mapper [R, T, T];
            alpha, weight, window [R, T]; keep [R] (the layer's blend a_i)

        All float32 except src_row, contiguous, on one CUDA device. Returns out [R, H, D]
        and, with probs=True, the probabilities used [R, H, T] (else None); both are
        written asynchronously on the current stream, like any torch op."""
        import torch

        tensors = dict(q=q, k=k, v=v, text_mask=text_mask, src_row=src_row, use_captured=use_captured,
                       captured=captured, mapper=mapper, alpha=alpha, weight=weight, window=window, keep=keep)
        rows, heads, tokens, head_dim = check_cross_arguments(**tensors)
        if not torch.cuda.is_available():
            raise CudaLibraryError("no CUDA device (torch.cuda.is_available() is False): the CUDA kernel library "
                                   "runs only on an NVIDIA GPU; on CPU use the torch backend")
        if q.device.type != "cuda":
            raise ValueError(f"the tensors are on {q.device}: the CUDA kernels take CUDA tensors (.cuda())")
        out = torch.empty(rows, heads, head_dim, dtype=torch.float32, device=q.device)
        used = torch.empty(rows, heads, tokens, dtype=torch.float32, device=q.device) if probs else None

        args = CrossArgs(rows=rows, heads=heads, tokens=tokens, head_dim=head_dim, scale=float(scale),
                         out=out.data_ptr(), probs=used.data_ptr() if probs else None,
                         **{name: tensor.data_ptr() for name, tensor in tensors.items()})
        self.call(args, torch.cuda.current_stream(q.device).cuda_stream)
        return out, used


def check_cross_arguments(*, q, k, v, text_mask, src_row, use_captured, captured, mapper, alpha, weight, window,
                          keep) -> tuple[int, int, int, int]:
    """What edited_cross_attention requires of its tensors (shapes, dtypes, one device,
    contiguous), checked before any call: ValueError or TypeError naming the tensor.
    Returns (rows, heads, tokens, head_dim)."""
    import torch

    if not isinstance(q, torch.Tensor) or q.dim() != 3:
        raise ValueError(f"q must be a tensor [rows, heads, head_dim], got {_describe(q)}")
    rows, heads, head_dim = q.shape
    tokens = k.shape[2] if isinstance(k, torch.Tensor) and k.dim() == 4 else -1
    if tokens < 0:
        raise ValueError(f"k must be a tensor [rows, heads, tokens, head_dim], got {_describe(k)}")
    expected = {
        "q": (q, (rows, heads, head_dim), torch.float32),
        "k": (k, (rows, heads, tokens, head_dim), torch.float32),
        "v": (v, (rows, heads, tokens, head_dim), torch.float32),
        "text_mask": (text_mask, (rows, tokens), torch.float32),
        "src_row": (src_row, (rows,), torch.int64),
        "use_captured": (use_captured, (rows,), torch.float32),
        "captured": (captured, (rows, heads, tokens), torch.float32),
        "mapper": (mapper, (rows, tokens, tokens), torch.float32),
        "alpha": (alpha, (rows, tokens), torch.float32),
        "weight": (weight, (rows, tokens), torch.float32),
        "window": (window, (rows, tokens), torch.float32),
        "keep": (keep, (rows,), torch.float32),
    }
    for name, (tensor, shape, dtype) in expected.items():
        _check(name, tensor, shape, dtype, q.device)
    return rows, heads, tokens, head_dim


def _describe(x) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{tuple(x.shape)} {x.dtype} on {getattr(x, 'device', '?')}"
    return type(x).__name__


def _check(name: str, tensor, shape: tuple, dtype, device) -> None:
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    if tensor.dtype != dtype:
        raise ValueError(f"{name} is {tensor.dtype}, expected {dtype}: pass {name}.to({dtype})")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device}, expected every tensor on q's device ({device})")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} is not contiguous: pass {name}.contiguous()")
