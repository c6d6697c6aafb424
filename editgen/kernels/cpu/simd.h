/* Vector helpers shared by the CPU kernels (kv8_attention.h, int8_step.cc): 8-float
 * vectors as GCC vector types, compiled for the ISA of the machine that runs them
 * (-march=native), with a portable form where the ISA has nothing better. */
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EDITGEN_X86 1
#endif

#include <cmath>
#include <cstdint>
#include <cstring>

/* 8 floats: one 256-bit register on AVX/AVX2/AVX-512 (wider GCC vectors are split into
 * memory round trips on AVX2: the first kernel's 16-float accumulators ran at ~1/10 of a
 * plain read on AMD Zen 3). */
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

/* 8 int8 -> 8 floats. GCC scalarizes __builtin_convertvector from int8, so the
 * sign-extending load is spelled out for the ISA this is compiled for. */
static inline f32x8 load_i8(const int8_t *p) {
  f32x8 v;
#if defined(__AVX2__)
  const __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i *>(p))));
  memcpy(&v, &x, sizeof v);
#else
  for (int i = 0; i < 8; i++) v[i] = static_cast<float>(p[i]);
#endif
  return v;
}

static inline f32x8 load_f32(const float *p) {
  f32x8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void store_f32(float *p, f32x8 v) { memcpy(p, &v, sizeof v); }

static inline f32x8 splat(float x) { return f32x8{} + x; }

static inline float hsum(f32x8 v) { /* fixed order: lanes 0..7 */
  float s = 0.0f;
  for (int i = 0; i < 8; i++) s += v[i];
  return s;
}

static inline f32x8 vmax(f32x8 a, f32x8 b) { return a > b ? a : b; }
static inline f32x8 vabs(f32x8 a) { return a < 0.0f ? -a : a; }

/* exp(x) for x <= 0 (scores minus their max): 2^k * e^r, |r| <= ln2/2, degree-6
 * polynomial (relative error < 2e-7); x below -87 gives 0. */
static inline f32x8 exp_nonpositive(f32x8 x) {
  const f32x8 floor_x = splat(-87.0f);
  const f32x8 lo = x < floor_x ? floor_x : x;
  /* k = round(lo * log2(e)): lo <= 0, so truncating k - 0.5 rounds to nearest */
  const i32x8 ki = __builtin_convertvector(lo * 1.44269504088896341f - 0.5f, i32x8);
  const f32x8 k = __builtin_convertvector(ki, f32x8);
  f32x8 r = lo - k * 0.693145751953125f; /* ln2 in two parts: r is exact to ~1e-12 */
  r = r - k * 1.428606765330187045e-06f;
  f32x8 y = splat(1.0f / 720);
  y = y * r + 1.0f / 120;
  y = y * r + 1.0f / 24;
  y = y * r + 1.0f / 6;
  y = y * r + 0.5f;
  y = y * r + 1.0f;
  y = y * r + 1.0f;
  const i32x8 bits = (ki + 127) << 23; /* 2^k */
  f32x8 scale;
  memcpy(&scale, &bits, sizeof scale);
  return x < floor_x ? f32x8{} : y * scale;
}

/* Flush denormals (FTZ, DAZ) on this thread while it computes: tiny probabilities would
 * stall the FPU. Returns the state to restore. */
static inline unsigned int flush_denormals() {
#ifdef EDITGEN_X86
  const unsigned int csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);
  return csr;
#else
  return 0;
#endif
}

static inline void restore_denormals(unsigned int csr) {
#ifdef EDITGEN_X86
  _mm_setcsr(csr);
#else
  (void)csr;
#endif
}

static inline void cpu_relax() {
#ifdef EDITGEN_X86
  _mm_pause();
#endif
}
