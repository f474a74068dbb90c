"""Attention kernels on ``(b, k, n, d)`` tensors, each declaring what it supports.

A backend computes ``softmax(q @ k^T * scale) @ v`` (or, for FAVOR+, an unbiased random-feature
approximation of it) for queries ``(b, k, n, d)`` and keys/values ``(b, k, m, d)``. Every backend
states the devices, dtypes and head dims it takes and answers :meth:`AttentionBackend.not_supported_reasons`
with readable strings, so dispatch can pick the first one that fits and a caller who forces one that
does not fit learns why (the pattern of xformers' ``fmha/dispatch.py``).

Backends here:

* ``"math"``: the plain reference, ``softmax(q k^T / sqrt(d)) v`` in a few lines; runs everywhere.
* ``"sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient /
  math kernels chosen by PyTorch).
* ``"xformers"``: ``xformers.ops.memory_efficient_attention``; CUDA only, optional, never chosen
  unless the caller asks for it.
* ``"favor"``: FAVOR+ (Performer, Choromanski et al. 2021) through performer-pytorch's
  ``softmax_kernel`` and ``linear_attention``; approximate, ``O(n r d)`` for ``r`` random features.
  It needs the random projection matrix ``(r, d)`` passed as ``projection_matrix``.
"""

from __future__ import annotations

import abc
import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "AttentionBackend",
    "MathBackend",
    "SDPABackend",
    "XFormersBackend",
    "FavorBackend",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class AttentionBackend(abc.ABC):
    """Base class: a named attention kernel with declared support; subclasses implement ``__call__``.

    Attributes:
        name: short name used by dispatch, the context manager and the environment variable.
        exact: True when the result equals softmax attention up to float rounding.
        devices: device types it runs on (``"cpu"``, ``"cuda"``, ...); empty means any.
        dtypes: dtypes it accepts.
        max_head_dim: largest head dim ``d`` it accepts, or None for no limit.
    """

    name: str = "base"
    exact: bool = True
    devices: tuple[str, ...] = ()
    dtypes: tuple[torch.dtype, ...] = _FLOATS
    max_head_dim: int | None = None

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all in this environment (missing package), or None."""
        return None

    def not_supported_reasons(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        projection_matrix: torch.Tensor | None = None,
    ) -> list[str]:
        """Readable reasons why this backend cannot take these inputs; empty when it can."""
        reasons: list[str] = []
        missing = self.unavailable_reason()
        if missing:
            reasons.append(missing)
        if self.devices and q.device.type not in self.devices:
            reasons.append(f"device={q.device.type} (supports {', '.join(self.devices)})")
        if q.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype={str(q.dtype).replace('torch.', '')} (supports {names})")
        d = q.shape[-1]
        if self.max_head_dim is not None and d > self.max_head_dim:
            reasons.append(f"head dim d={d} > {self.max_head_dim}")
        return reasons

    @abc.abstractmethod
    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        scale: float,
        projection_matrix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``q (b, k, n, d)`` over ``k, v (b, k, m, d)`` -> ``(b, k, n, d)``."""


@dataclass(frozen=True)
class MathBackend(AttentionBackend):
    """Plain softmax attention written out: the reference every other backend is tested against.

    Half-precision inputs are computed in float32 and cast back, so the reference stays accurate.
    """

    name: str = "math"

    def __call__(self, q, k, v, *, scale, projection_matrix=None):
        compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        qc, kc, vc = (t.to(compute) for t in (q, k, v))
        scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale  # b k n m
        probs = scores.softmax(dim=-1)
        return torch.matmul(probs, vc).to(q.dtype)  # b k n d


@dataclass(frozen=True)
class SDPABackend(AttentionBackend):
    """PyTorch's fused ``scaled_dot_product_attention``."""

    name: str = "sdpa"
    devices: tuple[str, ...] = ("cpu", "cuda", "mps", "xpu")

    def __call__(self, q, k, v, *, scale, projection_matrix=None):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


@dataclass(frozen=True)
class XFormersBackend(AttentionBackend):
    """``xformers.ops.memory_efficient_attention`` (CUDA only; install the ``xformers`` extra)."""

    name: str = "xformers"
    devices: tuple[str, ...] = ("cuda",)
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    max_head_dim: int | None = 256

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("xformers") is None:
            return "xformers is not installed (pip install 'vdblocks[xformers]' on a CUDA machine)"
        return None

    def __call__(self, q, k, v, *, scale, projection_matrix=None):
        import xformers.ops as xops

        # xformers takes (b, n, k, d).
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = xops.memory_efficient_attention(q, k, v, scale=scale)
        return out.transpose(1, 2)  # b k n d


@dataclass(frozen=True)
class FavorBackend(AttentionBackend):
    """FAVOR+ positive random features (performer-pytorch), an approximation of softmax attention.

    ``softmax(q k^T / sqrt(d)) v ~= D^-1 phi(q) (phi(k)^T v)`` with ``phi`` the positive softmax
    kernel features of ``projection_matrix`` ``(r, d)``; cost ``O(n r d)`` instead of ``O(n^2 d)``
    (EVDM eq. 13). performer-pytorch folds ``1/sqrt(d)`` into the features, so another ``scale`` is
    applied by rescaling ``q``.
    """

    name: str = "favor"
    exact: bool = False

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("performer_pytorch") is None:
            return "performer-pytorch is not installed"
        return None

    def not_supported_reasons(self, q, k, v, *, projection_matrix=None):
        reasons = super().not_supported_reasons(q, k, v)
        if projection_matrix is None:
            reasons.append("needs projection_matrix (r, d) of random features")
        elif projection_matrix.ndim != 2 or projection_matrix.shape[-1] != q.shape[-1]:
            reasons.append(
                f"projection_matrix must be (r, d) with d={q.shape[-1]}, got {tuple(projection_matrix.shape)}"
            )
        return reasons

    def __call__(self, q, k, v, *, scale, projection_matrix=None):
        from performer_pytorch.performer_pytorch import linear_attention, softmax_kernel

        d = q.shape[-1]
        default_scale = 1.0 / math.sqrt(d)
        if not math.isclose(scale, default_scale, rel_tol=1e-9):
            # performer folds d^-1/2 into q and k; move the remaining factor onto q.
            q = q * (scale / default_scale)
        proj = projection_matrix.to(device=q.device)
        q_prime = softmax_kernel(q, projection_matrix=proj, is_query=True)  # b k n r
        k_prime = softmax_kernel(k, projection_matrix=proj, is_query=False)  # b k m r
        return linear_attention(q_prime, k_prime, v)  # b k n d
