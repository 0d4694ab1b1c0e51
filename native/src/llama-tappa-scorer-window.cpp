// tappa-local: SnapKV and CAKE token scores from the recent queries' attention.
//
//   s[j, h] = mean_w A[j, w, h] + gamma * var_w A[j, w, h]      (gamma = 0: SnapKV)
//   score[j, kv] = mean over the query heads h of KV head kv, average-pooled along positions
//
// A is the softmax attention of the last `window` queries (post-RoPE, recorded while the
// prompt ran) over all cached keys, causal by position. The variance is the population
// variance over the window. Unlike the reference code, pooling runs over every cached token
// (the window included) in position order; the window itself is always kept.
#include "llama-tappa-scorer.h"

ggml_tensor * llama_tappa_scorer_window::build(const llama_tappa_layer_view & v) {
    GGML_ASSERT(v.win_attn && "window scorers need the recorded queries");
    const uint32_t n_kv = v.n_kv, Hkv = v.n_head_kv, G = v.n_head / v.n_head_kv;
    const int64_t  W    = v.win_attn->ne[1];

    ggml_tensor * at = ggml_cont(v.ctx, ggml_permute(v.ctx, v.win_attn, 1, 0, 2, 3));        // [W, n_kv, G, Hkv]
    ggml_tensor * s  = ggml_scale(v.ctx, ggml_sum_rows(v.ctx, at), 1.0f / (float) W);         // [1, n_kv, G, Hkv]
    if (gamma > 0.0f) {
        ggml_tensor * m2  = ggml_scale(v.ctx, ggml_sum_rows(v.ctx, ggml_sqr(v.ctx, at)), 1.0f / (float) W);
        ggml_tensor * var = ggml_sub(v.ctx, m2, ggml_sqr(v.ctx, s));
        s = ggml_add(v.ctx, s, ggml_scale(v.ctx, var, gamma));
    }
    s = llama_tappa_mean_over_group(v.ctx, s, n_kv, G, Hkv);                                 // [n_kv, Hkv]
    return llama_tappa_pool_by_position(v, s, v.cfg->p.pool_kernel);
}
