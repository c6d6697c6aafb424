"""The int8 K/V cache: the C++ self-attention kernel against its numpy reference, its row
invariance, and the pool."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from editgen.engine.backends.kv8_pool import Int8KVPool
from editgen.kernels.cpu_attention import (BLOCK, k_positions, kv8_attention, kv8_attention_ref, quantize_ref,
                                           scale_positions, v_positions)
from tests.conftest import loaded_model

# The kernel is compiled on first use; without a C++ compiler `open_backend` runs the
# export's standard int8 step instead (editgen.engine.backends.int8_step_backend.use_int8_step).
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

