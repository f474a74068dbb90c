"""The moving-shapes probe :class:`ShapesProbe`: built (trained or loaded from the cache) for one
:class:`~.spec.ProbeSpec`, it scores generated clips against their conditions."""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.moving_shapes import DIRECTIONS, PALETTE, SHAPE_KINDS, MovingShapes
from ..metrics import frechet_distance_from_features
from .cache import _cache_paths, _load, _save
from .captions import _condition
from .net import ProbeNet
from .objects import _check_videos, _max_pixels, one_object_fraction
from .result import ProbeResult
from .spec import _FORMAT, _REAL_SEED, PROBE_VERSION, ProbeRecipe, ProbeSpec
from .training import _measure_ground_truth, _predict, train_probe

__all__ = ["ShapesProbe"]


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
        be asked about; trained or loaded from the cache (see the docstring of
        :mod:`reference_models.common.probe`)."""
        spec = ProbeSpec(
            channels,
            frames,
            height,
            width,
            fps=fps,
            size_range=size_range,
            speed_range=speed_range,
            kinds=tuple(kinds),
            colors=tuple(colors),
            directions=tuple(directions),
            seed=seed,
            recipe=recipe or ProbeRecipe(),
        )
        return cls.from_spec(spec, cache_dir=cache_dir)

    @classmethod
    def for_dataset(
        cls, dataset: MovingShapes, *, fps: float | Sequence[float] | None = None, **kwargs: Any
    ) -> ShapesProbe:
        """The probe for a :class:`MovingShapes` dataset's geometry, ranges, kinds and colours, at its
        frame rates or ``fps``; ``kwargs`` (``seed``, ``recipe``, ``cache_dir``) go to :meth:`for_geometry`."""
        if not isinstance(dataset, MovingShapes):
            raise TypeError(f"expected a MovingShapes dataset, got {type(dataset).__name__}")
        return cls.for_geometry(
            dataset.channels,
            dataset.frames,
            dataset.height,
            dataset.width,
            fps=dataset.fps_choices if fps is None else fps,
            size_range=dataset.size_range,
            speed_range=dataset.speed_range,
            kinds=dataset.kinds,
            colors=dataset.colors,
            directions=dataset.directions,
            **kwargs,
        )

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
                warnings.warn(
                    f"shapes probe cache {paths[0].parent}: {err}; rebuilding it", RuntimeWarning, stacklevel=2
                )
            else:
                probe = cls._memo[key] = cls(spec, net, meta, paths[1])
                return probe
        start = time.perf_counter()
        net = train_probe(spec)
        seconds = time.perf_counter() - start
        meta = {
            "format": _FORMAT,
            "version": PROBE_VERSION,
            "key": key,
            "spec": spec.to_dict(),
            "train_seconds": round(seconds, 2),
            "torch": torch.__version__,
            "ground_truth": _measure_ground_truth(net, spec),
        }
        if paths is not None:
            try:
                _save(paths, net, meta)
            except OSError as err:
                warnings.warn(
                    f"could not cache the shapes probe in {paths[0].parent} ({err}); it will be "
                    "trained again in the next process",
                    RuntimeWarning,
                    stacklevel=2,
                )
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

    def real_clips(
        self, num: int, *, fps: float | Sequence[float] | None = None, seed: int = 0
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
        if not rates or any(
            isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 < r < math.inf for r in rates
        ):
            raise ValueError(f"expected fps to be a positive number or one per clip, got {fps!r}")
        if batch is not None and len(rates) not in (1, batch):
            raise ValueError(f"expected fps to be one rate or one per clip (b={batch}), got {len(rates)} rates")
        unknown = sorted({float(r) for r in rates if not any(math.isclose(r, k) for k in self.spec.fps)})
        if unknown:
            raise ValueError(
                f"this probe was trained at fps {self.spec.fps}, got {unknown}: build it with "
                "fps= covering every rate it is asked about"
            )
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
            raise TypeError(
                f"expected conditions to be a sequence with one caption or dict per clip (b={b}), "
                f"got {type(conditions).__name__}"
            )
        if len(conditions) != b:
            raise ValueError(
                f"expected one condition per clip of videos (b, c, t, h, w) with b={b}, "
                f"got {len(conditions)} conditions"
            )
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
            k: (
                float(
                    np.mean(
                        [self.spec.kinds[int(preds["kind"][i])] == k for i, c in enumerate(conds) if c.get("kind") == k]
                    )
                )
                if kind_counts[k]
                else None
            )
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
