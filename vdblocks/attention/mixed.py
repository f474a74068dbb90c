"""EVDM's mixed self-attention: exact softmax attention for short sequences, FAVOR+ for long ones."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
from einops import rearrange
from performer_pytorch import FastAttention

from ..validation import check_positive_int, check_tensor
from .calibration import CalibrationKey, batch_heads_bucket, calibration_cache, favor_crossover
from .dispatch import BackendSpec, attention

__all__ = ["MixedSelfAttention"]

Algorithm = Literal["auto", "calibrated", "softmax", "favor"]
_ALGORITHMS = ("auto", "calibrated", "softmax", "favor")


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


class MixedSelfAttention(nn.Module):
    """Self-attention that picks softmax or FAVOR+ by sequence length (EVDM section 3.3, eq. 14).

    Projections follow eq. 11-12: ``Q, K, V = T W_{1,2,3} + b``, ``T_out = (softmax(Q K^T / sqrt(d)) V) W_4 + b_4``.
    With ``algorithm="auto"`` the gate of eq. 14 applies: FAVOR+ (eq. 13, performer-pytorch's
    positive orthogonal random features) when the token count ``L`` exceeds ``threshold * d``
    (``d = dim_head``, the paper's ``lambda = 2``), exact attention otherwise. ``"calibrated"``
    replaces ``lambda * d`` by the length from which FAVOR+ is measured to be faster on the
    device and dtype the layer runs on (:func:`vdblocks.attention.calibration.favor_crossover`,
    measured on first use and cached per device, dtype, ``d``, feature count and ``b * k``
    (bucketed, :func:`~vdblocks.attention.calibration.batch_heads_bucket`); where nothing can
    be timed, on the meta device, under fake tensors or inside ``torch.compile``, it falls back to
    eq. 14, or to a crossover already measured for the key). ``"softmax"`` and ``"favor"`` force one
    algorithm. Exact attention runs through the backend dispatch
    (:func:`vdblocks.attention.attention`, ``backend=`` forwarded).

    Reading taken: eq. 11 writes the projections as per-head ``d x d`` matrices; we use the usual
    multi-head projection ``dim -> heads * dim_head`` (as MCVD's attention block, which EVDM
    modifies, does). The block is attention only: no normalisation and no residual, which the
    surrounding network adds.

    Shapes: tokens ``(b, n, dim) -> (b, n, dim)`` or feature maps ``(b, dim, h, w) -> (b, dim, h, w)``
    (``L = h * w``), in the layer's dtype and on its device (any dtype under ``torch.autocast``).

    Args:
        dim: channels of the input.
        heads: number of heads ``h_n``.
        dim_head: per-head width ``d``.
        threshold: ``lambda`` of eq. 14.
        nb_features: random features of FAVOR+; None takes performer's default ``int(d ln d)`` (at least 1).
        algorithm: ``"auto"`` (eq. 14), ``"calibrated"``, ``"softmax"`` or ``"favor"``.
        backend: attention backend spec for the exact path (see :mod:`vdblocks.attention.dispatch`).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        threshold: float = 2.0,
        nb_features: int | None = None,
        algorithm: Algorithm = "auto",
        qkv_bias: bool = True,
        backend: BackendSpec | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.heads = check_positive_int(heads, "heads")
        self.dim_head = check_positive_int(dim_head, "dim_head")
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {algorithm!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if nb_features is not None:
            check_positive_int(nb_features, "nb_features")
        self.threshold = float(threshold)
        self.algorithm = algorithm
        self.backend = backend
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.to_out = nn.Linear(inner, dim)
        # performer-pytorch owns the random projection (a buffer, saved with the state dict).
        if nb_features is None:
            # performer's default int(d ln d), kept >= 1 so tiny heads (d = 1) still work.
            nb_features = max(1, int(dim_head * math.log(dim_head)))
        # performer draws its orthogonal features with a QR decomposition, which the meta device
        # (used to trace costs of big models) cannot run: draw on the CPU, then move.
        default_device = torch.get_default_device()
        with torch.device("cpu"):
            self.favor = FastAttention(dim_head, nb_features=nb_features)
        self.favor.to(default_device)
        self.nb_features = self.favor.nb_features
        self._crossovers: dict[tuple[torch.device, torch.dtype], float] = {}

    def crossover(
        self, device: torch.device | None = None, dtype: torch.dtype | None = None, batch_heads: int = 4
    ) -> float:
        """Token count above which ``"auto"``/``"calibrated"`` choose FAVOR+ on ``device``/``dtype``
        (default: the layer's) for ``batch_heads = b * k`` rows of attention: ``threshold * dim_head``
        under ``"auto"``, the crossover measured for that workload under ``"calibrated"``."""
        if self.algorithm != "calibrated":
            return self.threshold * self.dim_head
        memo = self._crossovers.get((device, dtype, batch_heads))
        if memo is not None:  # every forward asks: keep the common case to one dict lookup
            return memo
        paper = self.threshold * self.dim_head
        matrix = self.favor.projection_matrix
        resolved = (matrix.device if device is None else torch.device(device), matrix.dtype if dtype is None else dtype)
        rows = batch_heads_bucket(batch_heads)
        if resolved[0].type == "meta" or _is_fake(matrix) or torch.compiler.is_compiling():
            key = CalibrationKey(
                str(resolved[0]), str(resolved[1]).removeprefix("torch."), self.dim_head, self.nb_features, rows
            )
            return calibration_cache().get(key, paper)
        # a crossover of L means FAVOR+ wins from L on; the gate is "seq_len > crossover"
        measured = favor_crossover(matrix.detach().to(*resolved), batch_heads=rows, backend=self.backend) - 0.5
        self._crossovers[(device, dtype, batch_heads)] = self._crossovers[(*resolved, batch_heads)] = measured
        return measured

    def select_algorithm(
        self,
        seq_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_heads: int = 4,
    ) -> Literal["softmax", "favor"]:
        """The algorithm used for ``seq_len`` tokens: eq. 14's gate under ``"auto"``, the measured
        crossover under ``"calibrated"`` (on ``device``/``dtype``, default the layer's, for
        ``batch_heads = b * k`` rows of attention)."""
        if self.algorithm in ("softmax", "favor"):
            return self.algorithm  # type: ignore[return-value]
        if type(seq_len) is not int or seq_len < 1:  # fast check on the hot path, full message below
            check_positive_int(seq_len, "seq_len")
        return "favor" if seq_len > self.crossover(device, dtype, batch_heads) else "softmax"

    @torch.no_grad()
    def redraw_projection_matrix(self) -> None:
        """Draw fresh FAVOR+ random features (performer redraws them periodically in training)."""
        self.favor.redraw_projection_matrix(self.favor.projection_matrix.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            check_tensor(x, "x", "(b, dim, h, w)", sizes={"dim": self.dim}, like=self)
            h, w = x.shape[-2:]
            tokens = rearrange(x, "b c h w -> b (h w) c")
        else:
            check_tensor(x, "x", "(b, n, dim)", sizes={"dim": self.dim}, like=self)
            tokens = x
        q, k, v = rearrange(self.to_qkv(tokens), "b n (three k d) -> three b k n d", three=3, k=self.heads)
        if self.select_algorithm(tokens.shape[1], q.device, q.dtype, q.shape[0] * q.shape[1]) == "favor":
            out = attention(q, k, v, backend="favor", projection_matrix=self.favor.projection_matrix)
        else:
            out = attention(q, k, v, backend=self.backend)  # b k n d
        out = self.to_out(rearrange(out, "b k n d -> b n (k d)"))  # b n dim
        if x.ndim == 4:
            return rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
        return out

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, threshold={self.threshold}, "
            f"nb_features={self.nb_features}, algorithm={self.algorithm!r}"
        )
