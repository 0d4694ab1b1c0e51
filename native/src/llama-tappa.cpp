#include "llama-tappa.h"

#include <string>

#ifndef TAPPA_LLAMA_CPP_PYTHON_VERSION
#define TAPPA_LLAMA_CPP_PYTHON_VERSION "unknown"
#endif

const char * llama_tappa_version(void) {
    static const std::string s = "tappa-local/" + std::to_string(LLAMA_TAPPA_API_VERSION) +
                                 " llama-cpp-python/" TAPPA_LLAMA_CPP_PYTHON_VERSION;
    return s.c_str();
}

int32_t llama_tappa_api_version(void) {
    return LLAMA_TAPPA_API_VERSION;
}
