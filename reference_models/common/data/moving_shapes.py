"""Synthetic moving-shapes videos and still images with class labels and captions.

A scene is a few coloured shapes (``SHAPE_KINDS``: square, circle, triangle, diamond, cross; colours
from the named ``PALETTE``) on a black background, each moving in a straight line at constant speed
in one of eight compass directions and bouncing elastically off the borders. Everything is drawn
from ``numpy.random.default_rng([seed, index, ...])``, so an item is generated lazily, costs a few
vectorised numpy comparisons (no anti-aliasing: a pixel is inside a shape iff its centre is) and is
identical across processes, DataLoader workers and runs.

Motion lives in continuous time: a shape's centre at time ``s`` seconds is a closed-form reflection
of ``p0 + v * s`` (``v`` in pixels per second) into ``[r, side - r]``. Frame ``k`` of a clip at
``fps`` frames per second is the scene at ``s = k / fps``, so the same item rendered at 8 fps and at
16 fps agrees exactly on shared timestamps (frame ``k`` at 8 fps is frame ``2k`` at 16 fps). This is
what ETC's FPS conditioning needs: the frame rate changes the sampling, never the underlying motion.
Speeds and sizes are given in units of ``min(height, width)`` (per second for speeds), so one seed
gives the same scene, scaled, at every resolution, isotropically for non-square frames.

Labels: the *primary* shape (first in the caption, drawn last so it is never occluded) defines the
label. ``label_by="shape"`` gives ``len(kinds)`` classes named by kind (``"circle"``);
``label_by="shape_color"`` gives ``len(kinds) * len(colors)`` classes named ``"red circle"``
(RGB only: gray frames cannot show the colour). Labels are balanced: item ``i`` has the class at
position ``i mod num_classes`` of a seed-dependent permutation, which makes
``indices_for_label`` an O(1) ``range`` (ETC's label-image groups draw several images of one label).

Captions name every shape: ``"a small red circle moving left and a large blue square moving
up-right"`` (the direction is the one at ``t = 0``; bounces reverse it later). Gray datasets leave
out colour words. Still images (``MovingShapesImages``) use the same scenes without motion words.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import einops
import numpy as np
import torch
from torch.utils.data import Dataset

from vdblocks.validation import check_positive_int

__all__ = [
    "SHAPE_KINDS",
    "PALETTE",
    "DIRECTIONS",
    "ShapeSpec",
    "render_shapes",
    "MovingShapes",
    "MovingShapesImages",
]

SHAPE_KINDS: tuple[str, ...] = ("square", "circle", "triangle", "diamond", "cross")

# Bright colours with distinct hues; none is close to the black background.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.15, 0.15),
    "green": (0.2, 0.85, 0.2),
    "blue": (0.25, 0.45, 1.0),
    "yellow": (1.0, 0.9, 0.1),
    "cyan": (0.1, 0.9, 0.9),
    "magenta": (0.95, 0.2, 0.95),
    "orange": (1.0, 0.55, 0.1),
    "white": (1.0, 1.0, 1.0),
}

# Unit vectors in image coordinates (x right, y down).
_DIAG = float(np.sqrt(0.5))
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_DIAG, -_DIAG),
    "up-left": (-_DIAG, -_DIAG),
    "down-right": (_DIAG, _DIAG),
    "down-left": (-_DIAG, _DIAG),
}

_LUMA = np.array([0.299, 0.587, 0.114])
_MIN_RADIUS = 1.5  # pixels: every kind then covers at least one pixel centre at any position
_LARGE_FROM = 0.5  # sizes in the upper half of size_range are called "large" in captions


def _reflect(p: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold unbounded positions into ``[low, high]`` as an elastic bounce between the walls."""
    length = high - low
    if length <= 0:
        return np.full_like(p, (low + high) / 2)
    u = np.mod(p - low, 2 * length)
    return low + np.where(u <= length, u, 2 * length - u)


@dataclass(frozen=True)
class ShapeSpec:
    """One shape of a scene, in pixel units of a ``height x width`` frame.

    ``radius`` is the half extent (half the side of the square); ``position`` the centre ``(x, y)``
    at ``t = 0``; ``velocity`` ``(vx, vy)`` in pixels per second of continuous time.
    """

    kind: str
    color: str
    size: str  # "small" or "large", for captions
    radius: float
    position: tuple[float, float]
    velocity: tuple[float, float]
    direction: str

    def center_at(self, times: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre ``(x, y)`` at ``times`` seconds, each of shape ``(t,)``, bouncing inside the frame."""
        times = np.asarray(times, dtype=np.float64)
        x = _reflect(self.position[0] + self.velocity[0] * times, self.radius, width - self.radius)
        y = _reflect(self.position[1] + self.velocity[1] * times, self.radius, height - self.radius)
        return x, y

    def phrase(self, *, color: bool, motion: bool) -> str:
        words = ["a", self.size] + ([self.color] if color else []) + [self.kind]
        if motion:
            words += ["moving", self.direction]
        return " ".join(words)


def _shape_mask(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels whose centre lies inside the shape; ``dx, dy`` are offsets from the shape centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == "square":
        return (ax <= r) & (ay <= r)
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "triangle":  # apex up, base 2r wide at the bottom
        return (ay <= r) & (ax <= (dy + r) / 2)
    if kind == "diamond":
        return ax + ay <= r
    if kind == "cross":
        arm = max(r / 3, 0.5)  # at least one pixel row or column wide
        return ((ax <= r) & (ay <= arm)) | ((ax <= arm) & (ay <= r))
    raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}")


def render_shapes(
    shapes: Sequence[ShapeSpec], times: np.ndarray, height: int, width: int, channels: int = 3
) -> torch.Tensor:
    """Rasterise ``shapes`` at ``times`` (seconds, ``(t,)``) into a float video ``(c, t, h, w)``
    in [-1, 1] (background -1). Later shapes are drawn over earlier ones; ``channels=1`` stores
    the Rec. 601 luma of each colour.
    """
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    canvas = np.full((channels, len(times), height, width), -1.0, dtype=np.float32)  # (c, t, h, w)
    for shape in shapes:
        rgb = np.asarray(PALETTE[shape.color], dtype=np.float64)
        color = (rgb if channels == 3 else rgb @ _LUMA[:, None]) * 2 - 1  # (c,)
        cx, cy = shape.center_at(times, height, width)  # (t,), (t,)
        r = shape.radius
        for k, (x, y) in enumerate(zip(cx, cy)):
            # Only the bounding box can hold pixel centres inside the shape: cost scales with the
            # shape's area, not the frame's.
            x0, x1 = max(0, int(np.floor(x - r - 0.5))), min(width, int(np.ceil(x + r + 0.5)))
            y0, y1 = max(0, int(np.floor(y - r - 0.5))), min(height, int(np.ceil(y + r + 0.5)))
            dx = np.arange(x0, x1, dtype=np.float64)[None, :] + 0.5 - x  # (1, w') pixel-centre offsets
            dy = np.arange(y0, y1, dtype=np.float64)[:, None] + 0.5 - y  # (h', 1)
            mask = _shape_mask(shape.kind, dx, dy, r)  # (h', w')
            canvas[:, k, y0:y1, x0:x1][:, mask] = color[:, None]
    return torch.from_numpy(canvas)


class _ShapeScenes:
    """Scene sampling, labels and captions shared by the video and image datasets."""

    def __init__(
        self,
        num_samples,
        height,
        width,
        channels,
        max_shapes,
        seed,
        label_by,
        kinds,
        colors,
        size_range,
        speed_range,
        directions=tuple(DIRECTIONS),
    ):
        self.num_samples = check_positive_int(num_samples, "num_samples")
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        if min(height, width) < 8:
            raise ValueError(f"expected height and width >= 8, got {height} x {width}")
        if channels not in (1, 3):
            raise ValueError(f"expected channels in {{1, 3}}, got {channels!r}")
        self.channels = channels
        self.max_shapes = check_positive_int(max_shapes, "max_shapes")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected seed to be a non-negative int, got {seed!r}")
        self.seed = seed
        self.kinds = tuple(kinds)
        self.colors = tuple(colors)
        if not self.kinds or any(k not in SHAPE_KINDS for k in self.kinds) or len(set(self.kinds)) < len(self.kinds):
            raise ValueError(f"expected kinds to be distinct names from {SHAPE_KINDS}, got {kinds!r}")
        if not self.colors or any(c not in PALETTE for c in self.colors) or len(set(self.colors)) < len(self.colors):
            raise ValueError(f"expected colors to be distinct names from {tuple(PALETTE)}, got {colors!r}")
        self.directions = tuple(directions)
        if (
            not self.directions
            or any(d not in DIRECTIONS for d in self.directions)
            or len(set(self.directions)) < len(self.directions)
        ):
            raise ValueError(f"expected directions to be distinct names from {tuple(DIRECTIONS)}, got {directions!r}")
        for name, (lo, hi) in (("size_range", size_range), ("speed_range", speed_range)):
            if not 0 <= lo <= hi:
                raise ValueError(f"expected {name} as (low, high) with 0 <= low <= high, got {(lo, hi)!r}")
        if not size_range[1] < 0.5:
            raise ValueError(f"expected size_range below 0.5 (a shape must fit the frame), got {size_range!r}")
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.speed_range = (float(speed_range[0]), float(speed_range[1]))
        if label_by == "shape":
            self.class_names = list(self.kinds)
        elif label_by == "shape_color":
            if channels == 1:
                raise ValueError("label_by='shape_color' needs channels=3: gray frames do not show colour")
            self.class_names = [f"{c} {k}" for k in self.kinds for c in self.colors]
        else:
            raise ValueError(f"expected label_by in ('shape', 'shape_color'), got {label_by!r}")
        self.label_by = label_by
        # A seed-dependent order of classes, repeated along the index: balanced labels, O(1) lookup.
        self._order = np.random.default_rng([seed, 0x5EED]).permutation(len(self.class_names))
        self._position_of = np.argsort(self._order)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"expected an int index, got {index!r}")
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        return int(index) % self.num_samples

    def label_of(self, index: int) -> int:
        return int(self._order[self.check_index(index) % self.num_classes])

    def indices_for_label(self, label: int) -> range:
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < self.num_classes:
            raise ValueError(f"expected label in [0, {self.num_classes}), got {label!r}")
        return range(int(self._position_of[label]), self.num_samples, self.num_classes)

    def shapes(self, index: int) -> list[ShapeSpec]:
        """The scene of item ``index``; the primary (labelled) shape comes first."""
        index = self.check_index(index)
        label = self.label_of(index)
        rng = np.random.default_rng([self.seed, index, 0])
        unit = min(self.height, self.width)
        n = int(rng.integers(1, self.max_shapes + 1))
        shapes = []
        for i in range(n):
            if i == 0 and self.label_by == "shape":
                kind, color = self.kinds[label], self.colors[rng.integers(len(self.colors))]
            elif i == 0:
                kind, color = self.kinds[label // len(self.colors)], self.colors[label % len(self.colors)]
            else:
                kind, color = self.kinds[rng.integers(len(self.kinds))], self.colors[rng.integers(len(self.colors))]
            u = float(rng.random())
            lo, hi = self.size_range
            radius = max(_MIN_RADIUS, (lo + u * (hi - lo)) * unit)
            # Sampled inside the bounce interval, so the shape starts fully in frame.
            x0 = radius + float(rng.random()) * max(self.width - 2 * radius, 0.0)
            y0 = radius + float(rng.random()) * max(self.height - 2 * radius, 0.0)
            direction = self.directions[rng.integers(len(self.directions))]
            speed = (self.speed_range[0] + float(rng.random()) * (self.speed_range[1] - self.speed_range[0])) * unit
            ux, uy = DIRECTIONS[direction]
            shapes.append(
                ShapeSpec(
                    kind,
                    color,
                    "large" if u >= _LARGE_FROM else "small",
                    radius,
                    (x0, y0),
                    (speed * ux, speed * uy),
                    direction,
                )
            )
        return shapes

    def caption(self, shapes: Sequence[ShapeSpec], *, motion: bool) -> str:
        return " and ".join(s.phrase(color=self.channels == 3, motion=motion) for s in shapes)

    def render(self, shapes: Sequence[ShapeSpec], times: np.ndarray) -> torch.Tensor:
        # Primary shape drawn last: on top, so the labelled object is always fully visible.
        return render_shapes(shapes[::-1], times, self.height, self.width, self.channels)


class MovingShapes(Dataset):
    """Videos of bouncing coloured shapes, generated lazily from ``(seed, index)``.

    Item: ``{"video": (c, t, h, w) float in [-1, 1], "label": int, "caption": str, "fps": float}``
    with ``c = channels``, ``t = frames``. ``fps`` is one rate or a sequence of rates; with a
    sequence each item draws its rate deterministically from ``(seed, index)`` (ETC trains on the
    rates (1, 2, 4, 8, 15, 30, 60)); the rate changes how densely the clip samples the continuous
    motion, never the motion itself. ``speed_range`` is in ``min(height, width)`` per second and
    ``size_range`` (shape half extent) in ``min(height, width)``; ``kinds``, ``colors`` and
    ``directions`` restrict what scenes draw from (all of ``SHAPE_KINDS``, ``PALETTE`` and
    ``DIRECTIONS`` by default). See the module docstring for the label set (``num_classes``,
    ``class_names``) and the caption grammar.
    """

    def __init__(
        self,
        num_samples: int = 1024,
        *,
        frames: int = 16,
        height: int = 64,
        width: int = 64,
        fps: float | Sequence[float] = 8.0,
        channels: int = 3,
        max_shapes: int = 2,
        seed: int = 0,
        label_by: str = "shape",
        kinds: Sequence[str] = SHAPE_KINDS,
        colors: Sequence[str] = tuple(PALETTE),
        size_range: tuple[float, float] = (0.08, 0.16),
        speed_range: tuple[float, float] = (0.25, 1.0),
        directions: Sequence[str] = tuple(DIRECTIONS),
    ) -> None:
        self._scenes = _ShapeScenes(
            num_samples,
            height,
            width,
            channels,
            max_shapes,
            seed,
            label_by,
            kinds,
            colors,
            size_range,
            speed_range,
            directions,
        )
        self.frames = check_positive_int(frames, "frames")
        rates = [fps] if isinstance(fps, numbers.Real) else list(fps)
        if not rates or any(
            isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < math.inf for r in rates
        ):
            raise ValueError(f"expected fps to be a positive number or a sequence of them, got {fps!r}")
        self.fps_choices = tuple(float(r) for r in rates)
        self.num_samples, self.height, self.width = num_samples, height, width
        self.channels, self.seed = channels, seed

    @property
    def num_classes(self) -> int:
        return self._scenes.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._scenes.class_names)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def size_range(self) -> tuple[float, float]:
        """Shape half extents, in units of ``min(height, width)``."""
        return self._scenes.size_range

    @property
    def speed_range(self) -> tuple[float, float]:
        """Shape speeds, in ``min(height, width)`` per second."""
        return self._scenes.speed_range

    @property
    def kinds(self) -> tuple[str, ...]:
        """The shape kinds scenes draw from."""
        return self._scenes.kinds

    @property
    def colors(self) -> tuple[str, ...]:
        """The palette colour names scenes draw from."""
        return self._scenes.colors

    @property
    def directions(self) -> tuple[str, ...]:
        """The compass directions (``DIRECTIONS`` names) shapes start moving in."""
        return self._scenes.directions

    def caption_of(self, index: int) -> str:
        """The caption of item ``index`` without rendering it."""
        return self._scenes.caption(self._scenes.shapes(index), motion=True)

    def indices_for_label(self, label: int) -> range:
        """All indices whose label is ``label`` (an arithmetic progression)."""
        return self._scenes.indices_for_label(label)

    def shapes(self, index: int) -> list[ShapeSpec]:
        """The scene of item ``index`` in pixel units (primary shape first)."""
        return self._scenes.shapes(index)

    def fps_of(self, index: int) -> float:
        index = self._scenes.check_index(index)
        if len(self.fps_choices) == 1:
            return self.fps_choices[0]
        # A stream of its own, so the rate choice never perturbs the scene.
        return self.fps_choices[int(np.random.default_rng([self.seed, index, 1]).integers(len(self.fps_choices)))]

    def render(
        self, index: int, *, fps: float | None = None, frames: int | None = None, start: float = 0.0
    ) -> torch.Tensor:
        """Video ``(c, t, h, w)`` of item ``index`` sampled at ``start + k / fps`` seconds."""
        fps = self.fps_of(index) if fps is None else fps
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < math.inf:
            raise ValueError(f"expected fps to be a positive number, got {fps!r}")
        frames = self.frames if frames is None else check_positive_int(frames, "frames")
        times = start + np.arange(frames, dtype=np.float64) / float(fps)
        return self._scenes.render(self._scenes.shapes(index), times)

    def __getitem__(self, index: int) -> dict:
        shapes = self._scenes.shapes(index)
        fps = self.fps_of(index)
        times = np.arange(self.frames, dtype=np.float64) / fps
        return {
            "video": self._scenes.render(shapes, times),  # (c, t, h, w)
            "label": self._scenes.label_of(index),
            "caption": self._scenes.caption(shapes, motion=True),
            "fps": fps,
        }


class MovingShapesImages(Dataset):
    """Still images of the moving-shapes scenes (the frame at ``t = 0``), labelled and captioned.

    Item: ``{"image": (c, h, w) float in [-1, 1], "label": int, "caption": str}``. Same label set
    and balanced labelling as ``MovingShapes``; ``indices_for_label`` and ``images_for_label`` give
    groups of images of one label (ETC's label-image data).
    """

    def __init__(
        self,
        num_samples: int = 1024,
        *,
        height: int = 64,
        width: int = 64,
        channels: int = 3,
        max_shapes: int = 2,
        seed: int = 0,
        label_by: str = "shape",
        kinds: Sequence[str] = SHAPE_KINDS,
        colors: Sequence[str] = tuple(PALETTE),
        size_range: tuple[float, float] = (0.08, 0.16),
    ) -> None:
        self._scenes = _ShapeScenes(
            num_samples, height, width, channels, max_shapes, seed, label_by, kinds, colors, size_range, (0.0, 0.0)
        )
        self.num_samples, self.height, self.width = num_samples, height, width
        self.channels, self.seed = channels, seed

    @property
    def num_classes(self) -> int:
        return self._scenes.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._scenes.class_names)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def kinds(self) -> tuple[str, ...]:
        """The shape kinds scenes draw from."""
        return self._scenes.kinds

    @property
    def colors(self) -> tuple[str, ...]:
        """The palette colour names scenes draw from."""
        return self._scenes.colors

    def indices_for_label(self, label: int) -> range:
        """All indices whose label is ``label`` (an arithmetic progression)."""
        return self._scenes.indices_for_label(label)

    def images_for_label(self, label: int, count: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``count`` distinct images of ``label`` as ``(b, c, h, w)``: the first ``count`` indices,
        or a random draw when a ``generator`` is given."""
        count = check_positive_int(count, "count")
        indices = self.indices_for_label(label)
        if count > len(indices):
            raise ValueError(f"asked for {count} images of label {label}, only {len(indices)} exist")
        if generator is not None:
            picks = torch.randperm(len(indices), generator=generator)[:count].tolist()
            indices = [indices[i] for i in picks]
        return torch.stack([self[i]["image"] for i in list(indices)[:count]])

    def shapes(self, index: int) -> list[ShapeSpec]:
        return self._scenes.shapes(index)

    def __getitem__(self, index: int) -> dict:
        shapes = self._scenes.shapes(index)
        image = self._scenes.render(shapes, np.zeros(1))  # (c, 1, h, w)
        return {
            "image": einops.rearrange(image, "c 1 h w -> c h w"),
            "label": self._scenes.label_of(index),
            "caption": self._scenes.caption(shapes, motion=False),
        }
