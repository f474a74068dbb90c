"""A built-in quality probe for moving-shapes videos: do generated clips show what they were asked for?

The examples train diffusion models on :class:`~reference_models.common.data.MovingShapes` for a few
CPU minutes. :class:`ShapesProbe` scores their samples against their conditions:

* a small classifier, trained once in seconds on ground-truth clips of the same geometry, reads the
  single (primary) object's colour (8 ``PALETTE`` names; none for gray clips), shape kind (5
  ``SHAPE_KINDS``), size (``"small"``/``"large"``, as captions say) and direction of motion (the 8
  ``DIRECTIONS``, the one at ``t = 0`` as captions name it). :meth:`ShapesProbe.evaluate` reports the
  accuracy of each attribute over the clips whose condition names it, next to the accuracy the
  probe reaches on held-out ground truth at the same frame rates (the ceiling to compare with);
* the fraction of clips showing exactly one object, counted without the classifier: foreground
  pixels (background is -1, objects are bright) in 8-connected components per frame;
* a Frechet distance between the classifier's penultimate features of the generated clips and of
  as many real clips drawn from the same distribution at the same rates, with the distance between
  two real sets of that size as its noise floor (small sets bias the distance upward).

Why it is built this way (the classifier, :class:`ProbeNet`). Motion is read from per-frame moments
of the soft foreground mask (area, centroid, second moments, mean colour, centroid steps) through an
MLP; shape kind from a small 2-D CNN over two frames. The moments give direction and size directly
(a plain 3-D CNN needed minutes to learn direction); horizontal flips, an exact symmetry of the data
(every kind is mirror-symmetric, pixel centres map onto pixel centres), double the training clips.

Direction is ambiguous for some clips: a shape that bounces off a wall before the second frame
shows the reflected direction, and slow shapes at high frame rates move by less than a pixel.
Labels stay the caption's (the direction at ``t = 0``); the probe's held-out ground-truth accuracy
(overall, per rate, and on the clips without a bounce before frame 1) is stored with it, so a
generated clip's direction accuracy is read against that number, never against 1.

The probe trains on one-object clips (``max_shapes=1``); on clips with several objects its
attribute predictions are not meaningful, which the one-object fraction shows.

Caching. Weights live in ``<cache>/shapes_probe/probe-<key>.safetensors`` with a JSON manifest
(spec, SHA-256 of the tensor file, held-out accuracies), both written atomically (temporary file in
the same directory, then ``os.replace``), loaded with ``json`` and ``safetensors`` only (never
pickle). ``key`` hashes everything that defines the probe (:class:`ProbeSpec`, its
:class:`ProbeRecipe` and ``PROBE_VERSION``). The cache directory is ``cache_dir=`` when given,
else ``$VDBLOCKS_CACHE``, else ``$XDG_CACHE_HOME/vdblocks``, else ``~/.cache/vdblocks``;
``cache_dir=False`` disables it. A file that does not verify is rebuilt with a warning. Probes are
also memoised per process, so building the same probe twice reads nothing.

Regenerate the committed ground-truth figures of ``docs/probe.md``::

    python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json --page docs/probe.md
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import numbers
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import einops
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from vdblocks._validation import check_tensor

from .data.moving_shapes import DIRECTIONS, PALETTE, SHAPE_KINDS, MovingShapes
from .files import follow_umask
from .metrics import frechet_distance_from_features

__all__ = [
    "PROBE_VERSION",
    "render_run_table",
    "ATTRIBUTES",
    "SIZES",
    "FOREGROUND_THRESHOLD",
    "ProbeRecipe",
    "ProbeSpec",
    "ProbeNet",
    "ProbeResult",
    "ShapesProbe",
    "parse_caption",
    "parse_caption_objects",
    "count_objects",
    "one_object_fraction",
    "train_probe",
    "default_cache_dir",
    "ground_truth_record",
    "render_ground_truth_table",
]

PROBE_VERSION = 1
"""Bumped whenever the network, the training or the evaluation changes: old cache files are then
never loaded (the version is part of every cache key)."""

ATTRIBUTES: tuple[str, ...] = ("color", "kind", "size", "direction")
SIZES: tuple[str, ...] = ("small", "large")
FOREGROUND_THRESHOLD = -0.5
"""A pixel is foreground where its largest channel exceeds this. The background is -1; the darkest
object is red in gray clips (Rec. 601 luma 0.40, i.e. -0.19 in [-1, 1])."""

_FORMAT = "vdblocks-shapes-probe"
_SUBDIR = "shapes_probe"
# MovingShapes seeds of the probe's own clips, far from the small seeds the examples train on.
_TRAIN_SEED, _HELDOUT_SEED, _REAL_SEED = 7_000_000, 8_000_000, 9_000_000
_FLIP = {"left": "right", "right": "left", "up-left": "up-right", "up-right": "up-left",
         "down-left": "down-right", "down-right": "down-left", "up": "up", "down": "down"}
_ALIASES = {"colour": "color", "shape": "kind"}
_CAPTION_GRAMMAR = ("'[a] [small|large] [<colour>] <kind> [moving <direction>]', objects joined by ' and ' "
                    "(e.g. 'a large red circle moving up-left')")


# --------------------------------------------------------------------------- specification


@dataclass(frozen=True)
class ProbeRecipe:
    """How the probe is trained (part of the cache key).

    ``num_clips`` ground-truth clips rendered once (each also seen mirrored), ``epochs`` passes of
    AdamW (``lr`` peak of a one-cycle schedule, ``weight_decay``) over batches of ``batch_size``;
    ``width`` channels of the CNN's first layer, ``hidden`` units of the moment MLP, ``features``
    the penultimate width (the Frechet features), ``cnn_frames`` frames the CNN looks at;
    ``heldout_clips`` ground-truth clips of other seeds measure the accuracies stored with it.
    """

    num_clips: int = 8000
    epochs: int = 12
    batch_size: int = 128
    lr: float = 5e-3
    weight_decay: float = 1e-4
    width: int = 8
    hidden: int = 256
    features: int = 64
    cnn_frames: int = 2
    heldout_clips: int = 2000

    def __post_init__(self) -> None:
        for name in ("num_clips", "epochs", "batch_size", "width", "hidden", "features", "cnn_frames", "heldout_clips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"expected ProbeRecipe.{name} to be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < math.inf:
                raise ValueError(f"expected ProbeRecipe.{name} to be a non-negative number, got {value!r}")
            object.__setattr__(self, name, float(value))


def _rates(fps: Any) -> tuple[float, ...]:
    rates = [fps] if isinstance(fps, numbers.Real) else list(fps) if isinstance(fps, Sequence) else None
    if not rates or any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < math.inf for r in rates):
        raise ValueError(f"expected fps to be a positive number or a sequence of them, got {fps!r}")
    return tuple(sorted({float(r) for r in rates}))


def _pair(value: Any, name: str) -> tuple[float, float]:
    if not isinstance(value, Sequence) or len(value) != 2 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
        raise ValueError(f"expected {name} as (low, high), got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(frozen=True)
class ProbeSpec:
    """Everything that defines a probe: the clip geometry ``(c, t, h, w)``, the moving-shapes
    distribution it is trained on (``size_range``, ``speed_range``, ``kinds``, ``colors``, the frame
    rates ``fps``), the training ``seed`` and :class:`ProbeRecipe`. ``channels=1`` (gray) has no
    colour head; ``frames=1`` has no direction head."""

    channels: int
    frames: int
    height: int
    width: int
    fps: tuple[float, ...] = (8.0,)
    size_range: tuple[float, float] = (0.08, 0.16)
    speed_range: tuple[float, float] = (0.25, 1.0)
    kinds: tuple[str, ...] = SHAPE_KINDS
    colors: tuple[str, ...] = tuple(PALETTE)
    directions: tuple[str, ...] = tuple(DIRECTIONS)
    seed: int = 0
    recipe: ProbeRecipe = field(default_factory=ProbeRecipe)

    def __post_init__(self) -> None:
        for name in ("channels", "frames", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"expected {name} to be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.channels not in (1, 3):
            raise ValueError(f"expected channels in {{1, 3}} (gray or RGB moving shapes), got {self.channels}")
        object.__setattr__(self, "fps", _rates(self.fps))
        object.__setattr__(self, "size_range", _pair(self.size_range, "size_range"))
        object.__setattr__(self, "speed_range", _pair(self.speed_range, "speed_range"))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "colors", tuple(self.colors))
        object.__setattr__(self, "directions", tuple(self.directions))
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"expected seed to be a non-negative int, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.recipe, ProbeRecipe):
            raise TypeError(f"expected recipe to be a ProbeRecipe, got {type(self.recipe).__name__}")
        self.dataset(1, 0)  # MovingShapes validates sizes, ranges, kinds and colours

    @property
    def has_color(self) -> bool:
        return self.channels == 3

    @property
    def has_direction(self) -> bool:
        return self.frames >= 2

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes this probe reads."""
        return tuple(a for a in ATTRIBUTES if (a != "color" or self.has_color) and (a != "direction" or self.has_direction))

    def classes(self, attribute: str) -> tuple[str, ...]:
        return {"color": self.colors, "kind": self.kinds, "size": SIZES, "direction": self.directions}[attribute]

    @property
    def mirror_closed(self) -> bool:
        """Whether the horizontal mirror of every clip is a clip of this distribution (its
        directions are closed under left-right flips); training then also uses mirrored clips."""
        return all(_FLIP[d] in self.directions for d in self.directions)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))  # tuples -> lists: the form JSON gives back

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProbeSpec:
        d = dict(d)
        d["recipe"] = ProbeRecipe(**d.get("recipe", {}))
        return cls(**d)

    def key(self) -> str:
        """16 hex digits of the SHA-256 of the spec, the recipe and ``PROBE_VERSION``."""
        text = json.dumps({"format": _FORMAT, "version": PROBE_VERSION, "spec": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def dataset(self, num_samples: int, seed: int) -> MovingShapes:
        """One-object moving shapes of this spec (each item draws its rate from ``fps``)."""
        return MovingShapes(num_samples, frames=self.frames, height=self.height, width=self.width, fps=self.fps,
                            channels=self.channels, max_shapes=1, seed=seed, kinds=self.kinds, colors=self.colors,
                            size_range=self.size_range, speed_range=self.speed_range, directions=self.directions)

    def describe(self) -> str:
        return (f"{self.channels}x{self.frames}x{self.height}x{self.width} (c x t x h x w), "
                f"fps {', '.join(f'{r:g}' for r in self.fps)}")


# --------------------------------------------------------------------------- captions


def parse_caption_objects(caption: str) -> list[dict[str, str]]:
    """Every object of a moving-shapes caption, in order, as ``{"kind", "size", "color", "direction"}``
    (only the words present): ``"a small red circle moving left and a large blue square"`` ->
    ``[{"size": "small", "color": "red", "kind": "circle", "direction": "left"}, {...}]``.

    Grammar (:meth:`ShapeSpec.phrase` and the datasets' captions; class names such as ``"red
    circle"`` also parse): ``[a] [small|large] [<colour>] <kind> [moving <direction>]``, objects
    joined by ``and``; case and a final full stop are ignored. Raises ``ValueError`` otherwise.
    """
    if not isinstance(caption, str):
        raise TypeError(f"expected caption to be a str, got {type(caption).__name__}")
    words = caption.strip().rstrip(".").lower().split()
    if not words:
        raise ValueError(f"expected a moving-shapes caption {_CAPTION_GRAMMAR}, got an empty caption")
    objects, current = [], []
    for word in words + ["and"]:
        if word != "and":
            current.append(word)
            continue
        obj, rest = {}, list(current)
        if rest[:1] in (["a"], ["an"]):
            rest.pop(0)
        if rest[:1] and rest[0] in SIZES:
            obj["size"] = rest.pop(0)
        if rest[:1] and rest[0] in PALETTE:
            obj["color"] = rest.pop(0)
        if rest[:1] and rest[0] in SHAPE_KINDS:
            obj["kind"] = rest.pop(0)
        if rest[:1] == ["moving"] and len(rest) >= 2 and rest[1] in DIRECTIONS:
            obj["direction"] = rest[1]
            rest = rest[2:]
        if "kind" not in obj or rest:
            raise ValueError(f"expected a moving-shapes caption {_CAPTION_GRAMMAR}, "
                             f"could not read {' '.join(current)!r} in {caption!r}")
        objects.append(obj)
        current = []
    return objects


def parse_caption(caption: str) -> dict[str, str]:
    """The first (primary) object of a moving-shapes caption: see :func:`parse_caption_objects`."""
    return parse_caption_objects(caption)[0]


def _condition(item: Any, index: int, spec: ProbeSpec) -> dict[str, str]:
    """A caption or a mapping -> the attributes this probe reads, checked against its classes."""
    if isinstance(item, str):
        cond = parse_caption(item)
    elif isinstance(item, Mapping):
        cond = {}
        for key, value in item.items():
            name = _ALIASES.get(key, key)
            if name not in ATTRIBUTES:
                raise ValueError(f"conditions[{index}]: unknown key {key!r}; expected keys from {ATTRIBUTES} "
                                 "('colour' and 'shape' are accepted too)")
            if value is not None:
                cond[name] = value
    elif item is None:
        cond = {}
    else:
        raise TypeError(f"expected each condition to be a caption str, a dict with keys from {ATTRIBUTES} "
                        f"or None, got {type(item).__name__} at conditions[{index}]")
    out = {}
    for name, value in cond.items():
        if name not in spec.attributes:
            continue  # colour of gray clips, direction of stills: not measurable, not counted
        if value not in spec.classes(name):
            raise ValueError(f"conditions[{index}]: {name} {value!r} is not one this probe knows "
                             f"({', '.join(spec.classes(name))})")
        out[name] = value
    return out


# --------------------------------------------------------------------------- object counting


def _check_videos(videos: Any, spec: ProbeSpec | None = None) -> torch.Tensor:
    sizes = None if spec is None else {"c": spec.channels, "t": spec.frames, "h": spec.height, "w": spec.width}
    check_tensor(videos, "videos", "(b, c, t, h, w)", sizes=sizes)
    if videos.numel():
        lo, hi = float(videos.min()), float(videos.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("expected videos (b, c, t, h, w) with finite values in [-1, 1], got NaN or inf")
        if lo < -1.5 or hi > 1.5:
            raise ValueError(f"expected videos (b, c, t, h, w) with values in [-1, 1] (background -1), got values "
                             f"in [{lo:g}, {hi:g}]; map 8-bit frames with x / 127.5 - 1")
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


def count_objects(videos: torch.Tensor, *, threshold: float = FOREGROUND_THRESHOLD, min_pixels: int = 2) -> torch.Tensor:
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


def one_object_fraction(videos: torch.Tensor, *, threshold: float = FOREGROUND_THRESHOLD, min_pixels: int = 2,
                        max_pixels: int | None = None) -> float:
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


# --------------------------------------------------------------------------- the network


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
    stats = torch.stack([(mass / (h * w)).sqrt(), cx, cy, vxx.clamp_min(1e-8).sqrt(), vyy.clamp_min(1e-8).sqrt(), vxy], dim=1)
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
            nn.Conv2d(c + 1, wd, 3, padding=1), nn.GELU(),
            nn.Conv2d(wd, 2 * wd, 3, padding=1, stride=2), nn.GELU(),
            nn.Conv2d(2 * wd, 2 * wd, 3, padding=1), nn.GELU(),
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
            frames = einops.rearrange(F.avg_pool2d(einops.rearrange(frames, "b c f h w -> b (c f) h w"), self.pool),
                                      "b (c f) h w -> b c f h w", c=x.shape[1] + 1)
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


# --------------------------------------------------------------------------- training


def _render(spec: ProbeSpec, num: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``num`` ground-truth clips ``(n, c, t, h, w)``, their labels ``{attribute: (n,)}`` (class
    indices), frame rates ``(n,)`` and whether the shape bounces before frame 1 ``(n,)`` bool."""
    data = spec.dataset(num, seed)
    videos, labels, rates, bounced = [], {a: [] for a in ATTRIBUTES}, [], []
    for i in range(num):
        shape = data.shapes(i)[0]
        rate = data.fps_of(i)
        videos.append(data.render(i, fps=rate))
        for a in ATTRIBUTES:
            labels[a].append(spec.classes(a).index(getattr(shape, a)))
        rates.append(rate)
        x, y = shape.center_at(np.array([1.0 / rate]), spec.height, spec.width)
        free = (shape.position[0] + shape.velocity[0] / rate, shape.position[1] + shape.velocity[1] / rate)
        bounced.append(abs(float(x[0]) - free[0]) > 1e-9 or abs(float(y[0]) - free[1]) > 1e-9)
    return (torch.stack(videos), {a: torch.tensor(v) for a, v in labels.items()},
            torch.tensor(rates, dtype=torch.float64), torch.tensor(bounced))


def train_probe(spec: ProbeSpec) -> ProbeNet:
    """Train :class:`ProbeNet` for ``spec`` on CPU, deterministically (seeded; the global RNGs are
    left as they were). Returns it in eval mode.

    The clips are rendered once, in chunks, and only the network's parameter-free inputs
    (:meth:`ProbeNet.inputs`) of each clip and of its mirror image are kept, so an epoch costs the
    learned layers alone."""
    r = spec.recipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        net = ProbeNet(spec)
    gen = torch.Generator().manual_seed(spec.seed)
    mirror = spec.mirror_closed
    flip = torch.tensor([spec.directions.index(_FLIP[d]) if mirror else i for i, d in enumerate(spec.directions)])
    data = spec.dataset(r.num_clips, _TRAIN_SEED + spec.seed)
    parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], []]  # [plain, mirrored]
    labels: dict[str, list[int]] = {a: [] for a in spec.attributes}
    with torch.no_grad():
        for start in range(0, r.num_clips, 500):
            chunk = range(start, min(start + 500, r.num_clips))
            videos = torch.stack([data[i]["video"] for i in chunk])  # n c t h w
            if start == 0:
                net.fit_moment_stats(videos)
            parts[0].append(net.inputs(videos))
            parts[1].append(net.inputs(videos.flip(-1)))  # an exact symmetry of the data
            for i in chunk:
                shape = data.shapes(i)[0]
                for a in spec.attributes:
                    labels[a].append(spec.classes(a).index(getattr(shape, a)))
    moments = torch.stack([torch.cat([m for m, _ in p]) for p in parts])  # 2 n k t
    frames = torch.stack([torch.cat([f for _, f in p]) for p in parts])  # 2 n c+1 f h' w'
    y_all = {a: torch.tensor(v) for a, v in labels.items()}
    y_all = {a: torch.stack([v, flip[v]]) if a == "direction" else torch.stack([v, v]) for a, v in y_all.items()}
    steps_per_epoch = max(1, r.num_clips // r.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.epochs * steps_per_epoch, pct_start=0.15)
    net.train()
    for _ in range(r.epochs):
        order = torch.randperm(r.num_clips, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * r.batch_size:(i + 1) * r.batch_size]
            side = (torch.rand(len(idx), generator=gen) < 0.5).long() * mirror  # plain or mirrored
            f = net.features_from_inputs(moments[side, idx], frames[side, idx])
            loss = sum(F.cross_entropy(head(f), y_all[a][side, idx]) for a, head in net.heads.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def _predict(net: ProbeNet, videos: torch.Tensor, batch: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class indices ``{attribute: (b,)}`` and features ``(b, d)``, in chunks."""
    preds: dict[str, list[torch.Tensor]] = {a: [] for a in net.heads}
    feats = []
    for chunk in torch.split(videos, batch):
        f = net.features(chunk)
        feats.append(f)
        for a, head in net.heads.items():
            preds[a].append(head(f).argmax(dim=1))
    return {a: torch.cat(v) for a, v in preds.items()}, torch.cat(feats)


def _max_pixels(spec: ProbeSpec) -> int:
    """More pixels than the largest shape of ``spec`` covers (a square of side ``2 r`` covers at most
    ``(2 r + 1)^2`` pixel centres)."""
    r = max(1.5, spec.size_range[1] * min(spec.height, spec.width))
    return math.ceil((2 * r + 2) ** 2)


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def _measure_ground_truth(net: ProbeNet, spec: ProbeSpec) -> dict[str, Any]:
    """Accuracies on ``heldout_clips`` ground-truth clips of unseen seeds: overall, per rate, per
    kind; direction also without the clips that bounce before frame 1; the one-object fraction."""
    videos, labels, rates, bounced = _render(spec, spec.recipe.heldout_clips, _HELDOUT_SEED + spec.seed)
    preds, _ = _predict(net, videos)
    hit = {a: preds[a] == labels[a] for a in spec.attributes}
    out: dict[str, Any] = {
        "num_clips": len(videos),
        "accuracy": {a: _mean(hit[a]) for a in spec.attributes},
        "kind_accuracy": {k: _mean(hit["kind"][labels["kind"] == i]) for i, k in enumerate(spec.kinds)},
        "per_fps": {f"{r:g}": {a: _mean(hit[a][rates == r]) for a in spec.attributes} for r in spec.fps},
        "one_object_fraction": one_object_fraction(videos, max_pixels=_max_pixels(spec)),
    }
    if spec.has_direction:
        out["bounce_before_frame_1"] = _mean(bounced)
        out["direction_without_bounce"] = _mean(hit["direction"][~bounced])
    return out


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$VDBLOCKS_CACHE``, else ``$XDG_CACHE_HOME/vdblocks``, else ``~/.cache/vdblocks``."""
    if os.environ.get("VDBLOCKS_CACHE"):
        return Path(os.environ["VDBLOCKS_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vdblocks"
    return Path.home() / ".cache" / "vdblocks"


def _cache_paths(cache_dir: str | os.PathLike | bool | None, key: str) -> tuple[Path, Path] | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        root = default_cache_dir()
    elif isinstance(cache_dir, (str, os.PathLike)):
        root = Path(cache_dir).expanduser()
    else:
        raise TypeError(f"expected cache_dir to be a path, None (the default location) or False (no cache), "
                        f"got {type(cache_dir).__name__}")
    folder = root / _SUBDIR
    return folder / f"probe-{key}.json", folder / f"probe-{key}.safetensors"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save(paths: tuple[Path, Path], net: ProbeNet, meta: dict[str, Any]) -> None:
    manifest_path, tensor_path = paths
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    blob = safetensors.torch.save(state, metadata={"format": _FORMAT, "key": meta["key"]})
    _write_atomic(tensor_path, blob)
    meta = {**meta, "tensors_file": tensor_path.name, "tensors_sha256": hashlib.sha256(blob).hexdigest()}
    _write_atomic(manifest_path, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _load(paths: tuple[Path, Path], spec: ProbeSpec) -> tuple[ProbeNet, dict[str, Any]]:
    """Read a cached probe (JSON and safetensors only); ``ValueError`` naming what does not verify."""
    manifest_path, tensor_path = paths
    try:
        meta = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{manifest_path.name} is not valid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or meta.get("version") != PROBE_VERSION:
        raise ValueError(f"{manifest_path.name} is not a {_FORMAT} manifest of version {PROBE_VERSION}")
    if meta.get("key") != spec.key() or meta.get("spec") != spec.to_dict() or meta.get("tensors_file") != tensor_path.name:
        raise ValueError(f"{manifest_path.name} describes another probe")
    if not isinstance(meta.get("ground_truth"), dict):
        raise ValueError(f"{manifest_path.name} lacks the ground-truth accuracies")
    try:
        blob = tensor_path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read {tensor_path.name} ({err})") from err
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise ValueError(f"{tensor_path.name} does not match the SHA-256 in {manifest_path.name}")
    try:
        state = safetensors.torch.load(blob)
        net = ProbeNet(spec)
        net.load_state_dict(state, strict=True)
    except Exception as err:  # safetensors' header errors, missing or mis-shaped tensors
        raise ValueError(f"{tensor_path.name} does not hold this probe's weights ({err})") from err
    return net.eval(), meta


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ProbeResult:
    """What :meth:`ShapesProbe.evaluate` measured on ``num_clips`` generated clips.

    ``accuracy[a]``: the fraction of the ``counts[a]`` clips whose condition names attribute ``a``
    for which the probe reads that value (``None`` when no condition names it; attributes the probe
    cannot read, colour of gray clips and direction of one-frame clips, are left out of every dict);
    ``ground_truth[a]``: the probe's accuracy on real clips at the same frame rates (its ceiling);
    ``chance[a]``: one over the number of classes; ``kind_accuracy``: accuracy per named kind;
    ``one_object_fraction``: clips whose frames mostly show exactly one object; ``frechet_distance``:
    between probe features of these clips and of ``num_real`` real clips, ``frechet_floor`` the
    same between two real sets of that size (``None`` under two clips); ``predictions``: what the
    probe reads in each clip.
    """

    num_clips: int
    accuracy: dict[str, float | None]
    counts: dict[str, int]
    ground_truth: dict[str, float | None]
    chance: dict[str, float]
    kind_accuracy: dict[str, float | None]
    kind_counts: dict[str, int]
    one_object_fraction: float
    frechet_distance: float | None
    frechet_floor: float | None
    num_real: int
    fps: tuple[float, ...] | None
    predictions: tuple[dict[str, str], ...]
    probe: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def format(self) -> str:
        """A short table for a log."""
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rates = "the probe's rates" if self.fps is None else ", ".join(f"{r:g}" for r in sorted(set(self.fps)))
        lines = [f"shapes probe ({self.probe} clips, c x t x h x w) on {self.num_clips} clips at fps {rates}",
                 f"{'attribute':<14}{'clips':>6}{'accuracy':>10}{'on real':>9}{'chance':>8}"]
        for a in ATTRIBUTES:
            if a not in self.chance:
                continue
            lines.append(f"{a:<14}{self.counts[a]:>6}{fmt(self.accuracy[a]):>10}{fmt(self.ground_truth[a]):>9}"
                         f"{self.chance[a]:>8.3f}")
            if a == "kind":
                for k, acc in self.kind_accuracy.items():
                    if self.kind_counts[k]:
                        lines.append(f"  {k:<12}{self.kind_counts[k]:>6}{fmt(acc):>10}")
        lines.append("(on real: the probe's own accuracy on real clips at these rates, its ceiling)")
        lines.append(f"one object in {self.one_object_fraction:.1%} of clips")
        if self.frechet_distance is not None:
            lines.append(f"Frechet distance to {self.num_real} real clips (probe features): {self.frechet_distance:.3f} "
                         f"(real vs real: {self.frechet_floor:.3f})")
        return "\n".join(lines)

    table = format
    __str__ = format


# --------------------------------------------------------------------------- the probe


class ShapesProbe:
    """A trained moving-shapes classifier for one :class:`ProbeSpec`, and the scores built on it.

    Build with :meth:`for_geometry` (or :meth:`for_dataset`, :meth:`from_spec`): it trains once
    (about 20 s on one CPU thread at 16x16) and caches, or loads the cached weights. Then
    :meth:`evaluate` scores generated clips ``(b, c, t, h, w)`` in [-1, 1] against their conditions.
    ``ground_truth`` holds the accuracies measured on held-out real clips when it was trained.
    Instances are shared per process: treat them as read-only.
    """

    _memo: dict[str, ShapesProbe] = {}

    def __init__(self, spec: ProbeSpec, net: ProbeNet, meta: Mapping[str, Any], cache_path: Path | None = None) -> None:
        self.spec = spec
        self.net = net.eval().requires_grad_(False)
        self.ground_truth: dict[str, Any] = dict(meta["ground_truth"])
        self.train_seconds: float | None = meta.get("train_seconds")
        self.cache_path = cache_path

    # ------------------------------------------------------------------ construction

    @classmethod
    def for_geometry(
        cls,
        channels: int,
        frames: int,
        height: int,
        width: int,
        *,
        fps: float | Sequence[float] = 8.0,
        size_range: tuple[float, float] = (0.08, 0.16),
        speed_range: tuple[float, float] = (0.25, 1.0),
        kinds: Sequence[str] = SHAPE_KINDS,
        colors: Sequence[str] = tuple(PALETTE),
        directions: Sequence[str] = tuple(DIRECTIONS),
        seed: int = 0,
        recipe: ProbeRecipe | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
    ) -> ShapesProbe:
        """The probe for clips ``(b, channels, frames, height, width)`` of moving shapes with these
        ranges (``MovingShapes``' arguments, ``max_shapes=1``) at the frame rates ``fps`` it will
        be asked about; trained or loaded from the cache (see the module docstring)."""
        spec = ProbeSpec(channels, frames, height, width, fps=fps, size_range=size_range, speed_range=speed_range,
                         kinds=tuple(kinds), colors=tuple(colors), directions=tuple(directions), seed=seed,
                         recipe=recipe or ProbeRecipe())
        return cls.from_spec(spec, cache_dir=cache_dir)

    @classmethod
    def for_dataset(cls, dataset: MovingShapes, *, fps: float | Sequence[float] | None = None, **kwargs: Any) -> ShapesProbe:
        """The probe for a :class:`MovingShapes` dataset's geometry, ranges, kinds and colours, at its
        frame rates or ``fps``; ``kwargs`` (``seed``, ``recipe``, ``cache_dir``) go to :meth:`for_geometry`."""
        if not isinstance(dataset, MovingShapes):
            raise TypeError(f"expected a MovingShapes dataset, got {type(dataset).__name__}")
        return cls.for_geometry(dataset.channels, dataset.frames, dataset.height, dataset.width,
                                fps=dataset.fps_choices if fps is None else fps, size_range=dataset.size_range,
                                speed_range=dataset.speed_range, kinds=dataset.kinds, colors=dataset.colors,
                                directions=dataset.directions, **kwargs)

    @classmethod
    def from_spec(cls, spec: ProbeSpec, *, cache_dir: str | os.PathLike | bool | None = None) -> ShapesProbe:
        """The probe of ``spec``: this process's copy, else the cached weights, else trained now."""
        if not isinstance(spec, ProbeSpec):
            raise TypeError(f"expected a ProbeSpec, got {type(spec).__name__}")
        key = spec.key()
        if key in cls._memo:
            return cls._memo[key]
        paths = _cache_paths(cache_dir, key)
        if paths is not None and paths[0].exists():
            try:
                net, meta = _load(paths, spec)
            except ValueError as err:
                warnings.warn(f"shapes probe cache {paths[0].parent}: {err}; rebuilding it", RuntimeWarning, stacklevel=2)
            else:
                probe = cls._memo[key] = cls(spec, net, meta, paths[1])
                return probe
        start = time.perf_counter()
        net = train_probe(spec)
        seconds = time.perf_counter() - start
        meta = {"format": _FORMAT, "version": PROBE_VERSION, "key": key, "spec": spec.to_dict(),
                "train_seconds": round(seconds, 2), "torch": torch.__version__,
                "ground_truth": _measure_ground_truth(net, spec)}
        if paths is not None:
            try:
                _save(paths, net, meta)
            except OSError as err:
                warnings.warn(f"could not cache the shapes probe in {paths[0].parent} ({err}); it will be "
                              "trained again in the next process", RuntimeWarning, stacklevel=2)
                paths = None
        probe = cls._memo[key] = cls(spec, net, meta, None if paths is None else paths[1])
        return probe

    @classmethod
    def clear_memo(cls) -> None:
        """Forget this process's probes (the next construction reads the cache or trains)."""
        cls._memo.clear()

    # ------------------------------------------------------------------ reading clips

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(b, c, t, h, w) -> (b, d)`` float32 of clips in [-1, 1]."""
        return _predict(self.net, _check_videos(videos, self.spec))[1]

    def predict(self, videos: torch.Tensor) -> list[dict[str, str]]:
        """What the probe reads in each clip ``(b, c, t, h, w)``: ``[{attribute: class name}]``."""
        preds, _ = _predict(self.net, _check_videos(videos, self.spec))
        return [{a: self.spec.classes(a)[int(preds[a][i])] for a in preds} for i in range(len(videos))]

    def real_clips(self, num: int, *, fps: float | Sequence[float] | None = None, seed: int = 0
                   ) -> tuple[torch.Tensor, list[dict[str, str]], list[float]]:
        """``num`` real clips ``(num, c, t, h, w)`` of this probe's distribution, their conditions and
        rates: each clip at ``fps`` (one rate, or one per clip, cycled), else at a rate drawn from the
        probe's. ``seed`` picks the scenes (none is a training or held-out scene of the probe)."""
        if isinstance(num, bool) or not isinstance(num, numbers.Integral) or num < 1:
            raise ValueError(f"expected num to be a positive int, got {num!r}")
        rates = self._clip_rates(fps, None)
        data = self.spec.dataset(int(num), _REAL_SEED + 1000 * self.spec.seed + seed)
        clips, conditions, used = [], [], []
        for i in range(num):
            rate = data.fps_of(i) if rates is None else rates[i % len(rates)]
            shape = data.shapes(i)[0]
            clips.append(data.render(i, fps=rate))
            conditions.append({a: getattr(shape, a) for a in self.spec.attributes})
            used.append(rate)
        return torch.stack(clips), conditions, used

    def _clip_rates(self, fps: Any, batch: int | None) -> tuple[float, ...] | None:
        if fps is None:
            return None
        if isinstance(fps, torch.Tensor):
            fps = fps.tolist() if fps.ndim else float(fps)
        rates = [fps] if isinstance(fps, numbers.Real) else list(fps) if isinstance(fps, Sequence) else None
        if not rates or any(isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < math.inf for r in rates):
            raise ValueError(f"expected fps to be a positive number or one per clip, got {fps!r}")
        if batch is not None and len(rates) not in (1, batch):
            raise ValueError(f"expected fps to be one rate or one per clip (b={batch}), got {len(rates)} rates")
        unknown = sorted({float(r) for r in rates if not any(math.isclose(r, k) for k in self.spec.fps)})
        if unknown:
            raise ValueError(f"this probe was trained at fps {self.spec.fps}, got {unknown}: build it with "
                             "fps= covering every rate it is asked about")
        return tuple(next(k for k in self.spec.fps if math.isclose(r, k)) for r in rates)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        videos: torch.Tensor,
        conditions: Sequence[str | Mapping[str, str] | None],
        *,
        fps: float | Sequence[float] | torch.Tensor | None = None,
        num_real: int | None = None,
        seed: int = 0,
    ) -> ProbeResult:
        """Score generated clips ``(b, c, t, h, w)`` in [-1, 1] against their ``conditions``.

        ``conditions``: one per clip, a caption (:func:`parse_caption`; the first object of a
        multi-object caption) or a dict with any of the keys ``color`` (or ``colour``), ``kind`` (or
        ``shape``), ``size``, ``direction``; ``None`` or ``{}`` names nothing. ``fps``: the clips'
        frame rate (one, or one per clip), each one the probe was trained at; ``None``: the mix of
        the probe's rates. It sets the rates of the real clips of the Frechet distance
        (``num_real``, default ``b``, drawn with ``seed``) and weights the ground-truth accuracies.
        """
        videos = _check_videos(videos, self.spec)
        b = videos.shape[0]
        if isinstance(conditions, (str, Mapping)) or not isinstance(conditions, Sequence):
            raise TypeError(f"expected conditions to be a sequence with one caption or dict per clip (b={b}), "
                            f"got {type(conditions).__name__}")
        if len(conditions) != b:
            raise ValueError(f"expected one condition per clip of videos (b, c, t, h, w) with b={b}, "
                             f"got {len(conditions)} conditions")
        conds = [_condition(item, i, self.spec) for i, item in enumerate(conditions)]
        rates = self._clip_rates(fps, b)
        clip_rates = None if rates is None else (rates * b if len(rates) == 1 else rates)
        num_real = b if num_real is None else num_real
        if isinstance(num_real, bool) or not isinstance(num_real, numbers.Integral) or num_real < 1:
            raise ValueError(f"expected num_real to be a positive int, got {num_real!r}")

        preds, feats = _predict(self.net, videos)
        accuracy, counts, reference = {}, {}, {}
        for a in self.spec.attributes:
            named = [i for i, c in enumerate(conds) if a in c]
            counts[a] = len(named)
            hits = [self.spec.classes(a)[int(preds[a][i])] == conds[i][a] for i in named]
            accuracy[a] = float(np.mean(hits)) if named else None
            reference[a] = self._reference(a, [None if clip_rates is None else clip_rates[i] for i in named])
        kind_counts = {k: sum(c.get("kind") == k for c in conds) for k in self.spec.kinds}
        kind_accuracy = {
            k: (float(np.mean([self.spec.kinds[int(preds["kind"][i])] == k for i, c in enumerate(conds) if c.get("kind") == k]))
                if kind_counts[k] else None)
            for k in self.spec.kinds
        }
        fd = floor = None
        if b >= 2 and num_real >= 2:
            real, _, _ = self.real_clips(num_real, fps=clip_rates, seed=seed)
            other, _, _ = self.real_clips(num_real, fps=clip_rates, seed=seed + 1)
            real_feats, other_feats = _predict(self.net, real)[1], _predict(self.net, other)[1]
            # >= 0 in exact arithmetic; float64 round-off can leave -1e-12
            fd = max(0.0, frechet_distance_from_features(feats, real_feats))
            floor = max(0.0, frechet_distance_from_features(other_feats, real_feats))
        return ProbeResult(
            num_clips=b,
            accuracy=accuracy,
            counts=counts,
            ground_truth=reference,
            chance={a: 1.0 / len(self.spec.classes(a)) for a in self.spec.attributes},
            kind_accuracy=kind_accuracy,
            kind_counts=kind_counts,
            one_object_fraction=one_object_fraction(videos, max_pixels=_max_pixels(self.spec)),
            frechet_distance=fd,
            frechet_floor=floor,
            num_real=num_real,
            fps=clip_rates,
            predictions=tuple({a: self.spec.classes(a)[int(preds[a][i])] for a in preds} for i in range(b)),
            probe=f"{self.spec.channels}x{self.spec.frames}x{self.spec.height}x{self.spec.width}",
        )

    def _reference(self, attribute: str, rates: list[float | None]) -> float | None:
        """The held-out ground-truth accuracy of ``attribute`` averaged over the clips' rates."""
        if not rates:
            return None
        per = self.ground_truth["per_fps"]
        values = [self.ground_truth["accuracy"][attribute] if r is None else per[f"{r:g}"][attribute] for r in rates]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    def __repr__(self) -> str:
        acc = ", ".join(f"{a} {v:.3f}" for a, v in self.ground_truth["accuracy"].items() if v is not None)
        return f"ShapesProbe({self.spec.describe()}; held-out ground truth: {acc})"


# --------------------------------------------------------------------------- ground-truth figures

_DOC_PROBES: dict[str, dict[str, Any]] = {
    # The geometries the examples' tiny presets train on (see each system's config.py / train.py).
    "etc_tiny": dict(channels=3, frames=8, height=16, width=16, size_range=(0.15, 0.3), fps=(4, 8, 15)),
    "etc_tiny_sample_rates": dict(channels=3, frames=8, height=16, width=16, size_range=(0.15, 0.3), fps=(8, 30)),
    "cmd_tiny": dict(channels=3, frames=8, height=24, width=32, size_range=(0.18, 0.3), fps=8),
    "pvdm_tiny": dict(channels=3, frames=8, height=32, width=32, size_range=(0.15, 0.3), fps=8),
    "evdm_tiny": dict(channels=1, frames=5, height=32, width=32, size_range=(0.15, 0.3), fps=8),
}


def ground_truth_record(names: Sequence[str] | None = None, *, cache_dir: str | os.PathLike | bool | None = False) -> dict[str, Any]:
    """Train (or load) the probes of the examples' geometries and collect their held-out accuracies
    and training times as JSON-able data (what ``docs/probe/ground_truth.json`` holds)."""
    names = list(_DOC_PROBES) if names is None else list(names)
    load_before = _load_average()
    probes = {}
    for name in names:
        if name not in _DOC_PROBES:
            raise ValueError(f"unknown probe {name!r}; expected one of {sorted(_DOC_PROBES)}")
        probe = ShapesProbe.for_geometry(**_DOC_PROBES[name], cache_dir=cache_dir)
        probes[name] = {"spec": probe.spec.to_dict(), "key": probe.spec.key(),
                        "train_seconds": probe.train_seconds, "ground_truth": probe.ground_truth}
    return {"format": _FORMAT + "-ground-truth", "version": PROBE_VERSION, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "machine": platform.machine(), "processor": _cpu_name(),
            "cpu_count": os.cpu_count(), "load_average_1min": {"before": load_before, "after": _load_average()},
            "command": "python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json "
                       "--page docs/probe.md",
            "probes": probes}


def _load_average() -> float | None:
    """The 1-minute load average (timings from a busy machine are not comparable), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


_TABLE_START, _TABLE_END = "<!-- ground-truth:start -->", "<!-- ground-truth:end -->"


def render_ground_truth_table(record: Mapping[str, Any]) -> str:
    """The markdown table of :func:`ground_truth_record`'s output (what ``docs/probe.md`` shows)."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = ["| probe | clip (c x t x h x w) | fps | colour | kind | size | direction | direction, no bounce "
            "| bounce before frame 1 | one object | train s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in record["probes"].items():
        s, g = p["spec"], p["ground_truth"]
        acc = g["accuracy"]
        rows.append(f"| {name} | {s['channels']}x{s['frames']}x{s['height']}x{s['width']} | "
                    f"{', '.join(f'{r:g}' for r in s['fps'])} | {fmt(acc.get('color'))} | {fmt(acc.get('kind'))} | "
                    f"{fmt(acc.get('size'))} | {fmt(acc.get('direction'))} | {fmt(g.get('direction_without_bounce'))} | "
                    f"{fmt(g.get('bounce_before_frame_1'))} | {fmt(g['one_object_fraction'])} | {p['train_seconds']:.1f} |")
    per_fps = ["", "Per frame rate:", "",
               "| probe | " + " | ".join(["fps", "direction", "size"]) + " |", "|---|---:|---:|---:|"]
    for name, p in record["probes"].items():
        for rate, accs in p["ground_truth"]["per_fps"].items():
            per_fps.append(f"| {name} | {rate} | {fmt(accs.get('direction'))} | {fmt(accs.get('size'))} |")
    load = record.get("load_average_1min") or {}
    busy = (f" (1-minute load average {load['before']:g} before, {load['after']:g} after, on {record['cpu_count']} cores)"
            if load.get("before") is not None and load.get("after") is not None else "")
    head = (f"Measured on {next(iter(record['probes'].values()))['ground_truth']['num_clips']} held-out clips per "
            f"probe; training time on {record['threads']} CPU thread(s) of {record['processor'] or 'an unnamed CPU'}"
            f"{busy}, torch {record['torch']}.")
    return "\n".join([head, ""] + rows + per_fps)


_RUN_START, _RUN_END = "<!-- probe-run:start -->", "<!-- probe-run:end -->"


def render_run_table(report: Mapping[str, Any]) -> str:
    """The markdown table of an example's probe report (``<out>/probe.json`` of a training run:
    ``{"probe": ProbeResult.to_dict(), "run": {...}, "sampler": {...}, ...}``), as its docs page
    shows it."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    probe, run, sampler = report["probe"], report.get("run", {}), report.get("sampler", {})
    rows = ["| attribute | clips | accuracy | probe on real clips | chance |", "|---|---:|---:|---:|---:|"]
    for a in ATTRIBUTES:
        if a in probe["chance"]:
            rows.append(f"| {a} | {probe['counts'][a]} | {fmt(probe['accuracy'][a])} | "
                        f"{fmt(probe['ground_truth'][a])} | {probe['chance'][a]:.3f} |")
            if a == "kind":
                rows += [f"| &nbsp;&nbsp;{k} | {probe['kind_counts'][k]} | {fmt(acc)} | | |"
                         for k, acc in probe["kind_accuracy"].items() if probe["kind_counts"][k]]
    floor = probe.get("frechet_floor")
    tail = [f"One object in {probe['one_object_fraction']:.1%} of the clips."]
    if probe.get("frechet_distance") is not None:
        tail.append(f"Frechet distance to {probe['num_real']} real clips (probe features): "
                    f"{probe['frechet_distance']:.1f} (two real sets of that size: {fmt(floor)}).")
    head = (f"{probe['num_clips']} held-out captions at {report.get('fps', '?')} fps, DDIM "
            f"{sampler.get('ddim_steps', '?')} steps, guidance {sampler.get('guidance_scale', '?')}, after "
            f"{run.get('steps', '?')} training steps of batch {run.get('batch_size', '?')}; the run took "
            f"{run.get('seconds_to_here', '?')} s from its start to the end of the probe, "
            f"{run.get('probe_seconds', '?')} s of them the probe's sampling and scoring.")
    return "\n".join([head, "", *rows, "", *tail])


def _write_page_table(page: Path, table: str, start: str = _TABLE_START, end: str = _TABLE_END) -> None:
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{page} has no {start} ... {end} block to fill")
    _write_atomic(page, pattern.sub(lambda _: f"{start}\n{table}\n{end}", text).encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_models.common.probe",
                                     description="Train the moving-shapes probes of the examples' geometries "
                                                 "and write their held-out ground-truth accuracies.")
    parser.add_argument("--ground-truth", action="store_true", help="measure the ground-truth figures")
    parser.add_argument("--run-report", type=Path, default=None,
                        help="render an example's probe.json into --page's probe-run block instead")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (with --render-only: to read)")
    parser.add_argument("--render-only", action="store_true", help="only rebuild --page from the JSON in --out")
    parser.add_argument("--page", type=Path, default=None, help="markdown page whose ground-truth block to rebuild")
    parser.add_argument("--probe", action="append", choices=sorted(_DOC_PROBES), help="only these (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (timings are for 1)")
    args = parser.parse_args(argv)
    if args.run_report is not None:
        table = render_run_table(json.loads(args.run_report.read_text(encoding="utf-8")))
        if args.page is not None:
            _write_page_table(args.page, table, _RUN_START, _RUN_END)
        print(table)
        return 0
    if not args.ground_truth or args.out is None:
        parser.error("give --ground-truth --out JSON, or --run-report JSON")
    if args.render_only:
        record = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        torch.set_num_threads(args.threads)
        record = ground_truth_record(args.probe, cache_dir=False)  # always trained here: the times are real
        _write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    table = render_ground_truth_table(record)
    if args.page is not None:
        _write_page_table(args.page, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
