"""PVDM's latent diffusion objective: the joint conditional / unconditional loss.

Objective (section 3.3): one denoiser learns both ``p(x)`` and ``p(x^2 | x^1)`` of consecutive
clips,

    E [ lambda ||eps - eps_theta(z_t^2, z_0^1, t)||^2 + (1 - lambda) ||eps - eps_theta(z_t^2, 0, t)||^2 ]

with ``z^1 = f_phi(x^1)``, ``z^2 = f_phi(x^2)`` and ``z_t^2 = sqrt(abar_t) z_0^2 + sqrt(1 - abar_t) eps``.
:func:`pvdm_loss` estimates it by drawing, per sample, the conditional term with probability
``lambda`` (``cfg.cond_prob``) and the null term otherwise (:func:`draw_cond_mask`): the expectation
of that draw is exactly the weighted sum, at the cost of one network evaluation per sample instead
of two (as classifier-free guidance trains its null condition).

Sampling (Algorithm 1) is in :mod:`reference_models.pvdm.sampling`.
"""

from __future__ import annotations

import torch
from torch import nn

from vdblocks.diffusion import diffusion_loss
from vdblocks.validation import check_positive_int, check_tensor

from .config import DiffusionConfig
from .planes import check_grid

__all__ = [
    "draw_cond_mask",
    "pvdm_loss",
]


def _config(model: nn.Module) -> DiffusionConfig:
    cfg = getattr(getattr(model, "module", model), "cfg", None)
    if not isinstance(cfg, DiffusionConfig):
        raise TypeError(f"expected a TriplaneUNet (with a DiffusionConfig .cfg), got {type(model).__name__}")
    return cfg


def draw_cond_mask(
    batch: int, cond_prob: float, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool ``(b,)``: True (conditional on the previous clip) with probability ``cond_prob`` (``lambda``)."""
    check_positive_int(batch, "batch")
    if not 0.0 <= cond_prob <= 1.0:
        raise ValueError(f"expected cond_prob in [0, 1], got {cond_prob}")
    u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else device)
    return (u < cond_prob).to(device)


def pvdm_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    grid: tuple[int, int, int],
    cond_prob: float | None = None,
) -> torch.Tensor:
    """Section 3.3's objective on a batch of cached latent pairs ``{"z1": (b, C, n), "z2": (b, C, n)}``.

    Draws the per-sample condition mask first (:func:`draw_cond_mask`, ``cond_prob`` defaults to
    the model's ``cfg.cond_prob``), then ``t`` and the noise (``diffusion_loss`` under the model's
    ``cfg.diffusion``), all from ``generator``; ``z2`` is noised and denoised, ``z1`` reaches the
    (possibly DDP-wrapped) model clean, multiplied by the mask.
    """
    z1, z2 = batch["z1"], batch["z2"]
    check_tensor(z2, "z2", "(b, c, n)")
    check_tensor(z1, "z1", "(b, c, n)", sizes=dict(zip("bcn", z2.shape)))
    grid = check_grid(grid)
    cfg = _config(model)
    p = cfg.cond_prob if cond_prob is None else cond_prob
    mask = draw_cond_mask(z2.shape[0], p, generator=generator, device=z2.device)

    def model_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(z_t, t, cond=z1, cond_mask=mask, grid=grid)  # b C n: prediction per cfg.diffusion

    return diffusion_loss(model_fn, z2, cfg.diffusion, generator=generator)
