"""Argument checks shared by the Triton launchers: clear ValueErrors before a launch,
since a wrong shape inside a kernel reads out of bounds instead of raising."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
INTS = (torch.int32, torch.int64)


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class Launch(NamedTuple):
    """One kernel launch, checked and laid out: `run()` launches it. Kept as data so the
    tests can also compile exactly these arguments for a GPU target without a GPU."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    constexprs: dict

    def run(self) -> None:
        if all(self.grid):  # an empty grid (no rows) is no launch
            self.kernel[self.grid](*self.args, **self.constexprs)


def dims(name: str, tensor, ndim: int, dtypes=None) -> tuple[int, ...]:
    """`tensor` must be a torch tensor with `ndim` axes (and one of `dtypes`); its shape."""
    need(isinstance(tensor, torch.Tensor), f"{name} must be a torch tensor, got {type(tensor).__name__}")
    need(tensor.dim() == ndim, f"{name} has shape {tuple(tensor.shape)}, expected {ndim} axes")
    if dtypes is not None:
        need(tensor.dtype in dtypes, f"{name} is {tensor.dtype}, expected one of {', '.join(map(str, dtypes))}")
    return tuple(tensor.shape)


def shape(name: str, tensor, expected: tuple[int, ...], dtypes=None) -> None:
    """`tensor` must be a torch tensor of shape `expected` (and one of `dtypes`)."""
    need(isinstance(tensor, torch.Tensor), f"{name} must be a torch tensor, got {type(tensor).__name__}")
    need(tuple(tensor.shape) == tuple(expected), f"{name} has shape {tuple(tensor.shape)}, expected {tuple(expected)}")
    if dtypes is not None:
        need(tensor.dtype in dtypes, f"{name} is {tensor.dtype}, expected one of {', '.join(map(str, dtypes))}")


def same_device(**tensors) -> torch.device:
    """All tensors on one device, which Triton can run on: CUDA, or CPU under the
    interpreter (TRITON_INTERPRET=1, how the tests run these kernels without a GPU)."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    need(all(d == first for d in devices.values()),
         "tensors on different devices: " + ", ".join(f"{n} on {d}" for n, d in devices.items()))
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    need(first.type == "cuda" or (first.type == "cpu" and interpreted),
         f"the Triton kernels run on CUDA tensors, got {first}; for CPU tensors set TRITON_INTERPRET=1 before "
         "importing triton (the interpreter: slow, for tests)")
    return first


def unit_last_stride(tensor: torch.Tensor) -> torch.Tensor:
    """The kernels address the last axis as contiguous (vector loads); other axes by stride."""
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def next_pow2(n: int) -> int:
    """Triton blocks have power-of-two sizes; the kernels mask the padding."""
    return 1 << max(0, n - 1).bit_length()
