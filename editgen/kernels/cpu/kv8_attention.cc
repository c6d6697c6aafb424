/* The int8 K/V self-attention of one layer as a library call, for its tests and
 * benchmarks (editgen.kernels.cpu_attention.kv8_attention); the int8 step runs Attention<D>
 * inside its own call. Formula and layout: kv8_attention.h. */
#include "kv8_attention.h"

/* K/V bytes below which one thread does the whole call: waking a second thread (a futex
 * round trip, tens of microseconds) costs more than reading this much. */
static const size_t SMALL_CALL_BYTES = 1u << 20;

template <int D>
static void attention(int rows, int slots, int heads, int positions, const int64_t *row_position,
                      const uint8_t *write, const float *qkv, const int64_t *src_row, const float *self_b,
                      int8_t *k8, float *kscale, int8_t *v8, float *vscale, float *scratch, float *out, int threads) {
  const Attention<D> a{rows, slots, heads, heads * D, row_position, write, qkv, src_row, self_b,
                       k8, v8, kscale, vscale, scratch, out, positions + BLOCK};
  size_t bytes = 0;
  for (int r = 0; r < rows; r++) bytes += (size_t)row_position[r] * heads * D * 2;
  const bool inject = a.injects();
  const int blocks = a.blocks();
  Barrier barrier(bytes < SMALL_CALL_BYTES ? 1 : threads);
  workers().run(bytes < SMALL_CALL_BYTES ? 1 : threads, [&](int me, int size) {
    const unsigned int csr = flush_denormals();
    a.run_share(me, size, blocks, inject, barrier);
    restore_denormals(csr);
  });
}

/* Returns 0, or -1 for a head_dim without a specialization. */
extern "C" int editgen_kv8_attention(int rows, int slots, int heads, int head_dim, int positions,
                                     const int64_t *row_position, const uint8_t *write, const float *qkv,
                                     const int64_t *src_row, const float *self_b, int8_t *k8, float *kscale,
                                     int8_t *v8, float *vscale, float *scratch, float *out, int threads) {
  if (rows > slots || positions % BLOCK) return -2;
  switch (head_dim) {
#define CASE(D)                                                                                                   \
  case D:                                                                                                         \
    attention<D>(rows, slots, heads, positions, row_position, write, qkv, src_row, self_b, k8, kscale, v8, vscale, \
                 scratch, out, threads);                                                                          \
    return 0;
    CASE(16) CASE(32) CASE(64) CASE(128)
#undef CASE
  }
  return -1;
}
