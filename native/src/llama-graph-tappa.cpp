#include "llama-graph-tappa.h"

#include "llama-kv-cache-tappa.h"

#include "ggml-backend.h"

#include <algorithm>
#include <vector>

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
    if (q_slots && q_slots->buffer) {
        const int64_t m = q_slots->ne[0];
        std::vector<int64_t> slots(m);
        for (int64_t t = 0; t < m; ++t) {
            slots[t] = ubatch->pos[ubatch->n_tokens - m + t] % window;
        }
        ggml_backend_tensor_set(q_slots, slots.data(), 0, slots.size() * sizeof(int64_t));
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
    if (q_slots) {
        res &= q_slots->ne[0] == std::min<int64_t>(window, params.ubatch.n_tokens);
    }
    return res;
}

llm_graph_input_attn_kv * llm_graph_input_attn_kv_tappa::layer_input(ggml_context * ctx, ggml_cgraph * gf, ggml_tensor * q_cur, int il) {
    GGML_ASSERT(il >= 0 && (size_t) il < layers.size() && layers[il] && "tappa: layer has no KV cache");
    if (q_slots) {
        // record the layer's newest queries (post-RoPE, as attention sees them) in its ring
        ggml_tensor * q_win = tctx->get_kv()->layer_q_win(il);
        GGML_ASSERT(q_win);
        ggml_tensor * q = ggml_is_contiguous(q_cur) ? q_cur : ggml_cont(ctx, q_cur);
        if (q->type != GGML_TYPE_F32) {
            q = ggml_cast(ctx, q, GGML_TYPE_F32);
        }
        const int64_t n_tokens = q->ne[2];
        const int64_t m        = q_slots->ne[0];
        q = ggml_reshape_2d(ctx, q, q->ne[0] * q->ne[1], n_tokens);
        q = ggml_view_2d(ctx, q, q->ne[0], m, q->nb[1], (n_tokens - m) * q->nb[1]);
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, q_win, q, q_slots));
    }
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
    const llama_kv_cache_tappa * kv = tctx->get_kv();
    if (kv->wants_queries()) {
        inp->window  = kv->window();
        inp->q_slots = ggml_new_tensor_1d(ctx0, GGML_TYPE_I64, std::min<int64_t>(inp->window, ubatch.n_tokens));
        ggml_set_input(inp->q_slots);
        ggml_set_name(inp->q_slots, "tappa_q_slots");
    }
    inp->layers.resize(hparams.n_layer_all);
    for (uint32_t il = 0; il < hparams.n_layer_all; ++il) {
        if (const llama_kv_cache_context * lctx = tctx->layer_ctx((int32_t) il)) {
            inp->layers[il] = build_attn_inp_kv_impl(ctx0, ubatch, hparams, cparams, lctx);
        }
    }
    return inp;
}
