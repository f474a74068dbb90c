"""One attention function over ``(b, k, n, d)`` tensors and the rules that pick its backend.

Precedence (highest first): the ``backend=`` argument, then the innermost
:func:`attention_backend` context, then the ``VDBLOCKS_ATTENTION_BACKEND`` environment variable,
then the default priority list ``("sdpa", "math")``.

A *spec* is either one backend name, which forces that backend (an error lists why it cannot run),
or a sequence of names (or a comma-separated string such as ``"xformers,sdpa,math"``), a priority
list from which the first backend that fits is taken. Third-party backends (xformers) are never in
the default list: a caller turns them on explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
from collections.abc import Iterator, Sequence

import torch

from ..validation import check_tensor
from .backends import AttentionBackend, FavorBackend, MathBackend, SDPABackend, XFormersBackend

__all__ = [
    "AttentionBackendError",
    "ENV_VAR",
    "DEFAULT_PRIORITY",
    "attention",
    "attention_backend",
    "get_backend",
    "list_backends",
    "register_backend",
    "select_backend",
]

ENV_VAR = "VDBLOCKS_ATTENTION_BACKEND"
DEFAULT_PRIORITY: tuple[str, ...] = ("sdpa", "math")

BackendSpec = str | Sequence[str] | AttentionBackend

_REGISTRY: dict[str, AttentionBackend] = {}
_CONTEXT: contextvars.ContextVar[BackendSpec | None] = contextvars.ContextVar(
    "vdblocks_attention_backend", default=None
)


class AttentionBackendError(ValueError):
    """Raised when the requested backend (or every backend of a priority list) cannot run."""


def register_backend(backend: AttentionBackend, *, overwrite: bool = False) -> AttentionBackend:
    """Add a backend to the registry under ``backend.name``; returns it."""
    if not isinstance(backend, AttentionBackend):
        raise TypeError(f"expected an AttentionBackend, got {type(backend).__name__}")
    if backend.name in _REGISTRY and not overwrite:
        raise ValueError(f"an attention backend named {backend.name!r} is already registered")
    _REGISTRY[backend.name] = backend
    return backend


for _b in (MathBackend(), SDPABackend(), XFormersBackend(), FavorBackend()):
    register_backend(_b)


def list_backends() -> list[str]:
    """Names of every registered backend."""
    return list(_REGISTRY)


def get_backend(name: str | AttentionBackend) -> AttentionBackend:
    """The registered backend called ``name`` (a backend instance is returned as is)."""
    if isinstance(name, AttentionBackend):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown attention backend {name!r}; registered: {', '.join(_REGISTRY)}") from None


def _parse(spec: BackendSpec) -> tuple[list[AttentionBackend], bool]:
    """Turn a spec into (backends, forced)."""
    if isinstance(spec, AttentionBackend):
        return [spec], True
    if isinstance(spec, str):
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise ValueError("empty attention backend spec")
        return [get_backend(n) for n in names], len(names) == 1
    names = list(spec)
    if not names:
        raise ValueError("empty attention backend priority list")
    return [get_backend(n) for n in names], False


@contextlib.contextmanager
def attention_backend(spec: BackendSpec) -> Iterator[None]:
    """Use ``spec`` (one name to force, or a priority list) for attention calls in this block.

    >>> with attention_backend("math"):
    ...     pass
    """
    _parse(spec)  # fail early on unknown names
    token = _CONTEXT.set(spec)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def _current_spec(backend: BackendSpec | None) -> BackendSpec:
    if backend is not None:
        return backend
    ctx = _CONTEXT.get()
    if ctx is not None:
        return ctx
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    return DEFAULT_PRIORITY


def _check_qkv(q: object, k: object, v: object) -> None:
    """q ``(b, k, n, d)``, k and v ``(b, k, m, d)``: one floating dtype (autocast or not), one device."""
    check_tensor(q, "q", "(b, k, n, d)")
    check_tensor(
        k,
        "k",
        "(b, k, m, d)",
        sizes={"b": q.shape[0], "k": q.shape[1], "d": q.shape[3]},
        like=q,
        like_name="q",
        autocast=False,
    )
    check_tensor(
        v,
        "v",
        "(b, k, m, d)",
        sizes={"b": q.shape[0], "k": q.shape[1], "m": k.shape[2]},
        like=q,
        like_name="q",
        autocast=False,
    )


def select_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: BackendSpec | None = None,
    projection_matrix: torch.Tensor | None = None,
) -> AttentionBackend:
    """The backend :func:`attention` would run for these inputs, following the precedence rules.

    Raises :class:`AttentionBackendError` listing every candidate's reasons when none fits, and
    ``ValueError``/``TypeError`` for inputs :func:`attention` would reject.
    """
    _check_qkv(q, k, v)
    return _select(q, k, v, backend, projection_matrix)


def _select(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: BackendSpec | None,
    projection_matrix: torch.Tensor | None,
) -> AttentionBackend:
    candidates, forced = _parse(_current_spec(backend))
    collected: list[str] = []
    for cand in candidates:
        reasons = cand.not_supported_reasons(q, k, v, projection_matrix=projection_matrix)
        if not reasons:
            return cand
        collected.append(f"  {cand.name}: " + "; ".join(reasons))
    what = (
        f"attention backend {candidates[0].name!r} was forced but"
        if forced
        else ("no attention backend in the priority list " + repr([c.name for c in candidates]))
    )
    raise AttentionBackendError(
        f"{what} cannot run on q {tuple(q.shape)} {q.dtype} on {q.device.type}:\n" + "\n".join(collected)
    )


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    backend: BackendSpec | None = None,
    projection_matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention ``softmax(q k^T * scale) v`` through the selected backend.

    Args:
        q: queries ``(b, k, n, d)``, floating point.
        k: keys ``(b, k, m, d)``, q's dtype and device (``TypeError`` / ``ValueError`` otherwise).
        v: values ``(b, k, m, d)``, q's dtype and device.
        scale: logit scale, default ``1 / sqrt(d)``.
        backend: a backend name (forced), a priority list, or None for the context / environment /
            default precedence described in this module.
        projection_matrix: random features ``(r, d)``, only for the ``"favor"`` backend.

    Returns:
        ``(b, k, n, d)``, the dtype and device of ``q``.
    """
    _check_qkv(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    chosen = _select(q, k, v, backend, projection_matrix)
    return chosen(q, k, v, scale=scale, projection_matrix=projection_matrix)
