"""Sinusoidal embeddings: diffusion timesteps (and anything scalar) and 1D / 2D positions."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..validation import check_positive_int, check_tensor, check_values

__all__ = [
    "sinusoidal_embedding",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "sincos_1d",
    "sincos_2d",
]


def _check_scalars(values: object, name: str, like: nn.Module | None = None) -> torch.Tensor:
    """Timesteps and other conditioning scalars: ``(b,)``, int or real float, finite and ``>= 0``."""
    check_tensor(values, name, "(b,)", floating=False, numeric=True, like=like, match_dtype=False)
    return check_values(values, name, "(b,)", low=0)


def _work_dtype(values: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (gradcheck, reference runs); integers and half types go to float32.
    return torch.float64 if values.dtype == torch.float64 else torch.float32


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of scalars: ``(b,) -> (b, dim)``.

    ``[cos(v * f_0), ..., cos(v * f_{D-1}), sin(v * f_0), ..., sin(v * f_{D-1})]`` with
    ``f_i = max_period ** (-i / D)`` and ``D = dim // 2`` (the layout of guided-diffusion, DiT and
    diffusers' ``get_timestep_embedding`` with ``flip_sin_to_cos=True, downscale_freq_shift=0``);
    an odd ``dim`` gets one zero channel at the end. Values may be fractional; they must be finite
    and ``>= 0`` (timesteps, frame rates), int or real float (``TypeError`` for bool and complex,
    ``ValueError`` for NaN, inf, negative values and an empty batch). Computed in float64 for
    float64 values, else in float32.
    """
    check_positive_int(dim, "dim")
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    _check_scalars(values, "values")
    return _sinusoid(values, dim, max_period)


def _sinusoid(values: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    work = _work_dtype(values)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=work, device=values.device) / max(half, 1))
    args = values.to(work)[:, None] * freqs[None]  # b D
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # b 2D
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


class SinusoidalEmbedding(nn.Module):
    """Parameter-free module form of :func:`sinusoidal_embedding`: ``(b,) -> (b, dim)``."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.max_period = float(max_period)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(values, self.dim, self.max_period)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class TimestepEmbedding(nn.Module):
    """Diffusion timestep embedding: sinusoid, then ``Linear -> SiLU -> Linear``.

    Shapes: ``t (b,)`` (integer or fractional timesteps, finite and ``>= 0``, on the module's
    device) -> ``(b, dim)``. ``frequency_dim`` is the
    width of the sinusoid (``self.sinusoid``), which other embeddings may share: ETC's
    :class:`~vdblocks.FPSEmbedding` runs frame rates through this same sinusoid (ETC section 4.2).
    """

    def __init__(
        self,
        dim: int,
        frequency_dim: int | None = None,
        hidden_dim: int | None = None,
        max_period: float = 10000.0,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.frequency_dim = check_positive_int(frequency_dim or dim, "frequency_dim")
        hidden = check_positive_int(hidden_dim or dim, "hidden_dim")
        self.sinusoid = SinusoidalEmbedding(self.frequency_dim, max_period)
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        _check_scalars(t, "t", like=self)
        emb = self.sinusoid(t)  # b f
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # b dim


def sincos_1d(dim: int, positions: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
    """1D sin-cos position embedding (Transformer / MAE): ``positions (n,) -> (n, dim)``.

    ``[sin(p * f_i) for i < dim/2] + [cos(p * f_i) for i < dim/2]``, ``f_i = max_period ** (-2i / dim)``.
    ``dim`` must be even. Computed in float64 for float64 positions, else in float32.
    """
    check_positive_int(dim, "dim")
    if dim % 2:
        raise ValueError(f"expected an even dim for sin-cos positions, got {dim}")
    if not isinstance(positions, torch.Tensor):
        positions = torch.as_tensor(positions)
    check_tensor(positions, "positions", "(n,)", floating=False, numeric=True)
    work = _work_dtype(positions)
    positions = positions.to(work)
    omega = torch.arange(dim // 2, dtype=work, device=positions.device) / (dim / 2.0)
    omega = 1.0 / max_period**omega  # dim/2
    args = positions[:, None] * omega[None]  # n dim/2
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # n dim


def sincos_2d(
    dim: int, height: int, width: int, max_period: float = 10000.0, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """2D sin-cos position embedding (MAE / DiT): ``-> ((height width), dim)``, row-major tokens.

    The first ``dim/2`` channels encode the row (h), the last ``dim/2`` the column (w), each with
    :func:`sincos_1d`. ``dim`` must be divisible by 4. ``dtype``: float32 (default) or float64.
    """
    check_positive_int(dim, "dim")
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    if dim % 4:
        raise ValueError(f"expected dim divisible by 4 for 2D sin-cos positions, got {dim}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"expected dtype torch.float32 or torch.float64 for 2D sin-cos positions, got {dtype}")
    rows = torch.arange(height, dtype=dtype).repeat_interleave(width)  # (h w)
    cols = torch.arange(width, dtype=dtype).repeat(height)  # (h w)
    return torch.cat([sincos_1d(dim // 2, rows, max_period), sincos_1d(dim // 2, cols, max_period)], dim=1)
