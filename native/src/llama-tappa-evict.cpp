// tappa-local: eviction in the per-layer KV cache.
//
// One eviction, for every layer holding more tokens than its budget:
//   1. score  — a graph computes each cell's score per KV head (and, for prompt-adaptive
//               allocations, each layer's window statistics); results are read back;
//   2. budget — prompt-adaptive allocations re-split the total over layers;
//   3. select — on the host, each KV head keeps its sinks, its recent window and the
//               best-scoring rest up to the budget; ties go to the newer token;
//   4. compact— a graph gathers the kept K/V rows of every head (get_rows) and writes them to
//               slots [0, kept) (set_rows), into new storage when a budget changed the
//               layer's capacity; the cells are rewritten to match.
// All device work is ggml ops, so every backend runs the same graphs.
#include "llama-kv-cache-tappa.h"

#include "llama-context.h"
#include "llama-impl.h"
#include "llama-model.h"
#include "llama-tappa-budget.h"
#include "llama-tappa-scorer.h"

#include <algorithm>
#include <cmath>
#include <numeric>

struct llama_kv_cache_tappa::layer_plan {
    uint32_t i     = 0;       // layer index
    uint32_t n_kv  = 0;       // cells [0, n_kv) hold the layer's tokens (some may be empty)
    uint32_t used  = 0;
    int32_t  pos_max = -1;
    std::vector<int32_t> pos; // [H][n_kv], -1: empty

    std::vector<float> score; // [H][n_kv]
    ggml_tensor * score_t = nullptr;
    ggml_tensor * stats_t = nullptr;

    uint32_t budget   = 0;    // budget after this eviction
    uint32_t capacity = 0;    // capacity after this eviction
    uint32_t n_keep   = 0;    // tokens per head after this eviction
    std::vector<int32_t> idx; // [H][n_keep] kept cells, in position order

    std::unique_ptr<llama_kv_cache> new_child; // when the capacity changes

    bool evicts() const { return used > budget; }
};

// an empty graph in the context's reserve graph result, on a reset scheduler
struct tappa_graph {
    llm_graph_result * res;
    ggml_context     * ctx;
    ggml_cgraph      * gf;
};

static tappa_graph begin_graph(llama_context * lctx) {
    ggml_backend_sched_reset(lctx->get_sched());
    auto * res = lctx->get_gf_res_reserve();
    res->reset();
    return { res, res->get_ctx(), res->get_gf() };
}

// allocate, feed and run one of the eviction graphs; on failure the error names the graph
static bool run_graph(llama_context * lctx, llm_graph_result * res, ggml_cgraph * gf, const char * what) {
    auto * sched = lctx->get_sched();
    if (!ggml_backend_sched_alloc_graph(sched, gf)) {
        llama_tappa_set_error(LLAMA_TAPPA_ERR_COMPUTE, std::string("failed to allocate the ") + what + " graph");
        LLAMA_LOG_ERROR("%s: tappa: failed to allocate the %s graph\n", __func__, what);
        return false;
    }
    res->set_inputs(nullptr);
    if (lctx->graph_compute(gf, false) != GGML_STATUS_SUCCESS) {
        llama_tappa_set_error(LLAMA_TAPPA_ERR_COMPUTE, std::string("failed to compute the ") + what + " graph");
        LLAMA_LOG_ERROR("%s: tappa: failed to compute the %s graph\n", __func__, what);
        return false;
    }
    ggml_backend_sched_synchronize(sched);
    return true;
}

int64_t llama_kv_cache_tappa::evict(llama_context * lctx) {
    force_evict = false;
    const int64_t t0 = ggml_time_us();
    const bool dynamic = llama_tappa_allocation_adapts(cfg.p.allocation);
    const uint32_t H = n_head_kv_;

    std::vector<layer_plan> plans;
    for (uint32_t i = 0; i < layers.size(); ++i) {
        const uint32_t used = layer_used(i);
        if (used == 0 || (!dynamic && used <= layers[i].budget)) {
            continue;
        }
        layer_plan pl;
        pl.i        = i;
        pl.used     = used;
        pl.budget   = layers[i].budget;
        pl.capacity = layers[i].capacity;
        const auto & cells = children[i]->v_cells[0];
        pl.n_kv = cells.used_max_p1();
        pl.pos.assign((size_t) H * pl.n_kv, -1);
        for (uint32_t j = 0; j < pl.n_kv; ++j) {
            if (cells.is_empty(j)) {
                continue;
            }
            for (uint32_t h = 0; h < H; ++h) {
                const llama_pos p = cell_pos(i, j, h);
                pl.pos[(size_t) h * pl.n_kv + j] = p;
                pl.pos_max = std::max(pl.pos_max, p);
            }
        }
        plans.push_back(std::move(pl));
    }
    if (plans.empty()) {
        return 0;
    }

    // 1. score
    std::vector<float> stats;
    if (!score_layers(lctx, plans, stats)) {
        return -1;
    }
    const int64_t t1 = ggml_time_us();

    // 2. budget
    std::string err;
    if (dynamic && !reallocate(stats, plans, err)) {
        llama_tappa_set_error(LLAMA_TAPPA_ERR_BUDGET, "re-allocation failed: " + err);
        LLAMA_LOG_ERROR("%s: tappa: re-allocation failed: %s\n", __func__, err.c_str());
        return -1;
    }
    const int64_t t2 = ggml_time_us();

    // 3. select
    for (auto & pl : plans) {
        select(pl);
    }
    const int64_t t3 = ggml_time_us();

    // 4. compact
    int64_t dropped = 0;
    for (const auto & pl : plans) {
        dropped += (int64_t) pl.used - pl.n_keep;
    }
    if (!compact(lctx, plans)) {
        return -1;
    }
    const int64_t t4 = ggml_time_us();

    ev_stats.n_evictions += 1;
    ev_stats.score_us    += t1 - t0;
    ev_stats.select_us   += t3 - t2;
    ev_stats.compact_us  += t4 - t3;
    ev_stats.realloc_us  += t2 - t1;
    evicted_any = evicted_any || dropped > 0;
    return dropped;
}

bool llama_kv_cache_tappa::score_layers(llama_context * lctx, std::vector<layer_plan> & plans, std::vector<float> & stats) {
    const bool dynamic = llama_tappa_allocation_adapts(cfg.p.allocation);
    auto scorer = llama_tappa_make_scorer(cfg.p);
    GGML_ASSERT(scorer); // validated at creation

    const bool host_scores = cfg.p.scorer == LLAMA_TAPPA_SCORER_SINK_RECENT;
    if (host_scores) {
        for (auto & pl : plans) {
            pl.score.assign(pl.pos.begin(), pl.pos.end()); // the newest tokens score highest
        }
        if (!dynamic) {
            return true;
        }
    }

    const auto & hp = model.hparams;
    const uint32_t H = n_head_kv_;
    const float kq_scale = hp.f_attention_scale != 0.0f ? hp.f_attention_scale : 1.0f / std::sqrt((float) hp.n_embd_head_k(0));

    auto [res, ctx, gf] = begin_graph(lctx);
    auto inputs_owned = std::make_unique<llama_tappa_host_inputs>();

    for (auto & pl : plans) {
        auto & c = *children[pl.i];
        const auto & kvl = c.layers[0];
        const int64_t D  = kvl.k->ne[0] / H;
        const int64_t Dv = kvl.v->ne[0] / H;

        llama_tappa_layer_view v {};
        v.ctx       = ctx;
        v.inputs    = inputs_owned.get();
        v.model     = &model;
        v.cparams   = &lctx->get_cparams();
        v.cfg       = &cfg;
        v.profile   = &profile;
        v.il        = layers[pl.i].il;
        v.index     = (int32_t) pl.i;
        v.n_kv      = pl.n_kv;
        v.n_head    = hp.n_head(v.il);
        v.n_head_kv = H;
        v.head_dim  = (uint32_t) D;
        v.kq_scale  = kq_scale;
        // [D, n_kv, 1, H] views: rows stay contiguous
        v.k = ggml_permute(ctx, ggml_view_4d(ctx, kvl.k, D, H, pl.n_kv, 1,
                ggml_row_size(kvl.k->type, D), kvl.k->nb[1], kvl.k->nb[1] * pl.n_kv, 0), 0, 3, 1, 2);
        v.v = ggml_permute(ctx, ggml_view_4d(ctx, kvl.v, Dv, H, pl.n_kv, 1,
                ggml_row_size(kvl.v->type, Dv), kvl.v->nb[1], kvl.v->nb[1] * pl.n_kv, 0), 0, 3, 1, 2);
        v.pos     = &pl.pos;
        v.pos_max = pl.pos_max;

        ggml_tensor * q_win = layers[pl.i].q_win;
        if (q_win && (scorer->needs_window_attention() || dynamic)) {
            v.win_attn = llama_tappa_window_attention(v, q_win, q_pos);
        }
        if (!host_scores) {
            pl.score_t = scorer->build(v);
            ggml_set_output(pl.score_t);
            ggml_build_forward_expand(gf, pl.score_t);
        }
        if (dynamic) {
            pl.stats_t = llama_tappa_window_stats(v, q_win, q_pos, (uint32_t) cfg.p.window);
            ggml_set_output(pl.stats_t);
            ggml_build_forward_expand(gf, pl.stats_t);
        }
    }
    res->add_input(std::move(inputs_owned));

    if (!run_graph(lctx, res, gf, "scoring")) {
        return false;
    }

    stats.assign(layers.size() * 3, 0.0f);
    for (auto & pl : plans) {
        if (pl.score_t) {
            pl.score.resize((size_t) H * pl.n_kv);
            ggml_backend_tensor_get(pl.score_t, pl.score.data(), 0, pl.score.size() * sizeof(float));
        }
        if (pl.stats_t) {
            ggml_backend_tensor_get(pl.stats_t, stats.data() + (size_t) pl.i * 3, 0, 3 * sizeof(float));
        }
    }
    return true;
}

bool llama_kv_cache_tappa::reallocate(const std::vector<float> & stats, std::vector<layer_plan> & plans, std::string & err) {
    const auto & p = cfg.p;
    const size_t L = layers.size();
    const uint32_t n_head = model.hparams.n_head(0);

    uint32_t n_valid = 0;
    for (int32_t qp : q_pos) {
        n_valid += qp >= 0 ? 1 : 0;
    }
    // online q-similarity: mean off-diagonal cosine between the recorded window queries
    std::vector<double> qsim(L, 0.0), cake(L, 0.0);
    for (size_t i = 0; i < L; ++i) {
        const double ent = std::max(0.0f, stats[i * 3 + 0]);
        const double var = std::max(0.0f, stats[i * 3 + 1]);
        cake[i] = std::pow(ent, 1.0 / p.cake_tau1) * std::pow(var, 1.0 / p.cake_tau2);
        if (n_valid > 1) {
            qsim[i] = (stats[i * 3 + 2] - (double) n_valid * n_head) / ((double) n_valid * (n_valid - 1) * n_head);
        }
    }
    auto mean = [](const std::vector<double> & x) {
        double s = 0.0;
        for (double v : x) {
            s += v;
        }
        return s / (double) x.size();
    };

    std::vector<double> w(L, 1.0);
    if (p.allocation == LLAMA_TAPPA_ALLOC_CAKE) {
        w = cake;
    } else if (p.allocation == LLAMA_TAPPA_ALLOC_TAPPA_CAKE) {
        // both terms normalised to mean 1 over layers, so alpha alone weighs them
        std::vector<double> t(L);
        for (size_t i = 0; i < L; ++i) {
            t[i] = 1.0 - qsim[i];
        }
        const double mc = mean(cake), mt = mean(t);
        for (size_t i = 0; i < L; ++i) {
            w[i] = (mc > 0 ? cake[i] / mc : 0.0) + p.cake_alpha * (mt > 0 ? t[i] / mt : 0.0);
        }
    } else { // TAPPA_LIVE
        const bool prior = !profile.qsim_layer.empty() && profile.error.empty();
        const double lam = prior ? std::clamp((double) p.qsim_prior_weight, 0.0, 1.0) : 0.0;
        for (size_t i = 0; i < L; ++i) {
            const double q = lam * (prior ? profile.qsim_layer[i] : 0.0) + (1.0 - lam) * qsim[i];
            w[i] = 1.0 - q;
        }
    }
    for (double & x : w) {
        if (!std::isfinite(x) || x < 0.0) {
            x = 0.0;
        }
    }

    std::vector<int64_t> budgets;
    if (!llama_tappa_layer_budgets(w, p.total_budget, p.n_sink, p.window, p.min_layer_budget, n_ctx_seq, budgets, err)) {
        return false;
    }
    for (auto & pl : plans) {
        pl.budget   = (uint32_t) budgets[pl.i];
        pl.capacity = std::min<uint32_t>(n_ctx_seq, pl.budget + (uint32_t) p.headroom);
    }
    return true;
}

void llama_kv_cache_tappa::select(layer_plan & pl) const {
    const uint32_t H = n_head_kv_;
    const uint32_t S = (uint32_t) cfg.p.n_sink;
    const uint32_t W = (uint32_t) cfg.p.window;
    pl.n_keep = std::min(pl.used, pl.budget);
    pl.idx.assign((size_t) H * pl.n_keep, -1);

    // layer-wise: one choice for all heads, on scores summed over heads
    const bool headwise = cfg.p.headwise != 0;
    std::vector<float> shared;
    if (!headwise) {
        shared.assign(pl.n_kv, 0.0f);
        for (uint32_t h = 0; h < H; ++h) {
            for (uint32_t j = 0; j < pl.n_kv; ++j) {
                shared[j] += pl.score[(size_t) h * pl.n_kv + j];
            }
        }
    }

    std::vector<int32_t> forced, rest;
    for (uint32_t h = 0; h < (headwise ? H : 1); ++h) {
        const int32_t * p = pl.pos.data() + (size_t) h * pl.n_kv;
        const float   * s = headwise ? pl.score.data() + (size_t) h * pl.n_kv : shared.data();
        forced.clear();
        rest.clear();
        for (uint32_t j = 0; j < pl.n_kv; ++j) {
            if (p[j] < 0) {
                continue;
            }
            const bool keep = (uint32_t) p[j] < S || (int64_t) p[j] > (int64_t) pl.pos_max - (int64_t) W;
            (keep ? forced : rest).push_back((int32_t) j);
        }
        GGML_ASSERT(forced.size() <= pl.n_keep && "tappa: budget below sinks + window");
        const size_t n_rest = pl.n_keep - forced.size();
        // best score first; ties go to the newer token
        std::partial_sort(rest.begin(), rest.begin() + n_rest, rest.end(), [s, p](int32_t a, int32_t b) {
            return s[a] != s[b] ? s[a] > s[b] : p[a] > p[b];
        });
        forced.insert(forced.end(), rest.begin(), rest.begin() + n_rest);
        std::sort(forced.begin(), forced.end(), [p](int32_t a, int32_t b) { return p[a] < p[b]; });
        for (uint32_t hh = headwise ? h : 0; hh < (headwise ? h + 1 : H); ++hh) {
            std::copy(forced.begin(), forced.end(), pl.idx.begin() + (size_t) hh * pl.n_keep);
        }
    }
}

bool llama_kv_cache_tappa::compact(llama_context * lctx, std::vector<layer_plan> & plans) {
    const uint32_t H = n_head_kv_;

    // new storage for layers whose capacity changes
    for (auto & pl : plans) {
        if (pl.capacity != layers[pl.i].capacity) {
            pl.new_child = make_child(layers[pl.i].il, pl.capacity);
        }
    }

    auto [res, ctx, gf] = begin_graph(lctx);
    auto inputs_owned = std::make_unique<llama_tappa_host_inputs>();
    bool any = false;

    for (auto & pl : plans) {
        if (pl.n_keep == pl.used && !pl.new_child && pl.n_keep == pl.n_kv) {
            // nothing moves: every cell is kept in place ... unless heads differ in order
            bool identity = true;
            for (uint32_t h = 0; h < H && identity; ++h) {
                for (uint32_t s = 0; s < pl.n_keep; ++s) {
                    identity &= pl.idx[(size_t) h * pl.n_keep + s] == (int32_t) s;
                }
            }
            if (identity) {
                continue;
            }
        }
        const auto & src = children[pl.i]->layers[0];
        const auto & dst = (pl.new_child ? pl.new_child.get() : children[pl.i].get())->layers[0];
        const int64_t D  = src.k->ne[0] / H;
        const int64_t Dv = src.v->ne[0] / H;

        auto view3 = [&](ggml_tensor * t, int64_t d, uint32_t n) {
            return ggml_permute(ctx, ggml_view_3d(ctx, t, d, H, n, ggml_row_size(t->type, d), t->nb[1], 0), 0, 2, 1, 3);
        };
        ggml_tensor * idx = inputs_owned->i32(ctx, { pl.n_keep, H }, pl.idx, "tappa_keep");
        std::vector<int64_t> rows(pl.n_keep);
        std::iota(rows.begin(), rows.end(), 0);
        ggml_tensor * rows_t = inputs_owned->i64(ctx, { pl.n_keep }, std::move(rows), "tappa_slots");

        ggml_build_forward_expand(gf, ggml_set_rows(ctx, view3(dst.k, D, pl.n_keep),
                ggml_get_rows(ctx, view3(src.k, D, pl.n_kv), idx), rows_t));
        ggml_build_forward_expand(gf, ggml_set_rows(ctx, view3(dst.v, Dv, pl.n_keep),
                ggml_get_rows(ctx, view3(src.v, Dv, pl.n_kv), idx), rows_t));
        any = true;
    }
    res->add_input(std::move(inputs_owned));

    if (any && !run_graph(lctx, res, gf, "compaction")) {
        return false;
    }

    // the data moved; now the cells: slot s holds, in head h, the token of cell idx[h][s]
    for (auto & pl : plans) {
        auto & st = layers[pl.i];
        if (pl.new_child) {
            children[pl.i] = std::move(pl.new_child);
        }
        auto & c     = *children[pl.i];
        auto & cells = c.v_cells[0];

        std::vector<llama_pos> head_pos((size_t) pl.n_keep * H);
        for (uint32_t h = 0; h < H; ++h) {
            for (uint32_t s = 0; s < pl.n_keep; ++s) {
                const int32_t j = pl.idx[(size_t) h * pl.n_keep + s];
                GGML_ASSERT(j >= 0 && (uint32_t) j < pl.n_kv);
                const llama_pos p = pl.pos[(size_t) h * pl.n_kv + j];
                GGML_ASSERT(p >= 0 && "tappa: an empty cell was selected");
                head_pos[(size_t) s * H + h] = p;
            }
        }
        cells.reset();
        for (uint32_t s = 0; s < pl.n_keep; ++s) {
            llama_pos p = -1;
            for (uint32_t h = 0; h < H; ++h) {
                p = std::max(p, head_pos[(size_t) s * H + h]);
            }
            cells.pos_set(s, p);
            cells.seq_add(s, 0);
        }
        c.v_heads[0] = pl.n_keep < cells.size() ? pl.n_keep : 0;

        if (pl.used > pl.n_keep) {
            st.n_evictions += 1;
            st.n_evicted   += pl.used - pl.n_keep;
        }
        st.budget     = pl.budget;
        st.capacity   = pl.capacity;
        st.head_pos   = std::move(head_pos);
        st.n_headwise = pl.n_keep;
    }
    return true;
}

double llama_kv_cache_tappa::time_qsim(llama_context * lctx, int32_t n_iter) {
    if (!want_queries || layers.empty() || n_iter < 1) {
        return -1.0;
    }
    const auto & hp = model.hparams;
    const uint32_t W = (uint32_t) q_pos.size();
    double total_us = 0.0;
    for (int32_t it = 0; it < n_iter; ++it) {
        auto [res, ctx, gf] = begin_graph(lctx);
        auto * sched = lctx->get_sched();
        std::vector<ggml_tensor *> outs;
        for (const auto & st : layers) {
            const int64_t D = hp.n_embd_head_k(st.il), H = hp.n_head(st.il);
            // the same ops as llama_tappa_window_stats' q-similarity part
            ggml_tensor * q = ggml_view_3d(ctx, st.q_win, D, H, W, ggml_row_size(GGML_TYPE_F32, D), st.q_win->nb[1], 0);
            q = ggml_l2_norm(ctx, ggml_cont(ctx, ggml_permute(ctx, q, 0, 2, 1, 3)), 1e-8f);
            ggml_tensor * sim = ggml_sum(ctx, ggml_mul_mat(ctx, q, q));
            ggml_set_output(sim);
            ggml_build_forward_expand(gf, sim);
            outs.push_back(sim);
        }
        if (!ggml_backend_sched_alloc_graph(sched, gf)) {
            return -1.0;
        }
        const int64_t t0 = ggml_time_us();
        if (lctx->graph_compute(gf, false) != GGML_STATUS_SUCCESS) {
            return -1.0;
        }
        ggml_backend_sched_synchronize(sched);
        total_us += (double) (ggml_time_us() - t0);
    }
    return total_us / n_iter / (double) layers.size();
}
