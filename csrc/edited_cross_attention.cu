// editgen_edited_cross_attention: checks the arguments on the host, then launches one
// block per (row, head) of the block function in edited_cross_attention_block.cuh (the
// device code and why it is laid out so: there).

#include "editgen_kernels.h"
#include "edited_cross_attention_block.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace {

__global__ void __launch_bounds__(kThreads) edited_cross_attention_kernel(const EditgenCrossArgs a) {
    extern __shared__ float smem[];  // [D + 3 * T]
    __shared__ float scratch[kWarps];
    edited_cross_attention_block(a, blockIdx.x, smem, scratch);
}

thread_local std::string last_error;

int fail(int code, const std::string &message) {
    last_error = message;
    return code;
}

bool aligned(const void *pointer, std::uintptr_t alignment) {
    return reinterpret_cast<std::uintptr_t>(pointer) % alignment == 0;
}

// Host-side checks of everything that can be checked without touching device memory.
int validate(const EditgenCrossArgs &a) {
    const struct {
        const char *name;
        int64_t value;
    } sizes[] = {{"rows", a.rows}, {"heads", a.heads}, {"tokens", a.tokens}, {"head_dim", a.head_dim}};
    for (const auto &size : sizes)
        if (size.value < 1)
            return fail(EDITGEN_ERR_INVALID_ARGUMENT,
                        std::string(size.name) + " = " + std::to_string(size.value) + ": every size must be at least 1");
    if (a.tokens > EDITGEN_MAX_TOKENS)
        return fail(EDITGEN_ERR_UNSUPPORTED_SIZE,
                    "tokens = " + std::to_string(a.tokens) + " exceeds the kernel's limit EDITGEN_MAX_TOKENS = " +
                        std::to_string(EDITGEN_MAX_TOKENS) + " (a block keeps 3 rows of T probabilities in shared memory)");
    if (a.head_dim > EDITGEN_MAX_HEAD_DIM)
        return fail(EDITGEN_ERR_UNSUPPORTED_SIZE, "head_dim = " + std::to_string(a.head_dim) +
                                                      " exceeds the kernel's limit EDITGEN_MAX_HEAD_DIM = " +
                                                      std::to_string(EDITGEN_MAX_HEAD_DIM));
    // One block per (row, head): R * H must fit gridDim.x. Each factor is checked first so
    // that the product cannot overflow.
    const int64_t max_blocks = INT32_MAX;
    if (a.rows > max_blocks || a.heads > max_blocks || a.rows * a.heads > max_blocks)
        return fail(EDITGEN_ERR_UNSUPPORTED_SIZE, "rows * heads = " + std::to_string(a.rows) + " * " +
                                                      std::to_string(a.heads) + " exceeds 2^31 - 1 blocks");
    if (!std::isfinite(a.scale))
        return fail(EDITGEN_ERR_INVALID_ARGUMENT, "scale = " + std::to_string(a.scale) + ": must be finite");

    const struct {
        const char *name;
        const void *pointer;
        std::uintptr_t alignment;
        bool optional;
    } arrays[] = {
        {"q", a.q, 4, false},
        {"k", a.k, 4, false},
        {"v", a.v, 4, false},
        {"text_mask", a.text_mask, 4, false},
        {"src_row", a.src_row, 8, false},
        {"use_captured", a.use_captured, 4, false},
        {"captured", a.captured, 4, false},
        {"mapper", a.mapper, 4, false},
        {"alpha", a.alpha, 4, false},
        {"weight", a.weight, 4, false},
        {"window", a.window, 4, false},
        {"keep", a.keep, 4, false},
        {"out", a.out, 4, false},
        {"probs", a.probs, 4, true},
    };
    for (const auto &array : arrays) {
        if (array.pointer == nullptr && !array.optional)
            return fail(EDITGEN_ERR_INVALID_ARGUMENT, std::string(array.name) + " is NULL (only probs may be)");
        if (!aligned(array.pointer, array.alignment))
            return fail(EDITGEN_ERR_INVALID_ARGUMENT, std::string(array.name) + " is not " +
                                                          std::to_string(array.alignment) + "-byte aligned");
    }
    return EDITGEN_OK;
}

std::string cuda_error(const char *what, cudaError_t error) {
    return std::string(what) + ": " + cudaGetErrorName(error) + ": " + cudaGetErrorString(error);
}

}  // namespace

extern "C" int editgen_edited_cross_attention(const EditgenCrossArgs *args, void *cuda_stream) {
    last_error.clear();
    if (args == nullptr) return fail(EDITGEN_ERR_INVALID_ARGUMENT, "args is NULL");
    const EditgenCrossArgs &a = *args;
    if (const int code = validate(a); code != EDITGEN_OK) return code;

    // Asked before the launch so that a machine without a GPU or driver gets this sentence,
    // not the launch's "driver version is insufficient". Cheap once the runtime is up.
    int devices = 0;
    if (const cudaError_t error = cudaGetDeviceCount(&devices); error != cudaSuccess || devices == 0) {
        const std::string why = error != cudaSuccess ? cuda_error("cudaGetDeviceCount", error) : "no device found";
        return fail(EDITGEN_ERR_CUDA, "no usable CUDA device (" + why +
                                          "): this kernel runs only on an NVIDIA GPU whose driver supports CUDA " +
                                          std::to_string(CUDART_VERSION / 1000) + "." +
                                          std::to_string(CUDART_VERSION % 1000 / 10));
    }

    // The kernel runs on the device that holds q, whatever this thread's current device:
    // this library's CUDA runtime is its own (static), so the caller's cudaSetDevice (or
    // torch's) does not reach it. Host memory is refused here rather than faulting the
    // context on the GPU; the other arrays must be on q's device (not checked: a call each).
    cudaPointerAttributes where{};
    if (const cudaError_t error = cudaPointerGetAttributes(&where, a.q); error != cudaSuccess)
        return fail(EDITGEN_ERR_CUDA, cuda_error("cudaPointerGetAttributes(q)", error));
    if (where.type != cudaMemoryTypeDevice && where.type != cudaMemoryTypeManaged)
        return fail(EDITGEN_ERR_INVALID_ARGUMENT, "q is not device memory: every array must be on the GPU");
    if (const cudaError_t error = cudaSetDevice(where.device); error != cudaSuccess)
        return fail(EDITGEN_ERR_CUDA, cuda_error("cudaSetDevice", error));

    const auto blocks = static_cast<unsigned>(a.rows * a.heads);
    const auto shared_bytes = static_cast<size_t>(shared_floats(a.tokens, a.head_dim)) * sizeof(float);
    edited_cross_attention_kernel<<<blocks, kThreads, shared_bytes, static_cast<cudaStream_t>(cuda_stream)>>>(a);
    if (const cudaError_t error = cudaGetLastError(); error != cudaSuccess) {
        std::string message = cuda_error("launching edited_cross_attention_kernel", error);
        if (error == cudaErrorNoKernelImageForDevice)
            message += " (the library was built for other GPUs: rebuild with -DCMAKE_CUDA_ARCHITECTURES=<this GPU's>)";
        return fail(EDITGEN_ERR_CUDA, message);
    }
    return EDITGEN_OK;
}

extern "C" const char *editgen_last_error(void) { return last_error.c_str(); }
