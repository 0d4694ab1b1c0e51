"""tappa-local: TAPPA-guided KV-cache compression and layer pruning for local llama.cpp / GGUF inference."""

__version__ = "0.1.0"
