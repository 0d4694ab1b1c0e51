// tappa-local: per-layer KV budgets from a total.
//
// The arithmetic mirrors tappa_local/budget.py operation for operation (tests check that
// both give identical budgets): proportional split of the part above n_sink + window,
// clamping with surplus redistribution, largest-remainder rounding to an exact sum.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

// integers in [lo, hi] summing to total, proportional to weights; false + err if impossible
bool llama_tappa_split_integer(
        const std::vector<double>  & weights,
        int64_t                      total,
        const std::vector<int64_t> & lo,
        const std::vector<int64_t> & hi,
        std::vector<int64_t>       & out,
        std::string                & err);

std::vector<double> llama_tappa_pyramid_weights(uint32_t n_layer, double beta);

// B_l = n_sink + window + extra_l, sum B_l == total; max_layer_budget < 0: unbounded
bool llama_tappa_layer_budgets(
        const std::vector<double> & weights,
        int64_t                     total,
        int32_t                     n_sink,
        int32_t                     window,
        int32_t                     min_layer_budget,
        int64_t                     max_layer_budget,
        std::vector<int64_t>      & out,
        std::string               & err);
