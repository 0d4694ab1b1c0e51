"""``tappa-convert``: HF checkpoint or GGUF -> GGUF carrying a TAPPA profile.

One concern per module:

- :mod:`.cli`          argument parsing and the exit-code contract (errors: one line, exit 2)
- :mod:`.pipeline`     the steps (calibrate, convert, quantize/prune, write metadata) in order
- :mod:`.calibration`  the lazy bridge to :mod:`tappa_local.calibrate`
- :mod:`.hfconvert`    the pinned ``convert_hf_to_gguf.py`` with a progress bar
- :mod:`.quantize`     llama.cpp's quantizer (``llama_model_quantize``): types, copy-only, layer pruning
- :mod:`.rewrite`      copy a GGUF through gguf-py, replacing the ``tappa.*`` keys
- :mod:`.ggufinfo`     read and sanity-check a GGUF (geometry, integrity, stored profile)
- :mod:`.checkpoint`   read and sanity-check an HF checkpoint directory
- :mod:`.archs`        which architectures TAPPA handles
- :mod:`.identity`     does a profile belong to this model? (geometry, tokenizer, weights)
- :mod:`.dropplan`     ``--drop-layers`` -> the layers to remove
- :mod:`.output`       temporary output in the destination directory, renamed at the end
- :mod:`.progress`     progress bars (tqdm on stderr)
- :mod:`.ggufpy`       the pinned tree's gguf-py
"""

from __future__ import annotations

from .errors import ConvertError

__all__ = ["ConvertError"]
