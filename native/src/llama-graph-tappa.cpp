#include "llama-graph-tappa.h"

#include "llama-kv-cache-tappa.h"

llm_graph_input_attn_kv_tappa::llm_graph_input_attn_kv_tappa(
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        const llama_kv_cache_tappa_context * tctx) :
    llm_graph_input_attn_kv(hparams, cparams, nullptr),
    tctx(tctx) {
}

void llm_graph_input_attn_kv_tappa::set_input(const llama_ubatch * ubatch) {
    for (auto & inp : layers) {
        if (inp) {
            inp->set_input(ubatch);
        }
    }
}

bool llm_graph_input_attn_kv_tappa::can_reuse(const llm_graph_params & params) {
    const auto * t = dynamic_cast<const llama_kv_cache_tappa_context *>(params.mctx);
    if (!t) {
        return false;
    }
    tctx = t;

    // the same checks as the stock input, per layer: rebinding each child input to its
    // child context and comparing its tensor shapes with what this ubatch needs
    bool res = true;
    for (size_t il = 0; il < layers.size(); ++il) {
        auto & inp = layers[il];
        if (!inp) {
            continue;
        }
        const llama_kv_cache_context * lctx = t->layer_ctx((int32_t) il);
        if (!lctx) {
            return false;
        }
        inp->mctx = lctx;
        res &= inp->self_k_idxs->ne[0] == params.ubatch.n_tokens;
        res &= inp->self_kq_mask->ne[0] == lctx->get_n_kv();
        res &= inp->self_kq_mask->ne[1] == params.ubatch.n_tokens;
    }
    return res;
}

llm_graph_input_attn_kv * llm_graph_input_attn_kv_tappa::layer_input(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q_cur, int il) {
    GGML_UNUSED(ctx);
    GGML_UNUSED(gf);
    GGML_UNUSED(q_cur);
    GGML_ASSERT(il >= 0 && (size_t) il < layers.size() && layers[il] && "tappa: layer has no KV cache");
    return layers[il].get();
}

std::unique_ptr<llm_graph_input_attn_kv> llama_tappa_build_attn_inp_kv(
        ggml_context * ctx0,
        const llama_ubatch & ubatch,
        const llama_hparams & hparams,
        const llama_cparams & cparams,
        const llama_memory_context_i * mctx) {
    const auto * tctx = dynamic_cast<const llama_kv_cache_tappa_context *>(mctx);
    if (!tctx) {
        return nullptr;
    }

    auto inp = std::make_unique<llm_graph_input_attn_kv_tappa>(hparams, cparams, tctx);
    inp->layers.resize(hparams.n_layer_all);
    for (uint32_t il = 0; il < hparams.n_layer_all; ++il) {
        if (const llama_kv_cache_context * lctx = tctx->layer_ctx((int32_t) il)) {
            inp->layers[il] = build_attn_inp_kv_impl(ctx0, ubatch, hparams, cparams, lctx);
        }
    }
    return inp;
}
