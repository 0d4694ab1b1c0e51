#include "llama-kv-cache-tappa.h"

#include "llama-batch.h"
#include "llama-context.h"
#include "llama-impl.h"
#include "llama-model.h"
#include "llama-tappa-budget.h"
#include "llama-tappa-scorer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

//
// configuration
//

static bool tappa_arch_supported(llm_arch arch) {
    // architectures whose graph builds one standard KV input (build_attn_inp_kv) and
    // attends through build_attn with it, checked in src/models/*.cpp
    switch (arch) {
        case LLM_ARCH_LLAMA:
        case LLM_ARCH_QWEN2:
        case LLM_ARCH_QWEN2MOE:
        case LLM_ARCH_QWEN3:
        case LLM_ARCH_QWEN3MOE:
        case LLM_ARCH_MISTRAL3:
        case LLM_ARCH_GRANITE:
            return true;
        default:
            return false;
    }
}

bool llama_tappa_resolve_config(
        const llama_model         & model,
        const llama_tappa_profile & profile,
        llama_tappa_config        & cfg,
        uint32_t                    n_ctx_seq,
        std::vector<int64_t>      & budgets,
        std::string               & err,
        int32_t                   & status) {
    const auto & hp = model.hparams;
    status = LLAMA_TAPPA_ERR_BUDGET;
    const uint32_t n_layer = hp.n_layer();
    auto & p = cfg.p;

    if (profile.present && profile.error.empty()) {
        // a profile from another model must not steer this one
        std::string diff;
        auto cmp = [&](const char * what, uint32_t have, uint32_t want) {
            if (have != want) {
                diff += std::string(diff.empty() ? "" : ", ") + what + " " + std::to_string(have) + " (model: " + std::to_string(want) + ")";
            }
        };
        cmp("n_layer",   profile.n_layer,   n_layer);
        cmp("n_head",    profile.n_head,    hp.n_head(0));
        cmp("n_head_kv", profile.n_head_kv, hp.n_head_kv(0));
        cmp("head_dim",  profile.head_dim,  hp.n_embd_head_k(0));
        if (!diff.empty()) {
            err = "the GGUF's tappa profile does not match this model: " + diff;
            status = LLAMA_TAPPA_ERR_BAD_METADATA;
            return false;
        }
    }
    const bool have_profile = profile.present && profile.error.empty();

    if (p.window < 0) {
        p.window = have_profile && profile.budget_window >= 0 ? profile.budget_window : 32;
    }
    if (p.n_sink < 0) {
        p.n_sink = have_profile && profile.budget_n_sink >= 0 ? profile.budget_n_sink : 4;
    }
    if (p.total_budget < 0) {
        err = "total_budget must be >= 0, got " + std::to_string(p.total_budget);
        return false;
    }
    if (p.total_budget == 0 && p.allocation != LLAMA_TAPPA_ALLOC_EXPLICIT) {
        if (!have_profile || profile.budget_total == 0) {
            err = "no total budget was given and the GGUF has no tappa.budget.total";
            status = LLAMA_TAPPA_ERR_NO_PROFILE;
            return false;
        }
        p.total_budget = (int32_t) std::min<uint32_t>(profile.budget_total, INT32_MAX);
    }

    std::vector<double> weights(n_layer, 1.0);
    switch (p.allocation) {
        case LLAMA_TAPPA_ALLOC_DEFAULT:
            if (have_profile && !profile.layer_frac.empty()) {
                weights.assign(profile.layer_frac.begin(), profile.layer_frac.end());
            }
            break;
        case LLAMA_TAPPA_ALLOC_UNIFORM:
        case LLAMA_TAPPA_ALLOC_CAKE:
            break;
        case LLAMA_TAPPA_ALLOC_TAPPA_CAKE:
        case LLAMA_TAPPA_ALLOC_TAPPA_LIVE:
            // prompt-adaptive: start from the calibrated prior when there is one
            if (have_profile && !profile.qsim_layer.empty()) {
                for (uint32_t i = 0; i < n_layer; ++i) {
                    weights[i] = 1.0 - (double) profile.qsim_layer[i];
                }
            }
            break;
        case LLAMA_TAPPA_ALLOC_PYRAMID:
            if (!(p.pyramid_beta > 1.0f)) {
                err = "pyramid_beta must be > 1, got " + std::to_string(p.pyramid_beta);
                return false;
            }
            weights = llama_tappa_pyramid_weights(n_layer, (double) p.pyramid_beta);
            break;
        case LLAMA_TAPPA_ALLOC_TAPPA:
            if (!have_profile || profile.qsim_layer.empty()) {
                err = profile.present && !profile.error.empty()
                    ? "the tappa allocation needs the GGUF's profile, which is malformed: " + profile.error
                    : "the tappa allocation needs tappa.qsim.layer: convert or annotate the GGUF with tappa-convert";
                status = profile.present ? LLAMA_TAPPA_ERR_BAD_METADATA : LLAMA_TAPPA_ERR_NO_PROFILE;
                return false;
            }
            for (uint32_t i = 0; i < n_layer; ++i) {
                weights[i] = 1.0 - (double) profile.qsim_layer[i];
            }
            break;
        case LLAMA_TAPPA_ALLOC_EXPLICIT:
            {
                if (cfg.layer_budgets.size() != n_layer) {
                    err = "explicit allocation needs " + std::to_string(n_layer) + " layer budgets, got " +
                          std::to_string(cfg.layer_budgets.size());
                    return false;
                }
                const int64_t keep = (int64_t) p.n_sink + p.window;
                budgets.assign(n_layer, 0);
                int64_t total = 0;
                for (uint32_t i = 0; i < n_layer; ++i) {
                    const int64_t b = cfg.layer_budgets[i];
                    if (b < keep || b < p.min_layer_budget) {
                        err = "layer " + std::to_string(i) + " budget " + std::to_string(b) + " is below n_sink + window (" +
                              std::to_string(keep) + ") or min_layer_budget (" + std::to_string(p.min_layer_budget) + ")";
                        return false;
                    }
                    budgets[i] = std::min<int64_t>(b, n_ctx_seq);
                    total += budgets[i];
                }
                p.total_budget = (int32_t) std::min<int64_t>(total, INT32_MAX);
                return true;
            }
        default:
            err = "unknown allocation " + std::to_string(p.allocation);
            status = LLAMA_TAPPA_ERR_INVALID_ARG;
            return false;
    }
    return llama_tappa_layer_budgets(weights, p.total_budget, p.n_sink, p.window, p.min_layer_budget, n_ctx_seq, budgets, err);
}

llama_memory_i * llama_tappa_create_memory(
        const llama_model         & model,
        const llama_memory_params & params,
        const llama_cparams       & cparams) {
    auto cfg = llama_tappa_take_context_params(&model);
    if (!cfg || !cfg->p.enabled) {
        return nullptr;
    }

    auto fail = [](const std::string & msg, int32_t status = LLAMA_TAPPA_ERR_UNSUPPORTED) -> llama_memory_i * {
        llama_tappa_set_error(status, msg);
        throw std::runtime_error("tappa: " + msg);
    };

    const auto & hp = model.hparams;
    if (!tappa_arch_supported(model.arch)) {
        return fail(std::string("architecture '") + llm_arch_name(model.arch) + "' is not supported by the tappa KV cache");
    }
    if (hp.is_swa_any() || hp.n_layer_kv_from_start >= 0 || hp.n_layer_nextn > 0) {
        return fail("models with sliding-window, shared-KV or next-token-prediction layers are not supported by the tappa KV cache");
    }
    if (params.ctx_type != LLAMA_CONTEXT_TYPE_DEFAULT) {
        return fail("only the default context type is supported by the tappa KV cache");
    }
    if (cparams.n_seq_max != 1) {
        return fail("the tappa KV cache holds one sequence; n_seq_max is " + std::to_string(cparams.n_seq_max));
    }
    for (uint32_t il = 1; il < hp.n_layer(); ++il) {
        if (hp.n_head_kv(il) != hp.n_head_kv(0) || hp.n_embd_head_k(il) != hp.n_embd_head_k(0) ||
            hp.n_embd_head_v(il) != hp.n_embd_head_v(0)) {
            return fail("models whose layers differ in KV head count or head size are not supported by the tappa KV cache");
        }
    }

    const llama_tappa_profile profile = llama_tappa_get_profile(&model);
    std::vector<int64_t> budgets;
    std::string err;
    int32_t status = LLAMA_TAPPA_OK;
    if (!llama_tappa_resolve_config(model, profile, *cfg, cparams.n_ctx_seq, budgets, err, status)) {
        return fail(err, status);
    }

    auto & p = cfg->p;
    if (p.headroom < 0) {
        return fail("headroom must be >= 0, got " + std::to_string(p.headroom), LLAMA_TAPPA_ERR_INVALID_ARG);
    }
    if (p.headroom == 0) {
        p.headroom = (int32_t) cparams.n_batch;
    }
    if ((uint32_t) p.headroom < cparams.n_batch) {
        return fail("headroom " + std::to_string(p.headroom) + " is smaller than n_batch " + std::to_string(cparams.n_batch) +
                    ": a full batch would not fit after an eviction (lower n_batch or raise the headroom)", LLAMA_TAPPA_ERR_BUDGET);
    }
    if (!llama_tappa_make_scorer(p)) {
        return fail("unknown scorer " + std::to_string(p.scorer), LLAMA_TAPPA_ERR_INVALID_ARG);
    }
    if (p.scorer == LLAMA_TAPPA_SCORER_EXPECTED && (!profile.present || !profile.error.empty() || profile.q_mean.empty())) {
        return fail("the expected-attention scorer needs query statistics (tappa.qstats.mean/var): calibrate and "
                    "convert or annotate the GGUF with tappa-convert", profile.present ? LLAMA_TAPPA_ERR_BAD_METADATA : LLAMA_TAPPA_ERR_NO_PROFILE);
    }
    if (p.scorer != LLAMA_TAPPA_SCORER_SINK_RECENT && ggml_is_quantized(params.type_k)) {
        return fail(std::string("scoring with ") + (p.scorer == LLAMA_TAPPA_SCORER_EXPECTED ? "expected attention" : "window attention") +
                    " needs an unquantized K cache (f16, bf16 or f32), got " + ggml_type_name(params.type_k) +
                    "; use the sink_recent scorer with a quantized cache", LLAMA_TAPPA_ERR_UNSUPPORTED);
    }
    if (p.pool_kernel > 1 && p.pool_kernel % 2 == 0) {
        return fail("pool_kernel must be odd, got " + std::to_string(p.pool_kernel), LLAMA_TAPPA_ERR_INVALID_ARG);
    }
    if ((p.allocation == LLAMA_TAPPA_ALLOC_CAKE || p.allocation == LLAMA_TAPPA_ALLOC_TAPPA_CAKE) &&
        !(p.cake_tau1 > 0.0f && p.cake_tau2 > 0.0f)) {
        return fail("cake_tau1 and cake_tau2 must be > 0", LLAMA_TAPPA_ERR_INVALID_ARG);
    }
    if (p.window < 2 && (llama_tappa_make_scorer(p)->needs_window_attention() || llama_tappa_allocation_adapts(p.allocation))) {
        return fail("window attention needs window >= 2", LLAMA_TAPPA_ERR_INVALID_ARG);
    }

    // the budgets become part of the resolved config
    cfg->layer_budgets.assign(budgets.begin(), budgets.end());
    cfg->p.n_layer_budgets = (int32_t) budgets.size();

    return new llama_kv_cache_tappa(model, *cfg, profile, params.type_k, params.type_v, cparams.offload_kqv, cparams.n_ctx_seq);
}

bool llama_tappa_allocation_adapts(int32_t allocation) {
    return allocation == LLAMA_TAPPA_ALLOC_CAKE || allocation == LLAMA_TAPPA_ALLOC_TAPPA_CAKE ||
           allocation == LLAMA_TAPPA_ALLOC_TAPPA_LIVE;
}

//
// llama_kv_cache_tappa
//

llama_kv_cache_tappa::llama_kv_cache_tappa(
        const llama_model         & model,
        const llama_tappa_config  & cfg,
        const llama_tappa_profile & profile,
        ggml_type                   type_k,
        ggml_type                   type_v,
        bool                        offload,
        uint32_t                    n_ctx_seq) :
    model(model), cfg(cfg), profile(profile), type_k(type_k), type_v(type_v), offload(offload), n_ctx_seq(n_ctx_seq) {
    const auto & hp = model.hparams;
    n_head_kv_ = hp.n_head_kv(0);

    size_t total_cells = 0;
    for (uint32_t il = 0; il < hp.n_layer(); ++il) {
        llama_tappa_layer_state st;
        st.il       = (int32_t) il;
        st.budget   = (uint32_t) cfg.layer_budgets.at(il);
        st.capacity = std::min<uint32_t>(n_ctx_seq, st.budget + (uint32_t) cfg.p.headroom);
        children.push_back(make_child((int32_t) il, st.capacity));
        total_cells += st.capacity;
        layers.push_back(std::move(st));
    }

    // the query rings, on the same buffer type as each layer's keys
    const auto scorer = llama_tappa_make_scorer(cfg.p);
    want_queries = scorer->needs_window_attention() || llama_tappa_allocation_adapts(cfg.p.allocation);
    if (want_queries) {
        const uint32_t W = (uint32_t) cfg.p.window;
        q_pos.assign(W, -1);
        std::map<ggml_backend_buffer_type_t, ggml_context_ptr> ctx_map;
        for (uint32_t i = 0; i < layers.size(); ++i) {
            ggml_backend_buffer_type_t buft = ggml_backend_buffer_get_type(children[i]->layers[0].k->buffer);
            auto & ctx = ctx_map[buft];
            if (!ctx) {
                ggml_init_params ip = { /*.mem_size =*/ layers.size() * ggml_tensor_overhead(), /*.mem_buffer =*/ nullptr, /*.no_alloc =*/ true };
                ctx.reset(ggml_init(ip));
            }
            const int64_t n_embd_q = (int64_t) hp.n_embd_head_k(layers[i].il) * hp.n_head(layers[i].il);
            layers[i].q_win = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, n_embd_q, W);
            ggml_format_name(layers[i].q_win, "tappa_q_win_l%d", layers[i].il);
        }
        for (auto & [buft, ctx] : ctx_map) {
            ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx.get(), buft);
            if (!buf) {
                throw std::runtime_error("tappa: failed to allocate the query rings");
            }
            ggml_backend_buffer_clear(buf, 0);
            q_bufs.ctxs_bufs.emplace_back(std::move(ctx), ggml_backend_buffer_ptr(buf));
        }
    }

    LLAMA_LOG_INFO("%s: %zu layers, budget %d tokens (window %d, sinks %d, headroom %d), scorer %s, %zu cells instead of %zu\n",
            __func__, layers.size(), cfg.p.total_budget, cfg.p.window, cfg.p.n_sink, cfg.p.headroom, scorer->name(),
            total_cells, (size_t) n_ctx_seq * layers.size());
}

std::unique_ptr<llama_kv_cache> llama_kv_cache_tappa::make_child(int32_t il, uint32_t capacity) const {
    const llama_memory_i::layer_filter_cb filter_l = [il](int32_t x) { return x == il; };
    // V is stored untransposed in every child: evicting moves whole rows of K and V alike
    // (the non-flash-attention path transposes V on the fly)
    return std::make_unique<llama_kv_cache>(
            model, model.hparams, type_k, type_v, /*v_trans*/ false, offload, /*unified*/ true,
            capacity, /*n_seq_max*/ 1, /*n_pad*/ 1, /*n_swa*/ 0, LLAMA_SWA_TYPE_NONE,
            nullptr, filter_l, nullptr, nullptr);
}

ggml_tensor * llama_kv_cache_tappa::layer_q_win(int32_t il) const {
    const int32_t i = layer_index(il);
    return i < 0 ? nullptr : layers[i].q_win;
}

void llama_kv_cache_tappa::record_queries(const llama_ubatch & ubatch) {
    if (!want_queries) {
        return;
    }
    // mirrors what the graph writes: the last min(W, n_tokens) queries, slot = pos % W
    const uint32_t W = (uint32_t) q_pos.size();
    const uint32_t m = std::min(W, ubatch.n_tokens);
    for (uint32_t t = ubatch.n_tokens - m; t < ubatch.n_tokens; ++t) {
        q_pos[ubatch.pos[t] % W] = ubatch.pos[t];
    }
}

int32_t llama_kv_cache_tappa::layer_index(int32_t il) const {
    for (size_t i = 0; i < layers.size(); ++i) {
        if (layers[i].il == il) {
            return (int32_t) i;
        }
    }
    return -1;
}

uint32_t llama_kv_cache_tappa::layer_used(uint32_t i) const {
    return children[i]->v_cells[0].get_used();
}

llama_pos llama_kv_cache_tappa::cell_pos(uint32_t i, uint32_t cell, uint32_t h) const {
    const auto & st = layers[i];
    return cell < st.n_headwise ? st.head_pos[(size_t) cell * n_head_kv_ + h] : children[i]->v_cells[0].pos_get(cell);
}

std::vector<llama_pos> llama_kv_cache_tappa::head_positions(uint32_t i, uint32_t h) const {
    const auto & cells = children[i]->v_cells[0];
    std::vector<llama_pos> res;
    res.reserve(cells.get_used());
    for (uint32_t c = 0; c < cells.size(); ++c) {
        if (!cells.is_empty(c)) {
            res.push_back(cell_pos(i, c, h));
        }
    }
    std::sort(res.begin(), res.end());
    return res;
}

void llama_kv_cache_tappa::sync_head_pos(uint32_t i) {
    auto & st = layers[i];
    const auto & cells = children[i]->v_cells[0];
    // per-head positions are only valid for slots still holding the compacted token; a
    // slot emptied by seq_rm and refilled later holds one token in every head
    uint32_t n = 0;
    while (n < st.n_headwise && !cells.is_empty(n)) {
        n++;
    }
    st.n_headwise = n;
    st.head_pos.resize((size_t) n * n_head_kv_);
}

bool llama_kv_cache_tappa::needs_eviction(bool optimize) const {
    if (!optimize && !force_evict) {
        return false;
    }
    for (uint32_t i = 0; i < layers.size(); ++i) {
        if (layer_used(i) > layers[i].budget) {
            return true;
        }
    }
    return false;
}

llama_memory_context_ptr llama_kv_cache_tappa::init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) {
    GGML_UNUSED(embd_all);

    if (poisoned) {
        LLAMA_LOG_ERROR("%s: tappa: the sequence was shifted, which the tappa KV cache cannot honour; clear it first\n", __func__);
        return std::make_unique<llama_kv_cache_tappa_context>(LLAMA_MEMORY_STATUS_FAILED_COMPUTE);
    }

    balloc.split_reset();
    std::vector<llama_ubatch> ubatches;
    while (true) {
        auto ubatch = balloc.split_simple(n_ubatch);
        if (ubatch.n_tokens == 0) {
            break;
        }
        ubatches.push_back(std::move(ubatch)); // NOLINT
    }
    if (balloc.get_n_used() < balloc.get_n_tokens()) {
        return std::make_unique<llama_kv_cache_tappa_context>(LLAMA_MEMORY_STATUS_FAILED_PREPARE);
    }

    std::vector<llama_kv_cache::slot_info_vec_t> sinfos;
    sinfos.reserve(children.size());
    for (auto & c : children) {
        auto s = c->prepare(ubatches);
        if (s.empty()) {
            // some layer is full: decode() retries after memory_update(true), which evicts
            return std::make_unique<llama_kv_cache_tappa_context>(LLAMA_MEMORY_STATUS_FAILED_PREPARE);
        }
        sinfos.push_back(std::move(s));
    }
    return std::make_unique<llama_kv_cache_tappa_context>(this, std::move(sinfos), std::move(ubatches));
}

llama_memory_context_ptr llama_kv_cache_tappa::init_full() {
    return std::make_unique<llama_kv_cache_tappa_context>(this);
}

llama_memory_context_ptr llama_kv_cache_tappa::init_update(llama_context * lctx, bool optimize) {
    return std::make_unique<llama_kv_cache_tappa_context>(this, lctx, optimize);
}

void llama_kv_cache_tappa::clear(bool data) {
    for (auto & c : children) {
        c->clear(data);
    }
    for (auto & st : layers) {
        st.head_pos.clear();
        st.n_headwise  = 0;
        st.n_evictions = 0;
        st.n_evicted   = 0;
    }
    std::fill(q_pos.begin(), q_pos.end(), -1);
    evicted_any = false;
    force_evict = false;
    poisoned    = false;
}

bool llama_kv_cache_tappa::seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) {
    if (seq_id > 0) {
        return false; // one sequence only: nothing of another sequence is here
    }
    const bool to_end = p1 < 0 || p1 == std::numeric_limits<llama_pos>::max();
    if (p0 <= 0 && to_end) {
        clear(true);
        return true;
    }
    if (evicted_any && !to_end) {
        // removing a middle range would leave tokens after it whose neighbours are gone in
        // some layers and not in others; refuse instead of corrupting the cache
        LLAMA_LOG_WARN("%s: tappa: cannot remove positions [%d, %d) after an eviction\n", __func__, p0, p1);
        llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "removing a range of positions from the middle is not supported after an eviction");
        return false;
    }
    bool res = true;
    for (uint32_t i = 0; i < children.size(); ++i) {
        res &= children[i]->seq_rm(seq_id, p0, p1);
        sync_head_pos(i);
    }
    for (int32_t & qp : q_pos) {
        if (qp >= p0 && (to_end || qp < p1)) {
            qp = -1;
        }
    }
    return res;
}

void llama_kv_cache_tappa::seq_cp(llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1) {
    GGML_UNUSED(p0);
    GGML_UNUSED(p1);
    if (seq_id_src != seq_id_dst) {
        LLAMA_LOG_ERROR("%s: tappa: the tappa KV cache holds one sequence; seq_cp %d -> %d ignored\n", __func__, seq_id_src, seq_id_dst);
        llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "seq_cp is not supported by the tappa KV cache (one sequence)");
    }
}

void llama_kv_cache_tappa::seq_keep(llama_seq_id seq_id) {
    for (uint32_t i = 0; i < children.size(); ++i) {
        children[i]->seq_keep(seq_id);
        sync_head_pos(i);
    }
}

void llama_kv_cache_tappa::seq_add(llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos shift) {
    if (shift == 0) {
        return;
    }
    // positions of evicted tokens are gone, so a shift (context shift) cannot be honoured;
    // get_can_shift() says so, and a caller that shifts anyway finds the cache refusing
    // every batch until it is cleared, instead of silently attending to wrong positions
    LLAMA_LOG_ERROR("%s: tappa: seq_add(%d, [%d, %d), %d) is not supported by the tappa KV cache; "
            "clear the sequence before decoding again\n", __func__, seq_id, p0, p1, shift);
    llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "context shift (seq_add) is not supported by the tappa KV cache; clear the sequence before decoding again");
    poisoned = true;
}

void llama_kv_cache_tappa::seq_div(llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d) {
    if (d == 1) {
        return;
    }
    LLAMA_LOG_ERROR("%s: tappa: seq_div(%d, [%d, %d), %d) is not supported by the tappa KV cache; "
            "clear the sequence before decoding again\n", __func__, seq_id, p0, p1, d);
    llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "seq_div is not supported by the tappa KV cache; clear the sequence before decoding again");
    poisoned = true;
}

llama_pos llama_kv_cache_tappa::seq_pos_min(llama_seq_id seq_id) const {
    llama_pos res = -1;
    for (uint32_t i = 0; i < children.size(); ++i) {
        llama_pos m = children[i]->seq_pos_min(seq_id);
        if (m < 0) {
            continue;
        }
        // head-wise slots record the largest position of their heads; look inside
        for (size_t j = 0; j < layers[i].head_pos.size(); ++j) {
            m = std::min(m, layers[i].head_pos[j]);
        }
        res = res < 0 ? m : std::min(res, m);
    }
    return res;
}

llama_pos llama_kv_cache_tappa::seq_pos_max(llama_seq_id seq_id) const {
    llama_pos res = -1;
    for (const auto & c : children) {
        res = std::max(res, c->seq_pos_max(seq_id));
    }
    return res;
}

std::map<ggml_backend_buffer_type_t, size_t> llama_kv_cache_tappa::memory_breakdown() const {
    std::map<ggml_backend_buffer_type_t, size_t> mb;
    for (const auto & c : children) {
        for (const auto & [buft, size] : c->memory_breakdown()) {
            mb[buft] += size;
        }
    }
    for (const auto & [ctx, buf] : q_bufs.ctxs_bufs) {
        mb[ggml_backend_buffer_get_type(buf.get())] += ggml_backend_buffer_get_size(buf.get());
    }
    return mb;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wsuggest-attribute=noreturn"
#endif
void llama_kv_cache_tappa::state_write(llama_io_write_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) const {
    GGML_UNUSED(io);
    GGML_UNUSED(seq_id);
    GGML_UNUSED(flags);
    llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "state save/load is not supported by the tappa KV cache");
    throw std::runtime_error("tappa: state save/load is not supported by the tappa KV cache");
}

void llama_kv_cache_tappa::state_read(llama_io_read_i & io, llama_seq_id seq_id, llama_state_seq_flags flags) {
    GGML_UNUSED(io);
    GGML_UNUSED(seq_id);
    GGML_UNUSED(flags);
    llama_tappa_set_error(LLAMA_TAPPA_ERR_UNSUPPORTED, "state save/load is not supported by the tappa KV cache");
    throw std::runtime_error("tappa: state save/load is not supported by the tappa KV cache");
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

//
// llama_kv_cache_tappa_context
//

llama_kv_cache_tappa_context::llama_kv_cache_tappa_context(llama_memory_status status) : status(status) {}

llama_kv_cache_tappa_context::llama_kv_cache_tappa_context(llama_kv_cache_tappa * kv) :
    status(LLAMA_MEMORY_STATUS_SUCCESS), kv(kv) {
    for (uint32_t i = 0; i < kv->n_layers(); ++i) {
        ctxs.push_back(kv->child(i)->init_full());
    }
}

llama_kv_cache_tappa_context::llama_kv_cache_tappa_context(llama_kv_cache_tappa * kv, llama_context * lctx, bool optimize) :
    status(LLAMA_MEMORY_STATUS_NO_UPDATE), kv(kv), lctx(lctx) {
    if (kv->needs_eviction(optimize)) {
        status = LLAMA_MEMORY_STATUS_SUCCESS;
    }
}

llama_kv_cache_tappa_context::llama_kv_cache_tappa_context(
        llama_kv_cache_tappa * kv,
        std::vector<llama_kv_cache::slot_info_vec_t> sinfos,
        std::vector<llama_ubatch> ubatches) :
    status(LLAMA_MEMORY_STATUS_SUCCESS), kv(kv), ubatches(std::move(ubatches)) {
    for (uint32_t i = 0; i < kv->n_layers(); ++i) {
        ctxs.push_back(std::make_unique<llama_kv_cache_context>(
                kv->child(i), std::move(sinfos[i]), this->ubatches));
    }
}

bool llama_kv_cache_tappa_context::next() {
    assert(status == LLAMA_MEMORY_STATUS_SUCCESS);
    for (auto & c : ctxs) {
        c->next();
    }
    return ++i_next < ubatches.size();
}

bool llama_kv_cache_tappa_context::apply() {
    assert(!llama_memory_status_is_fail(status));
    if (ubatches.empty() && ctxs.empty()) {
        // update context: evict
        return kv->evict(lctx) >= 0;
    }
    bool res = true;
    for (auto & c : ctxs) {
        res &= c->apply();
    }
    kv->record_queries(ubatches[i_next]);
    return res;
}

const llama_ubatch & llama_kv_cache_tappa_context::get_ubatch() const {
    assert(status == LLAMA_MEMORY_STATUS_SUCCESS);
    return ubatches[i_next];
}

const llama_kv_cache_context * llama_kv_cache_tappa_context::layer_ctx(int32_t il) const {
    const int32_t i = kv->layer_index(il);
    if (i < 0 || (size_t) i >= ctxs.size()) {
        return nullptr;
    }
    return static_cast<const llama_kv_cache_context *>(ctxs[i].get());
}
