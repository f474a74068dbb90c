"""ETC's triple-data batches (section 4.2, "Triple-Data Training", eq. 6).

ETC trains one spatial-only model on three kinds of clip ``V`` of ``T`` frames, told apart by the
frame rate it is given::

    V^t = I^t               FPS = 0         label-image group: T different images of one label
    V^t = V^{60 t / FPS}    1 <= FPS <= 60  caption-video pair: frames sampled at FPS
    V^t = I^0               FPS = 120       caption-image pair: one image repeated T times

(``t = 0 .. T-1``; ``V^{60 t / FPS}`` is frame ``60 t / FPS`` of a 60 fps source, i.e. the scene at
``t / FPS`` seconds.) FPS 0 says "frames infinitely far apart: only per-frame correctness matters",
FPS 120 says "frames so close that nothing moves". Video rates come from the paper's seven discrete
values ``FPS_CHOICES = (1, 2, 4, 8, 15, 30, 60)``.

``TripleDataset`` is a deterministic map-style dataset: item ``i`` depends only on ``(seed, i)``, so
it is identical in every process, DataLoader worker and resumed run (the trainer's exact resume
relies on that). How an index becomes an item:

* kinds: the ``N`` indices get their kinds from a seeded permutation of exact counts
  ``round(N * ratio)`` (largest-remainder rounding), so the mixing ratios hold exactly over the whole
  dataset and closely over any large slice; the paper gives no ratios, ``DEFAULT_RATIOS`` is ours.
* sources: the ``k``-th index of a kind takes item ``k mod len(source)`` of that kind's source, so an
  epoch visits every video and every captioned image (rather than a random subset).
* rates: video ``j`` seen for the ``r``-th time in an epoch is asked for the rate
  ``FPS_CHOICES[(r + h_j) mod 7]`` with ``h_j`` drawn from ``(seed, j)``: uniform over the seven
  rates, and a video that an epoch holds several times is seen at different rates. A source may
  serve another rate than the one asked for (``MultiRateVideoFolder`` never labels a clip above
  its file's own frame rate, see there); the item's ``fps`` is always the rate of the clip it holds,
  ``plan(i).fps`` the rate asked for.
* label groups: the label is drawn uniformly among labels that have images, then ``T`` distinct
  images of it (all of them, cycled, when the label has fewer than ``T``; a warning says so).

Sources. Videos: ``MovingShapes`` (rendered at any rate on the fly), ``MultiRateVideoFolder`` (a
user folder read at the rates each file can honour, see there), anything with
``clip(index, fps) -> item``, or a plain dataset of ``{"video", "caption", "fps"}`` items at its own
rate (a ``VideoFolder`` built with one ``fps``: then ``fps_choices`` does not apply, and a warning
says when its clips repeat source frames, i.e. when its ``fps`` is above a file's own rate). Label
images: ``MovingShapesImages`` or an ``ImageFolder`` with class sub-folders (anything with
``num_classes``, ``indices_for_label`` and ``{"image", ...}`` items). Caption images: any dataset of
``{"image", "caption"}`` items.

Honest FPS labels. Eq. 6's ``V^{60 t / FPS}`` assumes a 60 fps source. Most real files run at
24-30 fps, and a 60 fps clip cut from a 25 fps file by nearest-frame resampling is the frames
``0, 0, 1, 1, 2, 2, ...``: labelled 60 fps, it teaches the model that "60 fps" means repeated
frames. There are two honest ways out: serve only the rates a file can honour, or read the file at
its own rate and label the clip with that (25). We take the first. The FPS embedding is trained on
the configured rates (the paper's seven) and sampled at them; serving the nearest configured rate
that the file honours keeps every label on that grid, and every label keeps one meaning: "frames
``1 / FPS`` seconds apart, each the source frame nearest its time". Own-rate labels would scatter
the video labels over whatever rates the files happen to have (25, 23.976, 29.97 ...), values
the sampler is never asked for. The price: a file serves only the rates it honours (a 25 fps
source gives no 30 or 60 fps clips; those requests become 15 fps clips), so the rate mix of a
low-rate dataset leans to its highest honoured rate. A rate up to ``FPS_TOLERANCE`` (1%) above a
file's own counts as honoured, so NTSC files (29.97, 23.976, 59.94 fps) serve 30, 24 and 60: each
clip frame is still the source frame nearest its nominal time and the clip's true spacing is
within 1% of its label (a frame repeats at most once per hundred clip frames). A file that cannot
give a clip at any configured rate it honours is skipped like an unreadable file.

Item: ``{"video": (c, t, h, w) float in [-1, 1], "fps": float, "caption": str, "label": int,
"kind": str}``. ``label`` is the group's label for ``"label_images"`` (whose ``caption`` is the class
name, for text-only models) and ``-1`` ("not label-conditioned") for the two caption kinds.
``TripleDataset.plan(i)`` tells, without loading anything, which source items make up item ``i``.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import einops
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from reference_models.common.data import ImageFolder, MovingShapes, MovingShapesImages, SkippedFile, VideoFolder
from reference_models.common.trainer import check_data_dir
from vdblocks.validation import check_positive_int

__all__ = [
    "FPS_CHOICES",
    "FPS_TOLERANCE",
    "LABEL_IMAGE_FPS",
    "CAPTION_IMAGE_FPS",
    "KINDS",
    "DEFAULT_RATIOS",
    "TriplePlan",
    "TripleDataset",
    "MultiRateVideoFolder",
    "collate_etc",
    "moving_shapes_triple",
    "folder_triple",
    "find_captions",
]

FPS_CHOICES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
# A file honours a clip rate up to this fraction above its own (NTSC 29.97 fps serves 30): see the
# module docstring, "Honest FPS labels".
FPS_TOLERANCE = 0.01
LABEL_IMAGE_FPS = 0.0
CAPTION_IMAGE_FPS = 120.0
KINDS: tuple[str, ...] = ("video", "label_images", "caption_image")
# Our choice (the paper names none): half videos, the rest split between the two image kinds.
DEFAULT_RATIOS: tuple[float, float, float] = (0.5, 0.25, 0.25)

# Independent random streams derived from (seed, ...): see TripleDataset.
_STREAM_KINDS, _STREAM_RATE, _STREAM_GROUP = 0x7D1, 0x7D2, 0x7D3


def _check_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"expected {name} to be a positive frame rate, got {value!r}")
    return float(value)


def _check_fps_choices(fps_choices: Sequence[float]) -> tuple[float, ...]:
    rates = tuple(_check_rate(f, "every fps choice") for f in fps_choices)
    if not rates or len(set(rates)) != len(rates):
        raise ValueError(f"expected distinct positive fps choices, got {fps_choices!r}")
    if max(rates) > CAPTION_IMAGE_FPS:
        raise ValueError(f"expected fps choices <= {CAPTION_IMAGE_FPS:g} (ETC's FPS range), got {rates}")
    return rates


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(ratios)
    if len(values) != 3 or any(
        isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0 <= r < math.inf for r in values
    ):
        raise ValueError(
            f"expected ratios as three non-negative numbers (video, label_images, caption_image), got {ratios!r}"
        )
    total = float(sum(values))
    if total <= 0:
        raise ValueError(f"expected ratios with a positive sum, got {ratios!r}")
    return tuple(float(r) / total for r in values)  # type: ignore[return-value]


def _exact_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """``n`` split by ``ratios`` into integers summing to ``n`` (largest remainder)."""
    raw = [n * r for r in ratios]
    counts = [math.floor(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda k: (counts[k] - raw[k], k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    return counts


def _image_size(source: Any) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` a source declares, if it declares all three."""
    inner = source.dataset if isinstance(source, Subset) else source
    sizes = [getattr(inner, name, None) for name in ("channels", "height", "width")]
    return tuple(sizes) if all(isinstance(s, int) for s in sizes) else None  # type: ignore[return-value]


@dataclass(frozen=True)
class TriplePlan:
    """What item ``i`` of a ``TripleDataset`` is made of: its ``kind``, ``fps``, the source
    ``indices`` (one for a video or caption image, ``T`` for a label group) and its ``label``."""

    kind: str
    fps: float
    indices: tuple[int, ...]
    label: int


class _RateNotHonoured(ValueError):
    """A file that cannot give a clip at any configured rate it honours (its own rate is too low,
    or it is too short at every rate it honours)."""


class MultiRateVideoFolder(Dataset):
    """A folder of videos read as ``frames``-frame clips at the rates of ``fps_choices`` that each
    file can honour.

    ``VideoFolder`` fixes one rate at construction; this keeps one ``VideoFolder`` per rate, built
    the first time the rate is asked for (in each process: a DataLoader worker builds its own). A
    rate's folder skips the videos too short for a clip at that rate (``(frames - 1) / fps`` seconds),
    so index ``i`` always names file ``i`` of the highest-rate folder (the one that keeps the most
    files, built eagerly).

    ``clip(i, fps)`` reads file ``i`` at ``fps`` when the file honours it, i.e. when ``fps`` is at
    most ``(1 + FPS_TOLERANCE)`` times the file's own rate (``source_fps``, the mean rate of its
    timestamps), so that no clip is labelled faster than its frames really are (see the module
    docstring, "Honest FPS labels"). Otherwise:

    * a rate above what the file honours is served at the highest configured rate it honours (a
      25 fps file asked for 30 or 60 gives a 15 fps clip);
    * a file too short for a clip at ``fps`` is read at the next higher rate that fits and that it
      honours;
    * a file that honours no configured rate (a 5 fps file with choices ``(8, 15, 30)``), or that
      is too short at every rate it honours, is skipped like an unreadable file: a
      ``RuntimeWarning`` names it, ``skipped`` records it, and ``clip`` falls back deterministically
      to the next file (``i + 1, i + 2, ...``), asked for the same rate.

    The item's ``fps`` says which rate was served. Frame selection, labels, captions, clip starts
    and unreadable files work as in ``VideoFolder``; its per-file warnings about short videos are
    folded into one warning per rate.

    Item: ``VideoFolder``'s item (``{"video": (c, t, h, w), "fps", "caption", "label", "path",
    "timestamps", "frame_indices"}``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        frames: int,
        height: int,
        width: int,
        fps_choices: Sequence[float] = FPS_CHOICES,
        channels: int = 3,
        captions: str | os.PathLike | None = None,
        clip_start: str = "random",
        seed: int | None = None,
        labels_from_folders: bool = True,
    ) -> None:
        self.root = check_data_dir(root)
        self.frames = check_positive_int(frames, "frames")
        self.height, self.width, self.channels = height, width, channels
        self.fps_choices = tuple(sorted(_check_fps_choices(fps_choices)))
        self._kwargs = dict(
            frames=frames,
            height=height,
            width=width,
            channels=channels,
            captions=captions,
            clip_start=clip_start,
            seed=seed,
            labels_from_folders=labels_from_folders,
        )
        self._folders: dict[float, VideoFolder | None] = {}
        self._index_of: dict[float, dict[str, int]] = {}
        self._source_fps: dict[int, float] = {}
        self._bad: set[int] = set()
        self._skipped: list[SkippedFile] = []
        self.base = VideoFolder(self.root, fps=self.fps_choices[-1], **self._kwargs)
        self._folders[self.fps_choices[-1]] = self.base
        self._index_of[self.fps_choices[-1]] = {str(p): k for k, p in enumerate(self.base.files)}

    @property
    def files(self) -> list[Path]:
        return self.base.files

    @property
    def captions(self) -> list[str]:
        return self.base.captions

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files left out so far by this process, with reasons: those the highest-rate folder
        skipped at construction, then those ``clip`` found unusable (see the class docstring)."""
        return self.base.skipped + list(self._skipped)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.base)

    def source_fps(self, index: int) -> float:
        """File ``index``'s own frame rate: ``(n - 1) / span`` of its ``n`` frame timestamps (the
        mean rate, as ``VideoFolder(fps=None)`` reports it); 0 for a file of one frame."""
        if index not in self._source_fps:
            pts, time_base = self.base._timestamps(index)
            span = float(pts[-1] - pts[0]) * time_base
            self._source_fps[index] = (len(pts) - 1) / span if len(pts) > 1 and span > 0 else 0.0
        return self._source_fps[index]

    def honoured_rates(self, index: int) -> tuple[float, ...]:
        """The rates of ``fps_choices`` that file ``index`` can honour (ascending): at most
        ``(1 + FPS_TOLERANCE)`` times its ``source_fps``. Every rate, for one-frame clips (which
        have no frame spacing to misstate)."""
        if self.frames == 1:
            return self.fps_choices
        limit = self.source_fps(index) * (1.0 + FPS_TOLERANCE)
        return tuple(r for r in self.fps_choices if r <= limit)

    def _folder(self, fps: float) -> VideoFolder | None:
        if fps not in self._folders:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    folder: VideoFolder | None = VideoFolder(self.root, fps=fps, **self._kwargs)
                except ValueError:  # no video long enough for one clip at this rate
                    folder = None
            short = len(self.base) - (len(folder) if folder is not None else 0)
            if short:
                warnings.warn(
                    f"MultiRateVideoFolder: {short} of {len(self.base)} videos under {str(self.root)!r} are too "
                    f"short for {self.frames} frames at {fps:g} fps; they are read at the next higher rate "
                    "they honour (or skipped)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            for w in caught:  # anything other than the skips just summarised
                if not issubclass(w.category, RuntimeWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            self._folders[fps] = folder
            self._index_of[fps] = {str(p): k for k, p in enumerate(folder.files)} if folder else {}
        return self._folders[fps]

    def _serve(self, index: int, fps: float) -> tuple[VideoFolder, int]:
        """The folder (rate) and position in it that serve file ``index`` asked for ``fps``."""
        honoured = self.honoured_rates(index)
        if fps <= (honoured[-1] if honoured else -math.inf):
            candidates = [r for r in honoured if r >= fps]  # the rate, then higher ones that fit
        else:
            candidates = honoured[::-1]  # the highest rate it honours (lower ones need longer files)
        path = str(self.base.files[index])
        for rate in candidates:
            folder = self._folder(rate)
            if folder is not None and path in self._index_of[rate]:
                return folder, self._index_of[rate][path]
        own = f"its own rate {self.source_fps(index):.4g} fps"
        if not honoured:
            raise _RateNotHonoured(
                f"{own} honours none of the fps choices {self.fps_choices} (tolerance {FPS_TOLERANCE:.0%})"
            )
        raise _RateNotHonoured(
            f"too short for {self.frames} frames at every rate {own} honours ({', '.join(f'{r:g}' for r in honoured)})"
        )

    def clip(self, index: int, fps: float) -> dict:
        """File ``index`` as a clip at ``fps`` (one of ``fps_choices``) or at the rate the class
        docstring says; the item's ``fps`` is the rate served."""
        fps = _check_rate(fps, "fps")
        if fps not in self.fps_choices:
            raise ValueError(f"expected fps in {self.fps_choices}, got {fps:g}")
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"expected an int index, got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} videos")
        for offset in range(n):
            j = (int(index) + offset) % n
            if j in self._bad:
                continue
            try:
                folder, k = self._serve(j, fps)
                # _load, not folder[k]: a folder's own fallback could move to a file that does not
                # honour the folder's rate; falling back here re-chooses the rate for the next file.
                return folder._load(k)
            except VideoFolder._errors as error:
                self._bad.add(j)
                reason = f"{type(error).__name__.lstrip('_')}: {error}"
                self._skipped.append(SkippedFile(str(self.base.files[j]), reason))
                warnings.warn(
                    f"MultiRateVideoFolder: skipping {str(self.base.files[j])!r} ({reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
        raise RuntimeError(
            f"MultiRateVideoFolder: no video under {str(self.root)!r} gives a clip of {self.frames} frames at a "
            f"rate of {self.fps_choices} that it honours; skipped {len(self._skipped)}: "
            + "; ".join(f"{s.path}: {s.reason}" for s in self._skipped[-5:])
        )

    def __getitem__(self, index: int) -> dict:
        """File ``index`` asked for a rate drawn from ``(seed, index)`` (seed 0 when the folder's
        is None)."""
        rng = np.random.default_rng([self._kwargs["seed"] or 0, int(index), _STREAM_RATE])
        return self.clip(index, self.fps_choices[int(rng.integers(len(self.fps_choices)))])


class TripleDataset(Dataset):
    """ETC's triple-data mix (section 4.2, eq. 6) of caption-videos, label-image groups and
    caption-images as ``frames``-frame clips ``(c, t, h, w)``; see the module docstring.

    ``ratios`` = (video, label_images, caption_image), normalised; a kind whose source is ``None``
    must have ratio 0. ``num_samples`` (the dataset length ``N``) defaults to the smallest ``N``
    that holds every video and every caption image once (a label group draws its images afresh per
    item, so it sets no minimum beyond one group per ``frames`` images). ``fps_choices``: the video
    rates (not used by fixed-rate video sources, see the module docstring).
    """

    def __init__(
        self,
        video_source: Dataset | None,
        label_image_source: Dataset | None,
        caption_image_source: Dataset | None,
        *,
        frames: int,
        ratios: Sequence[float] = DEFAULT_RATIOS,
        fps_choices: Sequence[float] = FPS_CHOICES,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        self.frames = check_positive_int(frames, "frames")
        self.fps_choices = _check_fps_choices(fps_choices)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"expected seed to be a non-negative int, got {seed!r}")
        self.seed = seed
        self._warned_repeats = False
        self.sources = (video_source, label_image_source, caption_image_source)
        self.ratios = _check_ratios(ratios)
        for kind, source, ratio in zip(KINDS, self.sources, self.ratios):
            if ratio > 0 and source is None:
                raise ValueError(f"ratio {ratio:g} for {kind!r} items but no {kind} source was given")
            if ratio > 0 and len(source) == 0:  # type: ignore[arg-type]
                raise ValueError(f"the {kind} source is empty")
        sizes = {k: _image_size(s) for k, s, r in zip(KINDS, self.sources, self.ratios) if r > 0}
        known = {k: s for k, s in sizes.items() if s is not None}
        if len(set(known.values())) > 1:
            raise ValueError(
                "expected every source to give frames of one (channels, height, width), got "
                + ", ".join(f"{k}: {s}" for k, s in known.items())
            )
        # label -> indices of its images, computed once (an ImageFolder scans its labels per call)
        self._groups = self._label_groups() if self.ratios[1] > 0 else {}
        self._labels = sorted(self._groups)

        if num_samples is None:
            needed = [1]
            for k, (source, ratio) in enumerate(zip(self.sources, self.ratios)):
                if ratio > 0:
                    units = len(source) // self.frames if k == 1 else len(source)  # type: ignore[arg-type]
                    needed.append(math.ceil(max(units, 1) / ratio - 1e-9))
            num_samples = max(needed)
        self.num_samples = check_positive_int(num_samples, "num_samples")
        counts = _exact_counts(self.num_samples, self.ratios)
        rng = np.random.default_rng([seed, _STREAM_KINDS])
        self._kinds = rng.permutation(np.repeat(np.arange(3, dtype=np.int8), counts))  # (N,)
        # rank of each index among the indices of its kind: the k-th video index reads video k mod L
        self._ranks = np.zeros(self.num_samples, dtype=np.int64)
        for k in range(3):
            where = np.flatnonzero(self._kinds == k)
            self._ranks[where] = np.arange(len(where))

    def _label_groups(self) -> dict[int, Sequence[int]]:
        source = self.sources[1]
        num_classes = getattr(source, "num_classes", None)
        if not callable(getattr(source, "indices_for_label", None)) or not isinstance(num_classes, int):
            raise TypeError(
                f"expected the label-image source to have num_classes and indices_for_label(label) "
                f"(MovingShapesImages, ImageFolder), got {type(source).__name__}"
            )
        groups = {lab: source.indices_for_label(lab) for lab in range(num_classes)}
        groups = {lab: indices for lab, indices in groups.items() if len(indices) > 0}
        if not groups:
            raise ValueError("the label-image source has no labelled images (an ImageFolder needs class sub-folders)")
        few = [lab for lab, indices in groups.items() if len(indices) < self.frames]
        if few:
            warnings.warn(
                f"TripleDataset: {len(few)} of {len(groups)} labels have fewer than {self.frames} images; "
                "their label groups repeat images",
                RuntimeWarning,
                stacklevel=3,
            )
        return groups

    @property
    def kinds(self) -> list[str]:
        """The kind of every index, in order (no item is loaded)."""
        return [KINDS[k] for k in self._kinds]

    def __len__(self) -> int:
        return self.num_samples

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"expected an int index, got {index!r}")
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} items")
        return int(index) % self.num_samples

    def plan(self, index: int) -> TriplePlan:
        """Kind, fps, source indices and label of item ``index``, from ``(seed, index)`` alone."""
        index = self._check_index(index)
        kind, rank = int(self._kinds[index]), int(self._ranks[index])
        if kind == 0:
            n = len(self.sources[0])  # type: ignore[arg-type]
            j = rank % n
            shift = int(np.random.default_rng([self.seed, j, _STREAM_RATE]).integers(len(self.fps_choices)))
            fps = self.fps_choices[(rank // n + shift) % len(self.fps_choices)]
            return TriplePlan("video", fps, (j,), -1)
        if kind == 2:
            n = len(self.sources[2])  # type: ignore[arg-type]
            return TriplePlan("caption_image", CAPTION_IMAGE_FPS, (rank % n,), -1)
        rng = np.random.default_rng([self.seed, index, _STREAM_GROUP])
        label = self._labels[int(rng.integers(len(self._labels)))]
        candidates = self._groups[label]
        n = len(candidates)
        if n >= self.frames:
            picks = rng.choice(n, size=self.frames, replace=False)
        else:
            picks = np.resize(rng.permutation(n), self.frames)  # every image, cycled
        return TriplePlan("label_images", LABEL_IMAGE_FPS, tuple(int(candidates[p]) for p in picks), label)

    def _video(self, index: int, fps: float) -> tuple[torch.Tensor, float, str]:
        source = self.sources[0]
        if isinstance(source, MovingShapes):
            video = source.render(index, fps=fps, frames=self.frames)  # (c, t, h, w)
            color = source.channels == 3
            caption = " and ".join(s.phrase(color=color, motion=True) for s in source.shapes(index))
            return video, fps, caption
        if callable(getattr(source, "clip", None)):
            item = source.clip(index, fps)
        else:
            item = source[index]
            self._check_fixed_rate(item)
        return item["video"], float(item["fps"]), str(item.get("caption", ""))

    def _check_fixed_rate(self, item: dict) -> None:
        """Warn once when a fixed-rate source (a ``VideoFolder`` built with one ``fps``) repeats
        source frames: its rate is above the file's own, so its FPS label overstates the motion."""
        picks = item.get("frame_indices")
        if self._warned_repeats or picks is None or len(picks) < 2:
            return
        if bool((torch.as_tensor(picks).diff() <= 0).any()):
            self._warned_repeats = True
            warnings.warn(
                f"TripleDataset: the fixed-rate video source repeats frames ({item.get('path', 'a video')}: "
                f"frames {torch.as_tensor(picks).tolist()} labelled {float(item['fps']):g} fps, above the file's "
                "own rate), which teaches the FPS embedding that this rate means repeated frames; use "
                "MultiRateVideoFolder (folder_triple), which serves only the rates a file honours",
                RuntimeWarning,
                stacklevel=4,
            )

    def _class_name(self, label: int) -> str:
        source = self.sources[1]
        names = getattr(source, "class_names", None) or getattr(source, "classes", None)
        return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)

    def __getitem__(self, index: int) -> dict:
        plan = self.plan(index)
        if plan.kind == "video":
            video, fps, caption = self._video(plan.indices[0], plan.fps)
        elif plan.kind == "caption_image":
            item = self.sources[2][plan.indices[0]]  # type: ignore[index]
            video = einops.repeat(item["image"], "c h w -> c t h w", t=self.frames)  # I^0 at every t
            fps, caption = plan.fps, str(item.get("caption", ""))
        else:
            images = [self.sources[1][j]["image"] for j in plan.indices]  # type: ignore[index]
            video = einops.rearrange(torch.stack(images), "t c h w -> c t h w")  # I^t
            fps, caption = plan.fps, self._class_name(plan.label)
        if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[1] != self.frames:
            got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(
                f"expected the {plan.kind} source to give a clip of shape (c, t, h, w) with t={self.frames}, got {got}"
            )
        return {
            "video": video.float().contiguous(),  # (c, t, h, w)
            "fps": float(fps),
            "caption": caption,
            "label": int(plan.label),
            "kind": plan.kind,
        }


def collate_etc(batch: Sequence[dict]) -> dict:
    """Stack ``TripleDataset`` items: ``video (b, c, t, h, w)``, ``fps (b,)`` float32,
    ``label (b,)`` int64; ``caption`` and ``kind`` stay lists of strings."""
    if not batch:
        raise ValueError("expected a non-empty list of items")
    missing = {"video", "fps", "caption", "label", "kind"} - set(batch[0])
    if missing:
        raise ValueError(
            f"expected TripleDataset items with keys video, fps, caption, label, kind; missing {sorted(missing)}"
        )
    return {
        "video": torch.stack([item["video"] for item in batch]),  # (b, c, t, h, w)
        "fps": torch.tensor([float(item["fps"]) for item in batch], dtype=torch.float32),
        "caption": [str(item["caption"]) for item in batch],
        "label": torch.tensor([int(item["label"]) for item in batch], dtype=torch.int64),
        "kind": [str(item["kind"]) for item in batch],
    }


def moving_shapes_triple(
    *,
    frames: int,
    height: int,
    width: int,
    channels: int = 3,
    num_videos: int = 4096,
    num_images: int = 4096,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    fps_choices: Sequence[float] = FPS_CHOICES,
    seed: int = 0,
    num_samples: int | None = None,
    **shape_kwargs: Any,
) -> TripleDataset:
    """The built-in triple data: ``MovingShapes`` videos, and ``MovingShapesImages`` stills (of
    other scenes: seed ``seed + 1``) as both the label-image and the caption-image source.
    ``shape_kwargs`` (``max_shapes``, ``size_range``, ``kinds``, ``colors``, ``label_by``, ...) go to
    both datasets; ``speed_range`` and ``directions`` only to the videos."""
    speed = {k: shape_kwargs.pop(k) for k in ("speed_range", "directions") if k in shape_kwargs}
    videos = MovingShapes(
        num_videos, frames=frames, height=height, width=width, channels=channels, seed=seed, **shape_kwargs, **speed
    )
    images = MovingShapesImages(
        num_images, height=height, width=width, channels=channels, seed=seed + 1, **shape_kwargs
    )
    return TripleDataset(
        videos,
        images,
        images,
        frames=frames,
        ratios=ratios,
        fps_choices=fps_choices,
        seed=seed,
        num_samples=num_samples,
    )


def find_captions(directory: str | os.PathLike) -> Path | None:
    """The caption sidecar of a data directory: ``captions.csv`` or ``captions.json`` in it."""
    for name in ("captions.csv", "captions.json"):
        path = Path(directory) / name
        if path.is_file():
            return path
    return None


def folder_triple(
    videos: str | os.PathLike | None,
    images: str | os.PathLike | None,
    *,
    frames: int,
    height: int,
    width: int,
    channels: int = 3,
    video_captions: str | os.PathLike | None = None,
    image_captions: str | os.PathLike | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    fps_choices: Sequence[float] = FPS_CHOICES,
    seed: int = 0,
    num_samples: int | None = None,
) -> TripleDataset:
    """Triple data from user folders.

    ``videos``: a directory of videos (any depth) read at the rates of ``fps_choices`` that each
    file honours (never above its own frame rate) through ``MultiRateVideoFolder``, captions from
    ``video_captions`` or the directory's ``captions.csv``/``captions.json`` (see
    ``image_folder.load_captions`` for the format).
    ``images``: a directory of images; its class sub-folders (``images/<label>/...``) give the
    label-image groups, its captions (``image_captions`` or the sidecar) the caption-image pairs
    (only the captioned images). A kind without data gets ratio 0; the others keep their ratios.
    """
    if videos is None and images is None:
        raise ValueError("expected a video directory, an image directory, or both")
    video_source = label_source = caption_source = None
    if videos is not None:
        video_captions = video_captions if video_captions is not None else find_captions(check_data_dir(videos))
        video_source = MultiRateVideoFolder(
            videos,
            frames=frames,
            height=height,
            width=width,
            fps_choices=fps_choices,
            channels=channels,
            captions=video_captions,
        )
    if images is not None:
        image_captions = image_captions if image_captions is not None else find_captions(check_data_dir(images))
        folder = ImageFolder(images, height=height, width=width, channels=channels, captions=image_captions)
        if folder.num_classes > 0:
            label_source = folder
        captioned = [i for i, c in enumerate(folder.captions) if c.strip()]
        if len(captioned) == len(folder):
            caption_source = folder
        elif captioned:
            caption_source = Subset(folder, captioned)
        if label_source is None and caption_source is None:
            raise ValueError(
                f"the images under {str(images)!r} have neither class sub-folders nor captions "
                "(add <label>/ folders or a captions.csv with columns file, caption)"
            )
    present = (video_source is not None, label_source is not None, caption_source is not None)
    ratios = tuple(r if ok else 0.0 for r, ok in zip(_check_ratios(ratios), present))
    if sum(ratios) == 0:
        raise ValueError(f"the ratios {tuple(ratios)} give no weight to the kinds the folders hold {present}")
    return TripleDataset(
        video_source,
        label_source,
        caption_source,
        frames=frames,
        ratios=ratios,
        fps_choices=fps_choices,
        seed=seed,
        num_samples=num_samples,
    )
