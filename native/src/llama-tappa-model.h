// tappa-local: what a model brings to the tappa KV cache — the calibration profile read
// from its GGUF's tappa.* metadata at load time — and the parameters a caller attached.
#pragma once

#include "llama-tappa.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

struct llama_model;
struct llama_model_loader;

// llama_tappa_params with owned arrays, so it can outlive the caller's struct
struct llama_tappa_config {
    llama_tappa_params   p;
    std::vector<int32_t> layer_budgets;

    static llama_tappa_config from(const llama_tappa_params & p);
};

// the tappa.* keys the native side reads (see tappa_local/schema.py, version 1)
struct llama_tappa_profile {
    bool        present = false; // tappa.version found
    std::string error;           // non-empty: present but malformed

    uint32_t version   = 0;
    uint32_t n_layer   = 0;
    uint32_t n_head    = 0;
    uint32_t n_head_kv = 0;
    uint32_t head_dim  = 0;

    std::vector<float> layer_frac;   // [L]      tappa.budget.layer_frac
    std::vector<float> qsim_layer;   // [L]      tappa.qsim.layer
    std::vector<float> qsim_kv_head; // [L*Hkv]  tappa.qsim.kv_head
    std::vector<float> q_mean;       // [L*H*D]  tappa.qstats.mean
    std::vector<float> q_var;        // [L*H*D]  tappa.qstats.var

    uint32_t budget_total  = 0; // 0: unset
    int32_t  budget_window = -1;
    int32_t  budget_n_sink = -1;
};

// called from llama_model_base::load_hparams / llama_model::~llama_model (the patch)
void llama_tappa_on_model_load(const llama_model * model, const llama_model_loader & ml);
void llama_tappa_on_model_free(const llama_model * model);

// a copy of the model's profile (empty if the GGUF had none)
llama_tappa_profile llama_tappa_get_profile(const llama_model * model);

// params for a context being created now: the thread's pending set (consumed), else the
// model's own set, else nothing (the stock cache)
std::optional<llama_tappa_config> llama_tappa_take_context_params(const llama_model * model);

void llama_tappa_set_pending(std::optional<llama_tappa_config> cfg);
void llama_tappa_set_model_params(const llama_model * model, std::optional<llama_tappa_config> cfg);

// thread-local status and message behind llama_tappa_last_status()/llama_tappa_last_error()
void         llama_tappa_set_error(int32_t status, const std::string & msg);
const char * llama_tappa_get_error();
int32_t      llama_tappa_get_status();
