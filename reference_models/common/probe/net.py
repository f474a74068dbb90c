"""The probe's classifier :class:`ProbeNet`: per-frame moments of the soft foreground through an MLP
(motion, size, colour) and a small 2-D CNN over a few frames (shape kind)."""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from torch import nn

from .spec import FOREGROUND_THRESHOLD, ProbeSpec

__all__ = ["ProbeNet"]


def _moments(x: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame statistics of the soft foreground: ``(b, c, t, h, w) -> (b, k, t)`` with ``k = 8 + c``
    (sqrt area, centroid x y, sqrt second moments xx yy, xy, centroid steps x y, mean colour per
    channel), and the mask ``(b, t, h, w)``."""
    b, c, t, h, w = x.shape
    mask = torch.sigmoid((x.amax(dim=1) - FOREGROUND_THRESHOLD) * 20.0)  # b t h w
    mass = mask.sum(dim=(2, 3)) + 1e-3  # b t
    gx, gy = coords[0], coords[1]  # h w
    cx = (mask * gx).sum(dim=(2, 3)) / mass  # b t
    cy = (mask * gy).sum(dim=(2, 3)) / mass
    dx, dy = gx - cx[..., None, None], gy - cy[..., None, None]  # b t h w
    vxx = (mask * dx * dx).sum(dim=(2, 3)) / mass
    vyy = (mask * dy * dy).sum(dim=(2, 3)) / mass
    vxy = (mask * dx * dy).sum(dim=(2, 3)) / mass
    step = F.pad(torch.stack([cx.diff(dim=1), cy.diff(dim=1)], dim=1), (0, 1))  # b 2 t
    color = einops.reduce(mask[:, None] * x, "b c t h w -> b c t", "sum") / mass[:, None]
    stats = torch.stack(
        [(mass / (h * w)).sqrt(), cx, cy, vxx.clamp_min(1e-8).sqrt(), vyy.clamp_min(1e-8).sqrt(), vxy], dim=1
    )
    return torch.cat([stats, step, color], dim=1), mask  # b k t, b t h w


class ProbeNet(nn.Module):
    """The probe's classifier: ``(b, c, t, h, w)`` in [-1, 1] -> features ``(b, features)`` and one
    logit vector ``(b, classes)`` per attribute.

    Two branches meet in the penultimate layer: per-frame moments of the soft foreground
    (:func:`_moments`, standardised by buffers fitted on training clips) through a 2-layer MLP over
    all frames (motion, size, colour), and a 3-layer 2-D CNN over ``cnn_frames`` evenly spaced
    frames (frame and mask, average-pooled to about 16 pixels on the short side), global mean and
    max pooling, averaged over those frames (shape kind).
    """

    def __init__(self, spec: ProbeSpec) -> None:
        super().__init__()
        r = spec.recipe
        c, t, h, w = spec.channels, spec.frames, spec.height, spec.width
        self.spec = spec
        k = 8 + c
        unit = min(h, w) / 2
        ys = (torch.arange(h, dtype=torch.float32) + 0.5 - h / 2) / unit
        xs = (torch.arange(w, dtype=torch.float32) + 0.5 - w / 2) / unit
        self.register_buffer("coords", torch.stack(torch.meshgrid(xs, ys, indexing="xy")))  # 2 h w
        self.register_buffer("moment_mean", torch.zeros(k, 1))
        self.register_buffer("moment_std", torch.ones(k, 1))
        self.register_buffer("cnn_frames", torch.linspace(0, t - 1, min(r.cnn_frames, t)).round().long().unique())
        self.pool = max(1, round(min(h, w) / 16))
        wd = r.width
        self.cnn = nn.Sequential(
            nn.Conv2d(c + 1, wd, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(wd, 2 * wd, 3, padding=1, stride=2),
            nn.GELU(),
            nn.Conv2d(2 * wd, 2 * wd, 3, padding=1),
            nn.GELU(),
        )
        self.mlp = nn.Sequential(nn.Linear(k * t, r.hidden), nn.GELU(), nn.Linear(r.hidden, 128), nn.GELU())
        self.joint = nn.Sequential(nn.Linear(128 + 4 * wd, r.features), nn.GELU())
        self.heads = nn.ModuleDict({a: nn.Linear(r.features, len(spec.classes(a))) for a in spec.attributes})

    @torch.no_grad()
    def fit_moment_stats(self, videos: torch.Tensor) -> None:
        """Standardise the moments by their mean and std over ``videos (b, c, t, h, w)`` and frames."""
        m, _ = _moments(videos, self.coords)  # b k t
        self.moment_mean.copy_(m.mean(dim=(0, 2))[:, None])
        self.moment_std.copy_(m.std(dim=(0, 2))[:, None] + 1e-3)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the learned layers see, both parameter-free functions of the clip: standardised
        moments ``(b, c, t, h, w) -> (b, k, t)`` and the CNN's frames ``(b, c+1, f, h', w')``."""
        m, mask = _moments(x, self.coords)  # b k t, b t h w
        frames = torch.cat([x, mask[:, None]], dim=1)[:, :, self.cnn_frames]  # b c+1 f h w
        if self.pool > 1:
            frames = einops.rearrange(
                F.avg_pool2d(einops.rearrange(frames, "b c f h w -> b (c f) h w"), self.pool),
                "b (c f) h w -> b c f h w",
                c=x.shape[1] + 1,
            )
        return (m - self.moment_mean) / self.moment_std, frames

    def features_from_inputs(self, moments: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(b, k, t), (b, c+1, f, h', w') -> (b, features)``."""
        b = moments.shape[0]
        motion = self.mlp(moments.flatten(1))  # b 128
        y = self.cnn(einops.rearrange(frames, "b c f h w -> (b f) c h w"))  # (b f) 2wd h'' w''
        y = torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)  # (b f) 4wd
        look = einops.reduce(y, "(b f) d -> b d", "mean", b=b)
        return self.joint(torch.cat([motion, look], dim=1))  # b features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(b, c, t, h, w) -> (b, features)`` (the Frechet features)."""
        return self.features_from_inputs(*self.inputs(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(b, c, t, h, w) -> {attribute: logits (b, classes)}``."""
        f = self.features(x)
        return {a: head(f) for a, head in self.heads.items()}
