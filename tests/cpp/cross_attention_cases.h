// The kernel's test cases, its CPU reference and the checks, shared by the GPU test
// (test_edited_cross_attention.cpp) and the CPU emulation (test_emulated_block.cpp): both
// run the same suite, each with its own way of running the kernel (a Runner).

#ifndef EDITGEN_CROSS_ATTENTION_CASES_H
#define EDITGEN_CROSS_ATTENTION_CASES_H

#include "editgen_kernels.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace cases {

inline int failures = 0;

inline void check(bool ok, const std::string &what) {
    if (!ok) {
        std::printf("FAIL: %s\n", what.c_str());
        ++failures;
    }
}

struct Shape {
    int64_t rows, heads, tokens, head_dim;
};

// One call's inputs on the host, row-major as the C API wants them.
struct Inputs {
    Shape shape;
    float scale;
    std::vector<float> q, k, v, text_mask, use_captured, captured, mapper, alpha, weight, window, keep;
    std::vector<int64_t> src_row;
};

// What each row of a case does (row index = position in this list).
inline const char *const kRowOps[] = {
    "source (identity)",  "replace (permutation)", "refine (partial, alpha 0)", "reweight c=-2",
    "reweight c=0.5",     "reweight c=2",          "captured source",           "all text masked, identity",
    "all text masked, replace",
};
constexpr int64_t kRows = sizeof(kRowOps) / sizeof(kRowOps[0]);
enum class Window { on, off, mixed };
inline const char *window_name(Window w) { return w == Window::on ? "on" : w == Window::off ? "off" : "mixed"; }

// Deterministic uniform numbers in [-1, 1) (a 64-bit LCG; no <random> distribution, whose
// output may differ between standard libraries).
struct Lcg {
    uint64_t state;
    float next() {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<float>(state >> 40) / static_cast<float>(1u << 23) - 1.f;
    }
};

// Row r does kRowOps[r]: s.rows must be kRows.
inline Inputs make_inputs(Shape s, Window window, float keep, uint64_t seed) {
    const int64_t R = s.rows, H = s.heads, T = s.tokens, D = s.head_dim;
    Lcg rng{seed};
    Inputs in{s, 1.f / std::sqrt(static_cast<float>(D)), {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
    auto fill = [&rng](std::vector<float> &x, size_t n) {
        x.resize(n);
        for (auto &value : x) value = rng.next();
    };
    fill(in.q, R * H * D);
    fill(in.k, R * H * T * D);
    fill(in.v, R * H * T * D);
    in.text_mask.assign(R * T, 0.f);
    in.src_row.assign(R, 0);
    in.use_captured.assign(R, 0.f);
    in.captured.assign(R * H * T, 0.f);
    in.mapper.assign(R * T * T, 0.f);
    in.alpha.assign(R * T, 1.f);
    in.weight.assign(R * T, 1.f);
    in.window.assign(R * T, 1.f);
    in.keep.assign(R, keep);

    auto map = [&](int64_t r, int64_t source, int64_t target) { in.mapper[(r * T + source) * T + target] = 1.f; };
    for (int64_t r = 0; r < R; ++r) {
        const int64_t op = r;
        // Text lengths T, T-1, T-2 (at least 1), then padding; rows 7 and 8 all padding.
        const int64_t length = op >= 7 ? 0 : std::max<int64_t>(1, T - r % 3);
        for (int64_t t = 0; t < length; ++t) in.text_mask[r * T + t] = 1.f;
        for (int64_t t = 0; t < T; ++t) {
            in.window[r * T + t] = window == Window::on ? 1.f : window == Window::off ? 0.f : float(t % 2 == 0);
            switch (op) {
            case 1:  // replace: target t reads source token (t + 1) mod T, a permutation
            case 6:
            case 8: map(r, (t + 1) % T, t); break;
            case 2:  // refine: target 1 is a new word (no source, alpha 0), t > 1 shifts by one
                if (t == 1) in.alpha[r * T + t] = 0.f;
                else map(r, t == 0 ? 0 : t - 1, t);
                break;
            default: map(r, t, t);  // identity mapper (with reweight for ops 3-5)
            }
        }
        in.src_row[r] = op == 0 || op == 7 ? r : 0;
        if (op == 3) in.weight[r * T + 1 % T] = -2.f;
        if (op == 4) in.weight[r * T + 2 % T] = 0.5f;
        if (op == 5) in.weight[r * T + 0] = 2.f;
        if (op == 6) {  // captured: any distribution per head; src_row out of range, never read
            in.use_captured[r] = 1.f;
            in.src_row[r] = -1;
            for (int64_t h = 0; h < H; ++h) {
                float sum = 0.f;
                float *c = &in.captured[(r * H + h) * T];
                for (int64_t t = 0; t < T; ++t) sum += c[t] = rng.next() + 1.5f;
                for (int64_t t = 0; t < T; ++t) c[t] /= sum;
            }
        }
    }
    return in;
}

// The formula of the header, in double: out [R, H, D], probs [R, H, T].
inline void reference(const Inputs &in, std::vector<double> &out, std::vector<double> &probs) {
    const int64_t R = in.shape.rows, H = in.shape.heads, T = in.shape.tokens, D = in.shape.head_dim;
    out.assign(R * H * D, 0.0);
    probs.assign(R * H * T, 0.0);
    auto softmax = [&](int64_t row, int64_t h) {
        std::vector<double> p(T);
        for (int64_t t = 0; t < T; ++t) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d)
                dot += double(in.q[(row * H + h) * D + d]) * in.k[((row * H + h) * T + t) * D + d];
            p[t] = double(in.scale) * dot + (1.0 - in.text_mask[row * T + t]) * double(-FLT_MAX);
        }
        const double m = *std::max_element(p.begin(), p.end());
        double sum = 0;
        for (auto &x : p) sum += x = std::exp(x - m);
        for (auto &x : p) x /= sum;
        return p;
    };
    for (int64_t r = 0; r < R; ++r)
        for (int64_t h = 0; h < H; ++h) {
            const std::vector<double> own = softmax(r, h);
            std::vector<double> src(T);
            if (in.use_captured[r] > 0.5f)
                for (int64_t t = 0; t < T; ++t) src[t] = in.captured[(r * H + h) * T + t];
            else
                src = softmax(in.src_row[r], h);
            for (int64_t t = 0; t < T; ++t) {
                double base = 0;
                for (int64_t s = 0; s < T; ++s) base += src[s] * in.mapper[(r * T + s) * T + t];
                const double alpha = in.alpha[r * T + t], window = in.window[r * T + t];
                double inj = (alpha * base + (1 - alpha) * own[t]) * in.weight[r * T + t];
                inj = window * inj + (1 - window) * own[t];
                const double p = own[t] - (1 - double(in.keep[r])) * (own[t] - inj);
                probs[(r * H + h) * T + t] = p;
                for (int64_t d = 0; d < D; ++d) out[(r * H + h) * D + d] += p * in.v[((r * H + h) * T + t) * D + d];
            }
        }
}

// Largest |got - ref| over each row's elements (elements per row: per_row).
inline std::vector<double> row_errors(const std::vector<float> &got, const std::vector<double> &ref, int64_t per_row) {
    std::vector<double> errors(ref.size() / per_row, 0.0);
    for (size_t i = 0; i < ref.size(); ++i) {
        const double e = std::fabs(double(got[i]) - ref[i]);
        double &row = errors[i / per_row];
        row = std::isnan(e) ? INFINITY : std::max(row, e);  // a NaN fails the tolerance
    }
    return errors;
}

inline bool bitwise_equal(const float *a, const float *b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// fp32 against the double reference: a few ulp per score, exp and division, and sums of at
// most 1024 terms of magnitude <= 2, so errors of ~1e-6 at most. Measured under the CPU
// emulation: <= 1.3e-7 (the GPU's expf and FMAs differ by an ulp or two; not yet measured).
// A wrong term moves probabilities of 1e-3 and more (1 / T at T = 1024) by far more than 1e-5.
constexpr double kTolerance = 1e-5;

// One call of the kernel on these inputs: out [R, H, D] and probs [R, H, T] (empty when
// with_probs is false, which passes probs = NULL). Outputs start as NaN, so an element
// the kernel does not write fails the comparison.
struct Result {
    std::vector<float> out, probs;
};
using Runner = std::function<Result(const Inputs &, bool with_probs)>;

// Runs `in` and compares with the reference; per-row errors go into worst_per_op.
inline void compare_case(const Runner &run, const Inputs &in, const std::string &label, std::vector<double> &worst_per_op,
                         Result *result = nullptr) {
    const Shape s = in.shape;
    std::vector<double> out_ref, probs_ref;
    reference(in, out_ref, probs_ref);
    Result got = run(in, true);
    const auto out_err = row_errors(got.out, out_ref, s.heads * s.head_dim);
    const auto probs_err = row_errors(got.probs, probs_ref, s.heads * s.tokens);
    double max_out = 0, max_probs = 0;
    for (int64_t r = 0; r < s.rows; ++r) {
        max_out = std::max(max_out, out_err[r]);
        max_probs = std::max(max_probs, probs_err[r]);
        worst_per_op[r] = std::max({worst_per_op[r], out_err[r], probs_err[r]});
        check(out_err[r] <= kTolerance && probs_err[r] <= kTolerance,
              label + ": row " + std::to_string(r) + " (" + kRowOps[r] + ") out error " + std::to_string(out_err[r]) +
                  ", probs error " + std::to_string(probs_err[r]));
    }
    std::printf("%-40s max |out - ref| %.2e, max |probs - ref| %.2e\n", label.c_str(), max_out, max_probs);
    if (result != nullptr) *result = std::move(got);
}

inline std::string label(const Shape &s, Window window, float keep) {
    char text[96];
    std::snprintf(text, sizeof text, "H%lld T%lld D%lld window %s keep %.1f:", (long long)s.heads, (long long)s.tokens,
                  (long long)s.head_dim, window_name(window), keep);
    return text;
}

// Every edit op (one per row) for each of `full` shapes under every window (on, off,
// mixed) and keep (1, 0.5, 0), with the exact forms and probs = NULL; each of `once`
// shapes with window mixed and keep 0.5; a src_row out of range. Returns 0 or 1.
inline int run_suite(const Runner &run, const std::vector<Shape> &full, const std::vector<Shape> &once) {
    std::vector<double> worst_per_op(kRows, 0.0);
    uint64_t seed = 1;
    for (const Shape &s : full)
        for (Window window : {Window::on, Window::off, Window::mixed})
            for (float keep : {1.f, 0.5f, 0.f}) {
                const Inputs in = make_inputs(s, window, keep, seed++);
                Result got;
                compare_case(run, in, label(s, window, keep), worst_per_op, &got);

                // Exact forms (docs/design.md, "The edit"): keep 1 and window 0 return p_own
                // bit for bit on every row, identity rows (0, 7) for every keep and window.
                // p_own itself: the same inputs rerun with keep 1.
                Inputs keep_one = in;
                std::fill(keep_one.keep.begin(), keep_one.keep.end(), 1.f);
                const Result own = run(keep_one, true);
                const size_t per_row = s.heads * s.tokens;
                for (int64_t r = 0; r < s.rows; ++r)
                    if (keep == 1.f || window == Window::off || r == 0 || r == 7)
                        check(bitwise_equal(&got.probs[r * per_row], &own.probs[r * per_row], per_row),
                              label(s, window, keep) + " row " + std::to_string(r) + " (" + kRowOps[r] +
                                  "): probs == p_own bit for bit");
                if (window == Window::on && keep == 0.f) {  // probs NULL: the same out, bit for bit
                    const Result no_probs = run(in, false);
                    check(bitwise_equal(no_probs.out.data(), got.out.data(), got.out.size()),
                          "probs NULL gives the same out bit for bit");
                }
            }
    for (const Shape &s : once) compare_case(run, make_inputs(s, Window::mixed, 0.5f, seed++), label(s, Window::mixed, 0.5f), worst_per_op);

    // A src_row outside [0, R) on a row that reads it: that row is NaN, the others unchanged.
    {
        const Shape s{kRows, 3, 12, 24};
        Inputs in = make_inputs(s, Window::on, 0.f, seed++);
        const Result good = run(in, true);
        in.src_row[1] = kRows;
        const Result bad = run(in, true);
        bool row_nan = true, others_same = true;
        auto compare = [&](const std::vector<float> &now, const std::vector<float> &before, size_t per_row) {
            for (size_t i = 0; i < now.size(); ++i) {
                if (i / per_row == 1) row_nan = row_nan && std::isnan(now[i]);
                else others_same = others_same && now[i] == before[i];
            }
        };
        compare(bad.out, good.out, s.heads * s.head_dim);
        compare(bad.probs, good.probs, s.heads * s.tokens);
        std::printf("src_row out of range: that row NaN %s, other rows unchanged %s\n", row_nan ? "yes" : "NO",
                    others_same ? "yes" : "NO");
        check(row_nan && others_same, "src_row out of range poisons only its row");
    }

    std::printf("max error per edit op (over all cases; tolerance %.0e):\n", kTolerance);
    for (int64_t r = 0; r < kRows; ++r) std::printf("  %-28s %.2e\n", kRowOps[r], worst_per_op[r]);
    std::printf("%s (%d failures)\n", failures == 0 ? "PASSED" : "FAILED", failures);
    return failures == 0 ? 0 : 1;
}

}  // namespace cases

#endif  // EDITGEN_CROSS_ATTENTION_CASES_H
