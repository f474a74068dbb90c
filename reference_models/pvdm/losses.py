"""PVDM's autoencoder objective (appendix A): L1 pixels, a pluggable perceptual term, a hinge GAN.

``L(phi, psi) = L_pixel + lambda_1 L_LPIPS + lambda_2 max_h L_GAN`` with

* ``L_pixel``: mean absolute error between the video and its reconstruction;
* ``L_LPIPS``: a perceptual distance through a frozen feature network (:class:`PerceptualLoss`):
  any ``nn.Module`` mapping frames ``(n, c, h, w)`` to a feature map or a list of them, e.g. an
  LPIPS/VGG trunk the user has weights for (``torch.jit.load("lpips_vgg.pt")``); nothing is
  downloaded. Features are unit-normalised along channels and compared by mean squared difference
  per layer, summed over layers (LPIPS without its learned per-channel weights, whose "baseline"
  variant this is); with real LPIPS weights, pass a module that returns LPIPS's weighted features;
* ``L_GAN``: TATS's objective, which PVDM follows: the hinge loss of a 3D patch discriminator ``h``
  (:class:`~reference_models.pvdm.discriminator.PatchDiscriminator3D`) plus the feature similarity
  (L1 between ``h``'s activations on the real video and on its reconstruction).
  ``lambda_2 = 0`` before ``gan_start`` steps ("before the other terms converge"), then
  ``gan_weight`` (0.25 in the paper).

One optimizer for two players. The common trainer steps one AdamW over ``model.parameters()``, so
:class:`AutoencoderObjective` holds both the autoencoder and the discriminator and builds a loss
whose gradient is the right one for each:

* the generator terms see the discriminator through :func:`torch.func.functional_call` with
  *detached* copies of its parameters: they reach the autoencoder and never the discriminator;
* the discriminator term ``hinge(h(x), h(sg(x_rec)))`` sees a detached reconstruction: it reaches
  the discriminator and never the autoencoder.

The two parameter sets are disjoint and AdamW is element-wise, so one step on the sum is exactly a
generator step plus a discriminator step on the same batch (with a shared learning rate and a
gradient clip over both; VQGAN and TATS alternate two optimizers instead). Before ``gan_start``
both GAN terms are multiplied by zero rather than skipped, so the discriminator's parameters still
get (zero) gradients and DDP needs no ``find_unused_parameters``. The step counter is a buffer of
the module, saved in checkpoints, so a resumed run switches the GAN on at the same step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.func import functional_call

from vdblocks.validation import check_tensor

from .autoencoder import PVDMAutoencoder
from .config import AutoencoderConfig
from .discriminator import PatchDiscriminator3D

__all__ = [
    "AutoencoderObjective",
    "PerceptualLoss",
    "feature_matching_loss",
    "hinge_d_loss",
    "hinge_g_loss",
]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (VQGAN): ``(mean relu(1 - h(x)) + mean relu(1 + h(x_rec))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The generator's side of the hinge GAN: ``-mean h(x_rec)``."""
    return -logits_fake.mean()


def feature_matching_loss(feats_real: Sequence[torch.Tensor], feats_fake: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the L1 distance between discriminator activations (TATS's
    ``gan_feat`` term); the real activations are targets (detached)."""
    if len(feats_real) != len(feats_fake) or not feats_real:
        raise ValueError(
            f"expected two equally long, non-empty lists of activations, got {len(feats_real)} and {len(feats_fake)}"
        )
    return torch.stack([F.l1_loss(f, r.detach()) for r, f in zip(feats_real, feats_fake)]).mean()


class PerceptualLoss(nn.Module):
    """A frozen feature network as a video perceptual distance: ``(x, y) (b, c, t, h, w) -> scalar``.

    ``net`` maps frames ``(n, c, h, w)`` (values in ``[-1, 1]``) to a feature map ``(n, k, h', w')``
    or a list/tuple of them. Every frame of both videos goes through it; per layer, the features
    are unit-normalised over channels and their squared difference averaged; the layers are
    summed. ``net``'s parameters are frozen and it is kept in eval mode.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"expected net to be an nn.Module mapping frames (n, c, h, w) to features, got {type(net).__name__}"
            )
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.net.eval()  # frozen: dropout / batch-norm statistics stay as loaded
        return self

    def _features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(frames)
        feats = list(out) if isinstance(out, (list, tuple)) else [out]
        if not feats or not all(isinstance(f, torch.Tensor) and f.ndim >= 2 for f in feats):
            raise TypeError("expected the perceptual network to return a tensor (n, k, ...) or a list of them")
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, t, h, w)")
        check_tensor(y, "y", "(b, c, t, h, w)")
        if x.shape != y.shape:
            raise ValueError(
                f"expected x and y of the same shape (b, c, t, h, w), got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        frames = rearrange(torch.cat([x, y]), "b c t h w -> (b t) c h w")  # (2 b t) c h w
        total = x.new_zeros(())
        for f in self._features(frames):
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm over channels
            fx, fy = f.chunk(2)
            total = total + (fx - fy).pow(2).sum(dim=1).mean()
        return total


class AutoencoderObjective(nn.Module):
    """Stage 1's trained module: the autoencoder, the optional discriminator and appendix A's loss.

    ``forward(x (b, c, T, H, W))`` returns a dict of scalars: ``"loss"`` (the total to minimise,
    with the generator and discriminator terms combined as the module docstring explains),
    ``"l1"``, and when enabled ``"perceptual"``, ``"g"`` (generator hinge), ``"feature_match"``,
    ``"d"`` (discriminator hinge) and ``"gan_weight"`` (``lambda_2`` at this step). Every entry
    but ``"loss"`` is detached unless ``return_terms=True``. In training mode with gradients on,
    each call advances the step counter ``self.step``.

    ``perceptual``: a :class:`PerceptualLoss` (or None). It is held outside the module's
    parameters and state dict (not part of what is trained or checkpointed) and moved to the
    input's device when used.
    """

    step: torch.Tensor

    def __init__(self, cfg: AutoencoderConfig, *, perceptual: PerceptualLoss | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.autoencoder = PVDMAutoencoder(cfg)
        self.discriminator = (
            PatchDiscriminator3D(cfg.channels, cfg.disc_channels, cfg.disc_layers) if cfg.use_gan else None
        )
        if perceptual is not None and not isinstance(perceptual, PerceptualLoss):
            perceptual = PerceptualLoss(perceptual)
        object.__setattr__(self, "perceptual", perceptual)  # not a submodule: see the docstring
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def gan_weight(self) -> float:
        """``lambda_2`` at the current step: 0 before ``cfg.gan_start``, then ``cfg.gan_weight``."""
        return self.cfg.gan_weight if int(self.step) >= self.cfg.gan_start else 0.0

    def forward(self, x: torch.Tensor, *, return_terms: bool = False) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rec = self.autoencoder(x)  # b c T H W
        terms: dict[str, torch.Tensor] = {"l1": (rec - x).abs().mean()}
        loss = cfg.l1_weight * terms["l1"]
        if cfg.l2_weight > 0:
            terms["l2"] = (rec - x).pow(2).mean()
            loss = loss + cfg.l2_weight * terms["l2"]
        if self.perceptual is not None and cfg.perceptual_weight > 0:
            self.perceptual.to(x.device)
            terms["perceptual"] = self.perceptual(rec, x)
            loss = loss + cfg.perceptual_weight * terms["perceptual"]
        if self.discriminator is not None:
            weight = self.gan_weight()
            d = self.discriminator
            frozen = {name: p.detach() for name, p in d.named_parameters()}
            logits_fake, feats_fake = functional_call(d, frozen, (rec,), {"return_features": True})
            logits_real, feats_real = d.features(x)  # the real activations only serve as (detached) targets
            terms["g"] = hinge_g_loss(logits_fake)
            terms["feature_match"] = feature_matching_loss(feats_real, feats_fake)
            terms["d"] = hinge_d_loss(logits_real, d(rec.detach()))
            generator_gan = terms["g"] + cfg.feature_match_weight * terms["feature_match"]
            loss = loss + weight * generator_gan + (1.0 if weight > 0 else 0.0) * terms["d"]
            terms["gan_weight"] = torch.tensor(weight)
        if self.training and torch.is_grad_enabled():
            self.step += 1
        out = {k: (v if return_terms else v.detach()) for k, v in terms.items()}
        out["loss"] = loss
        return out
