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
 */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EDITGEN_X86 1
#endif
#include <pthread.h>

#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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

/* absmax / 127 quantization of x[0..D) into q[d * stride], its scale into *scale. */
template <int D>
static void quantize_row(const float *x, int8_t *q, int stride, float *scale) {
  float m = 0.0f;
  for (int d = 0; d < D; d++) m = fmaxf(m, fabsf(x[d]));
  const float inv = m > 0.0f ? 127.0f / m : 0.0f;
  for (int d = 0; d < D; d++) q[(size_t)d * stride] = (int8_t)nearbyintf(x[d] * inv);
  *scale = m / 127.0f;
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

/* The kernel's worker threads. Not OpenMP: libgomp is one per process (torch ships one
 * under the same soname), and whoever loads it first sets its wait policy; with torch's
 * default, idle OpenMP threads spun between calls on the cores onnxruntime needed (a 6 s
 * edit took 19.7 s instead of 12.7 s). These workers block on a condition variable. */
class Workers {
 public:
  /* fn(index, count) on `count` threads, index 0 on the caller; returns when all are done. */
  void run(int count, const std::function<void(int, int)> &fn) {
    if (count <= 1) {
      fn(0, 1);
      return;
    }
    std::lock_guard<std::mutex> one_call(call_);  /* calls from two threads take turns */
    {
      std::lock_guard<std::mutex> lock(m_);
      while ((int)threads_.size() < count - 1) {
        const int index = (int)threads_.size() + 1;
        threads_.emplace_back([this, index] { loop(index); });
      }
      job_ = &fn;
      count_ = count;
      pending_ = count - 1;
      generation_++;
    }
    work_.notify_all();
    fn(0, count);
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int index) {
    long seen = 0;
    for (;;) {
      const std::function<void(int, int)> *fn;
      int count;
      {
        std::unique_lock<std::mutex> lock(m_);
        work_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        fn = job_;
        count = count_;
      }
      if (index >= count) continue;  /* a smaller call than the pool */
      (*fn)(index, count);
      std::lock_guard<std::mutex> lock(m_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex call_, m_;
  std::condition_variable work_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)> *job_ = nullptr;
  int count_ = 0, pending_ = 0;
  long generation_ = 0;
  bool stop_ = false;
};

/* Never destroyed: a worker may still be blocked in it when the process exits (the
 * server's scheduler is a daemon thread). A forked child has none of the parent's threads,
 * so it starts a new pool. */
static Workers *workers = new Workers;
static const int fork_handler = pthread_atfork(nullptr, nullptr, [] { workers = new Workers; });

/* K/V bytes below which one thread does the whole call: waking a second thread (a futex
 * round trip, tens of microseconds) costs more than reading this much. */
static const size_t SMALL_CALL_BYTES = 1u << 20;

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
        f32x16 acc = {};
        for (int d = 0; d < D; d++) acc += qv[d] * load_i8(k + d * BLOCK);
        store_f32(scratch + (size_t)rh * stride + blk * BLOCK, acc * load_f32(sb + (size_t)rh * BLOCK));
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
    float m = -INFINITY;
    for (int t = 0; t <= n; t++) m = fmaxf(m, p[t]);
    f32x16 sum16 = {};
    int t = 0;
    for (; t + BLOCK <= n + 1; t += BLOCK) {
      const f32x16 e = exp_nonpositive(load_f32(p + t) - m);
      store_f32(p + t, e);
      sum16 += e;
    }
    float sum = 0.0f;
    for (int i = 0; i < BLOCK; i++) sum += sum16[i];
    for (; t <= n; t++) {
      const f32x16 e = exp_nonpositive(f32x16{} + (p[t] - m));
      p[t] = e[0];
      sum += e[0];
    }
    const float inv = 1.0f / sum;
    for (t = 0; t <= n; t++) p[t] *= inv;
  }

  float weight(int rh, int t, bool inject) const {  /* p_t, self-injected */
    const float p = scratch[(size_t)rh * stride + t];
    const int r = rh / heads;
    if (!inject || self_b[r] == 0.0f) return p;
    const float ps = scratch[((size_t)src_row[r] * heads + rh % heads) * stride + t];
    return p - self_b[r] * (p - ps);
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
        float *o_mem = out + (size_t)rh * D;
        f32x16 o[D / 16];
        for (int c = 0; c < D / 16; c++) o[c] = load_f32(o_mem + 16 * c);
        const int count = n - first < BLOCK ? n - first : BLOCK;
        for (int j = 0; j < count; j++) {
          const float w = weight(rh, first + j, inject) * vs[j];
          for (int c = 0; c < D / 16; c++) o[c] += w * load_i8(v + j * D + 16 * c);
        }
        for (int c = 0; c < D / 16; c++) store_f32(o_mem + 16 * c, o[c]);
      }
    }
    for (int rh = lo; rh < hi; rh++) {
      const int n = position(rh);
      const float *kn = q(rh) + hidden, *vn = kn + hidden;
      const float wn = weight(rh, n, inject);
      float *o = out + (size_t)rh * D;
      for (int c = 0; c < D / 16; c++) store_f32(o + 16 * c, load_f32(o + 16 * c) + wn * load_f32(vn + 16 * c));
      if (!write[rh / heads]) continue;
      const size_t at = ((size_t)(n / BLOCK) * block_items() + rh) * BLOCK, j = n % BLOCK;
      quantize_row<D>(kn, k8 + at * D + j, BLOCK, kscale + at + j);
      quantize_row<D>(vn, v8 + (at + j) * D, 1, vscale + at + j);
    }
  }
};

template <int D>
static void attention(int rows, int slots, int heads, int positions, const int64_t *row_position,
                      const uint8_t *write, const float *qkv, const int64_t *src_row, const float *self_b,
                      int8_t *k8, float *kscale, int8_t *v8, float *vscale, float *scratch, float *out, int threads) {
  const Attention<D> a{rows, slots, heads, heads * D, row_position, write, qkv, src_row, self_b,
                       k8, v8, kscale, vscale, scratch, out, positions + BLOCK};
  bool inject = false; /* some row mixes in another row's probabilities */
  size_t bytes = 0;
  int longest = 0;
  for (int r = 0; r < rows; r++) {
    inject |= self_b[r] != 0.0f && src_row[r] != r;
    bytes += (size_t)row_position[r] * heads * D * 2;
    longest = row_position[r] > longest ? (int)row_position[r] : longest;
  }
  const int blocks = (longest + BLOCK - 1) / BLOCK;
  const int items = rows * heads;
  const int team = bytes < SMALL_CALL_BYTES ? 1 : threads;
  /* Each thread takes a contiguous share of the (row, head) items; with self-injection,
   * every item's probabilities are ready before any output uses its source's. */
  auto phase = [&](bool probabilities, bool outputs) {
    workers->run(team, [&](int me, int size) {
      const unsigned int csr = flush_denormals();
      const int lo = (int)((long)items * me / size), hi = (int)((long)items * (me + 1) / size);
      if (probabilities) a.probabilities(lo, hi, blocks);
      if (outputs) a.outputs(lo, hi, blocks, inject);
      restore_denormals(csr);
    });
  };
  if (inject) {
    phase(true, false);
    phase(false, true);
  } else {
    phase(true, true);
  }
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
