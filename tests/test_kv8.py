"""The int8-KV engine: the C++ attention kernel against its numpy reference, its row
invariance, the segmented step against DecoderStep, and how the runtime picks it."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from editgen.engine.backends.kv8_pool import Int8KVPool
from editgen.engine.backends.ort_segmented import SegmentedOrtBackend
from editgen.engine.contract import segment_io
from editgen.engine.manifest import load_manifest
from editgen.engine.runtime import open_backend
from editgen.kernels.cpu_attention import (BLOCK, k_positions, kv8_attention, kv8_attention_ref, quantize_ref,
                                           scale_positions, v_positions)
from editgen.model.step_module import DecoderStep
from editgen.model.step_segments import StepSegment
from tests.conftest import loaded_model

# The kernel is compiled on first use; without a C++ compiler `open_backend` runs the
# export's standard int8 step instead (editgen.engine.backends.ort_segmented.use_segmented).
pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                reason="no C++ compiler: the int8 KV kernel cannot be built here")


def cache(rng, slots, heads, positions, head_dim):
    """A filled int8 pool layer: k8, kscale, v8, vscale (distinct values everywhere)."""
    blocks = positions // BLOCK
    k8 = rng.integers(-127, 128, (blocks, slots, heads, head_dim, BLOCK), dtype=np.int8)
    v8 = rng.integers(-127, 128, (blocks, slots, heads, BLOCK, head_dim), dtype=np.int8)
    kscale = (rng.random((blocks, slots, heads, BLOCK)) * 0.02 / np.sqrt(head_dim)).astype(np.float32)
    vscale = (rng.random((blocks, slots, heads, BLOCK)) * 0.01).astype(np.float32)
    return k8, kscale, v8, vscale


def call(qkv, positions, write, src, self_b, k8, kscale, v8, vscale, threads=1):
    rows, heads, head_dim = qkv.shape[0], k8.shape[2], k8.shape[3]
    out = np.full((rows, 1, heads * head_dim), np.nan, np.float32)
    scratch = np.full(rows * heads * (k8.shape[0] * BLOCK + BLOCK), np.nan, np.float32)  # garbage must not leak
    kv8_attention(qkv, positions, write, src, self_b, k8, kscale, v8, vscale, scratch, out, threads)
    return out


@pytest.mark.parametrize("head_dim", [16, 64])
def test_kernel_equals_its_reference_with_self_injection_and_writes(head_dim):
    rng = np.random.default_rng(head_dim)
    rows, heads, positions = 5, 3, 96
    k8, kscale, v8, vscale = cache(rng, rows + 2, heads, positions, head_dim)
    qkv = rng.standard_normal((rows, 1, 3 * heads * head_dim), dtype=np.float32)
    pos = np.array([48, 48, 0, 95, 17], np.int64)  # a row at 0 reads only its new K/V; 48: whole blocks
    src = np.array([0, 0, 2, 3, 3], np.int64)
    self_b = np.array([0.0, 0.6, 0.0, 0.0, -0.5], np.float32)  # row 1 injects row 0; row 4 row 3 (negative b)
    pos[4] = 95  # paired rows sit at the same position
    write = np.array([1, 1, 0, 1, 1], np.uint8)
    before = [a.copy() for a in (k8, kscale, v8, vscale)]
    want = kv8_attention_ref(qkv, pos, src, self_b, k8, kscale, v8, vscale)
    got = call(qkv, pos, write, src, self_b, k8, kscale, v8, vscale, threads=2)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)

    k_new, v_new = qkv.reshape(rows, 3, heads, head_dim)[:, 1:].transpose(1, 0, 2, 3)
    k_q, k_s = quantize_ref(k_new)
    v_q, v_s = quantize_ref(v_new)
    keys, values = k_positions(k8), v_positions(v8)
    k_scales, v_scales = scale_positions(kscale), scale_positions(vscale)
    for r in range(rows):
        p = pos[r]
        if write[r]:
            np.testing.assert_array_equal(keys[r, :, p], k_q[r])
            np.testing.assert_array_equal(values[r, :, p], v_q[r])
            np.testing.assert_allclose(k_scales[r, :, p], k_s[r], rtol=1e-7)
            np.testing.assert_allclose(v_scales[r, :, p], v_s[r], rtol=1e-7)
        else:
            np.testing.assert_array_equal(keys[r, :, p], k_positions(before[0])[r, :, p])
    for new, old in ((keys, k_positions(before[0])), (values, v_positions(before[2]))):
        changed = np.argwhere(new != old)  # nothing but (row, head, its position) was written
        assert len(changed) and all(write[r] and p == pos[r] for r, _, p, _ in changed)


def test_threads_split_the_work_without_changing_a_bit():
    """A call over 1 MB of K/V runs on the kernel's worker threads: the same bits as one
    thread, with and without self-injection, and the reference's values."""
    rng = np.random.default_rng(7)
    rows, heads, positions, hd = 4, 8, 1024, 64  # 4 MB of K/V read
    k8, kscale, v8, vscale = cache(rng, rows, heads, positions, hd)
    qkv = rng.standard_normal((rows, 1, 3 * heads * hd), dtype=np.float32)
    pos = np.array([1000, 1000, 700, 700], np.int64)
    for src, self_b in ((np.arange(rows), np.zeros(rows, np.float32)),
                        (np.array([0, 0, 2, 2]), np.array([0, 0.8, 0, 0.3], np.float32))):
        one = call(qkv, pos, np.zeros(rows, np.uint8), src, self_b, k8, kscale, v8, vscale, threads=1)
        two = call(qkv, pos, np.zeros(rows, np.uint8), src, self_b, k8, kscale, v8, vscale, threads=2)
        np.testing.assert_array_equal(two, one)
        np.testing.assert_allclose(two, kv8_attention_ref(qkv, pos, src, self_b, k8, kscale, v8, vscale),
                                   rtol=1e-4, atol=2e-6)


def test_quantizing_zeros_gives_zero_scale_and_codes():
    q, s = quantize_ref(np.zeros((2, 64), np.float32))
    assert not q.any() and not s.any()
    rng = np.random.default_rng(0)
    k8, kscale, v8, vscale = cache(rng, 2, 1, 16, 64)
    qkv = np.zeros((2, 1, 3 * 64), np.float32)
    call(qkv, np.array([3, 3]), np.ones(2, np.uint8), np.arange(2), np.zeros(2, np.float32), k8, kscale, v8, vscale)
    assert not k_positions(k8)[:, 0, 3].any() and not v_positions(v8)[:, 0, 3].any()
    assert scale_positions(kscale)[0, 0, 3] == 0 and scale_positions(vscale)[1, 0, 3] == 0


def test_a_rows_output_does_not_depend_on_other_rows_or_the_pool_length():
    """Bit for bit: row 0 alone, with other rows at other positions, and in a longer pool."""
    rng = np.random.default_rng(1)
    heads, hd = 4, 64
    k8, kscale, v8, vscale = cache(rng, 6, heads, 128, hd)
    qkv = rng.standard_normal((6, 1, 3 * heads * hd), dtype=np.float32)
    no_write = np.zeros(6, np.uint8)
    alone = call(qkv[:1], np.array([77]), no_write[:1], np.zeros(1, np.int64), np.zeros(1, np.float32),
                 k8, kscale, v8, vscale)
    crowd = call(qkv, np.array([77, 3, 127, 0, 64, 77]), no_write, np.array([0, 1, 2, 3, 4, 0]),
                 np.array([0, 0, 0, 0, 0, 0.5], np.float32), k8, kscale, v8, vscale, threads=2)
    longer = cache(rng, 9, heads, 256, hd)  # more positions and more slots
    for big, small in zip(longer, (k8, kscale, v8, vscale)):
        big[: small.shape[0], :6] = small
    grown = call(qkv[:2], np.array([77, 200]), no_write[:2], np.arange(2), np.zeros(2, np.float32), *longer,
                 threads=2)
    np.testing.assert_array_equal(crowd[0], alone[0])
    np.testing.assert_array_equal(grown[0], alone[0])


def test_segments_chained_with_fp32_attention_equal_decoder_step():
    """The cut is exact: segment 0, then per layer DecoderStep's own self-attention and
    the next segment, give DecoderStep's logits and maps (fp32, no quantization)."""
    loaded = loaded_model("random:tiny")
    s = loaded.shapes
    step = DecoderStep(loaded.model, fused=True).eval()
    L, H, D, T = s.num_layers, s.num_heads, s.head_dim, s.max_text_tokens
    gen = torch.Generator().manual_seed(0)
    rows, capacity = 4, 16
    positions = torch.tensor([5, 5, 9, 9])
    codes = torch.randint(0, s.vocab_size, (rows, s.num_codebooks), generator=gen)
    past = [torch.randn(rows, H, capacity, D, generator=gen) for _ in range(2 * L)]
    cross = [torch.randn(rows, H, T, D, generator=gen) for _ in range(2 * L)]
    mask = torch.zeros(rows, T, dtype=torch.int64)
    mask[0, :5] = mask[2, :7] = 1
    edit = (torch.tensor([0, 1, 0, 1]), torch.softmax(torch.randn(rows, T, T, generator=gen), -1),
            torch.rand(rows, T, generator=gen), torch.rand(rows, T, generator=gen) * 2,
            torch.ones(rows, T), torch.rand(rows, L, generator=gen), torch.zeros(rows),
            torch.zeros(L, rows, H, T))
    self_blend, self_window = torch.rand(rows, L, generator=gen), torch.tensor([0.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        want_logits, _, want_maps = step(codes, positions, past[0::2], past[1::2], cross[0::2], cross[1::2], mask,
                                         *edit, self_blend, self_window)
        segments = [StepSegment(step, i) for i in range(L + 1)]
        x, qkv = segments[0](codes, positions)
        valid = torch.arange(capacity)[None, :] < positions[:, None]
        bias = torch.where(valid, 0.0, -3.4e38)[:, None, None, :]
        terms = step.edit_terms(*edit, self_blend, self_window)
        maps = []
        for i in range(L):
            attn, _ = step._self_attention(qkv, past[2 * i], past[2 * i + 1], bias, i, terms)
            out = segments[i + 1](x, attn, cross[2 * i], cross[2 * i + 1], mask, *edit)
            maps.append(out[-1])
            x, qkv = out[0], out[1] if i + 1 < L else None
        torch.testing.assert_close(out[0], want_logits, rtol=0, atol=0)
        torch.testing.assert_close(torch.stack(maps), want_maps, rtol=0, atol=0)
    assert [len(segment_io(i, L)[1]) for i in (0, 1, L)] == [2, 3, 2]


def test_int8_export_has_segments_that_agree_with_fp32(exported):
    engine = exported("random:tiny", quantize="int8")
    report = SegmentedOrtBackend(engine, threads=1).manifest.data["segments"]
    assert report["kv_cache"] == "int8" and len(report["graphs"]) == loaded_model("random:tiny").shapes.num_layers + 1
    agreement = report["agreement"]
    assert agreement["teacher_forced_token_agreement"] > 0.9 and agreement["max_logit_error"] < 0.05
    # an fp32 export has no segments: the standard step
    fp32 = open_backend(engine=str(exported("random:tiny")), threads=1)
    assert type(fp32).__name__ == "OrtBackend"
    fp32.close()


def test_pool_keeps_the_live_prefix_when_it_grows_and_shrinks():
    shapes = loaded_model("random:tiny").shapes
    pool = Int8KVPool(shapes)
    pool.ensure(2, 64, 0)
    rng = np.random.default_rng(0)
    pool.k8[...] = rng.integers(-9, 9, pool.k8.shape, dtype=np.int8)
    pool.v8[...] = rng.integers(-9, 9, pool.v8.shape, dtype=np.int8)
    pool.kscale[...] = rng.random(pool.kscale.shape)
    k, v, ks = pool.k8.copy(), pool.v8.copy(), pool.kscale.copy()
    n, b = pool.slot_capacity, pool.positions // BLOCK
    pool.ensure(n + 2, 4 * b * BLOCK, b * BLOCK)  # more slots and positions
    assert pool.positions >= 4 * b * BLOCK and pool.slot_capacity >= n + 2 and pool.positions % BLOCK == 0
    np.testing.assert_array_equal(pool.k8[:, :b, :n], k)
    np.testing.assert_array_equal(pool.v8[:, :b, :n], v)
    np.testing.assert_array_equal(pool.kscale[:, :b, :n], ks)
    pool.ensure(n + 2, b * BLOCK, b * BLOCK // 2)  # every live row fits in half: shrinks, prefix kept
    assert pool.positions == b * BLOCK
    np.testing.assert_array_equal(pool.v8[:, :, :n], v)
    with pytest.raises(AssertionError):
        pool.write(np.arange(1), np.zeros(1), None)


def test_without_the_kernel_the_export_says_so_and_the_runtime_runs_the_standard_step(monkeypatch, exported):
    from editgen.cli.export import validation_table
    from editgen.export import segments
    from editgen.kernels import cpu_library

    engine = exported("random:tiny", quantize="int8")
    monkeypatch.setattr(cpu_library, "build_error", lambda: "no C++ compiler 'c++' for the int8 KV kernel")
    report = segments.segments_agreement(engine)
    assert report == {"skipped": "no C++ compiler 'c++' for the int8 KV kernel"}
    manifest = load_manifest(engine).data
    line = validation_table({**manifest, "segments": {**manifest["segments"], "agreement": report}}).splitlines()[-1]
    assert line == "int8 KV engine: agreement not measured (no C++ compiler 'c++' for the int8 KV kernel)"
    backend = open_backend(engine=str(engine), threads=1)
    assert type(backend).__name__ == "OrtBackend"
    backend.close()
