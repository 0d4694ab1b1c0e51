"""ctypes mirror of native/include/llama-tappa.h.

Kept in one place so a change to the header is mirrored by a change here; :func:`bind` is
called once by :func:`tappa_local.native.load` on the already-loaded libllama.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum

c_int32 = ctypes.c_int32
c_int64 = ctypes.c_int64
c_void_p = ctypes.c_void_p


class Status(IntEnum):
    OK = 0
    ERR_INVALID_ARG = -1
    ERR_NOT_ENABLED = -2
    ERR_NO_PROFILE = -3
    ERR_BUDGET = -4
    ERR_UNSUPPORTED = -5
    ERR_COMPUTE = -6
    ERR_BAD_METADATA = -7


class AllocationKind(IntEnum):
    DEFAULT = 0
    UNIFORM = 1
    PYRAMID = 2
    TAPPA = 3
    EXPLICIT = 4
    CAKE = 5
    TAPPA_CAKE = 6
    TAPPA_LIVE = 7


class ScorerKind(IntEnum):
    SINK_RECENT = 0
    SNAPKV = 1
    CAKE = 2
    EXPECTED = 3


class TappaParams(ctypes.Structure):
    _fields_ = [
        ("enabled", c_int32),
        ("total_budget", c_int32),
        ("window", c_int32),
        ("n_sink", c_int32),
        ("headroom", c_int32),
        ("allocation", c_int32),
        ("scorer", c_int32),
        ("min_layer_budget", c_int32),
        ("pyramid_beta", ctypes.c_float),
        ("layer_budgets", ctypes.POINTER(c_int32)),
        ("n_layer_budgets", c_int32),
        ("headwise", c_int32),
        ("pool_kernel", c_int32),
        ("cake_gamma", ctypes.c_float),
        ("cake_tau1", ctypes.c_float),
        ("cake_tau2", ctypes.c_float),
        ("cake_alpha", ctypes.c_float),
        ("qsim_prior_weight", ctypes.c_float),
        ("ea_horizon", c_int32),
        ("ea_value_norm", c_int32),
    ]


class LayerStats(ctypes.Structure):
    _fields_ = [
        ("budget", c_int32),
        ("capacity", c_int32),
        ("used", c_int32),
        ("n_kv", c_int32),
        ("kv_bytes", c_int64),
        ("n_evictions", c_int32),
        ("n_evicted", c_int64),
    ]


class EvictionStats(ctypes.Structure):
    _fields_ = [
        ("n_evictions", c_int32),
        ("score_us", c_int64),
        ("select_us", c_int64),
        ("compact_us", c_int64),
        ("realloc_us", c_int64),
    ]


# name -> (argtypes, restype)
PROTOTYPES: dict[str, tuple[list[object], object]] = {
    "llama_tappa_version": ([], ctypes.c_char_p),
    "llama_tappa_api_version": ([], c_int32),
    "llama_tappa_last_error": ([], ctypes.c_char_p),
    "llama_tappa_last_status": ([], c_int32),
    "llama_tappa_default_params": ([], TappaParams),
    "llama_tappa_set_next_params": ([ctypes.POINTER(TappaParams)], c_int32),
    "llama_tappa_model_set_params": ([c_void_p, ctypes.POINTER(TappaParams)], c_int32),
    "llama_tappa_model_has_profile": ([c_void_p], c_int32),
    "llama_tappa_split_budget": ([ctypes.POINTER(ctypes.c_float), c_int32, c_int32, c_int32, c_int32, c_int32, c_int32, ctypes.POINTER(c_int32)], c_int32),
    "llama_tappa_model_budgets": ([c_void_p, ctypes.POINTER(TappaParams), ctypes.c_uint32, ctypes.POINTER(c_int32), c_int32], c_int32),
    "llama_tappa_enabled": ([c_void_p], c_int32),
    "llama_tappa_evict": ([c_void_p], c_int64),
    "llama_tappa_n_layer": ([c_void_p], c_int32),
    "llama_tappa_get_layer_stats": ([c_void_p, c_int32, ctypes.POINTER(LayerStats)], c_int32),
    "llama_tappa_get_eviction_stats": ([c_void_p, ctypes.POINTER(EvictionStats)], c_int32),
    "llama_tappa_time_qsim": ([c_void_p, c_int32], ctypes.c_double),
    "llama_tappa_kv_bytes": ([c_void_p], c_int64),
    "llama_tappa_compute_bytes": ([c_void_p], c_int64),
    "llama_tappa_kept_positions": ([c_void_p, c_int32, c_int32, ctypes.POINTER(c_int32), c_int32], c_int32),
}


def bind(lib: ctypes.CDLL) -> None:
    """Attach argtypes/restype to every tappa symbol of ``lib``."""
    for name, (argtypes, restype) in PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype


def last_error(lib: ctypes.CDLL) -> str:
    msg = lib.llama_tappa_last_error()
    return msg.decode(errors="replace") if msg else ""


def error_class(status: int) -> type[Exception]:
    """The tappa-local exception for a native status code."""
    from .errors import BudgetError, ProfileError, TappaError, UnsupportedModelError  # noqa: PLC0415

    return {
        Status.ERR_INVALID_ARG: BudgetError,
        Status.ERR_BUDGET: BudgetError,
        Status.ERR_NO_PROFILE: ProfileError,
        Status.ERR_BAD_METADATA: ProfileError,
        Status.ERR_UNSUPPORTED: UnsupportedModelError,
    }.get(status, TappaError)


def raise_last(lib: ctypes.CDLL, prefix: str = "") -> None:
    """Raise the exception matching the thread's last native error."""
    status = int(lib.llama_tappa_last_status())
    raise error_class(status)(prefix + (last_error(lib) or f"native status {status}"))
