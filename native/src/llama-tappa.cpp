// tappa-local: the C API of llama-tappa.h.
#include "llama-tappa.h"

#include "llama-context.h"
#include "ggml-backend.h"
#include "llama-kv-cache-tappa.h"
#include "llama-model.h"
#include "llama-tappa-budget.h"
#include "llama-tappa-model.h"

#include <algorithm>
#include <string>

#ifndef TAPPA_LLAMA_CPP_PYTHON_VERSION
#define TAPPA_LLAMA_CPP_PYTHON_VERSION "unknown"
#endif

namespace {

int32_t fail(int32_t code, const std::string & msg) {
    llama_tappa_set_error(code, msg);
    return code;
}

llama_kv_cache_tappa * tappa_of(const llama_context * ctx) {
    if (!ctx) {
        return nullptr;
    }
    return dynamic_cast<llama_kv_cache_tappa *>(ctx->get_memory());
}

int32_t check_params(const llama_tappa_params * p) {
    if (p->total_budget < 0) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "total_budget must be >= 0");
    }
    if (p->headroom < 0) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "headroom must be >= 0");
    }
    if (p->allocation < LLAMA_TAPPA_ALLOC_DEFAULT || p->allocation > LLAMA_TAPPA_ALLOC_TAPPA_LIVE) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "unknown allocation " + std::to_string(p->allocation));
    }
    if (p->scorer < LLAMA_TAPPA_SCORER_SINK_RECENT || p->scorer > LLAMA_TAPPA_SCORER_EXPECTED) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "unknown scorer " + std::to_string(p->scorer));
    }
    if (p->cake_gamma < 0.0f || p->qsim_prior_weight < 0.0f || p->qsim_prior_weight > 1.0f || p->ea_horizon < 1) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "cake_gamma must be >= 0, qsim_prior_weight in [0, 1], ea_horizon >= 1");
    }
    if (p->allocation == LLAMA_TAPPA_ALLOC_EXPLICIT && (!p->layer_budgets || p->n_layer_budgets <= 0)) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "explicit allocation needs layer_budgets");
    }
    if (p->min_layer_budget < 0) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "min_layer_budget must be >= 0");
    }
    return LLAMA_TAPPA_OK;
}

} // namespace

const char * llama_tappa_version(void) {
    static const std::string s = "tappa-local/" + std::to_string(LLAMA_TAPPA_API_VERSION) +
                                 " llama-cpp-python/" TAPPA_LLAMA_CPP_PYTHON_VERSION;
    return s.c_str();
}

int32_t llama_tappa_api_version(void) {
    return LLAMA_TAPPA_API_VERSION;
}

const char * llama_tappa_last_error(void) {
    return llama_tappa_get_error();
}

int32_t llama_tappa_last_status(void) {
    return llama_tappa_get_status();
}

llama_tappa_params llama_tappa_default_params(void) {
    llama_tappa_params p {};
    p.enabled          = 1;
    p.total_budget     = 0;
    p.window           = -1;
    p.n_sink           = -1;
    p.headroom         = 0;
    p.allocation       = LLAMA_TAPPA_ALLOC_DEFAULT;
    p.scorer           = LLAMA_TAPPA_SCORER_SINK_RECENT;
    p.min_layer_budget = 0;
    p.pyramid_beta     = 20.0f;
    p.layer_budgets    = nullptr;
    p.n_layer_budgets  = 0;
    p.headwise          = 1;
    p.pool_kernel       = 5;
    p.cake_gamma        = 200.0f;
    p.cake_tau1         = 1.0f;
    p.cake_tau2         = 1.0f;
    p.cake_alpha        = 1.0f;
    p.qsim_prior_weight = 0.5f;
    p.ea_horizon        = 512;
    p.ea_value_norm     = 1;
    return p;
}

int32_t llama_tappa_set_next_params(const llama_tappa_params * p) {
    if (!p) {
        llama_tappa_set_pending(std::nullopt);
        return LLAMA_TAPPA_OK;
    }
    if (const int32_t rc = check_params(p)) {
        return rc;
    }
    llama_tappa_set_pending(llama_tappa_config::from(*p));
    llama_tappa_set_error(LLAMA_TAPPA_OK, "");
    return LLAMA_TAPPA_OK;
}

int32_t llama_tappa_model_set_params(const llama_model * model, const llama_tappa_params * p) {
    if (!model) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "model is NULL");
    }
    if (!p) {
        llama_tappa_set_model_params(model, std::nullopt);
        return LLAMA_TAPPA_OK;
    }
    if (const int32_t rc = check_params(p)) {
        return rc;
    }
    llama_tappa_set_model_params(model, llama_tappa_config::from(*p));
    return LLAMA_TAPPA_OK;
}

int32_t llama_tappa_model_has_profile(const llama_model * model) {
    if (!model) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "model is NULL");
    }
    const auto prof = llama_tappa_get_profile(model);
    if (!prof.present) {
        return 0;
    }
    if (!prof.error.empty()) {
        return fail(LLAMA_TAPPA_ERR_BAD_METADATA, prof.error);
    }
    return 1;
}

int32_t llama_tappa_split_budget(
        const float * weights, int32_t n_layer, int32_t total, int32_t n_sink, int32_t window,
        int32_t min_layer_budget, int32_t max_layer_budget, int32_t * out) {
    if (!weights || !out || n_layer <= 0) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "weights and out must not be NULL and n_layer must be > 0");
    }
    std::vector<double> w(weights, weights + n_layer);
    std::vector<int64_t> budgets;
    std::string err;
    if (!llama_tappa_layer_budgets(w, total, n_sink, window, min_layer_budget, max_layer_budget, budgets, err)) {
        return fail(LLAMA_TAPPA_ERR_BUDGET, err);
    }
    for (int32_t i = 0; i < n_layer; ++i) {
        out[i] = (int32_t) budgets[i];
    }
    return n_layer;
}

int32_t llama_tappa_model_budgets(const llama_model * model, const llama_tappa_params * p, uint32_t n_ctx, int32_t * out, int32_t n_out) {
    if (!model || !p || !out) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "model, params and out must not be NULL");
    }
    if (const int32_t rc = check_params(p)) {
        return rc;
    }
    const int32_t n_layer = (int32_t) model->hparams.n_layer();
    if (n_out < n_layer) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "out has room for " + std::to_string(n_out) + " layers, the model has " + std::to_string(n_layer));
    }
    if (n_ctx == 0) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "n_ctx must be > 0");
    }
    auto cfg = llama_tappa_config::from(*p);
    const auto prof = llama_tappa_get_profile(model);
    std::vector<int64_t> budgets;
    std::string err;
    int32_t status = LLAMA_TAPPA_OK;
    if (!llama_tappa_resolve_config(*model, prof, cfg, n_ctx, budgets, err, status)) {
        return fail(status, err);
    }
    for (int32_t i = 0; i < n_layer; ++i) {
        out[i] = (int32_t) budgets[i];
    }
    return n_layer;
}

int32_t llama_tappa_enabled(const llama_context * ctx) {
    return tappa_of(ctx) ? 1 : 0;
}

int64_t llama_tappa_evict(llama_context * ctx) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    int64_t before = 0;
    for (uint32_t i = 0; i < kv->n_layers(); ++i) {
        before += kv->layer_used(i);
    }
    if (!kv->needs_eviction(true)) {
        return 0;
    }
    llama_tappa_set_error(LLAMA_TAPPA_OK, "");
    kv->request_eviction();
    ctx->memory_update(true);
    if (llama_tappa_get_status() != LLAMA_TAPPA_OK) {
        return llama_tappa_get_status();
    }
    int64_t after = 0;
    for (uint32_t i = 0; i < kv->n_layers(); ++i) {
        after += kv->layer_used(i);
    }
    return before - after;
}

int32_t llama_tappa_n_layer(const llama_context * ctx) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    return (int32_t) kv->n_layers();
}

int32_t llama_tappa_get_layer_stats(const llama_context * ctx, int32_t il, llama_tappa_layer_stats * out) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    if (!out || il < 0 || (uint32_t) il >= kv->n_layers()) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "layer " + std::to_string(il) + " out of range [0, " + std::to_string(kv->n_layers()) + ")");
    }
    const auto & st = kv->layer(il);
    const auto * c  = kv->child(il);
    out->budget      = (int32_t) st.budget;
    out->capacity    = (int32_t) st.capacity;
    out->used        = (int32_t) kv->layer_used(il);
    const uint32_t used_max = c->get_cells(0).used_max_p1();
    out->n_kv        = (int32_t) std::min<uint32_t>(c->get_size(), std::max<uint32_t>(256, GGML_PAD(used_max, 256)));
    int64_t bytes = 0;
    for (const auto & [buft, size] : c->memory_breakdown()) {
        bytes += (int64_t) size;
    }
    out->kv_bytes    = bytes;
    out->n_evictions = st.n_evictions;
    out->n_evicted   = st.n_evicted;
    return LLAMA_TAPPA_OK;
}

int32_t llama_tappa_get_eviction_stats(const llama_context * ctx, llama_tappa_eviction_stats * out) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    if (!out) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "out is NULL");
    }
    *out = kv->eviction_stats();
    return LLAMA_TAPPA_OK;
}

double llama_tappa_time_qsim(llama_context * ctx, int32_t n_iter) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    const double us = kv->time_qsim(ctx, n_iter);
    if (us < 0.0) {
        return fail(LLAMA_TAPPA_ERR_UNSUPPORTED, "the context records no queries (use a window scorer or a prompt-adaptive allocation)");
    }
    return us;
}

int64_t llama_tappa_kv_bytes(const llama_context * ctx) {
    if (!ctx) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "ctx is NULL");
    }
    const llama_memory_t mem = ctx->get_memory();
    if (!mem) {
        return 0;
    }
    int64_t bytes = 0;
    for (const auto & [buft, size] : mem->memory_breakdown()) {
        bytes += (int64_t) size;
    }
    return bytes;
}

int64_t llama_tappa_compute_bytes(const llama_context * ctx) {
    if (!ctx) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "ctx is NULL");
    }
    ggml_backend_sched_t sched = ctx->get_sched();
    int64_t bytes = 0;
    for (int i = 0; i < ggml_backend_sched_get_n_backends(sched); ++i) {
        bytes += (int64_t) ggml_backend_sched_get_buffer_size(sched, ggml_backend_sched_get_backend(sched, i));
    }
    return bytes;
}

int32_t llama_tappa_kept_positions(const llama_context * ctx, int32_t il, int32_t head, int32_t * out, int32_t n) {
    auto * kv = tappa_of(ctx);
    if (!kv) {
        return fail(LLAMA_TAPPA_ERR_NOT_ENABLED, "the context does not use the tappa KV cache");
    }
    if (il < 0 || (uint32_t) il >= kv->n_layers() || head < 0 || (uint32_t) head >= kv->n_head_kv() || n < 0 || (n > 0 && !out)) {
        return fail(LLAMA_TAPPA_ERR_INVALID_ARG, "layer/head out of range or bad output buffer");
    }
    const auto pos = kv->head_positions(il, head);
    for (int32_t i = 0; i < n && (size_t) i < pos.size(); ++i) {
        out[i] = pos[i];
    }
    return (int32_t) pos.size();
}
