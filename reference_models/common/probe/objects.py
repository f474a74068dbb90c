"""Counting the objects of moving-shapes clips without the classifier: 8-connected foreground
components per frame, and the fraction of clips that show exactly one object."""

from __future__ import annotations

import math
import numbers
from typing import Any

import einops
import torch
import torch.nn.functional as F

from vdblocks.validation import check_tensor

from .spec import FOREGROUND_THRESHOLD, ProbeSpec

__all__ = ["count_objects", "one_object_fraction"]


def _check_videos(videos: Any, spec: ProbeSpec | None = None) -> torch.Tensor:
    sizes = None if spec is None else {"c": spec.channels, "t": spec.frames, "h": spec.height, "w": spec.width}
    check_tensor(videos, "videos", "(b, c, t, h, w)", sizes=sizes)
    if videos.numel():
        lo, hi = float(videos.min()), float(videos.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("expected videos (b, c, t, h, w) with finite values in [-1, 1], got NaN or inf")
        if lo < -1.5 or hi > 1.5:
            raise ValueError(
                f"expected videos (b, c, t, h, w) with values in [-1, 1] (background -1), got values "
                f"in [{lo:g}, {hi:g}]; map 8-bit frames with x / 127.5 - 1"
            )
    return videos.detach().to("cpu", torch.float32).clamp(-1, 1)


def _components(videos: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8-connected foreground components of every frame of ``(b, c, t, h, w)``: the index of
    each one's frame in ``(b t)`` order and its size in pixels, both ``(m,)`` int64.

    Components are found by propagating the largest pixel id over 3x3 neighbourhoods until nothing
    changes (at most ``h * w`` rounds; a handful for compact shapes), so no image library is needed.
    """
    _, _, _, h, w = videos.shape
    fg = einops.rearrange(videos.amax(dim=1) > threshold, "b t h w -> (b t) 1 h w")
    # float64 holds every id exactly (ids < 2^53); max_pool2d has no integer kernel.
    ids = torch.arange(1, fg.numel() + 1, dtype=torch.float64).view(fg.shape)
    labels = torch.where(fg, ids, torch.zeros((), dtype=torch.float64))  # (b t) 1 h w
    for _ in range(h * w):
        grown = torch.where(fg, F.max_pool2d(labels, 3, stride=1, padding=1), labels)
        if torch.equal(grown, labels):
            break
        labels = grown
    found, sizes = torch.unique(labels[fg], return_counts=True)
    return (found.long() - 1) // (h * w), sizes


def _check_min_pixels(min_pixels: Any) -> int:
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, numbers.Integral) or min_pixels < 1:
        raise ValueError(f"expected min_pixels to be a positive int, got {min_pixels!r}")
    return int(min_pixels)


def count_objects(
    videos: torch.Tensor, *, threshold: float = FOREGROUND_THRESHOLD, min_pixels: int = 2
) -> torch.Tensor:
    """Objects per frame: ``(b, c, t, h, w)`` in [-1, 1] -> ``(b, t)`` int64.

    Foreground is where the largest channel exceeds ``threshold`` (the background is -1); objects
    are its 8-connected components of at least ``min_pixels`` pixels (smaller specks are not
    counted). Computed without the classifier.
    """
    videos = _check_videos(videos)
    min_pixels = _check_min_pixels(min_pixels)
    b, _, t, _, _ = videos.shape
    frame, sizes = _components(videos, threshold)
    return torch.bincount(frame[sizes >= min_pixels], minlength=b * t).view(b, t)


def one_object_fraction(
    videos: torch.Tensor, *, threshold: float = FOREGROUND_THRESHOLD, min_pixels: int = 2, max_pixels: int | None = None
) -> float:
    """The fraction of clips ``(b, c, t, h, w)`` in which more than half of the frames show exactly
    one object: one component of at least ``min_pixels`` pixels (see :func:`count_objects`), of at
    most ``max_pixels`` (larger blobs, e.g. of noise, are more than any one shape can cover)."""
    videos = _check_videos(videos)
    min_pixels = _check_min_pixels(min_pixels)
    b, _, t, _, _ = videos.shape
    frame, sizes = _components(videos, threshold)
    frame, sizes = frame[sizes >= min_pixels], sizes[sizes >= min_pixels]
    single = torch.bincount(frame, minlength=b * t) == 1
    if max_pixels is not None:
        single &= torch.bincount(frame[sizes > max_pixels], minlength=b * t) == 0
    return float((single.view(b, t).sum(dim=1) * 2 > t).double().mean())


def _max_pixels(spec: ProbeSpec) -> int:
    """More pixels than the largest shape of ``spec`` covers (a square of side ``2 r`` covers at most
    ``(2 r + 1)^2`` pixel centres)."""
    r = max(1.5, spec.size_range[1] * min(spec.height, spec.width))
    return math.ceil((2 * r + 2) ** 2)
