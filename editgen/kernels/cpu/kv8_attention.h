/* Decode self-attention over an int8 K/V cache, one layer: the int8 step runs it
 * (int8_step.cc; docs/design.md, "The int8 step").
 *
 * Per (row, head), n = the row's position (cached positions):
 *   s_t  = kscale_t * (q . k8_t)                 t < n   (q is pre-scaled by 1/sqrt(head_dim))
 *   s_n  = q . k_new                             this position, fp32
 *   p    = softmax(s_0 .. s_n)
 *   p    = p - b * (p - p_src)                   self-injection (b = 0: p unchanged)
 *   out  = sum_t p_t * vscale_t * v8_t + p_n * v_new
 * then k_new, v_new are quantized (absmax / 127 per row and head, round to nearest even)
 * and written at position n of rows with write[r] set.
 *
 * Layout (one layer), in blocks of 16 positions, block-major so that one step reads one
 * sequential sweep (a (row, head) alone would be a short stream per block: on this VM
 * short streams ran at 2-5 GB/s, the sweep near the memory's speed):
 *   k8      [positions / 16, slots, heads, head_dim, 16]  transposed in a block: the scores
 *                                                          of 16 positions are one vector FMA
 *                                                          per head channel
 *   v8      [positions / 16, slots, heads, 16, head_dim]
 *   kscale, vscale [positions / 16, slots, heads, 16]
 * Rows are slots 0..rows-1.
 *
 * Every (row, head) is computed in a fixed order (positions ascending, channels
 * ascending) that does not depend on the number of rows, the other rows, `positions`,
 * `slots` or the threads: a row's result does not depend on what shares its step.
 * head_dim 16, 32, 64 or 128. Compiled with -march=native on the machine that runs it.
 * One thread's share of a call: Attention<D>::run_share.
 */
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "simd.h"
#include "workers.h"

#define BLOCK 16

/* absmax / 127 quantization of x[0..D) into q[d * stride], its scale into *scale. */
template <int D>
static void quantize_row(const float *x, int8_t *q, int stride, float *scale) {
  float m = 0.0f;
  for (int d = 0; d < D; d++) m = fmaxf(m, fabsf(x[d]));
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  for (int d = 0; d < D; d++) q[(size_t)d * stride] = (int8_t)nearbyintf(x[d] * inv);
  *scale = m / 127.0f;
}

template <int D>
struct Attention {
  int rows, slots, heads, hidden;
  const int64_t *row_position;
  const uint8_t *write;
  const float *qkv;
  const int64_t *src_row;
  const float *self_b;
  int8_t *k8, *v8;
  float *kscale, *vscale, *scratch, *out;
  int stride;  /* scratch floats per (row, head) */

  size_t block_items() const { return (size_t)slots * heads; }  /* (slot, head) pairs per block */
  int position(int rh) const { return (int)row_position[rh / heads]; }
  const float *q(int rh) const { return qkv + (size_t)(rh / heads) * 3 * hidden + (rh % heads) * D; }

  /* Scores of items [lo, hi) block by block, then each item's softmax into its scratch row. */
  void probabilities(int lo, int hi, int blocks) const {
    for (int blk = 0; blk < blocks; blk++) {
      const int8_t *kb = k8 + (size_t)blk * block_items() * D * BLOCK;
      const float *sb = kscale + (size_t)blk * block_items() * BLOCK;
      for (int rh = lo; rh < hi; rh++) {
        if (blk * BLOCK >= position(rh)) continue;
        const int8_t *k = kb + (size_t)rh * D * BLOCK;
        const float *qv = q(rh);
        f32x8 lo = {}, hi = {}; /* positions 0-7 and 8-15 of the block */
        for (int d = 0; d < D; d++) {
          lo += qv[d] * load_i8(k + d * BLOCK);
          hi += qv[d] * load_i8(k + d * BLOCK + 8);
        }
        float *s = scratch + (size_t)rh * stride + blk * BLOCK;
        store_f32(s, lo * load_f32(sb + (size_t)rh * BLOCK));
        store_f32(s + 8, hi * load_f32(sb + (size_t)rh * BLOCK + 8));
      }
    }
    for (int rh = lo; rh < hi; rh++) softmax(rh);
  }

  void softmax(int rh) const {
    const int n = position(rh);
    float *p = scratch + (size_t)rh * stride;
    const float *qv = q(rh), *kn = qv + hidden;
    float s_new = 0.0f;
    for (int d = 0; d < D; d++) s_new += qv[d] * kn[d];
    p[n] = s_new; /* overwrites the last block's tail past n */
    f32x8 m8 = splat(-INFINITY);
    int t = 0;
    for (; t + 8 <= n + 1; t += 8) m8 = vmax(m8, load_f32(p + t));
    float m = -INFINITY;
    for (int i = 0; i < 8; i++) m = fmaxf(m, m8[i]);
    for (; t <= n; t++) m = fmaxf(m, p[t]);
    f32x8 sum8 = {};
    for (t = 0; t + 8 <= n + 1; t += 8) {
      const f32x8 e = exp_nonpositive(load_f32(p + t) - m);
      store_f32(p + t, e);
      sum8 += e;
    }
    float sum = hsum(sum8);
    for (; t <= n; t++) {
      p[t] = exp_nonpositive(splat(p[t] - m))[0];
      sum += p[t];
    }
    const f32x8 inv = splat(1.0f / sum);
    for (t = 0; t + 8 <= n + 1; t += 8) store_f32(p + t, load_f32(p + t) * inv);
    for (; t <= n; t++) p[t] *= inv[0];
  }

  /* Item rh's probabilities, and its source's where it is self-injected (else null). */
  const float *probs(int rh) const { return scratch + (size_t)rh * stride; }
  const float *source_probs(int rh, bool inject) const {
    const int r = rh / heads;
    if (!inject || self_b[r] == 0.0f) return nullptr;
    return scratch + ((size_t)src_row[r] * heads + rh % heads) * stride;
  }

  /* p_t, self-injected: p - b (p - p_src) */
  static inline float weight(const float *p, const float *ps, float b, int t) {
    return ps ? p[t] - b * (p[t] - ps[t]) : p[t];
  }

  /* Outputs of items [lo, hi): V block by block, then this position's value; then the new
   * K/V of rows with write set (position n: no item reads it in this call). */
  void outputs(int lo, int hi, int blocks, bool inject) const {
    for (int rh = lo; rh < hi; rh++) memset(out + (size_t)rh * D, 0, D * sizeof(float));
    for (int blk = 0; blk < blocks; blk++) {
      const int8_t *vb = v8 + (size_t)blk * block_items() * BLOCK * D;
      const float *sb = vscale + (size_t)blk * block_items() * BLOCK;
      for (int rh = lo; rh < hi; rh++) {
        const int n = position(rh), first = blk * BLOCK;
        if (first >= n) continue;
        const int8_t *v = vb + (size_t)rh * BLOCK * D;
        const float *vs = sb + (size_t)rh * BLOCK;
        const float *p = probs(rh), *ps = source_probs(rh, inject), b = self_b[rh / heads];
        float *o_mem = out + (size_t)rh * D;
        f32x8 o[D / 8];
        for (int c = 0; c < D / 8; c++) o[c] = load_f32(o_mem + 8 * c);
        const int count = n - first < BLOCK ? n - first : BLOCK;
        for (int j = 0; j < count; j++) {
          const float w = weight(p, ps, b, first + j) * vs[j];
          for (int c = 0; c < D / 8; c++) o[c] += w * load_i8(v + j * D + 8 * c);
        }
        for (int c = 0; c < D / 8; c++) store_f32(o_mem + 8 * c, o[c]);
      }
    }
    for (int rh = lo; rh < hi; rh++) {
      const int n = position(rh);
      const float *kn = q(rh) + hidden, *vn = kn + hidden;
      const float wn = weight(probs(rh), source_probs(rh, inject), self_b[rh / heads], n);
      float *o = out + (size_t)rh * D;
      for (int c = 0; c < D / 8; c++) store_f32(o + 8 * c, load_f32(o + 8 * c) + wn * load_f32(vn + 8 * c));
      if (!write[rh / heads]) continue;
      const size_t at = ((size_t)(n / BLOCK) * block_items() + rh) * BLOCK, j = n % BLOCK;
      quantize_row<D>(kn, k8 + at * D + j, BLOCK, kscale + at + j);
      quantize_row<D>(vn, v8 + (at + j) * D, 1, vscale + at + j);
    }
  }

  /* Thread `me` of `size`'s share of the (row, head) items of `blocks` blocks of 16
   * positions. With self-injection every item's probabilities must be ready before any
   * output reads its source's: the threads meet at `barrier` in between. */
  void run_share(int me, int size, int blocks, bool inject, Barrier &barrier) const {
    long lo, hi;
    share((long)rows * heads, me, size, &lo, &hi);
    probabilities((int)lo, (int)hi, blocks);
    if (inject) barrier.wait();
    outputs((int)lo, (int)hi, blocks, inject);
  }

  /* Whether some row mixes in another row's probabilities, and the blocks the longest row reads. */
  bool injects() const {
    for (int r = 0; r < rows; r++)
      if (self_b[r] != 0.0f && src_row[r] != r) return true;
    return false;
  }

  int blocks() const {
    int longest = 0;
    for (int r = 0; r < rows; r++) longest = row_position[r] > longest ? (int)row_position[r] : longest;
    return (longest + BLOCK - 1) / BLOCK;
  }
};
