"""Edited cross-attention (Prompt-to-Prompt) in one Triton kernel.

One program per (row, head): q [D] against the row's text K [T, D], the source row's
probabilities recomputed in the same program (or read from `captured`), the edit applied
(mapper, alpha, weight, window, keep), P @ V, and P stored only when asked. T and D are
padded to powers of two and masked. Math in fp32 whatever the input dtype: the edit
subtracts probabilities (p_own - inj), where fp16 would lose the small ones that the
maps are about. The spec: reference.edited_cross_attention_ref.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from editgen.kernels import _launch as L

_NEG = tl.constexpr(-3.4028234663852886e38)  # torch.finfo(float32).min: the model's additive mask


@triton.jit
def _text_probs(q_ptr, k_ptr, mask_ptr, row, head, T, D, scale, sq_r, sq_h, sk_r, sk_h, sk_t, sm_r,
                BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """softmax(scale * q . K^T + (1 - mask) * NEG) of one (row, head): [BLOCK_T], 0 on padding.
    The target's own map and its source's go through this one function, so a row that is
    its own source gets the same bits either way."""
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_in = offs_t < T
    d_in = offs_d < D
    q = tl.load(q_ptr + row * sq_r + head * sq_h + offs_d, mask=d_in, other=0.0).to(tl.float32)
    k = tl.load(k_ptr + row * sk_r + head * sk_h + offs_t[:, None] * sk_t + offs_d[None, :],
                mask=t_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_D]
    valid = tl.load(mask_ptr + row * sm_r + offs_t, mask=t_in, other=0.0)
    # Finite NEG, as the model: an all-padding row (CFG null text) gets a uniform map. Lanes
    # past T are -inf: they are not tokens at all.
    s = tl.sum(k * q[None, :], axis=1) * scale + (1.0 - valid) * _NEG
    s = tl.where(t_in, s, float("-inf"))
    e = tl.exp(s - tl.max(s, axis=0))
    return e / tl.sum(e, axis=0)


@triton.jit
def _edited_cross_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, src_ptr, use_cap_ptr, cap_ptr, mapper_ptr, alpha_ptr,
                         weight_ptr, window_ptr, keep_ptr, out_ptr, probs_ptr, T, D, scale,
                         sq_r, sq_h, sk_r, sk_h, sk_t, sv_r, sv_h, sv_t, so_r, so_h, sp_r, sp_h, sp_t,
                         WRITE_PROBS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0)
    h = tl.program_id(1)
    H = tl.num_programs(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_in = offs_t < T
    d_in = offs_d < D

    p_own = _text_probs(q_ptr, k_ptr, mask_ptr, r, h, T, D, scale, sq_r, sq_h, sk_r, sk_h, sk_t, T,
                        BLOCK_T, BLOCK_D)
    src = tl.load(src_ptr + r)
    if tl.load(use_cap_ptr + r) > 0.5:  # captured mode: the source's maps were recorded earlier
        p_src = tl.load(cap_ptr + (r * H + h) * T + offs_t, mask=t_in, other=0.0)
    elif src == r:  # unedited rows (and sources): no second softmax
        p_src = p_own
    else:
        p_src = _text_probs(q_ptr, k_ptr, mask_ptr, src, h, T, D, scale, sq_r, sq_h, sk_r, sk_h, sk_t, T,
                            BLOCK_T, BLOCK_D)

    # base[t] = sum_s p_src[s] * mapper[r, s, t]; mapper rows are source tokens.
    m = tl.load(mapper_ptr + r * T * T + offs_t[:, None] * T + offs_t[None, :],
                mask=t_in[:, None] & t_in[None, :], other=0.0)  # [BLOCK_T (s), BLOCK_T (t)]
    base = tl.sum(p_src[:, None] * m, axis=0)
    alpha = tl.load(alpha_ptr + r * T + offs_t, mask=t_in, other=0.0)
    weight = tl.load(weight_ptr + r * T + offs_t, mask=t_in, other=0.0)
    window = tl.load(window_ptr + r * T + offs_t, mask=t_in, other=0.0)
    keep = tl.load(keep_ptr + r)
    # The reference's forms term for term: alpha and window are 0/1, where they are exact,
    # and keep = 1 leaves p_own bit for bit.
    inj = (alpha * base + (1.0 - alpha) * p_own) * weight
    inj = window * inj + (1.0 - window) * p_own
    p = p_own - (1.0 - keep) * (p_own - inj)  # [BLOCK_T]

    v = tl.load(v_ptr + r * sv_r + h * sv_h + offs_t[:, None] * sv_t + offs_d[None, :],
                mask=t_in[:, None] & d_in[None, :], other=0.0).to(tl.float32)
    out = tl.sum(p[:, None] * v, axis=0)  # [BLOCK_D]
    tl.store(out_ptr + r * so_r + h * so_h + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_in)
    if WRITE_PROBS:  # compiled out otherwise: the maps cost a store only for rows that want them
        tl.store(probs_ptr + r * sp_r + h * sp_h + offs_t * sp_t, p.to(probs_ptr.dtype.element_ty), mask=t_in)


def _cross_plan(q, k, v, text_mask, src_row, use_captured, captured, mapper, alpha, weight, window, keep,
                scale, probs):
    """Checks the arguments; returns the launch and the output it writes."""
    rows, heads, dim = L.dims("q", q, 3, L.FLOATS)
    T = L.dims("k", k, 4)[2]
    L.shape("k", k, (rows, heads, T, dim), (q.dtype,))
    L.shape("v", v, (rows, heads, T, dim), (q.dtype,))
    L.shape("text_mask", text_mask, (rows, T))
    L.shape("src_row", src_row, (rows,), L.INTS)
    L.shape("use_captured", use_captured, (rows,))
    L.shape("captured", captured, (rows, heads, T))
    L.shape("mapper", mapper, (rows, T, T))
    for name, x in (("alpha", alpha), ("weight", weight), ("window", window)):
        L.shape(name, x, (rows, T))
    L.shape("keep", keep, (rows,))
    L.need(isinstance(scale, (int, float)), f"scale must be a Python number, got {type(scale).__name__}")
    if probs is not None:
        L.shape("probs", probs, (rows, heads, T), L.FLOATS)
    extra = {} if probs is None else {"probs": probs}
    L.same_device(q=q, k=k, v=v, text_mask=text_mask, src_row=src_row, use_captured=use_captured,
                  captured=captured, mapper=mapper, alpha=alpha, weight=weight, window=window, keep=keep, **extra)

    q, k, v = L.unit_last_stride(q), L.unit_last_stride(k), L.unit_last_stride(v)
    # Small per-step terms: one fp32 contiguous copy at most (none when already so).
    f32 = [x.to(torch.float32).contiguous() for x in (text_mask, use_captured, captured, mapper, alpha, weight,
                                                       window, keep)]
    mask_, use_cap, cap, mapper_, alpha_, weight_, window_, keep_ = f32
    out = torch.empty((rows, heads, dim), dtype=q.dtype, device=q.device)
    write = probs is not None
    # Without probs the store is compiled out; `out` is only a placeholder pointer then.
    p_arg = probs if write else out
    p_strides = probs.stride() if write else (0, 0, 0)
    args = (q, k, v, mask_, src_row, use_cap, cap, mapper_, alpha_, weight_, window_, keep_, out, p_arg,
            T, dim, float(scale), q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), *p_strides)
    constexprs = {"WRITE_PROBS": write, "BLOCK_T": L.next_pow2(T), "BLOCK_D": L.next_pow2(dim)}
    return L.Launch(_edited_cross_kernel, (rows, heads), args, constexprs), out


def edited_cross_attention(q, k, v, text_mask, src_row, use_captured, captured, mapper, alpha, weight, window,
                           keep, scale: float, *, probs=None):
    """The Triton kernel of reference.edited_cross_attention_ref (same arguments and shapes).

    q, k, v: float16, bfloat16 or float32 (one dtype); the edit terms any real dtype (used
    as fp32). probs: an optional [R, H, T] float tensor (a view is fine) that receives the
    edited maps; nothing is written for them when it is None.
    src_row must index rows of the batch: not checked here (that would wait for the device).
    Returns (out [R, H, D] in q's dtype, probs or None)."""
    launch, out = _cross_plan(q, k, v, text_mask, src_row, use_captured, captured, mapper, alpha, weight, window,
                              keep, scale, probs)
    launch.run()
    return out, probs
