// tappa-local: how tokens are ranked for eviction.
//
// One policy = one small class behind llama_tappa_scorer_i. A scorer adds the ops that
// compute a score per (cell, KV head) of one layer to the eviction graph; everything else
// — keeping the sinks and the recent window, ignoring empty cells, picking the top
// budget per head, moving the kept rows — is shared (llama-kv-cache-tappa.cpp).
#pragma once

#include "llama-graph.h"
#include "llama-tappa-model.h"

#include <cstdint>
#include <memory>
#include <vector>

// host data uploaded into graph inputs when the eviction graph runs
class llama_tappa_host_inputs : public llm_graph_input_i {
public:
    ggml_tensor * f32(ggml_context * ctx, int64_t ne0, int64_t ne1, std::vector<float>   data, const char * name);
    ggml_tensor * i64(ggml_context * ctx, int64_t ne0,                std::vector<int64_t> data, const char * name);

    void set_input(const llama_ubatch * ubatch) override;

private:
    struct entry {
        ggml_tensor *     t;
        std::vector<char> bytes;
    };
    std::vector<entry> entries;
};

// what a scorer sees of one layer
struct llama_tappa_score_args {
    ggml_context * ctx;
    llama_tappa_host_inputs * inputs;

    int32_t  il;        // model layer
    uint32_t n_kv;      // cells scored: [0, n_kv)
    uint32_t n_head_kv;

    ggml_tensor * k;    // [head_dim, n_kv, n_head_kv] view of the layer's stored (RoPE'd) keys
    ggml_tensor * v;    // [head_dim_v, n_kv, n_head_kv] view of the stored values

    // position of the token each (cell, head) holds: pos[h*n_kv + cell], -1 if empty
    const std::vector<int32_t> * pos;
};

class llama_tappa_scorer_i {
public:
    virtual ~llama_tappa_scorer_i() = default;

    virtual const char * name() const = 0;

    // F32 [n_kv, n_head_kv]; higher is kept first
    virtual ggml_tensor * build_scores(const llama_tappa_score_args & a) = 0;
};

// StreamingLLM: the score is the token's position, so the budget left after the sinks goes
// to the most recent tokens
class llama_tappa_scorer_sink_recent : public llama_tappa_scorer_i {
public:
    const char * name() const override { return "sink_recent"; }

    ggml_tensor * build_scores(const llama_tappa_score_args & a) override;
};

// nullptr if `kind` (enum llama_tappa_scorer) is unknown
std::unique_ptr<llama_tappa_scorer_i> llama_tappa_make_scorer(int32_t kind);
