"""What defines a shapes probe: :class:`ProbeSpec` (clip geometry, data distribution, seed) and its
training :class:`ProbeRecipe`, plus the attribute names and constants every part of the probe shares.

A spec's :meth:`~ProbeSpec.key` hashes the spec, its recipe and ``PROBE_VERSION``: the cache key of
the trained weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.moving_shapes import DIRECTIONS, PALETTE, SHAPE_KINDS, MovingShapes

__all__ = ["PROBE_VERSION", "ATTRIBUTES", "SIZES", "FOREGROUND_THRESHOLD", "ProbeRecipe", "ProbeSpec"]

PROBE_VERSION = 1
"""Bumped whenever the network, the training or the evaluation changes: old cache files are then
never loaded (the version is part of every cache key)."""

ATTRIBUTES: tuple[str, ...] = ("color", "kind", "size", "direction")
SIZES: tuple[str, ...] = ("small", "large")
FOREGROUND_THRESHOLD = -0.5
"""A pixel is foreground where its largest channel exceeds this. The background is -1; the darkest
object is red in gray clips (Rec. 601 luma 0.40, i.e. -0.19 in [-1, 1])."""

_FORMAT = "vdblocks-shapes-probe"
# MovingShapes seeds of the probe's own clips, far from the small seeds the examples train on.
_TRAIN_SEED, _HELDOUT_SEED, _REAL_SEED = 7_000_000, 8_000_000, 9_000_000
_FLIP = {
    "left": "right",
    "right": "left",
    "up-left": "up-right",
    "up-right": "up-left",
    "down-left": "down-right",
    "down-right": "down-left",
    "up": "up",
    "down": "down",
}


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
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    ):
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
        return tuple(
            a for a in ATTRIBUTES if (a != "color" or self.has_color) and (a != "direction" or self.has_direction)
        )

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
        return MovingShapes(
            num_samples,
            frames=self.frames,
            height=self.height,
            width=self.width,
            fps=self.fps,
            channels=self.channels,
            max_shapes=1,
            seed=seed,
            kinds=self.kinds,
            colors=self.colors,
            size_range=self.size_range,
            speed_range=self.speed_range,
            directions=self.directions,
        )

    def describe(self) -> str:
        return (
            f"{self.channels}x{self.frames}x{self.height}x{self.width} (c x t x h x w), "
            f"fps {', '.join(f'{r:g}' for r in self.fps)}"
        )
