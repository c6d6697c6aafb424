/* The whole MusicGen decoder step on the CPU, int8 weights, in one call: the CPU engine's
 * default path (editgen/engine/backends/int8_step_backend.py; docs/design.md, "The int8
 * step"). It computes what DecoderStep computes (editgen/model/step_module.py), with the
 * int8 weight matmuls of int8_matmul.h and the int8 K/V self-attention of kv8_attention.h:
 *
 *   x = sum_k embed[k][codes[r, k]] + positions[position]
 *   per layer:  x += out(self_attention(qkv(LN(x))))        q pre-scaled, self-injection
 *               x += cross_out(edited_cross_attention(cross_q(LN(x))))
 *               x += fc2(gelu(fc1(LN(x))))
 *   logits = lm_head(LN(x))
 *
 * Every weight matmul quantizes its input per row (int8_matmul.h). The cross-attention
 * and its edit are the step's formula (docs/design.md, "The edit"): per (row, head)
 *   p_own = softmax(q . K_t, t a real text token; NEG elsewhere, as the graph's mask)
 *   p_src = captured[layer, r] if use_captured[r] else p_own[src_row[r]]
 *   inj   = (alpha * (p_src @ mapper[r]) + (1 - alpha) * p_own) * weight
 *   inj   = window * inj + (1 - window) * p_own
 *   p     = p_own - (1 - blend[r, layer]) * (p_own - inj)
 *   out   = sum over real tokens t of p_t V_t
 * The cross K/V of masked tokens are zeros (the cross K/V graph zeroes them), so the
 * attention reads only the real tokens' K/V; a row with blend 1 keeps p_own exactly.
 *
 * One call runs the step on `threads` threads (workers.h) that meet at a barrier between
 * phases: weight matmuls split their 32-column blocks, row-wise work (layer norms,
 * quantization) splits rows, attention splits (row, head) items. Every value of a row is
 * computed by one fixed sequence of operations whatever the split, so a row's results do
 * not depend on the other rows, the pool's size or the threads.
 */
#include <chrono>

#include "int8_matmul.h"
#include "kv8_attention.h"

struct Layer {
  const float *ln_self_g, *ln_self_b;
  Int8Matrix qkv, out;
  const float *ln_cross_g, *ln_cross_b;
  Int8Matrix cross_q, cross_out;
  const float *ln_ffn_g, *ln_ffn_b;
  Int8Matrix fc1, fc2;
};

struct Model {
  int layers, hidden, heads, head_dim, ffn, codebooks, vocab, text_tokens;
  float ln_eps;
  const float *embed;      /* [codebooks, vocab + 1, hidden] */
  const float *positions;  /* [max_positions, hidden] */
  const Layer *layer;      /* [layers] */
  const float *final_g, *final_b;
  Int8Matrix lm_head;      /* n = codebooks * vocab */
};

struct Step {
  int rows, slots, positions;  /* rows 0..rows-1 = slots 0..rows-1; pool capacity; pool positions (x16) */
  int threads;
  const int64_t *codes;        /* [rows, codebooks] */
  const int64_t *row_position; /* [rows] */
  const uint8_t *write;        /* [rows] rows whose new K/V is written at their position */
  const int64_t *text_mask;    /* [rows, T] */
  const int64_t *src_row;      /* [rows] */
  const float *mapper;         /* [rows, T, T] */
  const float *alpha, *weight, *window; /* [rows, T] */
  const float *blend;          /* [rows, layers] */
  const float *use_captured;   /* [rows] */
  const float *captured;       /* [layers, rows, heads, T] */
  const float *self_blend;     /* [rows, layers] */
  const float *self_window;    /* [rows] */
  int8_t *k8, *v8;             /* [layers, positions / 16, slots, heads, ...] (kv8_attention.h) */
  float *kscale, *vscale;
  const float *cross_k, *cross_v; /* [layers, slots, heads, T, head_dim] */
  float *logits;               /* [rows, codebooks * vocab] */
  float *maps;                 /* [layers, rows, heads, T] */
  void *workspace;             /* editgen_int8_step_workspace(...) bytes, 64-byte aligned */
  double *profile;             /* NULL, or seconds per part (PARTS) added by this call */
};

/* Parts of the step timed into Step::profile (thread 0's wall clock, its waits at the
 * following barrier included). */
enum Part { WEIGHTS, NORMS, SELF_ATTENTION, CROSS_ATTENTION, EMBED, PARTS };

static const float NEG = -3.4028234663852886e38f; /* the graph's additive mask (finfo(float32).min) */

static size_t round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

/* The workspace, carved from one buffer. */
struct Workspace {
  float *x;      /* [rows, hidden] the residual stream */
  float *h;      /* [rows, max(hidden, ffn)] a layer norm's output before quantization */
  float *act;    /* [rows, max(3 hidden, ffn)] a weight matmul's output */
  float *attn;   /* [rows, hidden] an attention's output */
  uint8_t *q;    /* [rows, q_stride] quantized activations */
  float *qs;     /* [rows] their scales */
  float *self_b; /* [layers, rows] self-injection weight b of each row and layer */
  float *p_own;  /* [rows, heads, T] cross-attention probabilities before the edit */
  float *scratch; /* [rows * heads * (positions + 16)] the self-attention's */
  size_t q_stride, h_stride;

  static size_t carve(const Model &m, int rows, int positions, char *base, Workspace *w) {
    const size_t wide = (size_t)(m.ffn > m.hidden ? m.ffn : m.hidden);
    const size_t act = (size_t)(m.ffn > 3 * m.hidden ? m.ffn : 3 * m.hidden);
    const size_t q_stride = round64(wide + 4);
    const size_t sizes[] = {
        rows * (size_t)m.hidden * 4, rows * wide * 4, rows * act * 4, rows * (size_t)m.hidden * 4,
        rows * q_stride, (size_t)rows * 4, (size_t)m.layers * rows * 4, (size_t)rows * m.heads * m.text_tokens * 4,
        (size_t)rows * m.heads * (positions + BLOCK) * 4};
    size_t offset = 0;
    void *at[9];
    for (int i = 0; i < 9; i++) {
      at[i] = base ? base + offset : nullptr;
      offset += round64(sizes[i]);
    }
    if (w) {
      w->x = (float *)at[0], w->h = (float *)at[1], w->act = (float *)at[2], w->attn = (float *)at[3];
      w->q = (uint8_t *)at[4], w->qs = (float *)at[5], w->self_b = (float *)at[6], w->p_own = (float *)at[7];
      w->scratch = (float *)at[8], w->q_stride = q_stride, w->h_stride = wide;
    }
    return offset;
  }
};

/* p[0..n) = softmax of the scores in p (their max: top), in place. */
static void softmax_tail(float *p, int n, float top) {
  f32x8 sum8 = {};
  int t = 0;
  for (; t + 8 <= n; t += 8) {
    const f32x8 e = exp_nonpositive(load_f32(p + t) - top);
    store_f32(p + t, e);
    sum8 += e;
  }
  float sum = hsum(sum8);
  for (; t < n; t++) {
    p[t] = exp_nonpositive(splat(p[t] - top))[0];
    sum += p[t];
  }
  const float inv = 1.0f / sum;
  for (t = 0; t < n; t++) p[t] *= inv;
}

/* Layer norm of x [n] into h, then h quantized into q (int8_matmul.h); returns q's scale. */
static float norm_quantize(const float *x, int n, const float *g, const float *b, float eps, float *h, uint8_t *q) {
  f32x8 sum8 = {};
  for (int i = 0; i < n; i += 8) sum8 += load_f32(x + i);
  const float mean = hsum(sum8) / n;
  f32x8 var8 = {};
  for (int i = 0; i < n; i += 8) {
    const f32x8 d = load_f32(x + i) - mean;
    var8 += d * d;
  }
  const float inv = 1.0f / sqrtf(hsum(var8) / n + eps);
  for (int i = 0; i < n; i += 8)
    store_f32(h + i, (load_f32(x + i) - mean) * inv * load_f32(g + i) + load_f32(b + i));
  return quantize_activations(h, n, q);
}

template <int D>
struct StepRun {
  const Model &m;
  const Step &s;
  const Workspace &w;
  Barrier &barrier;
  int me, size;
  std::chrono::steady_clock::time_point mark;

  /* End of a phase: wait for the other threads, and time the phase on thread 0. */
  void done(Part part) {
    barrier.wait();
    if (s.profile && me == 0) {
      const auto now = std::chrono::steady_clock::now();
      s.profile[part] += std::chrono::duration<double>(now - mark).count();
      mark = now;
    }
  }

  void rows_share(long *lo, long *hi) const { share(s.rows, me, size, lo, hi); }

  void matmul(const Int8Matrix &mat, float *y, size_t y_stride, Epilogue e) {
    long lo, hi;
    share(mat.n_pad / 32, me, size, &lo, &hi);
    int8_matmul(mat, w.q, w.q_stride, w.qs, s.rows, y, y_stride, e, lo, hi);
    done(WEIGHTS);
  }

  void norm(const float *g, const float *b) {
    long lo, hi;
    rows_share(&lo, &hi);
    for (long r = lo; r < hi; r++)
      w.qs[r] = norm_quantize(w.x + r * m.hidden, m.hidden, g, b, m.ln_eps, w.h + r * w.h_stride,
                              w.q + r * w.q_stride);
    done(NORMS);
  }

  void quantize(const float *a, int n, size_t stride) {
    long lo, hi;
    rows_share(&lo, &hi);
    for (long r = lo; r < hi; r++) w.qs[r] = quantize_activations(a + r * stride, n, w.q + r * w.q_stride);
    done(NORMS);
  }

  void embed() {
    long lo, hi;
    rows_share(&lo, &hi);
    const int H = m.hidden;
    for (long r = lo; r < hi; r++) {
      float *x = w.x + r * H;
      for (int k = 0; k < m.codebooks; k++) {
        const float *e = m.embed + ((size_t)k * (m.vocab + 1) + s.codes[r * m.codebooks + k]) * H;
        for (int i = 0; i < H; i++) x[i] = k == 0 ? e[i] : x[i] + e[i];
      }
      const float *p = m.positions + (size_t)s.row_position[r] * H;
      for (int i = 0; i < H; i++) x[i] += p[i];
    }
    if (me == 0)
      for (int i = 0; i < m.layers; i++)
        for (int r = 0; r < s.rows; r++)
          w.self_b[(size_t)i * s.rows + r] = s.self_blend[(size_t)r * m.layers + i] * s.self_window[r];
    done(EMBED);
  }

  void self_attention(int i) {
    const size_t per_layer = (size_t)(s.positions / BLOCK) * s.slots * m.heads * BLOCK;
    const Attention<D> a{s.rows, s.slots, m.heads, m.hidden, s.row_position, s.write, w.act, s.src_row,
                         w.self_b + (size_t)i * s.rows, s.k8 + per_layer * D * i, s.v8 + per_layer * D * i,
                         s.kscale + per_layer * i, s.vscale + per_layer * i, w.scratch, w.attn,
                         s.positions + BLOCK};
    a.run_share(me, size, a.blocks(), a.injects(), barrier);
    done(SELF_ATTENTION);
  }

  /* p_own of items [lo, hi) (row, head) of layer i. */
  void cross_probabilities(int i) {
    const int T = m.text_tokens, H = m.heads;
    long lo, hi;
    share((long)s.rows * H, me, size, &lo, &hi);
    for (long rh = lo; rh < hi; rh++) {
      const long r = rh / H, h = rh % H;
      const float *q = w.act + r * m.hidden + h * D;
      const float *k = s.cross_k + (((size_t)i * s.slots + r) * H + h) * T * D;
      const int64_t *mask = s.text_mask + r * T;
      float *p = w.p_own + rh * T;
      float top = NEG;
      for (int t = 0; t < T; t++) {
        float score = NEG;
        if (mask[t]) {
          f32x8 acc = {};
          for (int d = 0; d < D; d += 8) acc += load_f32(q + d) * load_f32(k + (size_t)t * D + d);
          score = hsum(acc);
        }
        p[t] = score;
        top = fmaxf(top, score);
      }
      softmax_tail(p, T, top);
    }
    done(CROSS_ATTENTION);
  }

  /* The edit and P @ V of items [lo, hi) of layer i; the maps. */
  void cross_outputs(int i) {
    const int T = m.text_tokens, H = m.heads;
    long lo, hi;
    share((long)s.rows * H, me, size, &lo, &hi);
    for (long rh = lo; rh < hi; rh++) {
      const long r = rh / H, h = rh % H;
      const float *own = w.p_own + rh * T;
      float *map = s.maps + (((size_t)i * s.rows + r) * H + h) * T;
      const float keep = 1.0f - s.blend[r * m.layers + i];
      if (keep == 0.0f) {
        memcpy(map, own, T * sizeof(float));
      } else {
        const float *src = s.use_captured[r] > 0.5f ? s.captured + (((size_t)i * s.rows + r) * H + h) * T
                                                    : w.p_own + (s.src_row[r] * H + h) * T;
        const float *mapper = s.mapper + (size_t)r * T * T;
        const float *alpha = s.alpha + r * T, *weight = s.weight + r * T, *window = s.window + r * T;
        int j = 0;
        for (; j + 8 <= T; j += 8) {  /* 8 columns at once; each column sums t ascending */
          f32x8 base = {};
          for (int t = 0; t < T; t++) base += src[t] * load_f32(mapper + (size_t)t * T + j);
          const f32x8 a = load_f32(alpha + j), pj = load_f32(own + j), win = load_f32(window + j);
          f32x8 inj = (a * base + (1.0f - a) * pj) * load_f32(weight + j);
          inj = win * inj + (1.0f - win) * pj;
          store_f32(map + j, pj - keep * (pj - inj));
        }
        for (; j < T; j++) {
          float base = 0.0f;
          for (int t = 0; t < T; t++) base += src[t] * mapper[(size_t)t * T + j];
          float inj = (alpha[j] * base + (1.0f - alpha[j]) * own[j]) * weight[j];
          inj = window[j] * inj + (1.0f - window[j]) * own[j];
          map[j] = own[j] - keep * (own[j] - inj);
        }
      }
      const float *v = s.cross_v + (((size_t)i * s.slots + r) * H + h) * T * D;
      const int64_t *mask = s.text_mask + r * T;
      f32x8 o[D / 8];
      for (int c = 0; c < D / 8; c++) o[c] = f32x8{};
      for (int t = 0; t < T; t++) {
        if (!mask[t]) continue;
        const float pt = map[t];
        for (int c = 0; c < D / 8; c++) o[c] += pt * load_f32(v + (size_t)t * D + 8 * c);
      }
      for (int c = 0; c < D / 8; c++) store_f32(w.attn + r * m.hidden + h * D + 8 * c, o[c]);
    }
    done(CROSS_ATTENTION);
  }

  void run() {
    const unsigned int csr = flush_denormals();
    if (s.profile && me == 0) mark = std::chrono::steady_clock::now();
    const int H = m.hidden;
    embed();
    for (int i = 0; i < m.layers; i++) {
      const Layer &l = m.layer[i];
      norm(l.ln_self_g, l.ln_self_b);
      matmul(l.qkv, w.act, 3 * H, STORE);
      self_attention(i);
      quantize(w.attn, H, H);
      matmul(l.out, w.x, H, ADD);
      norm(l.ln_cross_g, l.ln_cross_b);
      matmul(l.cross_q, w.act, H, STORE);
      cross_probabilities(i);
      cross_outputs(i);
      quantize(w.attn, H, H);
      matmul(l.cross_out, w.x, H, ADD);
      norm(l.ln_ffn_g, l.ln_ffn_b);
      matmul(l.fc1, w.act, m.ffn, GELU);
      quantize(w.act, m.ffn, m.ffn);
      matmul(l.fc2, w.x, H, ADD);
    }
    norm(m.final_g, m.final_b);
    matmul(m.lm_head, s.logits, (size_t)m.codebooks * m.vocab, STORE);
    restore_denormals(csr);
  }
};

/* Weight bytes below which one thread runs the whole step: its ~400 phases would spend
 * more in waking and meeting a second thread than they share (random:tiny's step). */
static const size_t SMALL_STEP_BYTES = 4u << 20;

static size_t weight_bytes(const Model &m) {
  size_t bytes = (size_t)m.lm_head.k_pad * m.lm_head.n_pad;
  for (int i = 0; i < m.layers; i++) {
    const Layer &l = m.layer[i];
    for (const Int8Matrix *x : {&l.qkv, &l.out, &l.cross_q, &l.cross_out, &l.fc1, &l.fc2}) bytes += (size_t)x->k_pad * x->n_pad;
  }
  return bytes;
}

template <int D>
static void step(const Model &m, const Step &s) {
  Workspace w;
  Workspace::carve(m, s.rows, s.positions, static_cast<char *>(s.workspace), &w);
  const int team = weight_bytes(m) < SMALL_STEP_BYTES ? 1 : s.threads;
  Barrier barrier(team);
  workers().run(team, [&](int me, int size) {
    StepRun<D>{m, s, w, barrier, me, size, {}}.run();
  });
}

extern "C" {

/* The ISA path the int8 matmuls were compiled for (int8_matmul.h). */
const char *editgen_cpu_isa() { return matmul_isa(); }

size_t editgen_int8_step_workspace(const Model *m, int rows, int positions) {
  return Workspace::carve(*m, rows, positions, nullptr, nullptr);
}

/* Returns 0; -1 for a head_dim without a specialization, -2 for a hidden size or FFN
 * that is not a multiple of 8, or a pool smaller than the rows. */
int editgen_int8_step(const Model *m, const Step *s) {
  if (m->hidden % 8 || m->ffn % 8 || s->rows > s->slots || s->positions % BLOCK) return -2;
  switch (m->head_dim) {
    case 16: step<16>(*m, *s); return 0;
    case 32: step<32>(*m, *s); return 0;
    case 64: step<64>(*m, *s); return 0;
    case 128: step<128>(*m, *s); return 0;
  }
  return -1;
}

/* y = x @ W for rows 0..rows-1 (x quantized per row as the step does), on `threads`
 * threads: the step's weight matmul alone, for tests and benchmarks. q: [rows, q_stride]
 * scratch, q_stride >= mat->k_pad; s: [rows] scratch. */
void editgen_int8_linear(const Int8Matrix *mat, const float *x, int rows, uint8_t *q, size_t q_stride, float *s,
                         float *y, int epilogue, int threads) {
  for (int r = 0; r < rows; r++) {
    memset(q + r * q_stride, 128, q_stride);
    s[r] = quantize_activations(x + (size_t)r * mat->k, mat->k, q + r * q_stride);
  }
  workers().run(threads, [&](int me, int size) {
    long lo, hi;
    share(mat->n_pad / 32, me, size, &lo, &hi);
    int8_matmul(*mat, q, q_stride, s, rows, y, mat->n, (Epilogue)epilogue, lo, hi);
  });
}

}
