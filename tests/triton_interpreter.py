"""Triton's interpreter with two of its per-call costs taken out, for the tests that run
the kernels on CPU (test_kernel_backend, test_triton_kernels, gpu_check --quick).

Measured on Triton 3.6 (random:tiny, 7 greedy steps of 2 rows on the triton backend:
5.7 s -> 4.1 s): every call of a @triton.jit device function re-patches triton.language
for the interpreter (`_patch_lang`: an inspect.getmembers scan and a setattr per builtin),
~37 calls per kernel program here; and `_get_np_dtype` builds its dtype table at every
call. Neither changes what a kernel computes:

- a launch (GridExecutor.__call__) patches the language for its kernel and restores it
  when the grid is done; a device function's patch is never restored, so patching it once
  per launch leaves the same functions in place for the rest of that launch;
- `_get_np_dtype` is a pure function of the Triton dtype.

On another Triton version, or where its internals are not the ones this was written against,
nothing is changed
(the tests then run at the interpreter's own speed)."""

from __future__ import annotations

import functools


def speed_up() -> bool:
    """Install both changes once; whether they are installed."""
    try:
        import triton
        import triton.runtime.interpreter as interp
    except ImportError:
        return False
    if triton.__version__.split(".")[:2] != ["3", "6"]:  # device_call below is 3.6's __call__ with the memo
        return False
    names = ("GridExecutor", "InterpretedFunction", "InterpreterError", "_patch_lang", "_get_np_dtype", "tl")
    if not all(hasattr(interp, n) for n in names):
        return False
    if getattr(interp, "_editgen_sped_up", False):
        return True
    launches = [0]  # how many launches have started: a device function is patched once per launch
    patched_in = {}  # device function -> the launch it was last patched in
    grid_call, patch_lang, np_dtype = interp.GridExecutor.__call__, interp._patch_lang, interp._get_np_dtype

    def launch(self, *args, **kwargs):
        launches[0] += 1
        return grid_call(self, *args, **kwargs)

    def device_call(self, *args, **kwargs):  # InterpretedFunction.__call__, patching once per launch
        if patched_in.get(self.fn) != launches[0]:
            patch_lang(self.fn)
            patched_in[self.fn] = launches[0]
        fn = self.rewrite()
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise interp.InterpreterError(repr(e)) from e

    @functools.lru_cache(maxsize=None)
    def scalar_np_dtype(tt_dtype):  # scalar Triton dtypes hash; block and pointer types do not
        return np_dtype(tt_dtype)

    def get_np_dtype(tt_dtype):  # the interpreter's _get_np_dtype, its table looked up once per dtype
        if isinstance(tt_dtype, interp.tl.block_type):
            tt_dtype = tt_dtype.element_ty
        if isinstance(tt_dtype, interp.tl.pointer_type):
            return np_dtype(tt_dtype)
        return scalar_np_dtype(tt_dtype)

    interp.GridExecutor.__call__ = launch
    interp.InterpretedFunction.__call__ = device_call
    interp._get_np_dtype = get_np_dtype
    interp._editgen_sped_up = True
    return True
