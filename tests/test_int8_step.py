"""The CPU int8 step (editgen/kernels/cpu/int8_step.cc): its int8 matmul against the
rowwise formula, on every ISA path this machine can run; the whole step against its
numpy reference; a row's bits alone, in a crowd, in a larger pool, on 1 or 2 threads;
and the export's record of it."""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil

import numpy as np
import pytest

from editgen.engine.backends.kv8_pool import Int8KVPool
from editgen.engine.edit.step_inputs import EditStepInputs
from editgen.export.int8_rowwise import quantize_weight
from editgen.export.int8_step import int8_step_weights
from editgen.kernels import cpu_library
from editgen.kernels.cpu_attention import BLOCK
from editgen.kernels.cpu_step import Int8StepModel, int8_linear, int8_step_ref, step_args, weight_names
from tests.conftest import loaded_model

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                reason="no C++ compiler: the CPU kernels cannot be built here")


def rowwise(w, scale, x):
    """int8_rowwise.py's graph in numpy: y = float(sum (q - 128) W) * w_scale * s."""
    s = np.maximum(np.abs(x).max(axis=1, keepdims=True), np.float32(1e-30)) * np.float32(1 / 127)
    q = np.clip(np.rint(x / s) + 128, 0, 255).astype(np.int64)
    return ((q - 128) @ w.astype(np.int64)).astype(np.float32) * scale * s


@pytest.mark.parametrize("k,n,rows", [(64, 64, 2), (96, 288, 5), (1024, 96, 7), (10, 40, 3)])
def test_int8_linear_is_the_rowwise_formula(k, n, rows):
    """Bit for bit (the integer sums are exact, the scales applied in the graph's order),
    on 1 and 2 threads; the zero-padded K and N of the packing leave no trace."""
    rng = np.random.default_rng(k + n)
    w, scale = quantize_weight(rng.standard_normal((k, n)).astype(np.float32))
    x = (rng.standard_normal((rows, k)) * 3).astype(np.float32)
    want = rowwise(w, scale, x)
    for threads in (1, 2):
        np.testing.assert_array_equal(int8_linear(w, scale, x, threads=threads), want)
    base = rng.standard_normal((rows, n)).astype(np.float32)
    np.testing.assert_allclose(int8_linear(w, scale, x, epilogue="add", out=base.copy()), base + want, rtol=1e-6,
                               atol=1e-6)
    from math import erf

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))(want.astype(np.float64))
    np.testing.assert_allclose(int8_linear(w, scale, x, epilogue="gelu"), gelu, rtol=1e-5, atol=5e-7 * np.abs(want).max())


def _runnable_marches() -> list[str]:
    """-march targets this CPU runs, besides native: the portable path, and AVX2's
    vpmaddubsw path where the CPU has AVX2 (on a VNNI CPU native takes vpdpbusd)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    return ["x86-64"] + (["x86-64-v3"] if " avx2" in flags and " fma" in flags and " bmi2" in flags else [])


@pytest.mark.parametrize("march", _runnable_marches())
def test_every_isa_path_gives_the_same_integers(march):
    """The library built for another x86 level (its own matmul path) gives the same y as
    native: the sums are exact on every path, and the 7-bit weights keep vpmaddubsw's pair
    sums from saturating even at the extremes (activations 255, weights +-63)."""
    other = cpu_library.open_library(cpu_library.build(march))
    rng = np.random.default_rng(3)
    k, n, rows = 200, 160, 5
    w, scale = quantize_weight(rng.standard_normal((k, n)).astype(np.float32))
    w[:, :8] = 63  # saturating pairs, were they summed in 16 bits with 8-bit weights
    w[:, 8:16] = -63
    x = (rng.standard_normal((rows, k)) * 3).astype(np.float32)
    x[0] = np.abs(x[0])  # every code 255 or near it
    np.testing.assert_array_equal(int8_linear(w, scale, x, library=other), int8_linear(w, scale, x))
    np.testing.assert_array_equal(int8_linear(w, scale, x), rowwise(w, scale, x))


@pytest.fixture(scope="module")
def tiny_step():
    loaded = loaded_model("random:tiny")
    arrays = int8_step_weights(loaded.model, loaded.shapes)
    return loaded.shapes, arrays


@pytest.fixture(scope="module")
def wide_step():
    """Random weights of 4.7 MB: over the size under which one thread runs the whole step
    (cpu/int8_step.cc, SMALL_STEP_BYTES), so the workers split it."""
    shapes = dataclasses.replace(loaded_model("random:tiny").shapes, num_layers=3, hidden_size=256, num_heads=4,
                                 max_positions=512)
    H, F, KV = shapes.hidden_size, 4 * shapes.hidden_size, shapes.num_codebooks * shapes.vocab_size
    rng = np.random.default_rng(5)
    arrays = {"embed": rng.standard_normal((shapes.num_codebooks, shapes.vocab_size + 1, H), np.float32),
              "positions": rng.standard_normal((shapes.max_positions, H), np.float32),
              "ln_eps": np.array(1e-5, np.float32)}
    for name in weight_names(shapes.num_layers):
        if name.endswith((".g", ".b")):
            arrays[name] = (1.0 if name.endswith(".g") else 0.0) + 0.1 * rng.standard_normal(H, np.float32)
    dims = {"qkv": (H, 3 * H), "out": (H, H), "cross_q": (H, H), "cross_out": (H, H), "fc1": (H, F), "fc2": (F, H)}
    for name in weight_names(shapes.num_layers):
        if name.endswith(".w"):
            stem = name[:-2]
            k, n = dims.get(stem.rsplit(".", 1)[-1], (H, KV))
            arrays[name], arrays[f"{stem}.scale"] = quantize_weight(rng.standard_normal((k, n), np.float32) / np.sqrt(k))
    return shapes, arrays


def _model(shapes, arrays, tmp_path):
    path = tmp_path / "int8_step.npz"
    np.savez(path, **arrays)
    return Int8StepModel(path, layers=shapes.num_layers, heads=shapes.num_heads, codebooks=shapes.num_codebooks,
                         vocab=shapes.vocab_size, text_tokens=shapes.max_text_tokens)


def _inputs(shapes, rng, rows, slots, positions):
    """Random codes, a filled int8 pool of `slots` x `positions`, text masks (the last two
    rows null text, their cross K/V zeros as CrossKV makes them), and an edit: row 1 edits
    row 0 (refine-like mapper, window, blend, self-injection), row 2 reads captured maps."""
    s = shapes
    L, H, D, T = s.num_layers, s.num_heads, s.head_dim, s.max_text_tokens
    pool = Int8KVPool(s)
    pool.ensure(slots, positions, 0)
    pool.k8[...] = rng.integers(-127, 128, pool.k8.shape, dtype=np.int8)
    pool.v8[...] = rng.integers(-127, 128, pool.v8.shape, dtype=np.int8)
    pool.kscale[...] = rng.random(pool.kscale.shape) * 0.05
    pool.vscale[...] = rng.random(pool.vscale.shape) * 0.02
    mask = np.zeros((pool.slot_capacity, T), np.int64)  # the pool rounds its slots up
    for r in range(pool.slot_capacity):
        mask[r, : 3 + r % 5] = 1 if r < rows - 2 else 0
    pool.cross_k[...] = rng.standard_normal(pool.cross_k.shape) * mask[None, :, None, :, None]
    pool.cross_v[...] = rng.standard_normal(pool.cross_v.shape) * mask[None, :, None, :, None]
    edit = EditStepInputs.identity(rows, T, L, H)
    edit.src_row[1] = 0
    edit.mapper[1] = np.abs(rng.standard_normal((T, T)))
    edit.alpha[1] = rng.random(T)
    edit.weight[1] = rng.random(T) * 2
    edit.window[1] = rng.random(T) > 0.3
    edit.blend[1] = rng.random(L)
    edit.self_blend[1] = rng.random(L)
    edit.self_window[1] = 1
    edit.use_captured[2], edit.blend[2], edit.window[2] = 1, 0, 1  # the captured maps replace its own
    edit.captured[:, 2] = rng.dirichlet(np.ones(T), (L, H))
    codes = rng.integers(0, s.vocab_size + 1, (rows, s.num_codebooks))
    pos = rng.integers(0, positions, rows)
    pos[1] = pos[0]  # a self-injecting row and its source step together
    return codes, pos.astype(np.int64), mask[:rows], edit, pool


def _run(model, shapes, codes, positions, mask, edit, pool, *, threads=2, write=None):
    rows, s = codes.shape[0], shapes
    logits = np.full((rows, s.num_codebooks, s.vocab_size), np.nan, np.float32)
    maps = np.full((s.num_layers, rows, s.num_heads, s.max_text_tokens), np.nan, np.float32)
    workspace = np.full(model.workspace_bytes(rows, pool.positions), 0xFF, np.uint8)  # garbage must not leak
    write = np.zeros(rows, np.uint8) if write is None else write
    model.run(step_args(threads=threads, codes=codes, positions=positions, write=write, text_mask=mask, edit=edit,
                        pool=pool, logits=logits, maps=maps, workspace=workspace))
    return logits, maps


def _first_rows(edit, n):
    return EditStepInputs(**{f: np.ascontiguousarray(v[:, :n] if f == "captured" else v[:n])
                             for f, v in vars(edit).items()})


def _layers(pool):
    return [(pool.k8[i], pool.kscale[i], pool.v8[i], pool.vscale[i]) for i in range(pool.k8.shape[0])]


@pytest.mark.parametrize("weights", ["tiny_step", "wide_step"])
def test_step_equals_its_reference(weights, request, tmp_path):
    """Logits and maps of 6 rows with an edit, self-injection and captured maps, against
    the float64 reference (activations quantized from float32 as the kernel does); then
    the written K/V."""
    shapes, arrays = request.getfixturevalue(weights)
    model = _model(shapes, arrays, tmp_path)
    rng = np.random.default_rng(0)
    rows = 6
    codes, pos, mask, edit, pool = _inputs(shapes, rng, rows, rows + 2, 96)
    want_logits, want_maps = int8_step_ref(arrays, shapes.num_heads, codes, pos, mask, edit, _layers(pool),
                                           pool.cross_k, pool.cross_v)
    before = pool.k8.copy()
    write = np.array([1, 1, 0, 1, 0, 1], np.uint8)
    logits, maps = _run(model, shapes, codes, pos, mask, edit, pool, write=write)
    scale = np.abs(want_logits).max()
    np.testing.assert_allclose(logits.reshape(rows, -1), want_logits, atol=1e-5 * scale)
    np.testing.assert_allclose(maps, want_maps, atol=1e-6)
    np.testing.assert_allclose(maps[:, 2], edit.captured[:, 2], atol=1e-7)
    changed = {(int(b) * BLOCK + int(j), int(r)) for _, b, r, _, _, j in np.argwhere(pool.k8 != before)}
    assert changed and all(write[r] and p == pos[r] for p, r in changed)


@pytest.mark.parametrize("weights", ["tiny_step", "wide_step"])
def test_a_rows_bits_do_not_depend_on_other_rows_the_pool_or_the_threads(weights, request, tmp_path):
    """Row 0 alone, with 5 other rows, in a pool with more slots and positions, on 1 and 2
    threads (the wide model's step is split between them): the same logits and maps, bit
    for bit."""
    shapes, arrays = request.getfixturevalue(weights)
    model = _model(shapes, arrays, tmp_path)
    rng = np.random.default_rng(1)
    codes, pos, mask, edit, pool = _inputs(shapes, rng, 6, 6, 64)
    crowd = _run(model, shapes, codes, pos, mask, edit, pool, threads=2)
    one = _first_rows(edit, 1)
    alone = _run(model, shapes, codes[:1], pos[:1], mask[:1], one, pool, threads=1)
    big = Int8KVPool(shapes)
    big.ensure(pool.slot_capacity + 4, 4 * pool.positions, 0)
    n = pool.slot_capacity
    for name in ("k8", "v8", "kscale", "vscale"):
        getattr(big, name)[:, :pool.positions // BLOCK, :n] = getattr(pool, name)
    big.cross_k[:, :n], big.cross_v[:, :n] = pool.cross_k, pool.cross_v
    grown = _run(model, shapes, codes[:1], pos[:1], mask[:1], one, big, threads=2)
    for got in (alone, grown):
        np.testing.assert_array_equal(got[0][0], crowd[0][0])
        np.testing.assert_array_equal(got[1][:, 0], crowd[1][:, 0])
    # the injecting row 1 with its source: the same in a crowd as with only its source
    two = _first_rows(edit, 2)
    pair = _run(model, shapes, codes[:2], pos[:2], mask[:2], two, pool, threads=1)
    np.testing.assert_array_equal(pair[0][1], crowd[0][1])


def test_int8_export_records_the_int8_step_and_the_runtime_runs_the_faster_path(exported):
    from editgen.cli.export import validation_table
    from editgen.engine.backends.int8_step_backend import Int8StepBackend
    from editgen.engine.manifest import load_manifest
    from editgen.engine.runtime import open_backend

    engine = exported("random:tiny", quantize="int8")
    manifest = load_manifest(engine)
    entry = manifest.int8_step
    assert entry["file"] == "int8_step.npz" and entry["isa"] == cpu_library.isa()
    assert entry["agreement"]["teacher_forced_token_agreement"] > 0.9 and entry["agreement"]["max_logit_error"] < 0.05
    assert set(entry["step_ms"]) == {"int8-step", "ort-int8"} and entry["default"] == min(entry["step_ms"],
                                                                                       key=entry["step_ms"].get)
    assert f"CPU path: {entry['default']} ({entry['isa']})" in validation_table(manifest)
    backend = open_backend(engine=str(engine), threads=1)
    try:  # on CPU (an onnxruntime with CUDA runs the standard step on the GPU)
        assert isinstance(backend, Int8StepBackend) == (entry["default"] == "int8-step") or \
            "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
    finally:
        backend.close()


def test_without_the_library_the_export_says_so_and_the_runtime_runs_the_standard_step(monkeypatch, exported):
    from editgen.engine.runtime import open_backend
    from editgen.export.int8_step import cpu_path_line, measure_paths

    engine = exported("random:tiny", quantize="int8")
    monkeypatch.setattr(cpu_library, "build_error", lambda: "no C++ compiler 'c++' for the CPU kernels")
    report = measure_paths(engine, log=lambda line: None)
    assert report == {"skipped": "no C++ compiler 'c++' for the CPU kernels"}
    assert cpu_path_line(report).endswith("(not measured at export: no C++ compiler 'c++' for the CPU kernels)")
    backend = open_backend(engine=str(engine), threads=1)
    assert type(backend).__name__ == "OrtBackend"
    backend.close()


def test_step_is_decoder_step_within_int8_error(tiny_step, tmp_path):
    """The same step of DecoderStep (torch, fp32 weights, the int8 cache dequantized):
    logits and maps within what int8 weights and activations change (a missing residual,
    a misplaced norm or a wrong edit term would be off by the logits' own size)."""
    import torch

    from editgen.kernels.cpu_attention import k_positions, scale_positions, v_positions
    from editgen.model.edit_tensors import EditTensors
    from editgen.model.step_module import DecoderStep

    shapes, arrays = tiny_step
    model = _model(shapes, arrays, tmp_path)
    rng = np.random.default_rng(2)
    rows = 6
    codes, pos, mask, edit, pool = _inputs(shapes, rng, rows, rows, 64)
    logits, maps = _run(model, shapes, codes, pos, mask, edit, pool)
    t = torch.from_numpy
    keys = [t(k_positions(pool.k8[i]) * scale_positions(pool.kscale[i])[..., None])[:rows].float()
            for i in range(shapes.num_layers)]
    values = [t(v_positions(pool.v8[i]) * scale_positions(pool.vscale[i])[..., None])[:rows].float()
              for i in range(shapes.num_layers)]
    step = DecoderStep(loaded_model("random:tiny").model).eval()
    with torch.no_grad():
        want_logits, _, want_maps = step(t(codes), t(pos), keys, values, list(t(pool.cross_k[:, :rows])),
                                         list(t(pool.cross_v[:, :rows])), t(mask), EditTensors.from_inputs(edit, t))
    scale = float(want_logits.abs().max())
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=0.05 * scale)
    np.testing.assert_allclose(maps, want_maps.numpy(), atol=0.01)
