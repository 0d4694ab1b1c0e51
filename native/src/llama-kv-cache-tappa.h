// tappa-local: a KV cache with a budget per layer.
//
// llama_kv_cache_tappa composes one llama_kv_cache per attention layer (iSWA generalised
// from 2 children to N), each allocated for that layer's own capacity
//
//     capacity_l = min(n_ctx, budget_l + headroom)
//
// instead of n_ctx cells. Slot finding, masking and K/V writes are the children's own,
// unchanged. When a batch does not fit, llama_context::decode retries after
// memory_update(true); that is where every layer holding more than its budget is
// evicted down to it: scores are computed and the kept rows are gathered to the front of
// each layer's storage with ggml ops (get_rows/set_rows), so the same graph runs on every
// backend. Kept tokens keep their RoPE'd keys and their true positions; new tokens continue
// at theirs.
//
// Head-wise bookkeeping: a slot may hold a different token in each KV head. The cell's
// position is the largest of them (all are in the past of every future query, so the
// causal mask stays right); the per-head positions live in `head_pos`.
#pragma once

#include "llama-kv-cache.h"
#include "llama-tappa-model.h"

#include "ggml-cpp.h"

#include <memory>
#include <vector>

struct llama_tappa_layer_state {
    int32_t  il       = -1; // model layer
    uint32_t budget   = 0;  // tokens kept after an eviction
    uint32_t capacity = 0;  // cells allocated

    // per-head positions of slots [0, n_headwise): head_pos[slot*n_head_kv + h]
    std::vector<llama_pos> head_pos;
    uint32_t               n_headwise = 0;

    int32_t n_evictions = 0;
    int64_t n_evicted   = 0;

    // recent post-RoPE queries of this layer, F32 [head_dim*n_head, window] (ring by position),
    // allocated only when the scorer or the allocation reads them
    ggml_tensor * q_win = nullptr;
};

// device tensors the tappa cache owns beside its children (the query rings)
struct llama_tappa_buffers {
    std::vector<std::pair<ggml_context_ptr, ggml_backend_buffer_ptr>> ctxs_bufs;
};

class llama_kv_cache_tappa : public llama_memory_i {
public:
    llama_kv_cache_tappa(
            const llama_model        & model,
            const llama_tappa_config & cfg,
            const llama_tappa_profile & profile,
            ggml_type                  type_k,
            ggml_type                  type_v,
            bool                       offload,
            uint32_t                   n_ctx_seq);

    ~llama_kv_cache_tappa() = default;

    //
    // llama_memory_i
    //

    llama_memory_context_ptr init_batch(llama_batch_allocr & balloc, uint32_t n_ubatch, bool embd_all) override;
    llama_memory_context_ptr init_full() override;
    llama_memory_context_ptr init_update(llama_context * lctx, bool optimize) override;

    // evicted positions make shifting meaningless
    bool get_can_shift() const override { return false; }

    void clear(bool data) override;

    bool seq_rm  (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1) override;
    void seq_cp  (llama_seq_id seq_id_src, llama_seq_id seq_id_dst, llama_pos p0, llama_pos p1) override;
    void seq_keep(llama_seq_id seq_id)                                                          override;
    void seq_add (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1, llama_pos shift) override;
    void seq_div (llama_seq_id seq_id,                              llama_pos p0, llama_pos p1, int d) override;

    llama_pos seq_pos_min(llama_seq_id seq_id) const override;
    llama_pos seq_pos_max(llama_seq_id seq_id) const override;

    std::map<ggml_backend_buffer_type_t, size_t> memory_breakdown() const override;

    void state_write(llama_io_write_i & io, llama_seq_id seq_id = -1, llama_state_seq_flags flags = 0) const override;
    void state_read (llama_io_read_i  & io, llama_seq_id seq_id = -1, llama_state_seq_flags flags = 0) override;

    //
    // tappa API
    //

    uint32_t n_layers() const { return (uint32_t) layers.size(); }

    llama_kv_cache                * child(uint32_t i) const { return children[i].get(); }
    const llama_tappa_layer_state & layer(uint32_t i) const { return layers[i]; }

    // index into children/layers for model layer il, or -1
    int32_t layer_index(int32_t il) const;

    // tokens in the layer's cells now
    uint32_t layer_used(uint32_t i) const;

    // positions held by KV head h of layer i, ascending
    std::vector<llama_pos> head_positions(uint32_t i, uint32_t h) const;

    // position of the token KV head h of layer i holds in a non-empty cell
    llama_pos cell_pos(uint32_t i, uint32_t cell, uint32_t h) const;

    // ask the next memory_update to evict even if everything fits
    void request_eviction() { force_evict = true; }

    // the query rings: recorded during decode when something reads them
    bool wants_queries() const { return want_queries; }
    ggml_tensor * layer_q_win(int32_t il) const;
    void record_queries(const llama_ubatch & ubatch);

    const llama_tappa_eviction_stats & eviction_stats() const { return ev_stats; }

    // true if some layer holds more tokens than its budget (or an eviction was requested)
    bool needs_eviction(bool optimize) const;

    // drop every over-budget layer to its budget; returns tokens dropped, or -1 on failure
    int64_t evict(llama_context * lctx);

    // microseconds per layer to compute the online q-similarity from the rings (benchmark hook)
    double time_qsim(llama_context * lctx, int32_t n_iter);

    uint32_t n_head_kv() const { return n_head_kv_; }
    uint32_t n_sink() const { return (uint32_t) cfg.p.n_sink; }
    uint32_t window() const { return (uint32_t) cfg.p.window; }

    const llama_tappa_config & config() const { return cfg; }

private:
    const llama_model & model;
    llama_tappa_config  cfg;      // resolved: budgets, window, sinks are final
    llama_tappa_profile profile;

    uint32_t n_head_kv_ = 0;

    std::vector<std::unique_ptr<llama_kv_cache>> children;
    std::vector<llama_tappa_layer_state>         layers;

    // how children are created (re-created when a prompt-adaptive allocation changes a budget)
    ggml_type type_k;
    ggml_type type_v;
    bool      offload;
    uint32_t  n_ctx_seq;

    bool                 want_queries = false;
    llama_tappa_buffers  q_bufs;
    std::vector<int32_t> q_pos;  // [window] position recorded in each ring slot, -1: none

    llama_tappa_eviction_stats ev_stats {};

    std::unique_ptr<llama_kv_cache> make_child(int32_t il, uint32_t capacity) const;

    // eviction steps (llama-tappa-evict.cpp)
    struct layer_plan;
    bool score_layers(llama_context * lctx, std::vector<layer_plan> & plans, std::vector<float> & stats);
    bool reallocate(const std::vector<float> & stats, std::vector<layer_plan> & plans, std::string & err);
    void select(layer_plan & plan) const;
    bool compact(llama_context * lctx, std::vector<layer_plan> & plans);

    bool force_evict = false;

    // eviction made some layer's contents differ from the full cache (disables partial seq_rm)
    bool evicted_any = false;

    // a shift was requested that cannot be honoured: refuse batches until cleared
    bool poisoned = false;

    // after a child seq_rm/clear: forget per-head positions of slots that became empty
    void sync_head_pos(uint32_t i);
};

class llama_kv_cache_tappa_context : public llama_memory_context_i {
public:
    // used for errors
    explicit llama_kv_cache_tappa_context(llama_memory_status status);

    // full-cache context (worst-case graph reservation)
    explicit llama_kv_cache_tappa_context(llama_kv_cache_tappa * kv);

    // update context: evicts in apply()
    llama_kv_cache_tappa_context(llama_kv_cache_tappa * kv, llama_context * lctx, bool optimize);

    // batch context
    llama_kv_cache_tappa_context(
            llama_kv_cache_tappa * kv,
            std::vector<llama_kv_cache::slot_info_vec_t> sinfos,
            std::vector<llama_ubatch> ubatches);

    ~llama_kv_cache_tappa_context() override = default;

    bool next()  override;
    bool apply() override;

    llama_memory_status  get_status() const override { return status; }
    const llama_ubatch & get_ubatch() const override;

    uint32_t n_layers() const { return (uint32_t) ctxs.size(); }

    // the child context of model layer il (nullptr if il has no KV)
    const llama_kv_cache_context * layer_ctx(int32_t il) const;

    const llama_kv_cache_tappa * get_kv() const { return kv; }

private:
    llama_memory_status status;

    llama_kv_cache_tappa * kv   = nullptr;
    llama_context        * lctx = nullptr;

    std::vector<llama_memory_context_ptr> ctxs; // one per layer of kv

    size_t                    i_next = 0;
    std::vector<llama_ubatch> ubatches;
};

// the hook behind llama_model::create_memory: a tappa cache if the context asked for one,
// nullptr otherwise; throws (with llama_tappa_last_error set) on an invalid request
llama_memory_i * llama_tappa_create_memory(
        const llama_model         & model,
        const llama_memory_params & params,
        const llama_cparams       & cparams);

// true for the prompt-adaptive allocations, which re-split the budget at every eviction
// from the recent window (and so need the recorded queries)
bool llama_tappa_allocation_adapts(int32_t allocation);

// resolve window/sinks/budgets of a config against a model and a context length
bool llama_tappa_resolve_config(
        const llama_model         & model,
        const llama_tappa_profile & profile,
        llama_tappa_config        & cfg,
        uint32_t                    n_ctx_seq,
        std::vector<int64_t>      & budgets,
        std::string               & err,
        int32_t                   & status);
