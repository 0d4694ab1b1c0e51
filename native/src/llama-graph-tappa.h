// tappa-local: graph input for the per-layer KV cache.
//
// Models build one attention input (build_attn_inp_kv) and pass it to build_attn for every
// layer. With llama_kv_cache_tappa each layer has its own child cache, so the input wraps
// one stock llm_graph_input_attn_kv per layer (own K/V indices and own mask, sized to that
// layer's n_kv) and hands the right one to build_attn through layer_input().
#pragma once

#include "llama-graph.h"

#include <memory>
#include <vector>

struct llama_kv_cache_context;
class llama_kv_cache_tappa_context;

// upstream's builder for one KV input (made non-static by the patch)
std::unique_ptr<llm_graph_input_attn_kv> build_attn_inp_kv_impl(
        ggml_context * ctx0,
        const llama_ubatch & ubatch,
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        const llama_kv_cache_context * mctx_cur);

class llm_graph_input_attn_kv_tappa : public llm_graph_input_attn_kv {
public:
    llm_graph_input_attn_kv_tappa(
            const llama_hparams & hparams,
            const llama_cparams & cparams,
            const llama_kv_cache_tappa_context * tctx);

    void set_input(const llama_ubatch * ubatch) override;
    bool can_reuse(const llm_graph_params & params) override;

    llm_graph_input_attn_kv * layer_input(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q_cur, int il) override;

    // one per model layer; nullptr for layers without KV
    std::vector<std::unique_ptr<llm_graph_input_attn_kv>> layers;

    // I64 [min(window, n_tokens)]: ring slot (pos % window) of each of the ubatch's last
    // tokens, whose queries are recorded; nullptr when nothing reads them
    ggml_tensor * q_slots = nullptr;
    uint32_t      window  = 0;

private:
    const llama_kv_cache_tappa_context * tctx;
};

// the wrapper when mctx is a llama_kv_cache_tappa_context, nullptr otherwise
std::unique_ptr<llm_graph_input_attn_kv> llama_tappa_build_attn_inp_kv(
        ggml_context * ctx0,
        const llama_ubatch & ubatch,
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        const llama_memory_context_i * mctx);
