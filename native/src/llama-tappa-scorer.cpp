// tappa-local: shared pieces of the scorers, the sink+recent scorer and the factory.
#include "llama-tappa-scorer.h"

#include "ggml-backend.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

//
// host inputs
//

ggml_tensor * llama_tappa_host_inputs::add(ggml_context * ctx, ggml_type type, const std::vector<int64_t> & ne,
        const void * data, size_t nbytes, const char * name) {
    GGML_ASSERT(!ne.empty() && ne.size() <= 4);
    int64_t d[4] = { 1, 1, 1, 1 };
    for (size_t i = 0; i < ne.size(); ++i) {
        d[i] = ne[i];
    }
    ggml_tensor * t = ggml_new_tensor_4d(ctx, type, d[0], d[1], d[2], d[3]);
    GGML_ASSERT(ggml_nbytes(t) == nbytes);
    ggml_set_input(t);
    ggml_set_name(t, name);
    entry e { t, std::vector<char>(nbytes) };
    std::memcpy(e.bytes.data(), data, nbytes);
    entries.push_back(std::move(e));
    return t;
}

ggml_tensor * llama_tappa_host_inputs::f32(ggml_context * ctx, std::vector<int64_t> ne, std::vector<float> data, const char * name) {
    return add(ctx, GGML_TYPE_F32, ne, data.data(), data.size() * sizeof(float), name);
}

ggml_tensor * llama_tappa_host_inputs::i32(ggml_context * ctx, std::vector<int64_t> ne, std::vector<int32_t> data, const char * name) {
    return add(ctx, GGML_TYPE_I32, ne, data.data(), data.size() * sizeof(int32_t), name);
}

ggml_tensor * llama_tappa_host_inputs::i64(ggml_context * ctx, std::vector<int64_t> ne, std::vector<int64_t> data, const char * name) {
    return add(ctx, GGML_TYPE_I64, ne, data.data(), data.size() * sizeof(int64_t), name);
}

void llama_tappa_host_inputs::set_input(const llama_ubatch * ubatch) {
    GGML_UNUSED(ubatch);
    for (const auto & e : entries) {
        if (e.t->buffer) {
            ggml_backend_tensor_set(e.t, e.bytes.data(), 0, e.bytes.size());
        }
    }
}

//
// shared graph helpers
//

ggml_tensor * llama_tappa_mean_over_group(ggml_context * ctx, ggml_tensor * x, uint32_t n_kv, uint32_t G, uint32_t n_head_kv) {
    x = ggml_reshape_3d(ctx, ggml_cont(ctx, x), n_kv, G, n_head_kv);
    if (G == 1) {
        return ggml_reshape_2d(ctx, x, n_kv, n_head_kv);
    }
    x = ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3)); // [G, n_kv, Hkv]
    x = ggml_sum_rows(ctx, x);                            // [1, n_kv, Hkv]
    return ggml_scale(ctx, ggml_reshape_2d(ctx, x, n_kv, n_head_kv), 1.0f / (float) G);
}

ggml_tensor * llama_tappa_pool_by_position(const llama_tappa_layer_view & v, ggml_tensor * score, int kernel) {
    if (kernel <= 1) {
        return score;
    }
    const uint32_t n_kv = v.n_kv;
    const uint32_t H    = v.n_head_kv;

    // each KV head's cells in position order (empty cells last), and back
    std::vector<int32_t> perm((size_t) n_kv * H), inv((size_t) n_kv * H);
    std::vector<int32_t> order(n_kv);
    for (uint32_t h = 0; h < H; ++h) {
        const int32_t * p = v.pos->data() + (size_t) h * n_kv;
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [p](int32_t a, int32_t b) {
            const bool ea = p[a] < 0, eb = p[b] < 0;
            return ea != eb ? eb : (ea ? false : p[a] < p[b]);
        });
        for (uint32_t r = 0; r < n_kv; ++r) {
            perm[(size_t) h * n_kv + r]        = order[r];
            inv [(size_t) h * n_kv + order[r]] = (int32_t) r;
        }
    }
    ggml_tensor * perm_t = v.inputs->i32(v.ctx, { n_kv, H }, std::move(perm), "tappa_pos_order");
    ggml_tensor * inv_t  = v.inputs->i32(v.ctx, { n_kv, H }, std::move(inv),  "tappa_pos_order_inv");

    ggml_tensor * x = ggml_reshape_3d(v.ctx, ggml_cont(v.ctx, score), 1, n_kv, H);
    x = ggml_get_rows(v.ctx, x, perm_t);                                        // [1, n_kv, H] by position
    x = ggml_pool_1d(v.ctx, ggml_reshape_2d(v.ctx, x, n_kv, H), GGML_OP_POOL_AVG, kernel, 1, kernel / 2);
    x = ggml_get_rows(v.ctx, ggml_reshape_3d(v.ctx, x, 1, n_kv, H), inv_t);     // back to cell order
    return ggml_reshape_2d(v.ctx, x, n_kv, H);
}

ggml_tensor * llama_tappa_window_attention(const llama_tappa_layer_view & v, ggml_tensor * q_win, const std::vector<int32_t> & q_pos) {
    const uint32_t W = (uint32_t) q_pos.size();
    const uint32_t D = v.head_dim, H = v.n_head, Hkv = v.n_head_kv, G = H / Hkv, n_kv = v.n_kv;

    // ring rows [D*H] -> [D, W, G, Hkv]: query head h = kv*G + g, as llama.cpp maps GQA heads
    ggml_tensor * q = ggml_view_4d(v.ctx, q_win, D, G, Hkv, W,
            ggml_row_size(q_win->type, D), ggml_row_size(q_win->type, (int64_t) D * G), q_win->nb[1], 0);
    q = ggml_permute(v.ctx, q, 0, 2, 3, 1);

    ggml_tensor * kq = ggml_mul_mat(v.ctx, v.k, q); // [n_kv, W, G, Hkv]
    ggml_mul_mat_set_prec(kq, GGML_PREC_F32);

    // causal by position, per KV head; rows of ring slots not written yet stay uniform
    std::vector<float> mask((size_t) n_kv * W * Hkv, 0.0f);
    for (uint32_t h = 0; h < Hkv; ++h) {
        const int32_t * p = v.pos->data() + (size_t) h * n_kv;
        for (uint32_t w = 0; w < W; ++w) {
            if (q_pos[w] < 0) {
                continue;
            }
            float * row = mask.data() + ((size_t) h * W + w) * n_kv;
            for (uint32_t j = 0; j < n_kv; ++j) {
                if (p[j] < 0 || p[j] > q_pos[w]) {
                    row[j] = -INFINITY;
                }
            }
        }
    }
    ggml_tensor * mask_t = v.inputs->f32(v.ctx, { n_kv, W, 1, Hkv }, std::move(mask), "tappa_win_mask");
    return ggml_soft_max_ext(v.ctx, kq, mask_t, v.kq_scale, 0.0f);
}

ggml_tensor * llama_tappa_window_stats(const llama_tappa_layer_view & v, ggml_tensor * q_win, const std::vector<int32_t> & q_pos, uint32_t window) {
    const uint32_t W = (uint32_t) q_pos.size();
    const uint32_t D = v.head_dim, H = v.n_head, Hkv = v.n_head_kv, n_kv = v.n_kv;
    GGML_ASSERT(v.win_attn);

    // CAKE looks at the window queries' attention to the cached tokens outside the window
    std::vector<float> keep((size_t) n_kv * Hkv, 0.0f);
    for (size_t i = 0; i < keep.size(); ++i) {
        const int32_t p = (*v.pos)[i];
        keep[i] = (p >= 0 && (int64_t) p <= (int64_t) v.pos_max - (int64_t) window) ? 1.0f : 0.0f;
    }
    ggml_tensor * keep_t = v.inputs->f32(v.ctx, { n_kv, 1, 1, Hkv }, std::move(keep), "tappa_nonwindow");
    ggml_tensor * a = ggml_mul(v.ctx, v.win_attn, keep_t);                               // [n_kv, W, G, Hkv]

    // entropy = -sum a log(a + 1e-10)
    ggml_tensor * ent = ggml_mul(v.ctx, a, ggml_log(v.ctx, ggml_scale_bias(v.ctx, a, 1.0f, 1e-10f)));
    ent = ggml_scale(v.ctx, ggml_sum(v.ctx, ent), -1.0f);

    // variance over the window queries (population), summed over cells and heads
    ggml_tensor * at = ggml_cont(v.ctx, ggml_permute(v.ctx, a, 1, 0, 2, 3));             // [W, n_kv, G, Hkv]
    ggml_tensor * m  = ggml_scale(v.ctx, ggml_sum_rows(v.ctx, at), 1.0f / (float) W);
    ggml_tensor * m2 = ggml_scale(v.ctx, ggml_sum_rows(v.ctx, ggml_sqr(v.ctx, at)), 1.0f / (float) W);
    ggml_tensor * var = ggml_sum(v.ctx, ggml_sub(v.ctx, m2, ggml_sqr(v.ctx, m)));

    // q-similarity: sum of cosines between all pairs of recorded window queries, per head
    std::vector<float> valid(W);
    for (uint32_t w = 0; w < W; ++w) {
        valid[w] = q_pos[w] >= 0 ? 1.0f : 0.0f;
    }
    ggml_tensor * q = ggml_view_3d(v.ctx, q_win, D, H, W, ggml_row_size(q_win->type, D), q_win->nb[1], 0);
    q = ggml_cont(v.ctx, ggml_permute(v.ctx, q, 0, 2, 1, 3));                             // [D, W, H]
    q = ggml_l2_norm(v.ctx, q, 1e-8f);
    q = ggml_mul(v.ctx, q, v.inputs->f32(v.ctx, { 1, W, 1 }, std::move(valid), "tappa_q_valid"));
    ggml_tensor * sim = ggml_sum(v.ctx, ggml_mul_mat(v.ctx, q, q));                        // sum over [W, W, H]

    return ggml_concat(v.ctx, ggml_concat(v.ctx, ent, var, 0), sim, 0);
}

//
// sink + recent
//

ggml_tensor * llama_tappa_scorer_sink_recent::build(const llama_tappa_layer_view & v) {
    // positions up to 2^24 are exact in f32
    std::vector<float> score(v.pos->size());
    for (size_t i = 0; i < score.size(); ++i) {
        score[i] = (float) (*v.pos)[i];
    }
    return v.inputs->f32(v.ctx, { v.n_kv, v.n_head_kv }, std::move(score), "tappa_score_pos");
}

std::unique_ptr<llama_tappa_scorer_i> llama_tappa_make_scorer(const llama_tappa_params & p) {
    switch (p.scorer) {
        case LLAMA_TAPPA_SCORER_SINK_RECENT: return std::make_unique<llama_tappa_scorer_sink_recent>();
        case LLAMA_TAPPA_SCORER_SNAPKV:      return std::make_unique<llama_tappa_scorer_window>(0.0f);
        case LLAMA_TAPPA_SCORER_CAKE:        return std::make_unique<llama_tappa_scorer_window>(p.cake_gamma);
        case LLAMA_TAPPA_SCORER_EXPECTED:    return std::make_unique<llama_tappa_scorer_expected>();
        default:                             return nullptr;
    }
}
