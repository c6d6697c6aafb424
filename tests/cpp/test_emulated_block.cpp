// The kernel's device code (csrc/edited_cross_attention_block.cuh), compiled for the CPU
// and run under emulated_cuda.h (one fiber per CUDA thread, real barriers and shuffles),
// against the CPU reference: the same suite as the GPU test, at shapes the emulation runs
// in seconds, including T and D above the block size (strided loops). It runs where no
// GPU is; what it cannot check (races, timing, nvcc's code): emulated_cuda.h.

#include "emulated_cuda.h"  // first: __device__, threadIdx, __syncthreads, __shfl_xor_sync

#include "cross_attention_cases.h"
#include "edited_cross_attention_block.cuh"

#include <cmath>
#include <vector>

namespace {

cases::Result run_emulated(const cases::Inputs &in, bool with_probs) {
    const cases::Shape s = in.shape;
    cases::Result result{std::vector<float>(s.rows * s.heads * s.head_dim, NAN),
                         std::vector<float>(with_probs ? s.rows * s.heads * s.tokens : 0, NAN)};
    EditgenCrossArgs a{};
    a.rows = s.rows;
    a.heads = s.heads;
    a.tokens = s.tokens;
    a.head_dim = s.head_dim;
    a.scale = in.scale;
    a.q = in.q.data();
    a.k = in.k.data();
    a.v = in.v.data();
    a.text_mask = in.text_mask.data();
    a.src_row = in.src_row.data();
    a.use_captured = in.use_captured.data();
    a.captured = in.captured.data();
    a.mapper = in.mapper.data();
    a.alpha = in.alpha.data();
    a.weight = in.weight.data();
    a.window = in.window.data();
    a.keep = in.keep.data();
    a.out = result.out.data();
    a.probs = with_probs ? result.probs.data() : nullptr;
    std::vector<float> smem(shared_floats(s.tokens, s.head_dim)), scratch(kWarps);
    for (int64_t block = 0; block < s.rows * s.heads; ++block) {
        // Shared memory starts undefined on a GPU: NaN here, so a read before a write shows.
        std::fill(smem.begin(), smem.end(), NAN);
        std::fill(scratch.begin(), scratch.end(), NAN);
        emulation::run_block(kThreads, [&] { edited_cross_attention_block(a, block, smem.data(), scratch.data()); });
    }
    return result;
}

}  // namespace

int main() {
    using cases::kRows;
    // MusicGen's H 16, T 64, D 64 only on the GPU: here it would add seconds and no loop
    // that these shapes leave out.
    return cases::run_suite(run_emulated, {{kRows, 3, 5, 24}, {kRows, 3, 12, 24}},
                            {{kRows, 1, 150, 140}});  // T, D > 128 threads: every strided loop
}
