// tappa-local: TAPPA-guided per-layer KV budgets and eviction for llama.cpp.
// This header is ours; it is not part of upstream llama.cpp.
#pragma once

#include "llama.h"

#ifdef __cplusplus
extern "C" {
#endif

// Bumped whenever a declaration in this header changes. The Python runtime
// refuses a library whose API version differs from the one it was written for.
#define LLAMA_TAPPA_API_VERSION 1

// "tappa-local/<api> llama-cpp-python/<version>": identifies a patched build.
LLAMA_API const char * llama_tappa_version(void);
LLAMA_API int32_t      llama_tappa_api_version(void);

#ifdef __cplusplus
}
#endif
