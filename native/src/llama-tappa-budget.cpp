#include "llama-tappa-budget.h"

#include <algorithm>
#include <cmath>
#include <numeric>

bool llama_tappa_split_integer(
        const std::vector<double>  & weights,
        int64_t                      total,
        const std::vector<int64_t> & lo,
        const std::vector<int64_t> & hi,
        std::vector<int64_t>       & out,
        std::string                & err) {
    const size_t n = weights.size();
    if (n == 0 || lo.size() != n || hi.size() != n) {
        err = "weights, lo and hi must have the same non-zero length";
        return false;
    }
    int64_t sum_lo = 0, sum_hi = 0;
    for (size_t i = 0; i < n; ++i) {
        if (lo[i] > hi[i]) {
            err = "a layer's minimum budget exceeds its maximum";
            return false;
        }
        sum_lo += lo[i];
        sum_hi = (hi[i] > INT64_MAX - sum_hi) ? INT64_MAX : sum_hi + hi[i];
    }
    if (sum_lo > total) {
        err = "total " + std::to_string(total) + " is below the sum of the per-layer minimums (" + std::to_string(sum_lo) + ")";
        return false;
    }
    if (sum_hi <= total) {
        out = hi;
        return true;
    }

    std::vector<double> w(n);
    double wtot = 0.0;
    for (size_t i = 0; i < n; ++i) {
        w[i] = std::max(0.0, weights[i]);
        wtot += w[i];
    }
    if (wtot == 0.0) {
        std::fill(w.begin(), w.end(), 1.0);
    }

    std::vector<bool>   is_fixed(n, false);
    std::vector<double> fixed(n, 0.0);
    std::vector<double> x(n, 0.0);
    while (true) {
        double rest = (double) total;
        for (size_t i = 0; i < n; ++i) {
            if (is_fixed[i]) {
                rest -= fixed[i];
            }
        }
        double wsum  = 0.0;
        size_t nfree = 0;
        for (size_t i = 0; i < n; ++i) {
            if (!is_fixed[i]) {
                wsum += w[i];
                nfree++;
            }
        }
        for (size_t i = 0; i < n; ++i) {
            if (!is_fixed[i]) {
                x[i] = wsum == 0.0 ? rest / (double) nfree : rest * w[i] / wsum;
            }
        }
        bool changed = false;
        for (size_t i = 0; i < n; ++i) {
            if (!is_fixed[i] && x[i] < (double) lo[i]) {
                is_fixed[i] = true;
                fixed[i]    = (double) lo[i];
                changed     = true;
            }
        }
        if (changed) {
            continue;
        }
        for (size_t i = 0; i < n; ++i) {
            if (!is_fixed[i] && x[i] > (double) hi[i]) {
                is_fixed[i] = true;
                fixed[i]    = (double) hi[i];
                changed     = true;
            }
        }
        if (!changed) {
            break;
        }
    }
    for (size_t i = 0; i < n; ++i) {
        if (is_fixed[i]) {
            x[i] = fixed[i];
        }
    }

    out.assign(n, 0);
    std::vector<double> frac(n);
    int64_t rem = total;
    for (size_t i = 0; i < n; ++i) {
        out[i]  = (int64_t) std::floor(x[i]);
        frac[i] = x[i] - (double) out[i];
        rem    -= out[i];
    }
    std::vector<size_t> up(n), down(n);
    std::iota(up.begin(), up.end(), 0);
    std::iota(down.begin(), down.end(), 0);
    std::sort(up.begin(), up.end(), [&](size_t a, size_t b) {
        return frac[a] != frac[b] ? frac[a] > frac[b] : a < b;
    });
    std::sort(down.begin(), down.end(), [&](size_t a, size_t b) {
        return frac[a] != frac[b] ? frac[a] < frac[b] : a > b;
    });
    while (rem > 0) {
        bool moved = false;
        for (size_t i : up) {
            if (rem == 0) {
                break;
            }
            if (out[i] < hi[i]) {
                out[i]++;
                rem--;
                moved = true;
            }
        }
        if (!moved) {
            err = "cannot place the remaining budget";
            return false;
        }
    }
    while (rem < 0) {
        bool moved = false;
        for (size_t i : down) {
            if (rem == 0) {
                break;
            }
            if (out[i] > lo[i]) {
                out[i]--;
                rem++;
                moved = true;
            }
        }
        if (!moved) {
            err = "cannot remove the excess budget";
            return false;
        }
    }
    return true;
}

std::vector<double> llama_tappa_pyramid_weights(uint32_t n_layer, double beta) {
    if (n_layer == 1) {
        return { 1.0 };
    }
    const double top    = 1.0 / beta;
    const double bottom = 2.0 - top;
    std::vector<double> w(n_layer);
    for (uint32_t i = 0; i < n_layer; ++i) {
        w[i] = bottom - (bottom - top) * (double) i / (double) (n_layer - 1);
    }
    return w;
}

bool llama_tappa_layer_budgets(
        const std::vector<double> & weights,
        int64_t                     total,
        int32_t                     n_sink,
        int32_t                     window,
        int32_t                     min_layer_budget,
        int64_t                     max_layer_budget,
        std::vector<int64_t>      & out,
        std::string               & err) {
    const int64_t n = (int64_t) weights.size();
    if (n_sink < 0 || window < 0) {
        err = "n_sink and window must be >= 0";
        return false;
    }
    const int64_t keep        = (int64_t) n_sink + window;
    const int64_t floor_extra = std::max<int64_t>(0, (int64_t) min_layer_budget - keep);
    if (max_layer_budget >= 0 && max_layer_budget < keep + floor_extra) {
        err = "max layer budget " + std::to_string(max_layer_budget) + " is below n_sink + window (+ minimum) = " +
              std::to_string(keep + floor_extra);
        return false;
    }
    const int64_t need = n * (keep + floor_extra);
    if (total < need) {
        err = "total budget " + std::to_string(total) + " cannot give each of " + std::to_string(n) + " layers its " +
              std::to_string(n_sink) + " sinks + " + std::to_string(window) + " window tokens" +
              (floor_extra ? " + " + std::to_string(floor_extra) + " minimum" : std::string()) +
              " (needs >= " + std::to_string(need) + ")";
        return false;
    }
    const int64_t cap = max_layer_budget < 0 ? ((int64_t) 1 << 62) : max_layer_budget - keep;
    std::vector<int64_t> extra;
    if (!llama_tappa_split_integer(weights, total - n * keep,
            std::vector<int64_t>(n, floor_extra), std::vector<int64_t>(n, cap), extra, err)) {
        return false;
    }
    out.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        out[i] = keep + extra[i];
    }
    return true;
}
