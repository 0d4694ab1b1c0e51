// tappa-local: TAPPA-guided per-layer KV budgets and eviction for llama.cpp.
//
// This header is ours; it is not part of upstream llama.cpp. It declares a small C API
// over the `llama_kv_cache_tappa` memory module (native/src/llama-kv-cache-tappa.h):
//
//  - each attention layer l gets its own K/V storage of `capacity_l = budget_l + headroom`
//    cells instead of n_ctx cells, so KV memory really shrinks;
//  - when new tokens do not fit, every layer over budget keeps its `n_sink` first tokens,
//    its `window` most recent tokens and the best-scoring rest up to `budget_l`;
//  - the budgets come from a total and an allocation (uniform, pyramid, TAPPA from the
//    GGUF's `tappa.*` metadata, ...) or are given per layer.
//
// Functions return 0 (or a non-negative value) on success and a negative
// `enum llama_tappa_status` on failure; llama_tappa_last_error() then explains why.
// Bad input never aborts the process.
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a declaration in this header changes. The Python runtime
// refuses a library whose API version differs from the one it was written for.
#define LLAMA_TAPPA_API_VERSION 2

enum llama_tappa_status {
    LLAMA_TAPPA_OK                =  0,
    LLAMA_TAPPA_ERR_INVALID_ARG   = -1, // a parameter is out of range
    LLAMA_TAPPA_ERR_NOT_ENABLED   = -2, // the context does not use the tappa KV cache
    LLAMA_TAPPA_ERR_NO_PROFILE    = -3, // the allocation/scorer needs tappa.* metadata the GGUF does not have
    LLAMA_TAPPA_ERR_BUDGET        = -4, // the budgets cannot be satisfied
    LLAMA_TAPPA_ERR_UNSUPPORTED   = -5, // model or context configuration not supported
    LLAMA_TAPPA_ERR_COMPUTE       = -6, // the eviction graph failed
    LLAMA_TAPPA_ERR_BAD_METADATA  = -7, // tappa.* metadata present but malformed or from another model
};

// How the total budget is split over layers.
enum llama_tappa_allocation {
    LLAMA_TAPPA_ALLOC_DEFAULT    = 0, // the GGUF's tappa.budget.layer_frac, else uniform
    LLAMA_TAPPA_ALLOC_UNIFORM    = 1,
    LLAMA_TAPPA_ALLOC_PYRAMID    = 2, // PyramidKV: linear from bottom to top, ratio set by pyramid_beta
    LLAMA_TAPPA_ALLOC_TAPPA      = 3, // proportional to 1 - q-similarity (the GGUF's tappa.qsim.layer)
    LLAMA_TAPPA_ALLOC_EXPLICIT   = 4, // layer_budgets[] as given
    // prompt-adaptive: re-allocated at every eviction from the recent window's attention;
    // layers whose budget changes get new storage (the total stays the same)
    LLAMA_TAPPA_ALLOC_CAKE       = 5, // CAKE: entropy^(1/tau1) * variance^(1/tau2) of the window attention
    LLAMA_TAPPA_ALLOC_TAPPA_CAKE = 6, // CAKE + cake_alpha * (1 - q-sim), both normalised to mean 1 over layers
    LLAMA_TAPPA_ALLOC_TAPPA_LIVE = 7, // 1 - q-sim of the prompt's own recent queries, blended with the
                                      // calibrated prior (qsim_prior_weight) when the GGUF has one
};

// How tokens are ranked for eviction (the sinks and the recent window are always kept).
enum llama_tappa_scorer {
    LLAMA_TAPPA_SCORER_SINK_RECENT = 0, // StreamingLLM: the most recent tokens
    LLAMA_TAPPA_SCORER_SNAPKV      = 1, // attention of the last `window` queries, averaged, pooled
    LLAMA_TAPPA_SCORER_CAKE        = 2, // SnapKV's mean + cake_gamma * variance over the window
    LLAMA_TAPPA_SCORER_EXPECTED    = 3, // Expected Attention from the GGUF's query statistics (no queries needed)
};

struct llama_tappa_params {
    int32_t enabled;          // 0: contexts get the stock KV cache (nothing changes)
    int32_t total_budget;     // tokens kept per eviction summed over layers, sinks and window included;
                              // 0: the GGUF's tappa.budget.total
    int32_t window;           // recent tokens every layer always keeps; < 0: GGUF default, else 32
    int32_t n_sink;           // first tokens every layer always keeps;  < 0: GGUF default, else 4
    int32_t headroom;         // cells per layer beyond the budget for new tokens between evictions; 0: n_batch
    int32_t allocation;       // enum llama_tappa_allocation
    int32_t scorer;           // enum llama_tappa_scorer
    int32_t min_layer_budget; // floor for every layer's budget (never below n_sink + window)
    float   pyramid_beta;     // PyramidKV beta (> 1): top layer gets total/(beta*L)
    const int32_t * layer_budgets; // allocation == EXPLICIT: n_layer_budgets entries, one per layer
    int32_t n_layer_budgets;

    int32_t headwise;         // 1: each KV head keeps its own tokens; 0: one set per layer (scores summed over heads)
    int32_t pool_kernel;      // SnapKV/CAKE average pooling over neighbouring positions (odd; <= 1: none)
    float   cake_gamma;       // CAKE token score: mean + gamma * variance
    float   cake_tau1;        // CAKE allocation: entropy exponent 1/tau1
    float   cake_tau2;        // CAKE allocation: variance exponent 1/tau2
    float   cake_alpha;       // TAPPA_CAKE: weight of (1 - q-sim) against the CAKE preference
    float   qsim_prior_weight;// TAPPA_LIVE: weight of the calibrated q-sim vs the prompt's (0..1)
    int32_t ea_horizon;       // Expected Attention: future positions the query mean is averaged over
    int32_t ea_value_norm;    // Expected Attention: 1 scales scores by ||v||
};

struct llama_tappa_layer_stats {
    int32_t budget;       // tokens this layer keeps after an eviction (sinks + window included)
    int32_t capacity;     // allocated cells (budget + headroom, at most n_ctx)
    int32_t used;         // cells holding a token now
    int32_t n_kv;         // attention span of the next ubatch
    int64_t kv_bytes;     // bytes of this layer's K and V storage
    int32_t n_evictions;  // evictions this layer went through since the last clear
    int64_t n_evicted;    // tokens dropped by this layer since the last clear
};

// where eviction time goes, summed since the context was created
struct llama_tappa_eviction_stats {
    int32_t n_evictions;
    int64_t score_us;     // building and computing the scoring graph, reading scores back
    int64_t select_us;    // allocation and per-head selection on the host
    int64_t compact_us;   // building and computing the gather/scatter graph, cell bookkeeping
    int64_t realloc_us;   // re-allocating layer storage when a prompt-adaptive allocation changed budgets
};

// "tappa-local/<api> llama-cpp-python/<version>": identifies a patched build.
LLAMA_API const char * llama_tappa_version(void);
LLAMA_API int32_t      llama_tappa_api_version(void);

// Message and status (enum llama_tappa_status) of the last failing tappa call on this
// thread, including a failed context creation ("" / 0 if none).
LLAMA_API const char * llama_tappa_last_error(void);
LLAMA_API int32_t      llama_tappa_last_status(void);

LLAMA_API struct llama_tappa_params llama_tappa_default_params(void);

// Parameters for the next context created *on this thread* (any model); consumed by it.
// This is how a frontend that creates model and context in one call (llama-cpp-python's
// Llama) passes them. p == NULL clears a pending set. Success clears the last error.
LLAMA_API int32_t llama_tappa_set_next_params(const struct llama_tappa_params * p);

// Parameters for every later context of this model (a pending set from
// llama_tappa_set_next_params takes precedence). p == NULL removes them.
LLAMA_API int32_t llama_tappa_model_set_params(const struct llama_model * model, const struct llama_tappa_params * p);

// Whether the GGUF carried a tappa profile (1), none (0), or a malformed one (LLAMA_TAPPA_ERR_BAD_METADATA).
LLAMA_API int32_t llama_tappa_model_has_profile(const struct llama_model * model);

// The budget split shared with tappa_local/budget.py: B_l = n_sink + window + extra_l with
// extra_l proportional to weights[l], clamped to [min_layer_budget, max_layer_budget]
// (< 0: unbounded), summing exactly to total. Returns n_layer or a negative status.
LLAMA_API int32_t llama_tappa_split_budget(
        const float * weights, int32_t n_layer, int32_t total, int32_t n_sink, int32_t window,
        int32_t min_layer_budget, int32_t max_layer_budget, int32_t * out);

// Budgets an allocation would give, without creating a context: out[n_layer].
LLAMA_API int32_t llama_tappa_model_budgets(
        const struct llama_model * model, const struct llama_tappa_params * p, uint32_t n_ctx, int32_t * out, int32_t n_out);

// 1 if ctx uses the tappa KV cache, 0 if it uses another memory module.
LLAMA_API int32_t llama_tappa_enabled(const struct llama_context * ctx);

// Evict now: every layer holding more than its budget is reduced to it.
// Returns the number of tokens dropped (summed over layers), or a negative status.
LLAMA_API int64_t llama_tappa_evict(struct llama_context * ctx);

LLAMA_API int32_t llama_tappa_n_layer(const struct llama_context * ctx);
LLAMA_API int32_t llama_tappa_get_layer_stats(const struct llama_context * ctx, int32_t il, struct llama_tappa_layer_stats * out);

LLAMA_API int32_t llama_tappa_get_eviction_stats(const struct llama_context * ctx, struct llama_tappa_eviction_stats * out);

// Benchmark hook: average microseconds to compute the online q-similarity of one layer from
// its recorded queries (the graph prompt-adaptive TAPPA runs), over n_iter runs of all layers.
// Needs a context whose scorer or allocation records queries.
LLAMA_API double llama_tappa_time_qsim(struct llama_context * ctx, int32_t n_iter);

// Allocated KV bytes over all layers, as llama.cpp accounts them (memory_breakdown); works
// for any context, so the stock cache can be measured the same way.
LLAMA_API int64_t llama_tappa_kv_bytes(const struct llama_context * ctx);

// Bytes of the compute buffers the scheduler holds (all backends), for any context.
LLAMA_API int64_t llama_tappa_compute_bytes(const struct llama_context * ctx);

// Positions held by KV head `head` of layer il, ascending, written to out[0..n).
// Returns how many positions the head holds (may exceed n), or a negative status.
LLAMA_API int32_t llama_tappa_kept_positions(const struct llama_context * ctx, int32_t il, int32_t head, int32_t * out, int32_t n);

#ifdef __cplusplus
}
#endif
