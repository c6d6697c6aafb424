// The device code of the edited cross-attention (formula: include/editgen_kernels.h): what
// one block of kThreads threads does for one (row, head). The __global__ wrapper in
// edited_cross_attention.cu gives it its shared memory; tests/cpp/test_emulated_block.cpp
// runs this same code on the CPU, one std::thread per CUDA thread.
//
// One block per (row, head): a decoder step has one query position per row and T = 64
// text tokens, so a (row, head) is a few thousand multiply-adds and the step is bound by
// launch latency and by reading K, V and the mapper once. The block keeps every
// intermediate in shared memory: p_own, p_src and the edited map never go to device
// memory (only `probs`, when asked for).
//
// fp32 throughout, expf and IEEE division (no fast math): within a few ulp of the torch
// reference, and identity edit inputs return p_own bit for bit, as the exported graph
// does (docs/design.md, "The edit").
//
// Uses only: threadIdx.x, __syncthreads, __shfl_xor_sync, expf, fmaxf.

#ifndef EDITGEN_EDITED_CROSS_ATTENTION_BLOCK_CUH
#define EDITGEN_EDITED_CROSS_ATTENTION_BLOCK_CUH

#include "editgen_kernels.h"

#include <cfloat>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kThreads = 128;  // 4 warps per (row, head)
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// The additive mask of a padded token, as transformers' eager attention: finfo(float32).min.
// Added to a score of magnitude far below FLT_MAX's ulp (2^104) it stays -FLT_MAX, never -inf,
// so a row with all text masked has equal scores and a uniform softmax instead of NaN.
constexpr float kMaskBias = -FLT_MAX;

// Shared memory of a block, in floats: q [D], p_own, p_src and the edited map [T] each.
constexpr int64_t shared_floats(int64_t tokens, int64_t head_dim) { return head_dim + 3 * tokens; }

__device__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(kFullMask, x, offset);
    return x;
}

__device__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
    return x;
}

// Block-wide sum or max; every thread gets the result. scratch: kWarps floats, reusable
// as soon as this returns (the last barrier guards it).
template <bool kMax>
__device__ float block_reduce(float x, float *scratch) {
    x = kMax ? warp_max(x) : warp_sum(x);
    if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
    __syncthreads();
    float result = scratch[0];
    for (int w = 1; w < kWarps; ++w) result = kMax ? fmaxf(result, scratch[w]) : result + scratch[w];
    __syncthreads();
    return result;
}

// p[t] = softmax_t(scale * q[row, head] . k[row, head, t] + (1 - text_mask[row, t]) * kMaskBias).
// Called by the whole block with block-uniform arguments. q_sh: [D] and p: [T] in shared
// memory; p is complete and visible to every thread on return.
__device__ void own_softmax(const EditgenCrossArgs &a, int64_t row, int64_t head, float *q_sh, float *p,
                            float *scratch) {
    const int64_t T = a.tokens, D = a.head_dim;
    const int64_t rh = row * a.heads + head;
    const float *q = a.q + rh * D;  // [D]
    for (int64_t d = threadIdx.x; d < D; d += kThreads) q_sh[d] = q[d];
    __syncthreads();

    // One warp per token: its lanes read k[t, :] contiguously (coalesced) and the dot
    // product is reduced by shuffles. The loop bound is the same for every lane of a warp,
    // as the full-mask shuffles need.
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const float *k = a.k + rh * T * D;          // [T, D]
    const float *mask = a.text_mask + row * T;  // [T]
    for (int64_t t = warp; t < T; t += kWarps) {
        float dot = 0.f;
        for (int64_t d = lane; d < D; d += 32) dot += q_sh[d] * k[t * D + d];
        dot = warp_sum(dot);
        if (lane == 0) p[t] = a.scale * dot + (1.f - mask[t]) * kMaskBias;
    }
    __syncthreads();

    float m = -INFINITY;
    for (int64_t t = threadIdx.x; t < T; t += kThreads) m = fmaxf(m, p[t]);
    m = block_reduce<true>(m, scratch);
    float sum = 0.f;
    for (int64_t t = threadIdx.x; t < T; t += kThreads) {
        const float e = expf(p[t] - m);
        p[t] = e;
        sum += e;
    }
    sum = block_reduce<false>(sum, scratch);
    for (int64_t t = threadIdx.x; t < T; t += kThreads) p[t] = p[t] / sum;  // the thread that wrote p[t]
    __syncthreads();
}

// Block `block` = row * H + head. smem: shared_floats(T, D) floats; scratch: kWarps floats.
__device__ void edited_cross_attention_block(const EditgenCrossArgs &a, int64_t block, float *smem,
                                             float *scratch) {
    const int64_t R = a.rows, T = a.tokens, D = a.head_dim;
    float *q_sh = smem;         // [D]
    float *p_own = q_sh + D;    // [T]
    float *p_src = p_own + T;   // [T]
    float *p_edit = p_src + T;  // [T]
    const int64_t rh = block;
    const int64_t r = rh / a.heads, h = rh % a.heads;

    own_softmax(a, r, h, q_sh, p_own, scratch);

    // The source map: captured, the row's own (src_row = r: an unedited row), or the
    // source row's softmax recomputed here (cheaper than a second launch and a round trip
    // through device memory). Every branch depends on r only: block-uniform barriers.
    const float *src = p_src;
    if (a.use_captured[r] > 0.5f) {
        for (int64_t t = threadIdx.x; t < T; t += kThreads) p_src[t] = a.captured[rh * T + t];
        __syncthreads();
    } else {
        const int64_t s = a.src_row[r];
        if (s < 0 || s >= R) {
            // Device data the host could not check: visible as NaN, never an out-of-bounds read.
            for (int64_t d = threadIdx.x; d < D; d += kThreads) a.out[rh * D + d] = NAN;
            if (a.probs != nullptr)
                for (int64_t t = threadIdx.x; t < T; t += kThreads) a.probs[rh * T + t] = NAN;
            return;
        }
        if (s == r) {
            src = p_own;
        } else {
            own_softmax(a, s, h, q_sh, p_src, scratch);  // q_sh is free again: own_softmax's barriers
        }
    }

    // The edit, term for term as EagerCrossAttention (editgen/model/attention.py) writes it
    // (so identity inputs give p_own exactly: base = p_src, alpha 1, weight 1, and (1 - keep) * 0).
    // Thread t reads mapper[s, t] for s = 0..T-1: consecutive threads, consecutive addresses.
    const float *mapper = a.mapper + r * T * T;  // [T (source), T (target)]
    const float keep = a.keep[r];
    for (int64_t t = threadIdx.x; t < T; t += kThreads) {
        float base = 0.f;
        for (int64_t s = 0; s < T; ++s) base += src[s] * mapper[s * T + t];
        const float own = p_own[t];
        const float alpha = a.alpha[r * T + t], weight = a.weight[r * T + t], window = a.window[r * T + t];
        float inj = (alpha * base + (1.f - alpha) * own) * weight;
        inj = window * inj + (1.f - window) * own;
        const float p = own - (1.f - keep) * (own - inj);
        p_edit[t] = p;
        if (a.probs != nullptr) a.probs[rh * T + t] = p;
    }
    __syncthreads();

    // out[d] = sum_t p[t] v[t, d]: thread d walks the tokens; consecutive threads read
    // consecutive d of a token's row (coalesced).
    const float *v = a.v + rh * T * D;  // [T, D]
    for (int64_t d = threadIdx.x; d < D; d += kThreads) {
        float acc = 0.f;
        for (int64_t t = 0; t < T; ++t) acc += p_edit[t] * v[t * D + d];
        a.out[rh * D + d] = acc;
    }
}

}  // namespace

#endif  // EDITGEN_EDITED_CROSS_ATTENTION_BLOCK_CUH
