"""Attention kernels, their dispatch, and EVDM's MixedSelfAttention."""

from .backends import AttentionBackend, FavorBackend, MathBackend, SDPABackend, XFormersBackend
from .calibration import calibration_cache, clear_calibration_cache, favor_crossover
from .dispatch import (
    DEFAULT_PRIORITY,
    ENV_VAR,
    AttentionBackendError,
    attention,
    attention_backend,
    get_backend,
    list_backends,
    register_backend,
    select_backend,
)
from .mixed import MixedSelfAttention

__all__ = [
    "AttentionBackend",
    "AttentionBackendError",
    "DEFAULT_PRIORITY",
    "ENV_VAR",
    "FavorBackend",
    "MathBackend",
    "MixedSelfAttention",
    "SDPABackend",
    "XFormersBackend",
    "attention",
    "attention_backend",
    "calibration_cache",
    "clear_calibration_cache",
    "favor_crossover",
    "get_backend",
    "list_backends",
    "register_backend",
    "select_backend",
]
