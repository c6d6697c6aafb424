"""The Triton backend (KernelBackend, name "triton") against the torch backend, on
random:tiny: the step by hand, greedy generation with guidance under every edit op and
named setting, captured mode, continuous batching, fp16/bf16 pools, the contract's
per-step traffic, the CLI, and its cross-attention through the CUDA C++ library's binding
(refused on CPU; its glue checked with the library's call replaced by the reference).

Without CUDA the kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET=1
is set here, before anything imports triton or editgen.kernels (the kernels are
decorated at import; test_triton_kernels.py sets the same in its worker). The
interpreter costs ~10 ms per kernel program, so one row of one step of random:tiny
(2 layers x 3 launches x 4 heads) takes ~0.25-0.3 s: the edit generations here are
STEPS = 7 decoder steps (4 frames) and plain generation 12, not the ~40-60 the ORT parity
tests run, and many edits share one request. With CUDA the same tests launch the
compiled kernels."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")
if not CUDA:
    from tests.triton_interpreter import speed_up

    speed_up()

from editgen.engine.backends.kernel_backend import CUDA_LIB_NEEDS_A_GPU, NO_DEVICE, KernelBackend  # noqa: E402
from editgen.engine.core import EngineCore, StepObserver  # noqa: E402
from editgen.engine.edit import EditBatch, EditSpec  # noqa: E402
from editgen.engine.jobs import capture_source, compile_specs, edit_from_capture, edit_job  # noqa: E402
from editgen.engine.generate import generate_codes  # noqa: E402
from editgen.engine.options import GenerationOptions  # noqa: E402
from editgen.engine.jobs import generate_job  # noqa: E402
from editgen.errors import InvalidRequestError  # noqa: E402
from editgen.kernels import cuda_lib  # noqa: E402
from editgen.kernels.reference import edited_cross_attention_ref  # noqa: E402
from editgen.kernels.step_attention import CudaLibCrossAttention  # noqa: E402
from tests.conftest import loaded_model, torch_backend  # noqa: E402
from tests.test_batch_invariance import _Spy, run_schedule  # noqa: E402
from tests.test_onnx import FullMaps, scripted_steps  # noqa: E402

SPEC = "random:tiny"
SRC = "lofi piano with warm drums"
STEPS = 7  # edits (4 frames, the shortest clip); PLAIN_STEPS for plain generation and the half-precision pools
PLAIN_STEPS = 12
LOGITS_TOL = dict(atol=1e-4, rtol=0)
MAPS_TOL = dict(atol=1e-5, rtol=0)


@functools.lru_cache(maxsize=None)
def kernel_backend(dtype: str = "float32") -> KernelBackend:
    return KernelBackend(loaded_model(SPEC), dtype=dtype)


def greedy(steps: int = STEPS, **kw) -> GenerationOptions:
    frames = steps - loaded_model(SPEC).shapes.channel_codebooks + 1
    return GenerationOptions(seconds=frames / 50, greedy=True, **kw)


# -- step level ---------------------------------------------------------------------------


@pytest.mark.slow
def test_step_matches_torch():
    """The contract by hand (tests/test_onnx.py's script): two requests at different
    positions with random edit tensors in every row (mapper, alpha, weight, window, cross
    blend, a captured-map row, self-injection from random source rows); logits within 1e-4
    and every row's maps within 1e-5 at every step, later steps reading the K/V the
    kernel wrote."""
    ref, kb = torch_backend(SPEC), kernel_backend()
    want = scripted_steps(ref, ref.shapes, 5, edited=True, steps=2)
    got = scripted_steps(kb, ref.shapes, 5, edited=True, steps=2)
    for (gl, gm), (wl, wm) in zip(got, want):
        np.testing.assert_allclose(gl, wl, **LOGITS_TOL)
        np.testing.assert_allclose(gm, wm, **MAPS_TOL)


# -- generation ---------------------------------------------------------------------------

# Every op, named setting and custom schedules, as targets of two requests of one source
# each (CFG: 8 rows per step; two tests, so two workers). The identity edit: in
# test_continuous_batching_codes_equal_running_alone.
TARGETS = {
    "ops": {
        "replace": EditSpec(source=SRC, target="lofi guitar with warm drums"),  # editgen-code (the default)
        "refine": EditSpec(source=SRC, target="lofi piano with warm jazz drums", op="refine"),
        "reweight": EditSpec(source=SRC, op="reweight", word_weights={"piano": -1.5, "drums": 2.0}),
    },
    "settings": {
        "paper-text": EditSpec(source=SRC, target="lofi organ with warm drums", setting="paper-text"),
        "hard": EditSpec(source=SRC, target="lofi piano with cold drums", setting="hard"),
        "custom": EditSpec(source=SRC, target="lofi guitar with warm drums", cross_blend="reversed",
                           self_blend="constant:0.7", self_window="0.2:0.7", windows={"guitar": "0.1:0.5"},
                           word_weights={"guitar": 1.5}, reweight_mode="editgen-code"),
    },
}


def _edit_run(backend, targets):
    plans = compile_specs(backend, list(targets.values()))
    batch = EditBatch(plans, cfg=True, num_heads=backend.shapes.num_heads)
    maps = FullMaps()
    prompts = [plans[0].source] + [p.target for p in plans]
    codes = generate_codes(backend, prompts, greedy(guidance_scale=3.0), edits=batch, recorders=[maps]).codes
    return codes, maps.array()


@pytest.mark.slow
@pytest.mark.parametrize("group", list(TARGETS))
def test_edits_match_torch(group):
    """Greedy codes of every row identical to the torch backend's, every step's maps
    within 1e-5. (Whether a real edit changes 4 frames of a random model is not asserted:
    under full injection they often equal the source's.)"""
    targets = TARGETS[group]
    want_codes, want_maps = _edit_run(torch_backend(SPEC), targets)
    codes, maps = _edit_run(kernel_backend(), targets)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_allclose(maps, want_maps, **MAPS_TOL)


@pytest.mark.slow
def test_captured_mode_matches_torch():
    """Capture the source's maps once, then edit from them: the target rows read
    `captured` (setting hard: no self-injection, so the source is not re-run)."""
    spec = [EditSpec(source=SRC, target="lofi guitar with warm drums", setting="hard")]
    out = {}
    for name, backend in (("torch", torch_backend(SPEC)), ("triton", kernel_backend())):
        cap = capture_source(backend, SRC, greedy(guidance_scale=3.0), dtype=np.float32)
        out[name] = cap, edit_from_capture(backend, cap, spec)
    (tc, te), (kc, ke) = out["torch"], out["triton"]
    np.testing.assert_array_equal(kc.codes, tc.codes)
    np.testing.assert_allclose(kc.maps, tc.maps, **MAPS_TOL)
    np.testing.assert_array_equal(ke.edited_codes, te.edited_codes)
    np.testing.assert_allclose(ke.mean_maps, te.mean_maps, **MAPS_TOL)


# -- continuous batching ------------------------------------------------------------------


@pytest.mark.slow
def test_continuous_batching_codes_equal_running_alone():
    """Requests joining, sharing steps at different positions, one cancelled: each one's
    codes equal running it alone on this backend (one row alone runs as one row); the
    identity edit (editgen-code, self-injection on; shared, its batch rows are not its
    slots once the cancelled request leaves) reproduces its source exactly.

    Bit-exact, with sampling: on CPU every weight matmul runs one row at a time, the
    embedding, layer norms and activations are per row, and both kernels run one program
    per (row, head) that reads only its row, its slot and its source row, with the cache
    walk split by the row's own length (one split under the interpreter). So a row's bits
    do not depend on how many rows share the step, which ones, or on its slot. On CUDA
    this is not claimed: cuBLAS picks GEMM kernels by row count, and the decode kernel's
    split count follows the row count."""
    kb = kernel_backend()

    def jobs():
        # An edit needs guidance here: the engine cannot run one without (Request.frame,
        # editgen/engine/requests.py, fails for 2+ conditional rows and no CFG rows).
        return [generate_job(kb, SRC, GenerationOptions(seconds=0.08, seed=2, guidance_scale=1.0)),  # 1 row
                edit_job(kb, [EditSpec(source=SRC, target=SRC, setting="editgen-code")],  # identity, 4 rows
                         GenerationOptions(seconds=0.08, seed=3, guidance_scale=3.0)),
                generate_job(kb, "jazz trio", GenerationOptions(seconds=0.08, seed=5, guidance_scale=1.0))]

    alone = []
    for job in jobs():
        EngineCore(kb, max_rows=4).run(job.request)
        alone.append(job.request.codes())

    core = EngineCore(kb, max_rows=8)
    checked = jobs()
    cancelled = generate_job(kb, "to be cancelled", GenerationOptions(seconds=0.5, seed=1, guidance_scale=1.0))
    plan = {0: [checked[0], cancelled], 2: [checked[1]], 5: [checked[2]]}
    run_schedule(core, plan, cancel_at=4, cancelled=cancelled)
    assert cancelled.request.step == 4
    for job, want in zip(checked, alone):
        np.testing.assert_array_equal(job.request.codes(), want)
    np.testing.assert_array_equal(alone[1][1], alone[1][0])


# -- plain generation, half-precision pools ------------------------------------------------


class _Logits(StepObserver):
    """Keeps every step's logits."""

    def __init__(self):
        self.logits = []

    def after_step(self, batch, outputs, seconds, requests):
        self.logits.append(outputs.logits.copy())


def host_sampled(backend):
    """`backend` (a fresh one) returning logits, so that the engine core samples on the host
    (the device sampling is compared with the host's in test_device_sampling_*)."""
    backend.samples_on_device = False
    return backend


@functools.lru_cache(maxsize=None)
def _plain_run(dtype: str | None, guidance_scale: float = 3.0):
    """Greedy plain generation, PLAIN_STEPS steps (2 rows with guidance, else 1): codes
    [1, K, frames] and every step's logits [steps, rows, K, vocab]. dtype None: the torch
    backend."""
    backend = torch_backend(SPEC) if dtype is None else host_sampled(kernel_backend(dtype))
    logits = _Logits()
    job = generate_job(backend, SRC, greedy(PLAIN_STEPS, guidance_scale=guidance_scale))
    EngineCore(backend, max_rows=2, observers=[logits]).run(job.request)
    return job.request.codes(), np.stack(logits.logits)


@pytest.mark.slow
def test_plain_generation_matches_torch():
    """With guidance: greedy codes identical, every step's logits within 1e-4."""
    codes, logits = _plain_run("float32")
    want_codes, want_logits = _plain_run(None)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_allclose(logits, want_logits, **LOGITS_TOL)


@pytest.mark.slow
def test_device_sampling_equals_host_sampling():
    """Top-k sampling with guidance through the engine core: the backend sampling on its
    device (codes come back) gives the codes the host samples from its logits, and the
    plot maps it reduces on the device equal the host's means."""
    from editgen.engine.hooks import MeanMaps

    def run(backend):
        job = generate_job(backend, SRC, GenerationOptions(seconds=0.08, seed=3, top_k=20, temperature=1.2))
        maps = MeanMaps(job.request.steps, 1, backend.shapes.max_text_tokens)
        job.request.recorders = (maps,)
        EngineCore(backend, max_rows=2).run(job.request)
        return job.request.codes(), maps.maps

    codes, maps = run(kernel_backend())  # samples_on_device: codes and [1, M, 1, T] maps come back
    want_codes, want_maps = run(host_sampled(kernel_backend()))  # the same backend, sampled on the host
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_allclose(maps, want_maps, atol=1e-6, rtol=0)


# Measured on random:tiny (20 greedy steps without guidance): code agreement 1.0 for both,
# logits max error 9.7e-6 (fp16) and 1.5e-4 (bf16) (with guidance 3: 1.0, 1.1e-5 and
# 1.5e-4). Bounds: agreement 0.9, about 7-10x the error.
AGREEMENT = {"float16": 0.9, "bfloat16": 0.9}
LOGITS_ERROR = {"float16": 1e-4, "bfloat16": 1e-3}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_pools_track_fp32(dtype):
    """KV and cross K/V pools (and q entering the kernels) in half precision, math in fp32
    inside the kernels: greedy codes agree with the fp32 pool for most frames, and the
    logits of the steps before the first different code (same inputs) stay close."""
    want_codes, want_logits = _plain_run("float32", 1.0)  # one row: the interpreter is slow
    codes, logits = _plain_run(dtype, 1.0)
    agreement = float(np.mean(codes == want_codes))
    # Steps whose inputs are identical: up to the step that produced the first different code.
    per_step = (np.argmax(logits, -1) == np.argmax(want_logits, -1)).all(axis=(1, 2))
    same = len(per_step) if per_step.all() else int(np.argmin(per_step)) + 1
    error = float(np.abs(logits[:same] - want_logits[:same]).max())
    print(f"{dtype}: code agreement {agreement:.3f}, logits max error {error:.2e} over {same} steps")
    assert agreement >= AGREEMENT[dtype]
    assert error <= LOGITS_ERROR[dtype]


# -- the contract -------------------------------------------------------------------------


def test_nothing_o_cache_crosses_the_step():
    """Per-step traffic does not grow with the cache (the same bytes at the first and the
    last step), and the pool is allocated at admit, never in a step."""
    kb = kernel_backend()
    spy = _Spy()
    job = generate_job(kb, SRC, greedy(10, guidance_scale=1.0))
    core = EngineCore(kb, max_rows=2, observers=[spy])
    core.submit(job.request)
    core.step()  # admits, allocates
    pool = kb._kv.data_ptr()
    while core.has_work:
        core.step()
    assert len(spy.sizes) == job.request.steps == 10
    assert len(set(spy.sizes)) == 1, spy.sizes
    assert kb._kv.data_ptr() == pool


def test_bad_dtype_is_one_line():
    with pytest.raises(InvalidRequestError, match="float16"):
        KernelBackend(loaded_model(SPEC), dtype="int8")


# -- the cross-attention through the CUDA C++ library ----------------------------------------


def test_unknown_cross_attention_is_one_line():
    with pytest.raises(InvalidRequestError, match=r"^cross_attention 'cuda' is not one of triton, cuda-lib$"):
        KernelBackend(loaded_model(SPEC), cross_attention="cuda")


@pytest.mark.skipif(CUDA, reason="checks the refusal without a GPU")
def test_cuda_lib_cross_attention_refuses_on_cpu_in_one_line():
    with pytest.raises(InvalidRequestError) as refused:
        KernelBackend(loaded_model(SPEC), cross_attention="cuda-lib")
    assert str(refused.value) == CUDA_LIB_NEEDS_A_GPU and "\n" not in CUDA_LIB_NEEDS_A_GPU


class _ReferenceLibrary:
    """Stands in for the loaded CUDA C++ library on CPU: the binding's own argument checks
    (shapes, float32/int64, one device, contiguous), then the torch reference of the
    kernel's formula. What runs on a GPU: tests/test_cuda_lib.py's gpu tests."""

    def __init__(self):
        self.calls = 0

    def edited_cross_attention(self, *, scale, probs=True, **tensors):
        cuda_lib.check_cross_arguments(**tensors)
        self.calls += 1
        out, p = edited_cross_attention_ref(**tensors, scale=scale)
        return out, (p if probs else None)


@pytest.mark.slow
def test_cuda_lib_part_gives_the_library_what_it_takes():
    """The triton backend with its cross-attention part through the library's binding (the
    library itself replaced by the reference of its formula, since it cannot run here): the
    step's tensors pass the binding's checks layer by layer, and logits and maps match the
    torch backend's as the Triton kernel's do (tests/test_onnx.py's script: edits in every
    row, maps wanted)."""
    ref = torch_backend(SPEC)
    kb = KernelBackend(loaded_model(SPEC))
    library = _ReferenceLibrary()
    kb._dec.cross_attention = CudaLibCrossAttention(kb._dec.cross_attention.dims, torch.float32, library)
    want = scripted_steps(ref, ref.shapes, 5, edited=True, steps=1)
    got = scripted_steps(kb, ref.shapes, 5, edited=True, steps=1)
    assert library.calls == len(got) * ref.shapes.num_layers
    for (gl, gm), (wl, wm) in zip(got, want):
        np.testing.assert_allclose(gl, wl, **LOGITS_TOL)
        np.testing.assert_allclose(gm, wm, **MAPS_TOL)


# -- CLI ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_generate_with_triton(tmp_path, capsys):
    from editgen.cli import main

    out = tmp_path / "out.wav"
    code = main(["generate", "--model", SPEC, "--backend", "triton", "--prompt", "lofi piano", "--seconds", "0.08",
                 "--guidance", "1", "--greedy", "--no-progress", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.stat().st_size > 44


@pytest.mark.skipif(CUDA, reason="checks the message shown without a GPU")
def test_cli_without_cuda_or_interpreter_exits_2(tmp_path, capsys, monkeypatch):
    from editgen.cli import main

    monkeypatch.delenv("TRITON_INTERPRET")
    out = tmp_path / "out.wav"
    code = main(["generate", "--model", SPEC, "--backend", "triton", "--prompt", "lofi piano", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"editgen: error: {NO_DEVICE}"]
    assert not out.exists()
