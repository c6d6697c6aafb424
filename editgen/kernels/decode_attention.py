"""Decode self-attention over per-row cache lengths, split-K, with the source's
probabilities injected: two Triton kernels (FlashDecoding's layout, as
flash_attn_with_kvcache with cache_seqlens).

1. `_split_kernel`, grid (rows, heads, splits): split j of row r walks its share of the
   row's valid positions 0..pos-1, BLOCK_N at a time, with an online softmax (running max
   m, sum l, unnormalized acc = sum exp(s - m) * V) for the row's own scores AND for its
   source's (the source's q against the source's cache), both weighting the row's OWN
   values. Rows with b = 0 (or their own source) skip the source pass (no loads).
2. `_reduce_kernel`, grid (rows, heads): merges the splits (log-sum-exp) together with this
   step's entry (q . k_new, v_new), which is kept out of the cache walk, forms
   out = out_own - b * (out_own - out_src), and writes k_new, v_new at (slot, pos).
With one split (many rows: every multiprocessor already has programs; and the CPU
interpreter) the split kernel does step 2 itself from its registers (FUSED): one launch,
no workspace, the same operations.

out_src = S_src @ V_own is linear in S, so injecting into the probabilities
(S = S_own - b (S_own - S_src)) and into the outputs is the same thing; only the rounding
differs. fp32 math whatever the cache dtype (softmax sums and the b-weighted difference
of two outputs). The spec: reference.decode_self_attention_ref.

Loops are `while` loops over loaded lengths: Triton's interpreter (the CPU tests) cannot
take a `range` bound from a loaded value under numpy 2 (it turns the one-element array
into an int), and a compiled `while` costs nothing here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from editgen.kernels import _launch as L


@triton.jit
def _online_block(q, k_ptrs, v, n_in, d_in, scale, m, l, acc):
    """One block of positions into the running (m, l, acc): q [BLOCK_D] fp32, keys at
    k_ptrs [BLOCK_N, BLOCK_D], v [BLOCK_N, BLOCK_D] fp32 (the row's own values), n_in
    [BLOCK_N] the positions inside the split (at least one)."""
    k = tl.load(k_ptrs, mask=n_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
    s = tl.where(n_in, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, axis=0))  # finite: the block has a valid position
    correction = tl.exp(m - m_new)  # exp(-inf) = 0 on the first block
    p = tl.exp(s - m_new)
    l = l * correction + tl.sum(p, axis=0)
    acc = acc * correction + tl.sum(p[:, None] * v, axis=0)
    return m_new, l, acc


@triton.jit
def _split_kernel(q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, slots_ptr, pos_ptr, src_ptr, b_ptr, m_ws, l_ws, acc_ws,
                  out_ptr, D, P, scale, sq_r, sq_h, skn_r, skn_h, svn_r, svn_h, skc_s, skc_h, skc_p,
                  svc_s, svc_h, svc_p, so_r, so_h, ws_kind,
                  NUM_SPLITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FUSED: tl.constexpr):
    """Partial (m, l, acc) of split j for the own scores (workspace kind 0) and the
    source's (kind 1). Workspace: m, l [2, R, H, NUM_SPLITS]; acc [2, R, H, NUM_SPLITS, BLOCK_D].
    FUSED (one split): the output and the cache write instead (_finish), no workspace."""
    r = tl.program_id(0)
    h = tl.program_id(1)
    j = tl.program_id(2)
    H = tl.num_programs(1)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < D

    row_pos = tl.load(pos_ptr + r)
    pos = tl.minimum(row_pos, P)  # memory safety only: positions < P is the caller's
    slot = tl.load(slots_ptr + r).to(tl.int64)  # int64: slot * stride passes 2**31 in a large pool
    src = tl.load(src_ptr + r)
    src_slot = tl.load(slots_ptr + src).to(tl.int64)
    b = tl.load(b_ptr + r)
    # A row that is its own source would inject itself: S_src = S_own, nothing to compute.
    injected = (b != 0.0) & (src != r)

    # Row r's own length (not the capacity) shared evenly by the splits, in whole blocks,
    # as FlashAttention's split-KV does with cache_seqlens.
    blocks = tl.cdiv(pos, BLOCK_N)
    per_split = tl.cdiv(blocks, NUM_SPLITS) * BLOCK_N
    start = j * per_split
    end = tl.minimum(start + per_split, pos)

    q_own = tl.load(q_ptr + r * sq_r + h * sq_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
    q_src = tl.load(q_ptr + src * sq_r + h * sq_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
    k_own = kc_ptr + slot * skc_s + h * skc_h + offs_d[None, :]
    k_src = kc_ptr + src_slot * skc_s + h * skc_h + offs_d[None, :]
    v_row = vc_ptr + slot * svc_s + h * svc_h + offs_d[None, :]

    m_o = float("-inf")
    l_o = 0.0
    acc_o = tl.zeros([BLOCK_D], dtype=tl.float32)
    m_s = float("-inf")
    l_s = 0.0
    acc_s = tl.zeros([BLOCK_D], dtype=tl.float32)
    n = start
    while n < end:
        offs = n + offs_n
        n_in = offs < end
        v = tl.load(v_row + offs[:, None] * svc_p, mask=n_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
        m_o, l_o, acc_o = _online_block(q_own, k_own + offs[:, None] * skc_p, v, n_in, d_in, scale, m_o, l_o, acc_o)
        if injected:  # the source pass: its q over its cache at the same positions (the
            # engine steps a target and its source together), weighting the row's own v
            m_s, l_s, acc_s = _online_block(q_src, k_src + offs[:, None] * skc_p, v, n_in, d_in, scale,
                                            m_s, l_s, acc_s)
        n += BLOCK_N

    if FUSED:  # the one split's (m, l, acc) as one-element blocks: _reduce_kernel's merge of one split
        one = tl.zeros([1], dtype=tl.float32)
        _finish(one + m_o, one + l_o, acc_o[None, :], one + m_s, one + l_s, acc_s[None, :], r, h, slot, row_pos, src,
                b, q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, out_ptr, P, scale, sq_r, sq_h, skn_r, skn_h, svn_r, svn_h,
                skc_s, skc_h, skc_p, svc_s, svc_h, svc_p, so_r, so_h, offs_d, d_in)
    else:
        at = (r * H + h) * NUM_SPLITS + j
        tl.store(m_ws + at, m_o)
        tl.store(l_ws + at, l_o)
        tl.store(acc_ws + at * BLOCK_D + offs_d, acc_o)
        tl.store(m_ws + ws_kind + at, m_s)
        tl.store(l_ws + ws_kind + at, l_s)
        tl.store(acc_ws + ws_kind * BLOCK_D + at * BLOCK_D + offs_d, acc_s)


@triton.jit
def _merge(m, l, acc, s_new, v_new):
    """softmax-weighted sum over the splits' (m [S], l [S], acc [S, BLOCK_D]) and the new
    entry (score s_new, value v_new)."""
    m_all = tl.maximum(tl.max(m, axis=0), s_new)  # finite: the new entry always counts
    w = tl.exp(m - m_all)  # 0 for splits that had no positions (m = -inf)
    w_new = tl.exp(s_new - m_all)
    total = tl.sum(l * w, axis=0) + w_new
    return (tl.sum(acc * w[:, None], axis=0) + w_new * v_new) / total


@triton.jit
def _partials(m_ws, l_ws, acc_ws, at, offs_j, j_in, offs_d, BLOCK_D: tl.constexpr):
    """One kind's (m [BLOCK_S], l [BLOCK_S], acc [BLOCK_S, BLOCK_D]) of the splits at `at`;
    the padding splits as empty ones (-inf, 0, 0)."""
    m = tl.load(m_ws + at + offs_j, mask=j_in, other=float("-inf"))
    l = tl.load(l_ws + at + offs_j, mask=j_in, other=0.0)
    acc = tl.load(acc_ws + (at + offs_j[:, None]) * BLOCK_D + offs_d[None, :], mask=j_in[:, None], other=0.0)
    return m, l, acc


@triton.jit
def _finish(m_o, l_o, acc_o, m_s, l_s, acc_s, r, h, slot, pos, src, b, q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr,
            out_ptr, P, scale, sq_r, sq_h, skn_r, skn_h, svn_r, svn_h, skc_s, skc_h, skc_p, svc_s, svc_h, svc_p,
            so_r, so_h, offs_d, d_in):
    """Row r, head h from its splits' partials (own: m_o, l_o, acc_o; the source's: m_s,
    l_s, acc_s): the output, and this step's K/V into the cache."""
    q = tl.load(q_ptr + r * sq_r + h * sq_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
    k_new = tl.load(kn_ptr + r * skn_r + h * skn_h + offs_d, mask=d_in, other=0.0)
    v_new = tl.load(vn_ptr + r * svn_r + h * svn_h + offs_d, mask=d_in, other=0.0)
    s_new = tl.sum(q * k_new.to(tl.float32), axis=0) * scale
    out = _merge(m_o, l_o, acc_o, s_new, v_new.to(tl.float32))
    if (b != 0.0) & (src != r):  # as the split kernel's source pass
        q_src = tl.load(q_ptr + src * sq_r + h * sq_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
        k_src = tl.load(kn_ptr + src * skn_r + h * skn_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
        # The source's probabilities, the row's own values (v_new of row r).
        out_src = _merge(m_s, l_s, acc_s, tl.sum(q_src * k_src, axis=0) * scale, v_new.to(tl.float32))
        out = out - b * (out - out_src)
    tl.store(out_ptr + r * so_r + h * so_h + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_in)

    # This step's K/V into the cache, at (slot, pos). Every read of the cache is at positions
    # < pos of its slot: a row's own walk, and a target's source pass over this row's slot,
    # since a target and its source are at one position (the engine steps them together;
    # the reference checks it, the kernel cannot). Fused, those source passes run beside
    # this write, so that precondition is what keeps them apart; slots are distinct. A
    # position past the capacity is not written (and would have read only the capacity).
    write = d_in & (pos < P)
    tl.store(kc_ptr + slot * skc_s + h * skc_h + pos * skc_p + offs_d, k_new.to(kc_ptr.dtype.element_ty), mask=write)
    tl.store(vc_ptr + slot * svc_s + h * svc_h + pos * svc_p + offs_d, v_new.to(vc_ptr.dtype.element_ty), mask=write)


@triton.jit
def _reduce_kernel(q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, slots_ptr, pos_ptr, src_ptr, b_ptr, m_ws, l_ws, acc_ws,
                   out_ptr, D, P, scale, sq_r, sq_h, skn_r, skn_h, svn_r, svn_h, skc_s, skc_h, skc_p,
                   svc_s, svc_h, svc_p, so_r, so_h, ws_kind,
                   NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    offs_j = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < D
    j_in = offs_j < NUM_SPLITS
    at = (r * H + h) * NUM_SPLITS
    # Both kinds' partials (the source's are -inf / 0 where the row injects nothing): a few
    # hundred bytes per program against its split kernels' cache walk.
    m_o, l_o, acc_o = _partials(m_ws, l_ws, acc_ws, at, offs_j, j_in, offs_d, BLOCK_D)
    m_s, l_s, acc_s = _partials(m_ws + ws_kind, l_ws + ws_kind, acc_ws + ws_kind * BLOCK_D, at, offs_j, j_in, offs_d,
                                BLOCK_D)
    _finish(m_o, l_o, acc_o, m_s, l_s, acc_s, r, h, tl.load(slots_ptr + r).to(tl.int64), tl.load(pos_ptr + r),
            tl.load(src_ptr + r), tl.load(b_ptr + r), q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, out_ptr, P, scale,
            sq_r, sq_h, skn_r, skn_h, svn_r, svn_h, skc_s, skc_h, skc_p, svc_s, svc_h, svc_p, so_r, so_h, offs_d,
            d_in)


def default_splits(rows: int, heads: int, capacity: int, block_n: int, device: torch.device) -> int:
    """Splits per (row, head): enough programs for about two per multiprocessor, never more
    than the capacity has blocks, at most 16. From static sizes only (capacity, not the
    rows' positions), so a captured CUDA graph keeps one grid."""
    if device.type != "cuda":
        return 1  # the interpreter: every program costs, none runs in parallel
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(16, triton.cdiv(capacity, block_n), triton.cdiv(2 * sms, max(1, rows * heads))))


def _decode_plan(q, k_new, v_new, k_cache, v_cache, slots, positions, src_row, self_b, scale, num_splits,
                 block_n):
    """Checks the arguments; returns the launches (split and reduce, or the fused split
    alone for one split) and the output they write."""
    rows, heads, dim = L.dims("q", q, 3, L.FLOATS)
    L.shape("k_new", k_new, (rows, heads, dim), (q.dtype,))
    L.shape("v_new", v_new, (rows, heads, dim), (q.dtype,))
    slot_count, _, capacity, _ = L.dims("k_cache", k_cache, 4, L.FLOATS)
    L.shape("k_cache", k_cache, (slot_count, heads, capacity, dim))
    L.shape("v_cache", v_cache, (slot_count, heads, capacity, dim), (k_cache.dtype,))
    for name, x in (("slots", slots), ("positions", positions), ("src_row", src_row)):
        L.shape(name, x, (rows,), L.INTS)
    L.shape("self_b", self_b, (rows,))
    L.need(isinstance(scale, (int, float)), f"scale must be a Python number, got {type(scale).__name__}")
    L.need(block_n >= 1 and block_n == L.next_pow2(block_n), f"block_n must be a power of two, got {block_n}")
    device = L.same_device(q=q, k_new=k_new, v_new=v_new, k_cache=k_cache, v_cache=v_cache, slots=slots,
                           positions=positions, src_row=src_row, self_b=self_b)
    if num_splits is None:
        num_splits = default_splits(rows, heads, capacity, block_n, device)
    L.need(isinstance(num_splits, int) and num_splits >= 1, f"num_splits must be an int >= 1, got {num_splits}")
    L.need(k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1,
           "k_cache and v_cache need a contiguous last axis: they are written in place, a copy would lose the write")

    q, k_new, v_new = L.unit_last_stride(q), L.unit_last_stride(k_new), L.unit_last_stride(v_new)
    b = self_b.to(torch.float32).contiguous()
    block_d = L.next_pow2(dim)
    # Partial results of both passes: kind 0 the own scores, kind 1 the source's.
    # One split: the split kernel finishes the rows itself and the workspace is not read (one
    # element each, as a pointer to pass).
    fused = num_splits == 1
    ws = (1, 1, 1, 1, 1) if fused else (2, rows, heads, num_splits, block_d)
    m_ws = torch.empty(ws[:4], dtype=torch.float32, device=device)
    l_ws = torch.empty_like(m_ws)
    acc_ws = torch.empty(ws, dtype=torch.float32, device=device)
    ws_kind = rows * heads * num_splits  # elements from kind 0 to kind 1 in m_ws, l_ws
    out = torch.empty((rows, heads, dim), dtype=q.dtype, device=device)
    cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3])
    args = (q, k_new, v_new, k_cache, v_cache, slots, positions, src_row, b, m_ws, l_ws, acc_ws, out, dim, capacity,
            float(scale), q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
            *cache_strides, out.stride(0), out.stride(1), ws_kind)
    split = L.Launch(_split_kernel, (rows, heads, num_splits), args,
                     {"NUM_SPLITS": num_splits, "BLOCK_N": block_n, "BLOCK_D": block_d, "FUSED": fused})
    if fused:
        return (split,), out
    reduce = L.Launch(_reduce_kernel, (rows, heads), args,
                      {"NUM_SPLITS": num_splits, "BLOCK_S": L.next_pow2(num_splits), "BLOCK_D": block_d})
    return (split, reduce), out


def decode_self_attention(q, k_new, v_new, k_cache, v_cache, slots, positions, src_row, self_b, scale: float, *,
                          num_splits: int | None = None, block_n: int = 64):
    """The Triton kernels of reference.decode_self_attention_ref (same arguments and shapes):
    returns out [R, H, D] in q's dtype and writes k_new, v_new into the caches at
    (slots[r], positions[r]).

    q, k_new, v_new: one float dtype; the caches another or the same (written converted).
    Not checked, since that would wait for the device: slots distinct, 0 <= positions <
    capacity, src_row indexes the batch, and a row with b != 0 at its source's position.
    num_splits: None picks default_splits; block_n: positions per loop iteration."""
    launches, out = _decode_plan(q, k_new, v_new, k_cache, v_cache, slots, positions, src_row, self_b, scale,
                                 num_splits, block_n)
    for launch in launches:
        launch.run()
    return out
