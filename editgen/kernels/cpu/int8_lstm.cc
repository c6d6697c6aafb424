/* EnCodec's decoder LSTM with int8 weights (editgen/kernels/cpu_lstm.py; docs/design.md,
 * "The int8 step"): torch.nn.LSTM (gates i, f, g, o) over each row's frames, stacked
 * layers, plus EncodecLSTM's skip connection:
 *
 *   gates = W_ih x_t + W_hh h_{t-1} + (b_ih + b_hh)      both matmuls int8 (int8_matmul.h)
 *   c_t   = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),  h_t = sigmoid(o) tanh(c_t)
 *   y     = h (last layer) + x
 *
 * Why: the recurrence reads all of W_hh at every frame (16 MB per layer in fp32 for the
 * 32 kHz codec); int8 reads a quarter. Every matmul input row (one frame of one row) is
 * quantized on its own, so a row's output depends only on its own frames up to t: the same
 * whatever the other rows and however long the clip (a prefix decodes as the whole clip's
 * first frames, as the streaming server needs).
 *
 * Layout: x, y [rows, dim, frames] (the decoder's); rows = clips x channels.
 */
#include "int8_matmul.h"
#include "workers.h"

struct LstmLayer {
  Int8Matrix w_ih, w_hh; /* W^T: [dim, 4 dim] each */
  const float *bias;     /* [4 dim] b_ih + b_hh */
};

struct Lstm {
  int layers, dim;
  const LstmLayer *layer;
};

struct LstmWork {
  float *seq_in, *seq_out; /* [frames * rows, dim], row (t, r) = t * rows + r */
  float *gx;               /* [frames * rows, 4 dim] input gates of every frame */
  float *gh;               /* [rows, 4 dim] recurrent gates of one frame */
  float *c;                /* [rows, dim] */
  uint8_t *q;              /* [frames * rows, q_stride] */
  float *qs;               /* [frames * rows] */
  size_t q_stride;

  static size_t carve(const Lstm &m, int rows, int frames, char *base, LstmWork *w) {
    const size_t n = (size_t)frames * rows, d = m.dim, q_stride = (d + 4 + 63) / 64 * 64;
    const size_t sizes[] = {n * d * 4, n * d * 4, n * 4 * d * 4, rows * 4 * d * 4, rows * d * 4, n * q_stride, n * 4};
    size_t offset = 0;
    void *at[7];
    for (int i = 0; i < 7; i++) {
      at[i] = base ? base + offset : nullptr;
      offset += (sizes[i] + 63) / 64 * 64;
    }
    if (w) {
      w->seq_in = (float *)at[0], w->seq_out = (float *)at[1], w->gx = (float *)at[2], w->gh = (float *)at[3];
      w->c = (float *)at[4], w->q = (uint8_t *)at[5], w->qs = (float *)at[6], w->q_stride = q_stride;
    }
    return offset;
  }
};

static inline f32x8 sigmoid8(f32x8 x) { /* 1 / (1 + e^-x), from e^-|x| <= 1 */
  const f32x8 e = exp_nonpositive(-vabs(x));
  return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

static inline f32x8 tanh8(f32x8 x) { /* sign(x) (1 - e^-2|x|) / (1 + e^-2|x|) */
  const f32x8 e = exp_nonpositive(-2.0f * vabs(x));
  const f32x8 t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;
}

static void lstm(const Lstm &m, const float *x, float *y, int rows, int frames, const LstmWork &w, int me, int size,
                 Barrier &barrier) {
  const int d = m.dim;
  const long n = (long)frames * rows;
  long lo, hi;
  share(n, me, size, &lo, &hi); /* [frames, rows, dim] from the decoder's [rows, dim, frames] */
  for (long i = lo; i < hi; i++)
    for (int k = 0; k < d; k++) w.seq_in[i * d + k] = x[((size_t)(i % rows) * d + k) * frames + i / rows];
  barrier.wait();
  for (int l = 0; l < m.layers; l++) {
    const LstmLayer &layer = m.layer[l];
    const float *in = l % 2 == 0 ? w.seq_in : w.seq_out;
    float *out = l % 2 == 0 ? w.seq_out : w.seq_in;
    share(n, me, size, &lo, &hi);
    for (long i = lo; i < hi; i++) w.qs[i] = quantize_activations(in + i * d, d, w.q + i * w.q_stride);
    share((long)rows * d, me, size, &lo, &hi);
    for (long i = lo; i < hi; i++) w.c[i] = 0.0f;
    barrier.wait();
    share(layer.w_ih.n_pad / 32, me, size, &lo, &hi);
    int8_matmul(layer.w_ih, w.q, w.q_stride, w.qs, (int)n, w.gx, 4 * d, STORE, lo, hi);
    barrier.wait();
    for (int t = 0; t < frames; t++) {
      if (t > 0) { /* h_{t-1} of every row, quantized; h_{-1} = 0 adds nothing */
        share(rows, me, size, &lo, &hi);
        for (long r = lo; r < hi; r++) {
          const size_t i = (size_t)(t - 1) * rows + r;
          w.qs[r] = quantize_activations(out + i * d, d, w.q + r * w.q_stride);
        }
        barrier.wait();
        share(layer.w_hh.n_pad / 32, me, size, &lo, &hi);
        int8_matmul(layer.w_hh, w.q, w.q_stride, w.qs, rows, w.gh, 4 * d, STORE, lo, hi);
        barrier.wait();
      }
      share(d / 8, me, size, &lo, &hi); /* units, 8 at a time: each thread its own */
      for (int r = 0; r < rows; r++) {
        const float *gx = w.gx + ((size_t)t * rows + r) * 4 * d, *gh = w.gh + (size_t)r * 4 * d;
        float *c = w.c + (size_t)r * d, *h = out + ((size_t)t * rows + r) * d;
        for (long u = lo * 8; u < hi * 8; u += 8) {
          f32x8 g[4];
          for (int j = 0; j < 4; j++) {
            g[j] = load_f32(gx + j * d + u) + load_f32(layer.bias + j * d + u);
            if (t > 0) g[j] += load_f32(gh + j * d + u);
          }
          const f32x8 cell = sigmoid8(g[1]) * load_f32(c + u) + sigmoid8(g[0]) * tanh8(g[2]);
          store_f32(c + u, cell);
          store_f32(h + u, sigmoid8(g[3]) * tanh8(cell));
        }
      }
      barrier.wait();
    }
  }
  const float *last = m.layers % 2 == 0 ? w.seq_in : w.seq_out;
  share(n, me, size, &lo, &hi);
  for (long i = lo; i < hi; i++)
    for (int k = 0; k < d; k++) {
      const size_t at = ((size_t)(i % rows) * d + k) * frames + i / rows;
      y[at] = last[i * d + k] + x[at];
    }
}

extern "C" {

size_t editgen_int8_lstm_workspace(const Lstm *m, int rows, int frames) {
  return LstmWork::carve(*m, rows, frames, nullptr, nullptr);
}

/* y = LSTM(x) + x; returns 0, or -2 for a dim that is not a multiple of 8. */
int editgen_int8_lstm(const Lstm *m, const float *x, float *y, int rows, int frames, void *workspace, int threads) {
  if (m->dim % 8) return -2;
  LstmWork w;
  LstmWork::carve(*m, rows, frames, static_cast<char *>(workspace), &w);
  /* A small LSTM (random:tiny's codec) on one thread: its ~3 phases per frame would spend
   * more meeting a second thread than they share. */
  const int team = (size_t)m->layers * 8 * m->dim * m->dim < (4u << 20) ? 1 : threads;
  Barrier barrier(team);
  workers().run(team, [&](int me, int size) {
    const unsigned int csr = flush_denormals();
    lstm(*m, x, y, rows, frames, w, me, size, barrier);
    restore_denormals(csr);
  });
  return 0;
}
}
