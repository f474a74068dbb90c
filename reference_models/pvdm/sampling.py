"""Sampling PVDM: Algorithm 1 in latent space, loading the two stages from their checkpoints and
turning sampled latents into videos.

Sampling (Algorithm 1): the first clip is sampled with the null condition, every later clip with
the previous clip's clean latent ``z_0^{l-1}`` as condition, and the clips are concatenated in
time (:func:`sample_long_latents`). Table 1's "N/M-s" runs DDIM with ``N`` steps for the first clip
and ``M`` for the later ones (``first_steps`` / ``next_steps``); ``sampler="ddpm"`` gives the
ancestral sampler written out in Algorithm 1. Schedule, prediction type and clipping come from the
config's :class:`~vdblocks.diffusion.DiffusionSpec` (``cfg.diffusion``): the presets predict the
noise and clip the ``z_0`` estimate to ``[-1, 1]``, since PVDM's latents come out of a ``tanh`` and
clipping only enforces a bound every real latent satisfies.

:func:`load_autoencoder` and :func:`load_diffusion` rebuild a stage-1 / stage-2 model from the config
its training run stored (``config["model"]["pvdm_autoencoder"]`` / ``["pvdm_diffusion"]``) with its
EMA weights; :func:`generate_long_video` is Algorithm 1 end to end (latents clip by clip, then the
decoder ``g_psi`` per clip, concatenated in time). The command line is
``python -m reference_models.pvdm.sample`` (``sample.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference_models.common.checkpoint import Checkpoint, load_model_from_checkpoint
from vdblocks.diffusion import DiffusionSpec, check_spec, sample_ddim, sample_ddpm
from vdblocks.validation import check_positive_int, check_tensor

from .autoencoder import PVDMAutoencoder
from .config import AutoencoderConfig, DiffusionConfig
from .diffusion import _config
from .losses import AutoencoderObjective
from .planes import check_grid
from .unet import TriplaneUNet

__all__ = [
    "SAMPLERS",
    "sample_latents",
    "sample_long_latents",
    "AUTOENCODER_KEY",
    "DIFFUSION_KEY",
    "decode_latents",
    "generate_long_video",
    "load_autoencoder",
    "load_diffusion",
]

AUTOENCODER_KEY = "pvdm_autoencoder"
DIFFUSION_KEY = "pvdm_diffusion"
SAMPLERS = ("ddim", "ddpm")


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


def load_autoencoder(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[PVDMAutoencoder, Checkpoint]:
    """The :class:`PVDMAutoencoder` of a stage-1 run (EMA weights by default), in eval mode.

    ``checkpoint``: a manifest, checkpoint directory or training output directory of
    ``python -m reference_models.pvdm.train --stage ae`` (only the model or EMA tensors are read),
    or a ``save_pretrained`` directory of a :class:`PVDMAutoencoder`.
    """
    model, ckpt = load_model_from_checkpoint(
        checkpoint,
        AUTOENCODER_KEY,
        lambda d: AutoencoderObjective(AutoencoderConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=PVDMAutoencoder,
    )
    # A training run holds the whole objective; a save_pretrained directory the autoencoder alone.
    autoencoder = model.autoencoder if isinstance(model, AutoencoderObjective) else model
    return autoencoder.eval(), ckpt


def load_diffusion(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[TriplaneUNet, Checkpoint]:
    """The :class:`TriplaneUNet` of a stage-2 run (EMA weights by default), in eval mode.

    ``checkpoint``: the run (output directory, checkpoint directory or manifest; only the model or
    EMA tensors are read) or a ``save_pretrained`` directory of a :class:`TriplaneUNet`.
    """
    return load_model_from_checkpoint(
        checkpoint,
        DIFFUSION_KEY,
        lambda d: TriplaneUNet(DiffusionConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=TriplaneUNet,
    )


@torch.no_grad()
def decode_latents(
    autoencoder: PVDMAutoencoder, latents: Sequence[torch.Tensor], grid: tuple[int, int, int]
) -> torch.Tensor:
    """Decode clip latents ``[(b, C, n), ...]`` one by one and concatenate them in time:
    ``-> (b, c, L T, H, W)``."""
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        return torch.cat([autoencoder.decode_packed(z, grid) for z in latents], dim=2)  # b c (L T) H W
    finally:
        autoencoder.train(was_training)


def generate_long_video(
    model: nn.Module,
    autoencoder: PVDMAutoencoder,
    batch: int,
    clips: int,
    *,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    first_steps: int = 100,
    next_steps: int = 20,
    return_latents: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Algorithm 1: ``batch`` videos of ``clips * frames`` frames, ``(b, c, clips T, H, W)``.

    ``frames, height, width``: the clip size (default: the autoencoder's training size; any size
    its patches divide works, the U-Net takes any plane grid). ``kwargs`` go to
    :func:`sample_long_latents` (``sampler``, ``eta``,
    ``generator`` ...). ``return_latents`` also returns the clip latents ``[(b, C, n)] * clips``.
    """
    check_positive_int(batch, "batch")
    cfg = autoencoder.cfg
    grid = autoencoder.latent_grid(frames or cfg.frames, height or cfg.height, width or cfg.width)
    latents = sample_long_latents(
        model, batch, clips, grid=grid, first_steps=first_steps, next_steps=next_steps, **kwargs
    )
    device = next(autoencoder.parameters()).device
    video = decode_latents(autoencoder, [z.to(device) for z in latents], grid)
    return (video, latents) if return_latents else video
