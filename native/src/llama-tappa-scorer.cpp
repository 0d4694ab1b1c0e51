#include "llama-tappa-scorer.h"

#include "ggml-backend.h"

#include <cstring>

ggml_tensor * llama_tappa_host_inputs::f32(ggml_context * ctx, int64_t ne0, int64_t ne1, std::vector<float> data, const char * name) {
    GGML_ASSERT((int64_t) data.size() == ne0 * ne1);
    ggml_tensor * t = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, ne0, ne1);
    ggml_set_input(t);
    ggml_set_name(t, name);
    entry e { t, std::vector<char>(data.size() * sizeof(float)) };
    std::memcpy(e.bytes.data(), data.data(), e.bytes.size());
    entries.push_back(std::move(e));
    return t;
}

ggml_tensor * llama_tappa_host_inputs::i64(ggml_context * ctx, int64_t ne0, std::vector<int64_t> data, const char * name) {
    GGML_ASSERT((int64_t) data.size() == ne0);
    ggml_tensor * t = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, ne0);
    ggml_set_input(t);
    ggml_set_name(t, name);
    entry e { t, std::vector<char>(data.size() * sizeof(int64_t)) };
    std::memcpy(e.bytes.data(), data.data(), e.bytes.size());
    entries.push_back(std::move(e));
    return t;
}

void llama_tappa_host_inputs::set_input(const llama_ubatch * ubatch) {
    GGML_UNUSED(ubatch);
    for (const auto & e : entries) {
        if (e.t->buffer) {
            ggml_backend_tensor_set(e.t, e.bytes.data(), 0, e.bytes.size());
        }
    }
}

ggml_tensor * llama_tappa_scorer_sink_recent::build_scores(const llama_tappa_score_args & a) {
    // positions up to 2^24 are exact in f32
    std::vector<float> score(a.pos->size());
    for (size_t i = 0; i < score.size(); ++i) {
        score[i] = (float) (*a.pos)[i];
    }
    return a.inputs->f32(a.ctx, a.n_kv, a.n_head_kv, std::move(score), "tappa_score_pos");
}

std::unique_ptr<llama_tappa_scorer_i> llama_tappa_make_scorer(int32_t kind) {
    switch (kind) {
        case LLAMA_TAPPA_SCORER_SINK_RECENT: return std::make_unique<llama_tappa_scorer_sink_recent>();
        default:                             return nullptr;
    }
}
