#include "llama-tappa-model.h"

#include "llama-impl.h"
#include "llama-model-loader.h"

#include "gguf.h"

#include <map>
#include <mutex>

llama_tappa_config llama_tappa_config::from(const llama_tappa_params & p) {
    llama_tappa_config c;
    c.p = p;
    if (p.layer_budgets && p.n_layer_budgets > 0) {
        c.layer_budgets.assign(p.layer_budgets, p.layer_budgets + p.n_layer_budgets);
    }
    c.p.layer_budgets   = nullptr; // the vector owns them now
    c.p.n_layer_budgets = (int32_t) c.layer_budgets.size();
    return c;
}

namespace {

struct model_entry {
    llama_tappa_profile               profile;
    std::optional<llama_tappa_config> params;
};

// keyed by model pointer; entries are erased in the model's destructor, so a later
// model at the same address never sees a stale profile
std::mutex                                   g_mutex;
std::map<const llama_model *, model_entry>   g_models;

thread_local std::optional<llama_tappa_config> t_pending;
thread_local std::string                       t_error;
thread_local int32_t                           t_status = LLAMA_TAPPA_OK;

bool read_u32(const gguf_context * ctx, const char * key, uint32_t & out, std::string & err) {
    const int64_t id = gguf_find_key(ctx, key);
    if (id < 0) {
        return false;
    }
    const gguf_type t = gguf_get_kv_type(ctx, id);
    if (t == GGUF_TYPE_UINT32) {
        out = gguf_get_val_u32(ctx, id);
    } else if (t == GGUF_TYPE_INT32) {
        const int32_t v = gguf_get_val_i32(ctx, id);
        if (v < 0) {
            err = std::string(key) + " is negative";
            return false;
        }
        out = (uint32_t) v;
    } else {
        err = std::string(key) + " must be an unsigned 32-bit integer";
        return false;
    }
    return true;
}

bool read_f32_array(const gguf_context * ctx, const char * key, std::vector<float> & out, std::string & err) {
    const int64_t id = gguf_find_key(ctx, key);
    if (id < 0) {
        return false;
    }
    if (gguf_get_kv_type(ctx, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx, id) != GGUF_TYPE_FLOAT32) {
        err = std::string(key) + " must be an array of float32";
        return false;
    }
    const size_t n = gguf_get_arr_n(ctx, id);
    const float * data = (const float *) gguf_get_arr_data(ctx, id);
    out.assign(data, data + n);
    return true;
}

} // namespace

void llama_tappa_on_model_load(const llama_model * model, const llama_model_loader & ml) {
    const gguf_context * ctx = ml.metadata;
    llama_tappa_profile prof;
    std::string & err = prof.error;

    if (read_u32(ctx, "tappa.version", prof.version, err)) {
        prof.present = true;
        if (prof.version != 1) {
            err = "tappa.version " + std::to_string(prof.version) + " is not supported by this build (expected 1)";
        }
        const char * shape_keys[] = { "tappa.n_layer", "tappa.n_head", "tappa.n_head_kv", "tappa.head_dim" };
        uint32_t *   shape_vals[] = { &prof.n_layer, &prof.n_head, &prof.n_head_kv, &prof.head_dim };
        for (int i = 0; i < 4 && err.empty(); ++i) {
            if (!read_u32(ctx, shape_keys[i], *shape_vals[i], err) && err.empty()) {
                err = std::string(shape_keys[i]) + " is missing";
            }
        }
        if (err.empty()) {
            read_f32_array(ctx, "tappa.budget.layer_frac", prof.layer_frac, err);
        }
        if (err.empty()) {
            read_f32_array(ctx, "tappa.qsim.layer", prof.qsim_layer, err);
        }
        if (err.empty()) {
            read_f32_array(ctx, "tappa.qsim.kv_head", prof.qsim_kv_head, err);
        }
        if (err.empty()) {
            read_f32_array(ctx, "tappa.qstats.mean", prof.q_mean, err);
        }
        if (err.empty()) {
            read_f32_array(ctx, "tappa.qstats.var", prof.q_var, err);
        }
        uint32_t v = 0;
        if (err.empty() && read_u32(ctx, "tappa.budget.total", v, err)) {
            prof.budget_total = v;
        }
        if (err.empty() && read_u32(ctx, "tappa.budget.window", v, err)) {
            prof.budget_window = (int32_t) v;
        }
        if (err.empty() && read_u32(ctx, "tappa.budget.n_sink", v, err)) {
            prof.budget_n_sink = (int32_t) v;
        }

        // shapes must agree with the header counts
        const size_t L = prof.n_layer, LH = (size_t) prof.n_layer * prof.n_head, LHkv = (size_t) prof.n_layer * prof.n_head_kv;
        auto check = [&](const std::vector<float> & a, size_t want, const char * key) {
            if (err.empty() && !a.empty() && a.size() != want) {
                err = std::string(key) + " has " + std::to_string(a.size()) + " entries, expected " + std::to_string(want);
            }
        };
        check(prof.layer_frac,   L,                   "tappa.budget.layer_frac");
        check(prof.qsim_layer,   L,                   "tappa.qsim.layer");
        check(prof.qsim_kv_head, LHkv,                "tappa.qsim.kv_head");
        check(prof.q_mean,       LH * prof.head_dim,  "tappa.qstats.mean");
        check(prof.q_var,        LH * prof.head_dim,  "tappa.qstats.var");

        if (!err.empty()) {
            LLAMA_LOG_WARN("%s: ignoring the tappa profile in this GGUF: %s\n", __func__, err.c_str());
        } else {
            LLAMA_LOG_INFO("%s: tappa profile: %u layers, %u/%u heads, head dim %u\n", __func__,
                    prof.n_layer, prof.n_head, prof.n_head_kv, prof.head_dim);
        }
    }

    std::lock_guard<std::mutex> lock(g_mutex);
    g_models[model].profile = std::move(prof);
}

void llama_tappa_on_model_free(const llama_model * model) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_models.erase(model);
}

llama_tappa_profile llama_tappa_get_profile(const llama_model * model) {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_models.find(model);
    return it == g_models.end() ? llama_tappa_profile{} : it->second.profile;
}

std::optional<llama_tappa_config> llama_tappa_take_context_params(const llama_model * model) {
    if (t_pending) {
        auto cfg = std::move(t_pending);
        t_pending.reset();
        return cfg;
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_models.find(model);
    if (it == g_models.end()) {
        return std::nullopt;
    }
    return it->second.params;
}

void llama_tappa_set_pending(std::optional<llama_tappa_config> cfg) {
    t_pending = std::move(cfg);
}

void llama_tappa_set_model_params(const llama_model * model, std::optional<llama_tappa_config> cfg) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_models[model].params = std::move(cfg);
}

void llama_tappa_set_error(int32_t status, const std::string & msg) {
    t_status = status;
    t_error  = msg;
}

const char * llama_tappa_get_error() {
    return t_error.c_str();
}

int32_t llama_tappa_get_status() {
    return t_status;
}
