"""Beta schedules and the :class:`NoiseSchedule` that holds the forward process ``q(x_t | x_0)``.

Notation (DDPM, Ho et al. 2020): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s <= t} alpha_s`` and
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4). Timesteps are 0-based integers
``0 .. T-1`` as in diffusers, so ``abar_0 = 1 - beta_0`` is the first noisy level.

All tables are computed and stored in float64 on the CPU; each use gathers the needed entries and
casts them to the dtype and device of the data. diffusers keeps float32 tables, so the two agree to
float32 rounding (relative 1e-6), not bit for bit; float64 keeps ``1 - abar_t`` accurate near ``t = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from ..validation import check_positive_int

__all__ = [
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "NoiseSchedule",
    "SCHEDULE_NAMES",
    "PREDICTION_TYPES",
    "PredictionType",
    "check_prediction_type",
]

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
"""What a denoiser predicts: the noise (DDPM), the velocity (Salimans & Ho 2022) or ``x_0``; diffusers' names."""


def check_prediction_type(prediction_type: object) -> str:
    """``prediction_type`` must be one of :data:`PREDICTION_TYPES`; returns it."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"expected prediction_type in {PREDICTION_TYPES}, got {prediction_type!r}")
    return prediction_type  # type: ignore[return-value]


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """DDPM's linear schedule: ``beta_t = linspace(beta_start, beta_end, T)``, float64 ``(T,)``."""
    check_positive_int(num_steps, "num_steps")
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def scaled_linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> torch.Tensor:
    """Latent/Stable Diffusion's schedule: linear in ``sqrt(beta)``, then squared. Float64 ``(T,)``."""
    check_positive_int(num_steps, "num_steps")
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2


def cosine_betas(num_steps: int, max_beta: float = 0.999, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule (Improved DDPM eq. 17), float64 ``(T,)``.

    ``f(u) = cos((u + s) / (1 + s) * pi / 2) ** 2`` on ``u = t / T`` and
    ``beta_t = min(1 - f((t+1)/T) / f(t/T), max_beta)``: the clip at 0.999 keeps the last steps
    from being singular. This is diffusers' ``"squaredcos_cap_v2"``.
    """
    check_positive_int(num_steps, "num_steps")
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"expected max_beta in (0, 1], got {max_beta}")
    u = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"expected {name} in (0, 1], got {value}")


# Canonical name -> builder; diffusers' spelling of the cosine schedule is accepted as an alias.
SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine")
_ALIASES = {"squaredcos_cap_v2": "cosine"}


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The discrete forward process defined by ``betas (T,)``; immutable after construction.

    Attributes (float64, CPU, shape ``(T,)``): ``betas``, ``alphas = 1 - betas``,
    ``alphas_cumprod = cumprod(alphas)``. Build one from a name with :meth:`from_name`.

    Methods take data ``x (b, ...)`` (any trailing axes: images ``(b, c, h, w)``, videos
    ``(b, c, t, h, w)``, latents) and timesteps ``t (b,)`` of an integer dtype with values in
    ``[0, T)``; a Python ``int`` is broadcast to the whole batch. The per-sample coefficient is
    broadcast over the trailing axes of ``x``. A zero-terminal-SNR schedule (``beta_{T-1} = 1``) is
    accepted, but ``predict_x0`` from ``eps`` is undefined at its last step (``abar = 0``).
    """

    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False, repr=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = self.betas
        if not isinstance(betas, torch.Tensor):
            betas = torch.as_tensor(betas)
        betas = betas.detach().to(device="cpu", dtype=torch.float64).clone()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"expected betas of shape (T,) with T >= 1, got {tuple(betas.shape)}")
        if not bool(torch.isfinite(betas).all()) or bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError("expected every beta in (0, 1]")
        alphas = 1.0 - betas
        # frozen dataclass: derived tables are set once, here
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(alphas, dim=0))

    @classmethod
    def from_name(
        cls,
        name: str,
        num_steps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        *,
        max_beta: float = 0.999,
    ) -> NoiseSchedule:
        """``"linear"``, ``"scaled_linear"`` or ``"cosine"`` (alias ``"squaredcos_cap_v2"``).

        ``beta_start``/``beta_end`` apply to the linear schedules, ``max_beta`` to the cosine one.
        """
        key = _ALIASES.get(name, name)
        if key == "linear":
            return cls(linear_betas(num_steps, beta_start, beta_end))
        if key == "scaled_linear":
            return cls(scaled_linear_betas(num_steps, beta_start, beta_end))
        if key == "cosine":
            return cls(cosine_betas(num_steps, max_beta))
        raise ValueError(f"expected a schedule name in {SCHEDULE_NAMES}, got {name!r}")

    @property
    def num_steps(self) -> int:
        """``T``, the number of training timesteps."""
        return self.betas.shape[0]

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(num_steps={self.num_steps}, beta_0={self.betas[0].item():.3g}, "
            f"beta_T={self.betas[-1].item():.3g}, abar_T={self.alphas_cumprod[-1].item():.3g})"
        )

    # -- gathering -------------------------------------------------------------------------------

    def check_timesteps(self, t: torch.Tensor | int, batch: int, device: torch.device | None = None) -> torch.Tensor:
        """Validate ``t`` as ``(b,)`` integer timesteps in ``[0, T)``; an ``int`` becomes ``(b,)``."""
        if isinstance(t, bool):
            raise TypeError(f"expected t to be an int or an integer tensor of shape (b,), got {t!r}")
        if isinstance(t, int):
            t = torch.full((batch,), t, dtype=torch.long, device=device)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected t to be an int or an integer tensor of shape (b,), got {type(t).__name__}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"expected t of shape (b,) with an integer dtype, got {t.dtype}")
        if t.ndim != 1 or t.shape[0] != batch:
            raise ValueError(f"expected t of shape (b,) with b={batch}, got {tuple(t.shape)}")
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= self.num_steps:
            raise ValueError(f"expected t in [0, {self.num_steps}) (T={self.num_steps}), got values in [{lo}, {hi}]")
        return t

    def _lookup(self, table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``table[t]`` for validated ``t (b,)``, float64 on ``t``'s device (float32 on MPS, which has no float64)."""
        table_dtype = torch.float32 if t.device.type == "mps" else torch.float64
        return table.to(device=t.device, dtype=table_dtype)[t]  # b

    def _gather(self, table: torch.Tensor, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """``table[t]`` as ``(b, 1, ..., 1)`` matching the rank, dtype and device of ``x``."""
        t = self.check_timesteps(t, x.shape[0], x.device)
        # coefficients stay float64 until this cast, so only the final product rounds to x's dtype
        values = self._lookup(table, t).to(device=x.device, dtype=x.dtype)  # b
        return values.view(x.shape[0], *([1] * (x.ndim - 1)))

    def _check_pair(self, a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
        for value, name in ((a, a_name), (b, b_name)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"expected {name} to be a torch.Tensor of shape (b, ...), got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"expected {name} of shape (b, ...) to have a floating-point dtype, got {value.dtype}")
            if value.ndim < 1:
                raise ValueError(f"expected {name} of shape (b, ...), got a 0-d tensor")
        if a.shape != b.shape:
            raise ValueError(
                f"expected {a_name} and {b_name} of the same shape (b, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
            )

    # -- forward process and its inversions --------------------------------------------------------

    def sqrt_alphas_cumprod(self, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(abar_t)`` broadcastable to ``x``: ``(b, 1, ..., 1)``."""
        return self._gather(self.alphas_cumprod.sqrt(), t, x)

    def sqrt_one_minus_alphas_cumprod(self, t: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(1 - abar_t)`` broadcastable to ``x``: ``(b, 1, ..., 1)``."""
        return self._gather((1.0 - self.alphas_cumprod).sqrt(), t, x)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` with the given noise (DDPM eq. 4); diffusers' ``add_noise``.

        ``x0 (b, ...)``, ``t (b,)``, ``noise (b, ...)`` -> ``x_t (b, ...)``.
        """
        self._check_pair(x0, "x0", noise, "noise")
        return self.sqrt_alphas_cumprod(t, x0) * x0 + self.sqrt_one_minus_alphas_cumprod(t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for ``x_0`` given the noise: ``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
        self._check_pair(x_t, "x_t", eps, "eps")
        return (x_t - self.sqrt_one_minus_alphas_cumprod(t, x_t) * eps) / self.sqrt_alphas_cumprod(t, x_t)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, x0: torch.Tensor) -> torch.Tensor:
        """Invert eq. 4 for the noise given ``x_0``: ``(x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)``."""
        self._check_pair(x_t, "x_t", x0, "x0")
        return (x_t - self.sqrt_alphas_cumprod(t, x_t) * x0) / self.sqrt_one_minus_alphas_cumprod(t, x_t)

    def velocity(self, x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022)."""
        self._check_pair(x0, "x0", noise, "noise")
        return self.sqrt_alphas_cumprod(t, x0) * noise - self.sqrt_one_minus_alphas_cumprod(t, x0) * x0

    def predict_x0_from_velocity(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """``x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``."""
        self._check_pair(x_t, "x_t", v, "v")
        return self.sqrt_alphas_cumprod(t, x_t) * x_t - self.sqrt_one_minus_alphas_cumprod(t, x_t) * v

    def predict_eps_from_velocity(self, x_t: torch.Tensor, t: torch.Tensor | int, v: torch.Tensor) -> torch.Tensor:
        """``eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v``."""
        self._check_pair(x_t, "x_t", v, "v")
        return self.sqrt_one_minus_alphas_cumprod(t, x_t) * x_t + self.sqrt_alphas_cumprod(t, x_t) * v

    def snr(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` at integer timesteps ``t (b,) -> (b,)``."""
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"expected t to be an integer tensor of shape (b,), got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"expected t of shape (b,), got {tuple(t.shape)}")
        t = self.check_timesteps(t, t.shape[0])
        abar = self.alphas_cumprod
        return self._lookup(abar / (1.0 - abar), t).to(dtype)
