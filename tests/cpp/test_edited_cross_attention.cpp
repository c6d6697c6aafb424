// Tests of libeditgen_kernels through its C API only (what a C++ stack without Python sees).
//
//   test_edited_cross_attention api     the host-side checks: error codes and messages,
//                                       the thread-local error string; no device needed
//   test_edited_cross_attention kernel  the kernel against a CPU reference of the same
//                                       formula, for every edit op (cross_attention_cases.h);
//                                       exits 77 (ctest: skipped) when no CUDA device is present
//
// Exit codes: 0 passed, 1 failed, 77 skipped.

#include "cross_attention_cases.h"
#include "editgen_kernels.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using cases::check;

// ---------------------------------------------------------------------------------------
// api: every call is refused before a launch (something is always wrong), so no pointer is
// ever dereferenced; the small host arrays below stand for arrays of any size.

EditgenCrossArgs fake_valid_args() {
    static float fake_floats[4];
    static int64_t fake_rows[1];
    EditgenCrossArgs a{};
    a.rows = 2;
    a.heads = 3;
    a.tokens = 5;
    a.head_dim = 24;
    a.scale = 0.2f;
    a.q = a.k = a.v = a.text_mask = a.use_captured = a.captured = a.mapper = fake_floats;
    a.alpha = a.weight = a.window = a.keep = fake_floats;
    a.out = a.probs = fake_floats;
    a.src_row = fake_rows;
    return a;
}

void expect_error(const EditgenCrossArgs *args, int code, const char *needle, const char *what) {
    const int got = editgen_edited_cross_attention(args, nullptr);
    const std::string message = editgen_last_error();
    std::printf("  %-34s -> %d: %s\n", what, got, message.c_str());
    check(got == code, std::string(what) + ": code " + std::to_string(got) + ", expected " + std::to_string(code));
    check(message.find(needle) != std::string::npos, std::string(what) + ": message lacks \"" + needle + "\"");
}

int run_api_tests() {
    std::printf("host-side checks (no device needed):\n");
    expect_error(nullptr, EDITGEN_ERR_INVALID_ARGUMENT, "args is NULL", "args NULL");

    EditgenCrossArgs a = fake_valid_args();
    a.rows = 0;
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "rows = 0", "rows 0");
    a = fake_valid_args();
    a.head_dim = -1;
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "head_dim = -1", "head_dim -1");
    a = fake_valid_args();
    a.tokens = EDITGEN_MAX_TOKENS + 1;
    expect_error(&a, EDITGEN_ERR_UNSUPPORTED_SIZE, "EDITGEN_MAX_TOKENS", "tokens over the limit");
    a = fake_valid_args();
    a.head_dim = EDITGEN_MAX_HEAD_DIM + 1;
    expect_error(&a, EDITGEN_ERR_UNSUPPORTED_SIZE, "EDITGEN_MAX_HEAD_DIM", "head_dim over the limit");
    a = fake_valid_args();
    a.rows = int64_t{1} << 20;
    a.heads = int64_t{1} << 12;
    expect_error(&a, EDITGEN_ERR_UNSUPPORTED_SIZE, "2^31 - 1 blocks", "rows * heads over the grid");
    a = fake_valid_args();
    a.rows = INT64_MAX;  // the product would overflow int64: caught before it is formed
    a.heads = INT64_MAX;
    expect_error(&a, EDITGEN_ERR_UNSUPPORTED_SIZE, "2^31 - 1 blocks", "rows, heads near INT64_MAX");
    a = fake_valid_args();
    a.scale = NAN;
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "must be finite", "scale NaN");
    a = fake_valid_args();
    a.q = nullptr;
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "q is NULL", "q NULL");
    a = fake_valid_args();
    a.probs = nullptr;  // allowed; the NULL captured is what fails
    a.captured = nullptr;
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "captured is NULL", "probs and captured NULL");
    a = fake_valid_args();
    a.mapper = reinterpret_cast<const float *>(reinterpret_cast<const char *>(a.mapper) + 2);
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "mapper is not 4-byte aligned", "mapper misaligned");
    a = fake_valid_args();
    a.src_row = reinterpret_cast<const int64_t *>(reinterpret_cast<const char *>(a.src_row) + 4);
    expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "src_row is not 8-byte aligned", "src_row misaligned");

    // Arguments that pass every host check, with host memory: refused before any launch,
    // for the lack of a device, or (with one) because q is not device memory.
    a = fake_valid_args();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
        expect_error(&a, EDITGEN_ERR_CUDA, "no usable CUDA device", "valid arguments, no device");
    else
        expect_error(&a, EDITGEN_ERR_INVALID_ARGUMENT, "q is not device memory", "valid arguments, host memory");

    // The message is the calling thread's: another thread's last call left none.
    (void)editgen_edited_cross_attention(nullptr, nullptr);
    std::string other = "unset";
    std::thread([&other] { other = editgen_last_error(); }).join();
    check(other.empty(), "a fresh thread sees \"\", saw \"" + other + "\"");
    check(std::strlen(editgen_last_error()) > 0, "this thread still sees its own message");
    std::printf("%s (%d failures)\n", cases::failures == 0 ? "PASSED" : "FAILED", cases::failures);
    return cases::failures == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------
// kernel

#define CUDA_OK(call)                                                                                    \
    do {                                                                                                 \
        const cudaError_t error_ = (call);                                                               \
        if (error_ != cudaSuccess) {                                                                     \
            std::printf("CUDA error at %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(error_)); \
            std::exit(1);                                                                                \
        }                                                                                                \
    } while (0)

// A device copy of a host vector (or `n` elements of all-ones bytes: NaN as floats), freed
// on scope exit.
template <class T>
struct DeviceArray {
    T *data = nullptr;
    size_t count = 0;
    explicit DeviceArray(size_t n) : count(n) {
        CUDA_OK(cudaMalloc(&data, n * sizeof(T)));
        CUDA_OK(cudaMemset(data, 0xff, n * sizeof(T)));
    }
    explicit DeviceArray(const std::vector<T> &host) : DeviceArray(host.size()) {
        CUDA_OK(cudaMemcpy(data, host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
    }
    DeviceArray(const DeviceArray &) = delete;
    DeviceArray &operator=(const DeviceArray &) = delete;
    ~DeviceArray() { cudaFree(data); }
    std::vector<T> host() const {
        std::vector<T> result(count);
        CUDA_OK(cudaMemcpy(result.data(), data, count * sizeof(T), cudaMemcpyDeviceToHost));
        return result;
    }
};

cases::Result run_gpu(const cases::Inputs &in, bool with_probs, cudaStream_t stream) {
    const cases::Shape s = in.shape;
    DeviceArray<float> q(in.q), k(in.k), v(in.v), mask(in.text_mask), use_captured(in.use_captured),
        captured(in.captured), mapper(in.mapper), alpha(in.alpha), weight(in.weight), window(in.window),
        keep(in.keep), out(s.rows * s.heads * s.head_dim), probs(with_probs ? s.rows * s.heads * s.tokens : 1);
    DeviceArray<int64_t> src_row(in.src_row);
    EditgenCrossArgs a{};
    a.rows = s.rows;
    a.heads = s.heads;
    a.tokens = s.tokens;
    a.head_dim = s.head_dim;
    a.scale = in.scale;
    a.q = q.data;
    a.k = k.data;
    a.v = v.data;
    a.text_mask = mask.data;
    a.src_row = src_row.data;
    a.use_captured = use_captured.data;
    a.captured = captured.data;
    a.mapper = mapper.data;
    a.alpha = alpha.data;
    a.weight = weight.data;
    a.window = window.data;
    a.keep = keep.data;
    a.out = out.data;
    a.probs = with_probs ? probs.data : nullptr;
    const int code = editgen_edited_cross_attention(&a, stream);
    if (code != EDITGEN_OK) {
        std::printf("FAIL: editgen_edited_cross_attention returned %d: %s\n", code, editgen_last_error());
        std::exit(1);
    }
    check(std::strlen(editgen_last_error()) == 0, "editgen_last_error() is \"\" after a success");
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaGetLastError());
    return {out.host(), with_probs ? probs.host() : std::vector<float>{}};
}

int run_kernel_tests() {
    int devices = 0;
    const cudaError_t error = cudaGetDeviceCount(&devices);
    if (error != cudaSuccess || devices == 0) {
        std::printf("SKIP: no CUDA device (cudaGetDeviceCount: %s); the kernel test needs an NVIDIA GPU and driver\n",
                    error != cudaSuccess ? cudaGetErrorName(error) : "0 devices");
        return 77;
    }
    cudaDeviceProp prop{};
    CUDA_OK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device 0: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    cudaStream_t stream = nullptr;  // a stream of its own: the API's stream argument is used
    CUDA_OK(cudaStreamCreate(&stream));
    using cases::kRows;
    const int code = cases::run_suite([stream](const cases::Inputs &in, bool with_probs) { return run_gpu(in, with_probs, stream); },
                                      {{kRows, 3, 5, 24}, {kRows, 3, 12, 24}, {kRows, 16, 64, 64}},  // MusicGen: H 16, T 64, D 64
                                      {{kRows, 2, EDITGEN_MAX_TOKENS, EDITGEN_MAX_HEAD_DIM}});       // the limits
    CUDA_OK(cudaStreamDestroy(stream));
    return code;
}

}  // namespace

int main(int argc, char **argv) {
    const std::string mode = argc == 2 ? argv[1] : "";
    if (mode == "api") return run_api_tests();
    if (mode == "kernel") return run_kernel_tests();
    std::printf("usage: %s api|kernel\n", argv[0]);
    return 2;
}
