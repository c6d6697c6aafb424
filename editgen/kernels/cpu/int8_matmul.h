/* Int8 weight matmuls with activations quantized per row, as editgen/export/int8_rowwise.py
 * writes them in ONNX:
 *
 *   s[r]    = max(max_k |x[r, k]|, 1e-30) * (1 / 127)
 *   q[r, k] = round_half_even(x[r, k] / s[r]) + 128                      uint8
 *   y[r, n] = float(sum_k (q[r, k] - 128) * W[k, n]) * w_scale[n] * s[r]
 *
 * W int8 in [-63, 63] (7 bits, see int8_rowwise.py), one scale per output column. The
 * integer sum is exact whatever the order, and every float operation is per (row, column),
 * so a row's y does not depend on the other rows or on how columns are split between
 * threads.
 *
 * Packed layout (editgen/kernels/cpu_step.py packs it): [n_pad / 32][k_pad / 4][32][4],
 * k_pad a multiple of 4, n_pad of 32 (zeros in the padding): one block of 32 columns is
 * one sequential stream, and 4 consecutive k of 8 columns are one 32-byte vector, the
 * operand of a dot product of four u8 x s8 pairs per 32-bit lane:
 *   AVX-512 VNNI (Intel Ice Lake and later, AMD Zen 4) or AVX-VNNI: vpdpbusd on 256-bit
 *   vectors;
 *   AVX2 without VNNI (AMD Zen 3, older Intel): vpmaddubsw + vpmaddwd, the same sums (the
 *   7-bit weights keep vpmaddubsw's 16-bit pair sums from saturating: 2 * 255 * 63 < 32768);
 *   elsewhere: plain C++ over the same layout.
 * Each gives the same integers, so every ISA gives the same y up to the float epilogue's
 * contraction into FMA. 256-bit vectors everywhere: one code path for both x86 families,
 * run here on AVX2 (the VNNI forms differ only in dot4).
 */
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "simd.h"

struct Int8Matrix {
  const int8_t *w;           /* packed [n_pad / 32][k_pad / 4][32][4] */
  const int32_t *zero_sums;  /* [n_pad] 128 * sum_k W[k, n]: the activations' zero point */
  const float *scale;        /* [n_pad] per output column */
  int k, n, k_pad, n_pad;
};

enum Epilogue { STORE, ADD, GELU };

/* What the compiled ISA path is called (editgen_cpu_isa). */
static inline const char *matmul_isa() {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return "avx512-vnni (256-bit)";
#elif defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(__AVX2__)
  return "avx2";
#else
  return "portable";
#endif
}

/* Rows' quantization: x [k] -> q [k] (uint8), returns s. */
static inline float quantize_activations(const float *x, int k, uint8_t *q) {
  f32x8 m8 = {};
  int i = 0;
  for (; i + 8 <= k; i += 8) m8 = vmax(m8, vabs(load_f32(x + i)));
  float m = 0.0f;
  for (int l = 0; l < 8; l++) m = fmaxf(m, m8[l]);
  for (; i < k; i++) m = fmaxf(m, fabsf(x[i]));
  const float s = fmaxf(m, 1e-30f) * (1.0f / 127.0f);
  const f32x8 sv = splat(s);
  i = 0;
  for (; i + 8 <= k; i += 8) {
    const f32x8 v = load_f32(x + i) / sv;
#if defined(__AVX2__)  /* round half to even (the default rounding mode), + 128, to bytes */
    __m256 r;
    memcpy(&r, &v, sizeof r);
    const __m256i n = _mm256_add_epi32(_mm256_cvtps_epi32(r), _mm256_set1_epi32(128));
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), n);
    for (int l = 0; l < 8; l++) q[i + l] = (uint8_t)lanes[l];
#else
    for (int l = 0; l < 8; l++) q[i + l] = (uint8_t)((int)nearbyintf(v[l]) + 128);
#endif
  }
  for (; i < k; i++) q[i] = (uint8_t)((int)nearbyintf(x[i] / s) + 128);
  return s;
}

static inline f32x8 erf8(f32x8 x) {
  /* Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd in x. */
  const f32x8 a = vabs(x);
  const f32x8 t = 1.0f / (1.0f + 0.3275911f * a);
  f32x8 p = splat(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const f32x8 y = 1.0f - p * t * exp_nonpositive(-(a * a));
  return x < 0.0f ? -y : y;
}

static inline f32x8 gelu8(f32x8 y) { return 0.5f * y * (1.0f + erf8(y * 0.70710678118654752f)); }

/* y[r, n0 .. n0 + 7] from the 8 integer sums acc (one row, one 8-column group). */
static inline void finish8(const int32_t *acc, const Int8Matrix &m, int n0, float s, float *y, Epilogue e) {
  if (n0 >= m.n) return;
  const int count = m.n - n0 < 8 ? m.n - n0 : 8;
  alignas(32) float v[8];
  for (int l = 0; l < 8; l++) v[l] = (float)(acc[l] - m.zero_sums[n0 + l]) * m.scale[n0 + l] * s;
  if (e == GELU) store_f32(v, gelu8(load_f32(v)));
  for (int l = 0; l < count; l++) y[n0 + l] = e == ADD ? y[n0 + l] + v[l] : v[l];
}

#if defined(__AVX2__)
static inline __m256i dot4(__m256i acc, __m256i x, __m256i w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(acc, x, w);
#elif defined(__AVXVNNI__)
  return _mm256_dpbusd_avx_epi32(acc, x, w);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), _mm256_set1_epi16(1)));
#endif
}

/* finish8 on the sums in a register: the same operations, in 8 lanes. A full group is
 * loaded, scaled and stored as vectors; the matrix's last partial group goes through the
 * scalar form. */
static inline void finish8(__m256i acc, const Int8Matrix &m, int n0, float s, float *y, Epilogue e) {
  if (m.n - n0 < 8) {
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), acc);
    finish8(lanes, m, n0, s, y, e);
    return;
  }
  const __m256i zero = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(m.zero_sums + n0));
  const __m256 sums = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc, zero));
  __m256 v = _mm256_mul_ps(_mm256_mul_ps(sums, _mm256_loadu_ps(m.scale + n0)), _mm256_set1_ps(s));
  if (e == GELU) {
    f32x8 g;
    memcpy(&g, &v, sizeof g);
    g = gelu8(g);
    memcpy(&v, &g, sizeof v);
  }
  if (e == ADD) v = _mm256_add_ps(_mm256_loadu_ps(y + n0), v);
  _mm256_storeu_ps(y + n0, v);
}

#if !defined(__AVX512VNNI__) && !defined(__AVXVNNI__)
#define EDITGEN_AVX2_ASM 1
/* Two rows x 32 columns over all k groups on AVX2 without VNNI, written out: from the
 * intrinsics GCC keeps at most 6 of the 8 accumulators in registers (19 live vectors) and
 * stores or moves the rest at every group; here 13 registers: 8 accumulators, the two rows'
 * broadcast activations, two products and the ones. The same instructions as dot4. */
static inline void dot_2x32(const int8_t *w, const uint8_t *q0, const uint8_t *q1, long groups, __m256i acc[2][4]) {
  __m256i a00 = acc[0][0], a01 = acc[0][1], a02 = acc[0][2], a03 = acc[0][3];
  __m256i a10 = acc[1][0], a11 = acc[1][1], a12 = acc[1][2], a13 = acc[1][3];
  __m256i x0, x1, t0, t1;
  const __m256i ones = _mm256_set1_epi16(1);
#define EDITGEN_DOT_COLUMNS(offset, acc0, acc1)                 \
  "vpmaddubsw " #offset "(%[w]), %[x0], %[t0]\n\t"               \
  "vpmaddubsw " #offset "(%[w]), %[x1], %[t1]\n\t"               \
  "vpmaddwd %[ones], %[t0], %[t0]\n\t"                           \
  "vpmaddwd %[ones], %[t1], %[t1]\n\t"                           \
  "vpaddd %[t0], %[" #acc0 "], %[" #acc0 "]\n\t"                 \
  "vpaddd %[t1], %[" #acc1 "], %[" #acc1 "]\n\t"
  __asm__(
      "1:\n\t"
      "vpbroadcastd (%[q0]), %[x0]\n\t"
      "vpbroadcastd (%[q1]), %[x1]\n\t"
      EDITGEN_DOT_COLUMNS(0, a00, a10)
      EDITGEN_DOT_COLUMNS(32, a01, a11)
      EDITGEN_DOT_COLUMNS(64, a02, a12)
      EDITGEN_DOT_COLUMNS(96, a03, a13)
      "add $4, %[q0]\n\t"
      "add $4, %[q1]\n\t"
      "sub $-128, %[w]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      : [a00] "+x"(a00), [a01] "+x"(a01), [a02] "+x"(a02), [a03] "+x"(a03), [a10] "+x"(a10), [a11] "+x"(a11),
        [a12] "+x"(a12), [a13] "+x"(a13), [w] "+r"(w), [q0] "+r"(q0), [q1] "+r"(q1), [n] "+r"(groups),
        [x0] "=&x"(x0), [x1] "=&x"(x1), [t0] "=&x"(t0), [t1] "=&x"(t1)
      : [ones] "x"(ones)
      : "cc", "memory");
#undef EDITGEN_DOT_COLUMNS
  acc[0][0] = a00, acc[0][1] = a01, acc[0][2] = a02, acc[0][3] = a03;
  acc[1][0] = a10, acc[1][1] = a11, acc[1][2] = a12, acc[1][3] = a13;
}
#endif

/* RT rows x one block of 32 columns: 4 x RT accumulators of 8 lanes. The accumulators are
 * handed to the epilogue as registers: storing them to a local array for it made GCC keep
 * a memory copy of every accumulator inside the k loop (8 extra stores per 8 dot products;
 * the matmul ran ~25-45% slower, measured on AVX2). */
template <int RT>
static inline void block32(const Int8Matrix &m, const int8_t *wb, const uint8_t *q, size_t q_stride, const float *s,
                           float *y, size_t y_stride, int n0, Epilogue e) {
  __m256i acc[RT][4];
  for (int r = 0; r < RT; r++)
    for (int j = 0; j < 4; j++) acc[r][j] = _mm256_setzero_si256();
  const int groups = m.k_pad / 4;
#ifdef EDITGEN_AVX2_ASM
  if constexpr (RT == 2) {
    if (groups > 0)  /* the asm loop counts down to zero: it needs one group */
      dot_2x32(wb, q, q + q_stride, groups, reinterpret_cast<__m256i(*)[4]>(acc));
  } else
#endif
  for (int g = 0; g < groups; g++) {
    const int8_t *wg = wb + (size_t)g * 128;
    __m256i x[RT];
    for (int r = 0; r < RT; r++) {
      int32_t four;
      memcpy(&four, q + r * q_stride + 4 * g, 4);
      x[r] = _mm256_set1_epi32(four);
    }
    for (int j = 0; j < 4; j++) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(wg + 32 * j));
      for (int r = 0; r < RT; r++) acc[r][j] = dot4(acc[r][j], x[r], w);
    }
  }
  for (int r = 0; r < RT; r++)
    for (int j = 0; j < 4; j++) finish8(acc[r][j], m, n0 + 8 * j, s[r], y + r * y_stride, e);
}
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
#define ROWS_PER_TILE 3
#else
#define ROWS_PER_TILE 2 /* vpmaddubsw + vpmaddwd need two more registers than vpdpbusd */
#endif

#else
template <int RT>
static inline void block32(const Int8Matrix &m, const int8_t *wb, const uint8_t *q, size_t q_stride, const float *s,
                           float *y, size_t y_stride, int n0, Epilogue e) {
  for (int r = 0; r < RT; r++) {
    int32_t acc[32] = {};
    for (int g = 0; g < m.k_pad / 4; g++) {
      const int8_t *wg = wb + (size_t)g * 128;
      const uint8_t *x = q + r * q_stride + 4 * g;
      for (int c = 0; c < 32; c++)
        for (int i = 0; i < 4; i++) acc[c] += (int32_t)x[i] * wg[4 * c + i];
    }
    for (int j = 0; j < 4; j++) finish8(acc + 8 * j, m, n0 + 8 * j, s[r], y + r * y_stride, e);
  }
}
#define ROWS_PER_TILE 1
#endif

/* y[r, n] for rows 0..rows-1 and the 32-column blocks [b0, b1). q: [rows, q_stride]
 * uint8 (>= k_pad), s: [rows]; y: [rows, y_stride] float. */
static void int8_matmul(const Int8Matrix &m, const uint8_t *q, size_t q_stride, const float *s, int rows, float *y,
                        size_t y_stride, Epilogue e, long b0, long b1) {
  for (long b = b0; b < b1; b++) {
    const int8_t *wb = m.w + (size_t)b * 32 * m.k_pad;
    const int n0 = (int)(b * 32);
    int r = 0;
    for (; r + ROWS_PER_TILE <= rows; r += ROWS_PER_TILE)
      block32<ROWS_PER_TILE>(m, wb, q + r * q_stride, q_stride, s + r, y + r * y_stride, y_stride, n0, e);
    for (; r < rows; r++) block32<1>(m, wb, q + r * q_stride, q_stride, s + r, y + r * y_stride, y_stride, n0, e);
  }
}
