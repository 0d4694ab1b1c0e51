// tappa-local: Expected Attention (the kvpress idea) from calibrated query statistics.
//
// Future queries are modelled as q ~ N(mu, diag(var)) before RoPE (tappa.qstats.*, measured
// by the calibrator after q-norm). Rotating mu by RoPE at the next `horizon` positions and
// averaging gives mu_rot; then for a key k (RoPE'd, as stored)
//
//   E[exp(s q.k)] = exp(s k.mu_rot + s^2/2 k^2.var)          (var is tied across RoPE pairs,
//                                                              so rotation leaves it unchanged)
//
// and the score is the softmax of that logit over the cached keys, averaged over the query
// heads of each KV head, optionally times ||v||. It needs no queries at all, so it also
// serves decode-time eviction.
#include "llama-tappa-scorer.h"

#include "llama-cparams.h"
#include "llama-model.h"

#include <cmath>

// calibrator statistics are in transformers' rotate_half layout (pairs i, i + n_rot/2);
// for NORM RoPE the converter interleaved q/k rows (pairs 2i, 2i+1), so follow it
static std::vector<float> to_cache_layout(const float * x, uint32_t D, uint32_t n_rot, bool interleave) {
    std::vector<float> out(x, x + D);
    if (interleave) {
        for (uint32_t i = 0; i < n_rot / 2; ++i) {
            out[2 * i]     = x[i];
            out[2 * i + 1] = x[i + n_rot / 2];
        }
    }
    return out;
}

ggml_tensor * llama_tappa_scorer_expected::build(const llama_tappa_layer_view & v) {
    const auto & prof = *v.profile;
    const auto & hp   = v.model->hparams;
    const uint32_t D = v.head_dim, H = v.n_head, Hkv = v.n_head_kv, G = H / Hkv, n_kv = v.n_kv;
    const uint32_t T = (uint32_t) std::max(1, v.cfg->p.ea_horizon);
    const uint32_t n_rot = hp.n_rot(v.il);
    const bool interleave = hp.rope_type == LLAMA_ROPE_TYPE_NORM;

    std::vector<float> mu((size_t) D * H), var((size_t) D * H);
    for (uint32_t h = 0; h < H; ++h) {
        const size_t off = ((size_t) v.index * H + h) * D;
        const auto m = to_cache_layout(prof.q_mean.data() + off, D, n_rot, interleave);
        const auto s = to_cache_layout(prof.q_var.data()  + off, D, n_rot, interleave);
        std::copy(m.begin(), m.end(), mu.begin()  + (size_t) h * D);
        std::copy(s.begin(), s.end(), var.begin() + (size_t) h * D);
    }

    // mu rotated to each of the next T positions with the model's own RoPE, then averaged
    std::vector<int32_t> fut(T);
    for (uint32_t t = 0; t < T; ++t) {
        fut[t] = v.pos_max + 1 + (int32_t) t;
    }
    const auto & cp = *v.cparams;
    ggml_tensor * mu_t = v.inputs->f32(v.ctx, { D, H, 1 }, std::move(mu), "tappa_ea_mu");
    ggml_tensor * rot  = ggml_rope_ext(v.ctx, ggml_repeat_4d(v.ctx, mu_t, D, H, T, 1),
            v.inputs->i32(v.ctx, { T }, std::move(fut), "tappa_ea_pos"),
            v.model->get_rope_factors(cp, v.il), n_rot, hp.rope_type, cp.n_ctx_orig_yarn,
            v.model->get_rope_freq_base(cp, v.il), v.model->get_rope_freq_scale(cp, v.il),
            cp.yarn_ext_factor, cp.yarn_attn_factor, cp.yarn_beta_fast, cp.yarn_beta_slow);
    rot = ggml_cont(v.ctx, ggml_transpose(v.ctx, ggml_reshape_2d(v.ctx, rot, (int64_t) D * H, T)));  // [T, D*H]
    rot = ggml_scale(v.ctx, ggml_sum_rows(v.ctx, rot), 1.0f / (float) T);                             // [1, D*H]
    ggml_tensor * mu4  = ggml_reshape_4d(v.ctx, rot, D, 1, G, Hkv);
    ggml_tensor * var4 = v.inputs->f32(v.ctx, { D, 1, G, Hkv }, std::move(var), "tappa_ea_var");

    ggml_tensor * k32 = ggml_cast(v.ctx, v.k, GGML_TYPE_F32);                    // [D, n_kv, 1, Hkv]
    ggml_tensor * lin = ggml_mul_mat(v.ctx, k32, mu4);                            // [n_kv, 1, G, Hkv]
    ggml_tensor * quad = ggml_mul_mat(v.ctx, ggml_sqr(v.ctx, k32), var4);
    const float s = v.kq_scale;
    ggml_tensor * logit = ggml_add(v.ctx, ggml_scale(v.ctx, lin, s), ggml_scale(v.ctx, quad, 0.5f * s * s));

    std::vector<float> mask((size_t) n_kv * Hkv);
    for (size_t i = 0; i < mask.size(); ++i) {
        mask[i] = (*v.pos)[i] < 0 ? -INFINITY : 0.0f;
    }
    ggml_tensor * p = ggml_soft_max_ext(v.ctx, logit,
            v.inputs->f32(v.ctx, { n_kv, 1, 1, Hkv }, std::move(mask), "tappa_ea_mask"), 1.0f, 0.0f);
    ggml_tensor * score = llama_tappa_mean_over_group(v.ctx, p, n_kv, G, Hkv);   // [n_kv, Hkv]

    if (v.cfg->p.ea_value_norm) {
        ggml_tensor * vn = ggml_sum_rows(v.ctx, ggml_sqr(v.ctx, ggml_cast(v.ctx, v.v, GGML_TYPE_F32)));  // [1, n_kv, 1, Hkv]
        score = ggml_mul(v.ctx, score, ggml_reshape_2d(v.ctx, ggml_sqrt(v.ctx, vn), n_kv, Hkv));
    }
    return score;
}
