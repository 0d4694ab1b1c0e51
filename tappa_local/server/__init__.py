"""``tappa-local serve``: llama-cpp-python's OpenAI-compatible server on a ``TappaLlama``.

Importing the package loads the patched llama.cpp first, so every module here may import
``llama_cpp`` (and ``llama_cpp.server``) in any order.
"""

from .. import native

native.load()
