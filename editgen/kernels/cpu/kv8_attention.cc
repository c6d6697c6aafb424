/* Decode self-attention over an int8 K/V cache, for the segmented ONNX Runtime step
 * (editgen.kernels.cpu_attention builds it with the system's C++ compiler; docs/design.md, "int8 KV").
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
 * Layout (one layer): k8 [slots, heads, positions / 16, head_dim, 16]: blocks of 16 positions,
 * transposed inside a block, so the scores of 16 positions are one vector FMA per head
 * channel; v8 [slots, heads, positions, head_dim]; kscale, vscale [slots, heads, positions].
 * Rows are slots 0..rows-1.
 *
 * Every (row, head) is computed alone, in a fixed order that does not depend on the
 * number of rows, the other rows or `positions`: a row's result does not depend on what
 * shares its step. head_dim 16, 32, 64 or 128. Compiled with -march=native on the machine that runs it, so the
 * vector width is the CPU's.
 */
#include <immintrin.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define BLOCK 16

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

/* 16 int8 -> 16 floats. GCC scalarizes __builtin_convertvector from int8, so the
 * sign-extending loads are spelled out for the ISA this is compiled for. */
static inline f32x16 load_i8(const int8_t *p) {
  f32x16 v;
#if defined(__AVX512F__)
  const __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))));
  memcpy(&v, &x, sizeof v);
#elif defined(__AVX2__)
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p + 8))));
  memcpy(&v, &lo, sizeof lo);
  memcpy(reinterpret_cast<char *>(&v) + sizeof lo, &hi, sizeof hi);
#else
  for (int i = 0; i < 16; i++) v[i] = static_cast<float>(p[i]);
#endif
  return v;
}

static inline f32x16 load_f32(const float *p) {
  f32x16 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_f32(float *p, f32x16 v) { memcpy(p, &v, sizeof v); }

/* exp(x) for x <= 0 (scores minus their max): 2^k * e^r, |r| <= ln2/2, degree-6
 * polynomial (relative error < 2e-7); x below -87 gives 0. */
static inline f32x16 exp_nonpositive(f32x16 x) {
  const f32x16 floor_x = f32x16{} - 87.0f;
  const f32x16 lo = x < floor_x ? floor_x : x;
  /* k = round(lo * log2(e)): lo <= 0, so truncating k - 0.5 rounds to nearest */
  const i32x16 ki = __builtin_convertvector(lo * 1.44269504088896341f - 0.5f, i32x16);
  const f32x16 k = __builtin_convertvector(ki, f32x16);
  f32x16 r = lo - k * 0.693145751953125f;  /* ln2 in two parts: r is exact to ~1e-12 */
  r = r - k * 1.428606765330187045e-06f;
  f32x16 y = f32x16{} + 1.0f / 720;
  y = y * r + 1.0f / 120;
  y = y * r + 1.0f / 24;
  y = y * r + 1.0f / 6;
  y = y * r + 0.5f;
  y = y * r + 1.0f;
  y = y * r + 1.0f;
  const i32x16 bits = (ki + 127) << 23;  /* 2^k */
  f32x16 scale;
  memcpy(&scale, &bits, sizeof scale);
  return x < floor_x ? f32x16{} : y * scale;
}

template <int D>
static void quantize_row(const float *x, int8_t *q, int q_stride, float *scale) {
  float m = 0.0f;
  for (int d = 0; d < D; d++) m = fmaxf(m, fabsf(x[d]));
  float s = m / 127.0f;
  float inv = m > 0.0f ? 127.0f / m : 0.0f;
  for (int d = 0; d < D; d++) q[(size_t)d * q_stride] = (int8_t)nearbyintf(x[d] * inv);
  *scale = s;
}

/* Scores of one (row, head) into p[0..n] (unnormalized exp), returns their sum. */
template <int D>
static float scores(const float *q, const float *k_new, const int8_t *k8, const float *kscale, int n, float *p) {
  for (int blk = 0; blk * BLOCK < n; blk++) {
    const int8_t *kb = k8 + (size_t)blk * D * BLOCK;
    f32x16 acc = {};
    for (int d = 0; d < D; d++) acc += q[d] * load_i8(kb + d * BLOCK);
    store_f32(p + blk * BLOCK, acc * load_f32(kscale + blk * BLOCK));
  }
  float s_new = 0.0f;
  for (int d = 0; d < D; d++) s_new += q[d] * k_new[d];
  p[n] = s_new;  /* overwrites the block's tail past n */
  float m = -INFINITY;
  for (int t = 0; t <= n; t++) m = fmaxf(m, p[t]);
  f32x16 sum16 = {};
  int t = 0;
  for (; t + BLOCK <= n + 1; t += BLOCK) {
    f32x16 e = exp_nonpositive(load_f32(p + t) - m);
    store_f32(p + t, e);
    sum16 += e;
  }
  float sum = 0.0f;
  for (int i = 0; i < BLOCK; i++) sum += sum16[i];
  for (; t <= n; t++) {
    f32x16 e = exp_nonpositive(f32x16{} + (p[t] - m));
    p[t] = e[0];
    sum += e[0];
  }
  return sum;
}

template <int D>
static void attention(int rows, int heads, int positions, const int64_t *row_position, const uint8_t *write,
                      const float *qkv, const int64_t *src_row, const float *self_b, int8_t *k8, float *kscale,
                      int8_t *v8, float *vscale, float *scratch, float *out, int threads) {
  constexpr int HEAD_DIM = D;
  const int hidden = heads * HEAD_DIM;
  const size_t k_head = (size_t)positions * HEAD_DIM;  /* int8 per (slot, head), K and V alike */
  const int stride = positions + BLOCK;               /* scratch floats per (row, head) */
#pragma omp parallel num_threads(threads)
  {
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040); /* flush denormals (FTZ, DAZ): tiny probabilities would stall the FPU */
#pragma omp for schedule(static)
    for (int rh = 0; rh < rows * heads; rh++) {
      const int r = rh / heads, h = rh % heads;
      const float *q = qkv + (size_t)r * 3 * hidden + h * HEAD_DIM;
      const float *kn = q + hidden;
      float *p = scratch + (size_t)rh * stride;
      const int n = (int)row_position[r];
      float sum = scores<D>(q, kn, k8 + (size_t)rh * k_head, kscale + (size_t)rh * positions, n, p);
      const float inv = 1.0f / sum;
      for (int t = 0; t <= n; t++) p[t] *= inv;
    }
    /* implicit barrier: every row's probabilities are ready for self-injection */
#pragma omp for schedule(static)
    for (int rh = 0; rh < rows * heads; rh++) {
      const int r = rh / heads, h = rh % heads;
      const int n = (int)row_position[r];
      const float *q = qkv + (size_t)r * 3 * hidden + h * HEAD_DIM;
      const float *vn = q + 2 * hidden;
      float *p = scratch + (size_t)rh * stride;
      const float b = self_b[r];
      if (b != 0.0f) {
        const float *ps = scratch + ((size_t)src_row[r] * heads + h) * stride;
        for (int t = 0; t <= n; t++) p[t] = p[t] - b * (p[t] - ps[t]);
      }
      const int8_t *v = v8 + (size_t)rh * k_head;
      const float *vs = vscale + (size_t)rh * positions;
      f32x16 o[D / 16] = {};  /* unrolled by the compiler: D / 16 accumulators in registers */
      for (int t = 0; t < n; t++) {
        const float w = p[t] * vs[t];
        const int8_t *vt = v + (size_t)t * HEAD_DIM;
        for (int c = 0; c < D / 16; c++) o[c] += w * load_i8(vt + 16 * c);
      }
      const float wn = p[n];
      float *dst = out + (size_t)r * hidden + h * HEAD_DIM;
      for (int c = 0; c < D / 16; c++) store_f32(dst + 16 * c, o[c] + wn * load_f32(vn + 16 * c));
    }
    /* implicit barrier: p_src was read; now the new K/V go into the cache */
#pragma omp for schedule(static)
    for (int rh = 0; rh < rows * heads; rh++) {
      const int r = rh / heads;
      if (!write[r]) continue;
      const int h = rh % heads, n = (int)row_position[r];
      const float *kn = qkv + (size_t)r * 3 * hidden + hidden + h * HEAD_DIM;
      const float *vn = kn + hidden;
      int8_t *kb = k8 + (size_t)rh * k_head + (size_t)(n / BLOCK) * HEAD_DIM * BLOCK + n % BLOCK;
      quantize_row<D>(kn, kb, BLOCK, kscale + (size_t)rh * positions + n);
      quantize_row<D>(vn, v8 + (size_t)rh * k_head + (size_t)n * HEAD_DIM, 1, vscale + (size_t)rh * positions + n);
    }
    _mm_setcsr(csr);
  }
}

/* Returns 0, or -1 for a head_dim without a specialization. */
extern "C" int editgen_kv8_attention(int rows, int heads, int head_dim, int positions, const int64_t *row_position,
                                     const uint8_t *write, const float *qkv, const int64_t *src_row,
                                     const float *self_b, int8_t *k8, float *kscale, int8_t *v8, float *vscale,
                                     float *scratch, float *out, int threads) {
  switch (head_dim) {
#define CASE(D) \
  case D: attention<D>(rows, heads, positions, row_position, write, qkv, src_row, self_b, k8, kscale, v8, vscale, \
                       scratch, out, threads); return 0;
    CASE(16) CASE(32) CASE(64) CASE(128)
#undef CASE
  }
  return -1;
}
