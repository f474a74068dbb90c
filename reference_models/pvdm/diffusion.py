"""PVDM's latent diffusion: the joint conditional / unconditional objective and Algorithm 1's sampler.

Objective (section 3.3): one denoiser learns both ``p(x)`` and ``p(x^2 | x^1)`` of consecutive
clips,

    E [ lambda ||eps - eps_theta(z_t^2, z_0^1, t)||^2 + (1 - lambda) ||eps - eps_theta(z_t^2, 0, t)||^2 ]

with ``z^1 = f_phi(x^1)``, ``z^2 = f_phi(x^2)`` and ``z_t^2 = sqrt(abar_t) z_0^2 + sqrt(1 - abar_t) eps``.
:func:`pvdm_loss` estimates it by drawing, per sample, the conditional term with probability
``lambda`` (``cfg.cond_prob``) and the null term otherwise (:func:`draw_cond_mask`): the expectation
of that draw is exactly the weighted sum, at the cost of one network evaluation per sample instead
of two (as classifier-free guidance trains its null condition).

Sampling (Algorithm 1): the first clip is sampled with the null condition, every later clip with
the previous clip's clean latent ``z_0^{l-1}`` as condition, and the clips are concatenated in
time (:func:`sample_long_latents`). Table 1's "N/M-s" runs DDIM with ``N`` steps for the first clip
and ``M`` for the later ones (``first_steps`` / ``next_steps``); ``sampler="ddpm"`` gives the
ancestral sampler written out in Algorithm 1. Schedule, prediction type and clipping come from the
config's :class:`~vdblocks.diffusion.DiffusionSpec` (``cfg.diffusion``): the presets predict the
noise and clip the ``z_0`` estimate to ``[-1, 1]``, since PVDM's latents come out of a ``tanh`` and
clipping only enforces a bound every real latent satisfies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vdblocks.diffusion import DiffusionSpec, check_spec, diffusion_loss, sample_ddim, sample_ddpm
from vdblocks.validation import check_positive_int, check_tensor

from .config import DiffusionConfig
from .planes import check_grid

__all__ = [
    "SAMPLERS",
    "draw_cond_mask",
    "pvdm_loss",
    "sample_latents",
    "sample_long_latents",
]

SAMPLERS = ("ddim", "ddpm")


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


def sample_latents(
    model: nn.Module,
    batch: int,
    *,
    grid: tuple[int, int, int] | None = None,
    cond: torch.Tensor | None = None,
    steps: int = 100,
    sampler: str = "ddim",
    eta: float = 0.0,
    diffusion: DiffusionSpec | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Callable[[Iterable], Iterable] = False,
) -> torch.Tensor:
    """Sample ``batch`` packed latents ``(b, C, n)`` of the plane grid ``grid`` (default: the
    model's training grid), conditioned on ``cond (b, C, n)`` (a previous clip's clean latent) or,
    with ``cond=None``, on the null condition. ``sampler``: ``"ddim"`` (``eta``) or ``"ddpm"``
    (ancestral), over ``steps`` strided timesteps. ``diffusion``: the spec to sample with (schedule,
    prediction type, clipping; default the model's ``cfg.diffusion``). The model runs in eval mode
    and is put back.
    """
    cfg = _config(model)
    grid = check_grid(grid if grid is not None else cfg.latent_grid)
    check_positive_int(batch, "batch")
    if sampler not in SAMPLERS:
        raise ValueError(f"expected sampler in {SAMPLERS}, got {sampler!r}")
    t, h, w = grid
    shape = (batch, cfg.latent_channels, h * w + t * w + t * h)
    if cond is not None:
        check_tensor(cond, "cond", "(b, c, n)", sizes=dict(zip("bcn", shape)))
    spec = cfg.diffusion if diffusion is None else check_spec(diffusion, "diffusion")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cond = None if cond is None else cond.to(device, dtype)

    def model_fn(z_t: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        return model(z_t, t_, cond=cond, grid=grid)  # b C n: the spec's prediction given z_0^{l-1} or 0

    was_training = model.training
    model.eval()
    try:
        common: dict[str, Any] = dict(generator=generator, device=device, dtype=dtype, progress=progress)
        if sampler == "ddpm":
            return sample_ddpm(model_fn, shape, spec, steps=steps, **common)
        return sample_ddim(model_fn, shape, spec, steps, eta, **common)
    finally:
        model.train(was_training)


def sample_long_latents(
    model: nn.Module,
    batch: int,
    clips: int,
    *,
    grid: tuple[int, int, int] | None = None,
    first_steps: int = 100,
    next_steps: int = 20,
    first: torch.Tensor | None = None,
    **kwargs: Any,
) -> list[torch.Tensor]:
    """Algorithm 1 in latent space: ``clips`` packed latents ``[z^1, ..., z^L]``, each ``(b, C, n)``.

    ``z^1`` is sampled with the null condition in ``first_steps`` steps (or taken from ``first``,
    e.g. a real clip's latent, to continue a given video); every ``z^l`` after it is sampled in
    ``next_steps`` steps conditioned on ``z^{l-1}``. ``kwargs`` go to :func:`sample_latents`
    (``sampler``, ``eta``, ``diffusion``, ``generator`` ...); the clips draw their noise one
    after the other from the same generator.
    """
    check_positive_int(clips, "clips")
    check_positive_int(first_steps, "first_steps")
    check_positive_int(next_steps, "next_steps")
    if first is None:
        latents = [sample_latents(model, batch, grid=grid, steps=first_steps, **kwargs)]  # b C n
    else:
        check_tensor(first, "first", "(b, c, n)", sizes={"b": batch})
        latents = [first]
    while len(latents) < clips:
        latents.append(sample_latents(model, batch, grid=grid, cond=latents[-1], steps=next_steps, **kwargs))
    return latents
