// tappa-local: how tokens are ranked for eviction.
//
// One policy = one small class behind llama_tappa_scorer_i, in its own file
// (llama-tappa-scorer-*.cpp). A scorer adds the ops that compute a score per (cell, KV head)
// of one layer to the scoring graph; everything else — keeping the sinks and the recent
// window, ignoring empty cells, picking the best `budget` per head, moving the kept rows —
// is shared (llama-kv-cache-tappa.cpp).
#pragma once

#include "llama-graph.h"
#include "llama-tappa-model.h"

#include <cstdint>
#include <memory>
#include <vector>

struct llama_model;
struct llama_cparams;

// host data uploaded into graph inputs when a tappa graph runs
class llama_tappa_host_inputs : public llm_graph_input_i {
public:
    ggml_tensor * f32(ggml_context * ctx, std::vector<int64_t> ne, std::vector<float>   data, const char * name);
    ggml_tensor * i32(ggml_context * ctx, std::vector<int64_t> ne, std::vector<int32_t> data, const char * name);
    ggml_tensor * i64(ggml_context * ctx, std::vector<int64_t> ne, std::vector<int64_t> data, const char * name);

    void set_input(const llama_ubatch * ubatch) override;

private:
    struct entry {
        ggml_tensor *     t;
        std::vector<char> bytes;
    };
    ggml_tensor * add(ggml_context * ctx, ggml_type type, const std::vector<int64_t> & ne, const void * data, size_t nbytes, const char * name);
    std::vector<entry> entries;
};

// what a scorer sees of one layer
struct llama_tappa_layer_view {
    ggml_context            * ctx;
    llama_tappa_host_inputs * inputs;

    const llama_model         * model;
    const llama_cparams       * cparams;
    const llama_tappa_config  * cfg;
    const llama_tappa_profile * profile;

    int32_t  il;          // model layer
    int32_t  index;       // layer index in the tappa cache (profile arrays are indexed by it)
    uint32_t n_kv;        // cells scored: [0, n_kv)
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;
    float    kq_scale;

    ggml_tensor * k;      // [head_dim,   n_kv, 1, n_head_kv] the stored (RoPE'd) keys
    ggml_tensor * v;      // [head_dim_v, n_kv, 1, n_head_kv] the stored values

    // position of the token each (cell, head) holds: pos[h*n_kv + cell], -1 if empty
    const std::vector<int32_t> * pos;
    int32_t pos_max;      // newest position in the layer

    // softmax attention of the recent queries over the cells, [n_kv, W, n_head/n_head_kv, n_head_kv]
    // (key j, window query w, query head g of KV head kv); nullptr unless the scorer asked for it
    ggml_tensor * win_attn;
};

class llama_tappa_scorer_i {
public:
    virtual ~llama_tappa_scorer_i() = default;

    virtual const char * name() const = 0;

    // true: build() uses view.win_attn (the cache then records recent queries)
    virtual bool needs_window_attention() const { return false; }

    // F32 [n_kv, n_head_kv] in cell order; higher is kept first
    virtual ggml_tensor * build(const llama_tappa_layer_view & v) = 0;
};

// StreamingLLM: the score is the token's position, so what the sinks leave goes to the newest tokens
class llama_tappa_scorer_sink_recent : public llama_tappa_scorer_i {
public:
    const char * name() const override { return "sink_recent"; }
    ggml_tensor * build(const llama_tappa_layer_view & v) override;
};

// SnapKV / CAKE: mean (+ gamma * variance) over the recent queries of their attention to each
// cell, averaged over the query heads of a KV head, average-pooled over neighbouring positions
class llama_tappa_scorer_window : public llama_tappa_scorer_i {
public:
    explicit llama_tappa_scorer_window(float gamma) : gamma(gamma) {}
    const char * name() const override { return gamma > 0.0f ? "cake" : "snapkv"; }
    bool needs_window_attention() const override { return true; }
    ggml_tensor * build(const llama_tappa_layer_view & v) override;

private:
    float gamma;
};

// Expected Attention: softmax over cells of E[q.k] for queries drawn from the calibrated
// pre-RoPE query distribution, rotated to the next `horizon` positions; optionally * ||v||
class llama_tappa_scorer_expected : public llama_tappa_scorer_i {
public:
    const char * name() const override { return "expected_attention"; }
    ggml_tensor * build(const llama_tappa_layer_view & v) override;
};

// nullptr if `kind` (enum llama_tappa_scorer) is unknown
std::unique_ptr<llama_tappa_scorer_i> llama_tappa_make_scorer(const llama_tappa_params & p);

//
// shared graph helpers
//

// scores [n_kv, n_head_kv] average-pooled (kernel k, stride 1, out-of-range excluded) along each
// KV head's positions, not along cell order; empty cells count as zeros at the end
ggml_tensor * llama_tappa_pool_by_position(const llama_tappa_layer_view & v, ggml_tensor * score, int kernel);

// sum over the query heads of each KV head: [n_kv, G, n_head_kv] -> [n_kv, n_head_kv], divided by G
ggml_tensor * llama_tappa_mean_over_group(ggml_context * ctx, ggml_tensor * x, uint32_t n_kv, uint32_t G, uint32_t n_head_kv);

// window attention [n_kv, W, G, Hkv] from the recorded queries q_win [head_dim*n_head, W]
// (ring slot w holds the query at position q_pos[w], -1: not recorded yet)
ggml_tensor * llama_tappa_window_attention(const llama_tappa_layer_view & v, ggml_tensor * q_win, const std::vector<int32_t> & q_pos);

// allocation statistics of a layer: F32 [3] = { CAKE entropy, CAKE variance, q-similarity }
ggml_tensor * llama_tappa_window_stats(const llama_tappa_layer_view & v, ggml_tensor * q_win, const std::vector<int32_t> & q_pos, uint32_t window);
