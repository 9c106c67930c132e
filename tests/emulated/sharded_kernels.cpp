// Runs the kernels of kernels/sharded.cu on the CPU (kernels/emulator/: one host thread per
// CUDA thread) for k ranks in one process, with the collectives done on the host, and
// checks forward and backward against a double-precision reference of the unsharded layer
// on the concatenated features. tests/sharded_emulated.rs compiles and runs it.
//
// The kernels are called directly with their params.h structs (the emulator's launch
// table holds the single-device kernels). Grids are small on purpose: two
// CTAs of four warps for eleven rows exercise the grid-stride loop, and three-row chunks
// with a 2-D grid exercise the parameter-gradient partials.
#include <barrier>
#include <cstdio>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <thread>
#include <vector>
#include <type_traits>
#include "cuda_emulation.h"
#include "sharded.cu"

using namespace warpnorm;

// Launch `body` on a (gx, gy) grid of `block` threads.
void launch(unsigned gx, unsigned gy, unsigned block, const std::function<void()>& body) {
    const unsigned warps = block / 32;
    std::vector<float> exchange(block, 0.f);
    std::barrier<> block_barrier(block);
    std::vector<std::unique_ptr<std::barrier<>>> wb;
    for (unsigned w = 0; w < warps; ++w) wb.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            auto& c = warpnorm_emu::ctx;
            c.thread = {t, 0, 0};
            c.block_dim = {block, 1, 1};
            c.grid_dim = {gx, gy, 1};
            c.block_barrier = &block_barrier;
            c.warp_barrier = wb[t / 32].get();
            c.warp_exchange = &exchange[(t / 32) * 32];
            c.dynamic_smem = nullptr;
            for (unsigned y = 0; y < gy; ++y)
                for (unsigned x = 0; x < gx; ++x) {
                    c.block = {x, y, 0};
                    body();
                    block_barrier.arrive_and_wait();
                }
        });
    }
    for (auto& th : threads) th.join();
}

template <typename T> std::vector<T> to(const std::vector<double>& v) {
    std::vector<T> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = from_float<T>(float(v[i]));
    return o;
}
template <typename T> std::vector<double> back(const std::vector<T>& v) {
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); ++i) o[i] = to_float(v[i]);
    return o;
}

int failures = 0;
void expect_close(const char* what, double got, double want, double tol) {
    if (!(std::fabs(got - want) <= tol)) {
        if (failures < 20) std::printf("  MISMATCH %s: got %.9g want %.9g (tol %.3g)\n", what, got, want, tol);
        ++failures;
    }
}

// kind 0 LayerNorm, 1 RMSNorm; fast: fast variance (mode means) else moments. masked: flax's
// mask with a different count of selected elements per rank and row (at least one).
// nan_padding (with masked): every other element the mask leaves out holds NaN, which must
// not reach the statistics. Checked: mean, rstd, selected y, and the unselected dx: rstd * g
// where x is finite, NaN where it is NaN (as JAX). The rest is NaN, as in flax, through the
// sum of g * xhat.
template <typename T, typename P, typename O>
void run_case(int k, long long rows, long long d, int kind, bool fast, double tol, unsigned seed,
              bool masked = false, bool nan_padding = false) {
    const int failures_before = failures;
    const double ux = sizeof(T) == 4 ? 0.0 : (sizeof(T) == 2 && std::is_same<T, __half>::value ? 1.0 / 2048 : 1.0 / 256);
    const double uo = sizeof(O) == 4 ? 0.0 : (std::is_same<O, __half>::value ? 1.0 / 2048 : 1.0 / 256);
    const int mode = (kind == 0 && !fast) ? kShardMoments : kShardMeans;
    const int per_row = mode == kShardMoments ? 3 : 2;
    const float eps = 1e-5f;
    std::mt19937 rng(seed);
    std::normal_distribution<double> nd(0.0, 1.0);
    // Rank inputs rounded to their dtypes, kept as doubles for the reference.
    std::vector<std::vector<double>> xs(k), dys(k), scales(k), biases(k);
    for (int r = 0; r < k; ++r) {
        xs[r].resize(rows * d); dys[r].resize(rows * d); scales[r].resize(d); biases[r].resize(d);
        for (auto& v : xs[r]) v = to_float(from_float<T>(float(0.3 + nd(rng))));
        for (auto& v : dys[r]) v = to_float(from_float<O>(float(nd(rng))));
        for (auto& v : scales[r]) v = to_float(from_float<P>(float(1.0 + 0.5 * nd(rng))));
        for (auto& v : biases[r]) v = to_float(from_float<P>(float(0.5 * nd(rng))));
    }
    std::vector<std::vector<T>> x(k); std::vector<std::vector<O>> dy(k); std::vector<std::vector<P>> sc(k), bi(k);
    for (int r = 0; r < k; ++r) { x[r] = to<T>(xs[r]); dy[r] = to<O>(dys[r]); sc[r] = to<P>(scales[r]); bi[r] = to<P>(biases[r]); }
    // Masks (u8 for the kernels) and every element's weight in its group's mean: flax's pmean
    // of the ranks' masked means gives a selected element 1 / (k * its rank's count).
    std::vector<std::vector<unsigned char>> masks(k, std::vector<unsigned char>(rows * d, 1));
    std::vector<std::vector<double>> weights(k, std::vector<double>(rows * d, 1.0 / (double(k) * d)));
    if (masked) {
        for (int r = 0; r < k; ++r)
            for (long long row = 0; row < rows; ++row) {
                const long long count = 1 + (3 * r + 5 * row) % d;
                for (long long c = 0; c < d; ++c) {
                    const long long i = row * d + c;
                    masks[r][i] = (c * 7 + row) % d < count;  // d prime to 7: exactly count
                    weights[r][i] = masks[r][i] ? 1.0 / (double(k) * count) : 0.0;
                }
            }
    }
    if (nan_padding)
        for (int r = 0; r < k; ++r)
            for (long long i = 0; i < rows * d; ++i)
                if (!masks[r][i] && i % 2) x[r][i] = from_float<T>(NAN);
    const unsigned char* no_mask = nullptr;
    auto mask_of = [&](int r) { return masked ? masks[r].data() : no_mask; };

    // Forward: stats per rank.
    std::vector<std::vector<float>> send(k, std::vector<float>(rows * per_row, NAN));
    for (int r = 0; r < k; ++r)
        launch(2, 1, 128, [&] {
            shard_row_stats<T>({.x = x[r].data(),
                                .mask = mask_of(r),
                                .out = send[r].data(),
                                .rows = rows,
                                .cols = d,
                                .x_stride = d,
                                .mask_stride = d,
                                .mode = mode});
        });
    // Collective.
    std::vector<std::vector<float>> stats(k);
    if (mode == kShardMoments) {
        std::vector<float> g; for (int r = 0; r < k; ++r) g.insert(g.end(), send[r].begin(), send[r].end());
        for (int r = 0; r < k; ++r) stats[r] = g;
    } else {
        std::vector<float> s = send[0];
        for (int r = 1; r < k; ++r) for (size_t i = 0; i < s.size(); ++i) s[i] += send[r][i];
        for (int r = 0; r < k; ++r) stats[r] = s;
    }
    std::vector<std::vector<O>> y(k, std::vector<O>(rows * d));
    std::vector<std::vector<float>> mean(k, std::vector<float>(rows, NAN)), rstd = mean, dvar = mean;
    for (int r = 0; r < k; ++r)
        launch(2, 1, 128, [&] {
            shard_apply<T, P, O>({.x = x[r].data(),
                                  .y = y[r].data(),
                                  .scale = sc[r].data(),
                                  .bias = bi[r].data(),
                                  .stats = stats[r].data(),
                                  .mean = mean[r].data(),
                                  .rstd = rstd[r].data(),
                                  .dvar = fast && kind == 0 ? dvar[r].data() : nullptr,
                                  .rows = rows,
                                  .cols = d,
                                  .x_stride = d,
                                  .y_stride = d,
                                  .group = k,
                                  .eps = eps,
                                  .kind = kind,
                                  .mode = mode});
        });
    // Backward.
    std::vector<std::vector<float>> sums(k, std::vector<float>(rows * 2, NAN));
    for (int r = 0; r < k; ++r)
        launch(2, 1, 128, [&] {
            shard_bwd_sums<T, P, O>({.x = x[r].data(),
                                     .dy = dy[r].data(),
                                     .scale = sc[r].data(),
                                     .mean = mean[r].data(),
                                     .rstd = rstd[r].data(),
                                     .dvar = nullptr,
                                     .sums = sums[r].data(),
                                     .dx = nullptr,
                                     .rows = rows,
                                     .cols = d,
                                     .x_stride = d,
                                     .dy_stride = d,
                                     .dx_stride = d,
                                     .weight = 0.f,
                                     .kind = kind});
        });
    std::vector<float> total = sums[0];
    for (int r = 1; r < k; ++r) for (size_t i = 0; i < total.size(); ++i) total[i] += sums[r][i];
    std::vector<std::vector<T>> dx(k, std::vector<T>(rows * d));
    const float weight = float(1.0 / (double(k) * d));
    for (int r = 0; r < k; ++r)
        launch(2, 1, 128, [&] {
            shard_dx<T, P, O>({.x = x[r].data(),
                               .dy = dy[r].data(),
                               .scale = sc[r].data(),
                               .mean = mean[r].data(),
                               .rstd = rstd[r].data(),
                               .dvar = fast && kind == 0 ? dvar[r].data() : nullptr,
                               .mask = mask_of(r),
                               .sums = total.data(),
                               .dx = dx[r].data(),
                               .rows = rows,
                               .cols = d,
                               .x_stride = d,
                               .dy_stride = d,
                               .dx_stride = d,
                               .mask_stride = d,
                               .weight = masked ? float(1.0 / k) : weight,
                               .kind = kind});
        });
    const long long chunk_rows = 3, chunks = (rows + chunk_rows - 1) / chunk_rows;
    std::vector<std::vector<float>> pds(k, std::vector<float>(chunks * d, NAN)), pdb = pds;
    for (int r = 0; r < k; ++r)
        launch(unsigned((d + 255) / 256), unsigned(chunks), 256, [&] {
            shard_param_grads<T, O>({.x = x[r].data(),
                                     .dy = dy[r].data(),
                                     .mean = mean[r].data(),
                                     .rstd = rstd[r].data(),
                                     .partial_dscale = pds[r].data(),
                                     .partial_dbias = pdb[r].data(),
                                     .rows = rows,
                                     .cols = d,
                                     .x_stride = d,
                                     .dy_stride = d,
                                     .chunk_rows = chunk_rows,
                                     .kind = kind});
        });

    // Reference on the concatenated row (double), each element weighted as in the group mean:
    // mean = sum w x, var = sum w (x - mean)^2, dx = rstd (g - w (c1 sum g + xhat sum g xhat)).
    for (long long row = 0; row < rows; ++row) {
        double mu = 0, var = 0;
        for (int r = 0; r < k; ++r) for (long long c = 0; c < d; ++c) mu += weights[r][row * d + c] * xs[r][row * d + c];
        if (kind == 1) mu = 0;
        for (int r = 0; r < k; ++r) for (long long c = 0; c < d; ++c) {
            const double dd = xs[r][row * d + c] - mu;
            var += weights[r][row * d + c] * dd * dd;
        }
        const double rs = 1.0 / std::sqrt(var + eps);
        double sg = 0, sgx = 0;
        for (int r = 0; r < k; ++r) for (long long c = 0; c < d; ++c) {
            double g = dys[r][row * d + c] * scales[r][c], xh = (xs[r][row * d + c] - mu) * rs;
            sg += g; sgx += g * xh;
        }
        for (int r = 0; r < k; ++r) {
            expect_close("mean", mean[r][row], mu, tol);
            expect_close("rstd", rstd[r][row], rs, tol * rs);
            for (long long c = 0; c < d; ++c) {
                const long long i = row * d + c;
                double xh = (xs[r][i] - mu) * rs, g = dys[r][i] * scales[r][c];
                double want_y = xh * scales[r][c] + biases[r][c];
                const double w = weights[r][i];
                double want_dx = rs * (g - w * ((kind == 0 ? sg : 0.0) + xh * sgx));
                if (nan_padding) {
                    if (masks[r][i]) expect_close("y", to_float(y[r][i]), want_y, tol * (1 + std::fabs(want_y)));
                    else if (i % 2) expect_close("dx is NaN", std::isnan(to_float(dx[r][i])), 1, 0);
                    else expect_close("dx", to_float(dx[r][i]), rs * g, tol * 4 * rs);
                    continue;
                }
                expect_close("y", to_float(y[r][i]), want_y, tol * (1 + std::fabs(want_y)) + uo * std::fabs(want_y));
                expect_close("dx", to_float(dx[r][i]), want_dx, tol * 4 * rs + ux * std::fabs(want_dx));
            }
        }
    }
    for (int r = 0; r < k && !nan_padding; ++r) for (long long c = 0; c < d; ++c) {
        double ds = 0, db = 0, ds_got = 0, db_got = 0;
        for (long long row = 0; row < rows; ++row) {
            const long long i = row * d + c;
            double mu = mean[r][row], rs = rstd[r][row];
            ds += dys[r][i] * (xs[r][i] - (kind == 0 ? mu : 0.0)) * rs; db += dys[r][i];
        }
        for (long long p = 0; p < chunks; ++p) { ds_got += pds[r][p * d + c]; db_got += pdb[r][p * d + c]; }
        expect_close("dscale", ds_got, ds, tol * rows * 4);
        expect_close("dbias", db_got, db, tol * rows * 4);
    }
    std::printf("k=%d rows=%lld d=%lld kind=%d fast=%d masked=%d nan_padding=%d T=%zu: %s\n", k, rows, d, kind,
                int(fast), int(masked), int(nan_padding), sizeof(T), failures > failures_before ? "FAIL" : "ok");
}

int main() {
    for (int kind : {0, 1})
        for (bool fast : {true, false}) {
            if (kind == 1 && !fast) continue;
            for (int k : {1, 2, 4, 8}) {
                run_case<float, float, float>(k, 11, 5, kind, fast, 2e-5, 1 + k);
                run_case<float, float, float>(k, 11, 70, kind, fast, 2e-5, 2 + k);
            }
            run_case<__nv_bfloat16, float, float>(4, 9, 33, kind, fast, 2e-5, 99);
            run_case<__half, __half, __half>(2, 9, 40, kind, fast, 4e-3, 98);
            for (int k : {1, 4}) run_case<float, float, float>(k, 11, 33, kind, fast, 2e-5, 50 + k, true);
            run_case<float, float, float>(4, 11, 33, kind, fast, 2e-5, 60, true, true);
        }
    // cast_scale and accumulate.
    std::vector<float> a = {1.f, 2.f, 3.f}, b = {0.5f, 0.25f, -1.f};
    launch(1, 1, 256, [&] { accumulate({.dst = a.data(), .src = b.data(), .n = 3}); });
    expect_close("accumulate", a[0] + a[1] + a[2], 1.5 + 2.25 + 2.0, 0);
    std::vector<__half> h(3);
    launch(1, 1, 256, [&] { cast_scale<float, __half>({.src = a.data(), .dst = h.data(), .n = 3, .divisor = 2.f}); });
    expect_close("cast_scale", to_float(h[1]), 1.125, 1e-3);
    launch(1, 1, 256, [&] { cast_scale<float, float>({.src = a.data(), .dst = a.data(), .n = 3, .divisor = 2.f}); });
    expect_close("cast_scale in place", a[2], 1.0, 0);
    std::printf("%s (%d mismatches)\n", failures ? "FAILED" : "ALL OK", failures);
    return failures ? 1 : 0;
}
