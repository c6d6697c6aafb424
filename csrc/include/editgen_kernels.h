/* editgen_kernels: EditGen's CUDA kernels behind a plain C API (C99 and C++, no Python).
 *
 * One call: the Prompt-to-Prompt edited cross-attention of one MusicGen decoder layer
 * for one query position per row, exactly the formula of editgen's decoder step
 * (editgen/model/attention.py, `EagerCrossAttention`; docs/design.md, "The edit"):
 *
 *   scores = scale * q k^T + (1 - text_mask) * (-FLT_MAX)        additive mask, fp32
 *   p_own  = softmax(scores)                                      [R, H, T]
 *   p_src  = use_captured[r] > 0.5 ? captured[r] : p_own[src_row[r]]
 *   base   = p_src @ mapper[r]              mapper[r, s, t]: [source token, target token]
 *   inj    = (alpha * base + (1 - alpha) * p_own) * weight
 *   inj    = window * inj + (1 - window) * p_own
 *   p      = p_own - (1 - keep[r]) * (p_own - inj)               keep: the layer's blend a_i
 *   out    = p @ v                                                [R, H, D]
 *
 * A row whose text is all masked gets a uniform softmax (as transformers' eager
 * attention). The source row's softmax is recomputed by the kernel from q, k and
 * text_mask of row src_row[r]; src_row[r] is not read where use_captured[r] > 0.5.
 *
 * Build and link: README.md, "CUDA C++ library". */
#ifndef EDITGEN_KERNELS_H
#define EDITGEN_KERNELS_H

#include <stdint.h>

/* The library is built with hidden symbols: only what is marked EDITGEN_API is exported. */
#if defined(__GNUC__)
#define EDITGEN_API __attribute__((visibility("default")))
#else
#define EDITGEN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Sizes the kernel supports. Each block keeps q [D] and three probability rows [T] in
 * shared memory: (512 + 3 * 1024) * 4 bytes = 14 KiB, well below the 48 KiB a block
 * gets without opting in. MusicGen has T = 64 text tokens, D = 64. */
#define EDITGEN_MAX_TOKENS 1024
#define EDITGEN_MAX_HEAD_DIM 512

/* Return codes. The message of the last call on the calling thread: editgen_last_error(). */
#define EDITGEN_OK 0
#define EDITGEN_ERR_INVALID_ARGUMENT 1 /* a NULL, misaligned or host pointer, a size < 1, a non-finite scale */
#define EDITGEN_ERR_UNSUPPORTED_SIZE 2 /* T or D over the limits above, R * H over the grid's limit */
#define EDITGEN_ERR_CUDA 3             /* no usable device, or the launch failed */

/* Arguments of one call. All arrays: device (or managed) memory of one GPU, row-major and
 * contiguous; float arrays 4-byte aligned, src_row 8-byte aligned. The kernel runs on the
 * GPU that holds q (the caller's current device does not matter). Sizes:
 * R = rows, H = heads, T = tokens, D = head_dim. Every pointer is required except probs. */
typedef struct EditgenCrossArgs {
    int64_t rows;     /* R */
    int64_t heads;    /* H */
    int64_t tokens;   /* T: text tokens (padded; text_mask says which are valid) */
    int64_t head_dim; /* D */
    float scale;      /* multiplies q . k: 1 / sqrt(D), or 1 when q is pre-scaled */

    const float *q;            /* [R, H, D] one query position per row */
    const float *k;            /* [R, H, T, D] */
    const float *v;            /* [R, H, T, D] */
    const float *text_mask;    /* [R, T] 1 valid, 0 padding */
    const int64_t *src_row;    /* [R] row whose own map is the source (itself: unedited); in [0, R) */
    const float *use_captured; /* [R] > 0.5: the source map is captured[r] */
    const float *captured;     /* [R, H, T] recorded source maps (captured mode) */
    const float *mapper;       /* [R, T, T] */
    const float *alpha;        /* [R, T] refine: 1 takes the token from the source */
    const float *weight;       /* [R, T] reweight c (1 unchanged) */
    const float *window;       /* [R, T] 1 edits the token at this step, 0 keeps p_own */
    const float *keep;         /* [R] the layer's cross blend a_i: 1 keeps p_own */

    float *out;   /* [R, H, D] written */
    float *probs; /* [R, H, T] the probabilities used (p), written; NULL: not written */
} EditgenCrossArgs;

/* Enqueues the edited cross-attention on `cuda_stream` (a cudaStream_t; NULL: the
 * default stream) and returns EDITGEN_OK, or an error code without launching anything.
 * Asynchronous like any launch: errors while the kernel runs surface at the next
 * synchronization. A src_row[r] outside [0, R) (with use_captured[r] <= 0.5) cannot be
 * checked before the launch (it is device data): that row's out and probs become NaN. */
EDITGEN_API int editgen_edited_cross_attention(const EditgenCrossArgs *args, void *cuda_stream);

/* What went wrong in the calling thread's last call ("" after a success). The string
 * stays valid until that thread's next call. */
EDITGEN_API const char *editgen_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* EDITGEN_KERNELS_H */
