"""A directory tree of videos as fixed-length clips at a requested frame rate (PyAV).

Frame-rate resampling works on timestamps, not on frame counts: a clip of ``t`` frames at ``fps``
covers the times ``s_k = s_0 + k / fps`` (``k = 0 .. t-1``) and takes, for each ``s_k``, the source
frame whose presentation timestamp is nearest (ties go to the earlier frame). A 30 fps file asked
for 10 fps clips thus yields every third frame, a 25 fps file a true 10 fps clip with the nearest
frames, and a rate above the source's repeats frames. ``fps=None`` takes ``t`` consecutive frames at
the file's own rate.

Timestamps come from demuxing the packets (no decoding), cached per file and process; then only the
frames of the clip are decoded, starting from the keyframe before the clip (a container seek, with a
decode from the start as fallback when a format seeks badly). Each picked frame is scaled by
swscale so that it covers ``height x width`` (shorter side relative to the target aspect) and
centre-cropped. Scaling goes through ``video_io.frame_to_array``, which is safe in DataLoader
workers forked after the parent decoded a frame (PyAV's shared swscale threads are not).

Clip start: ``clip_start="random"`` draws ``s_0`` uniformly among the starts whose clip fits, from
``torch``'s RNG when ``seed is None`` (so each DataLoader worker draws differently) or from
``numpy.random.default_rng([seed, index])`` when a seed is given (the same clip for an index every
epoch); ``"first"`` and ``"center"`` are fixed.

Labels, captions and unreadable files work as in ``image_folder`` (see its module docstring). A video
too short for one clip counts as unreadable: it is skipped at construction when the header's
duration already proves it (duration < (t - 1) / fps), otherwise when its timestamps are indexed in
``__getitem__``; only when no usable video remains is there an error.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import av
import einops
import numpy as np
import torch

from vdblocks.validation import check_positive_int

from ..video_io import frame_to_array
from .image_folder import _FolderDataset, center_crop_box, resize_crop_size

__all__ = ["VIDEO_EXTENSIONS", "VideoTooShortError", "nearest_frame_indices", "VideoFolder"]

VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")

_CLIP_STARTS = ("random", "first", "center")
# Float slack when comparing a clip's span with a file's span (timestamps are rationals in floats).
_EPS = 1e-6


class VideoTooShortError(ValueError):
    """The video has fewer frames, or a shorter time span, than one clip needs."""


def nearest_frame_indices(timestamps: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Index of the frame nearest each target time; ``timestamps`` sorted ``(n,)``, targets ``(t,)``.
    Ties go to the earlier frame."""
    right = np.clip(np.searchsorted(timestamps, targets, side="left"), 1, len(timestamps) - 1)
    left = right - 1
    if len(timestamps) == 1:
        return np.zeros(len(targets), dtype=np.int64)
    take_right = (timestamps[right] - targets) < (targets - timestamps[left])
    return np.where(take_right, right, left).astype(np.int64)


class VideoFolder(_FolderDataset):
    """Clips of ``frames`` frames at ``fps`` from every video under ``root``.

    Item: ``{"video": (c, t, h, w) float in [-1, 1], "label": int, "caption": str, "fps": float,
    "path": str, "timestamps": (t,) float64 seconds of the source frames used, "frame_indices": (t,)
    int64 positions of those frames in the file}``. ``c = channels`` (1: swscale's gray conversion,
    i.e. the luma plane; 3: RGB). ``fps`` in the item is the requested rate, or the file's average
    rate when ``fps=None``. See the module docstring for resampling, clip starts, labels, captions
    and skipping.
    """

    _kind = "video"
    _errors = (av.error.FFmpegError, OSError, ValueError, EOFError)

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        frames: int,
        height: int,
        width: int,
        fps: float | None = None,
        channels: int = 3,
        clip_start: str = "random",
        seed: int | None = None,
        captions: str | os.PathLike | None = None,
        labels_from_folders: bool = True,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
    ) -> None:
        self.frames = check_positive_int(frames, "frames")
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < math.inf):
            raise ValueError(f"expected fps to be a positive number or None, got {fps!r}")
        self.fps = None if fps is None else float(fps)
        if channels not in (1, 3):
            raise ValueError(f"expected channels in {{1, 3}}, got {channels!r}")
        self.channels = channels
        if clip_start not in _CLIP_STARTS:
            raise ValueError(f"expected clip_start in {_CLIP_STARTS}, got {clip_start!r}")
        self.clip_start = clip_start
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"expected seed to be None or a non-negative int, got {seed!r}")
        self.seed = seed
        self._pts_cache: dict[int, tuple[np.ndarray, float]] = {}
        super().__init__(root, extensions, captions, labels_from_folders)

    @property
    def clip_span(self) -> float | None:
        """Seconds from the first to the last target time of a clip (None when ``fps=None``)."""
        return None if self.fps is None else (self.frames - 1) / self.fps

    def _probe(self, path: Path) -> None:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            if self.fps is None:
                if stream.frames and stream.frames < self.frames:
                    raise VideoTooShortError(f"{stream.frames} frames, a clip needs {self.frames}")
                return
            if stream.duration and stream.time_base:
                duration = float(stream.duration * stream.time_base)
            elif container.duration:
                duration = container.duration / av.time_base
            else:
                return  # unknown here; checked exactly when the timestamps are indexed
            # The header duration includes the last frame's display time, so it bounds the span of
            # timestamps from above: shorter than the clip means certainly too short.
            if duration + _EPS < self.clip_span:
                raise VideoTooShortError(
                    f"{duration:.3f} s long, a clip of {self.frames} frames at {self.fps} fps spans "
                    f"{self.clip_span:.3f} s"
                )

    def _timestamps(self, index: int) -> tuple[np.ndarray, float]:
        """Sorted presentation timestamps ``(n,)`` as stream pts (int64), and the time base."""
        if index not in self._pts_cache:
            with av.open(str(self.files[index])) as container:
                stream = container.streams.video[0]
                time_base = float(stream.time_base)
                pts = [p.pts for p in container.demux(stream) if p.size > 0]
                if any(p is None for p in pts):
                    # Some demuxers give no packet pts; the decoder still knows the frame times.
                    container.seek(0)
                    pts = [f.pts for f in container.decode(stream)]
                if not pts or any(p is None for p in pts):
                    raise ValueError("no frame timestamps")
            self._pts_cache[index] = (np.array(sorted(set(pts)), dtype=np.int64), time_base)
        return self._pts_cache[index]

    def _start_fraction(self, index: int) -> float:
        if self.clip_start == "first":
            return 0.0
        if self.clip_start == "center":
            return 0.5
        if self.seed is None:
            return float(torch.rand(()))
        return float(np.random.default_rng([self.seed, index]).random())

    def _pick(self, index: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Frame positions ``(t,)`` and their pts for item ``index``, the item fps and time base."""
        pts, time_base = self._timestamps(index)
        seconds = pts * time_base  # (n,)
        n = len(pts)
        if self.fps is None:
            if n < self.frames:
                raise VideoTooShortError(f"{n} frames, a clip needs {self.frames}")
            start = round(self._start_fraction(index) * (n - self.frames))
            picks = np.arange(start, start + self.frames)
            span = seconds[-1] - seconds[0]
            fps = (n - 1) / span if n > 1 and span > 0 else 0.0
            return picks, pts[picks], fps, time_base
        span = seconds[-1] - seconds[0]
        if span + _EPS < self.clip_span:
            raise VideoTooShortError(
                f"timestamps span {span:.3f} s, a clip of {self.frames} frames at {self.fps} fps "
                f"spans {self.clip_span:.3f} s"
            )
        slack = max(span - self.clip_span, 0.0)
        targets = seconds[0] + self._start_fraction(index) * slack + np.arange(self.frames) / self.fps
        picks = nearest_frame_indices(seconds, targets)
        return picks, pts[picks], self.fps, time_base

    def _decode(self, index: int, wanted: set[int], *, seek: bool) -> dict[int, np.ndarray]:
        frames: dict[int, np.ndarray] = {}
        last = max(wanted)
        with av.open(str(self.files[index])) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek:
                # Backward seek: lands on the keyframe at or before the first wanted frame.
                container.seek(int(min(wanted)), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts in wanted and frame.pts not in frames:
                    frames[frame.pts] = self._convert(frame)
                if frame.pts is not None and frame.pts >= last:
                    break  # frames come in presentation order: nothing wanted is left
        return frames

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        """Resize to cover ``height x width``, centre-crop, as uint8 ``(h, w, c)``."""
        rh, rw = resize_crop_size(frame.height, frame.width, self.height, self.width)
        shrink = rh * rw < frame.height * frame.width
        image = frame_to_array(
            frame,
            width=rw,
            height=rh,
            format="rgb24" if self.channels == 3 else "gray",
            interpolation="AREA" if shrink else "BICUBIC",
        )
        top, left = center_crop_box(rh, rw, self.height, self.width)
        image = image.reshape(rh, rw, self.channels)
        return image[top : top + self.height, left : left + self.width]

    def _load(self, index: int) -> dict:
        picks, picked_pts, fps, time_base = self._pick(index)
        wanted = {int(p) for p in picked_pts}
        frames = self._decode(index, wanted, seek=int(picks.min()) > 0)
        if len(frames) < len(wanted):
            frames = self._decode(index, wanted, seek=False)
        if len(frames) < len(wanted):
            raise ValueError(f"decoded {len(frames)} of the {len(wanted)} frames the clip needs")
        clip = np.stack([frames[int(p)] for p in picked_pts])  # (t, h, w, c)
        video = torch.from_numpy(clip).float() / 127.5 - 1.0
        return {
            "video": einops.rearrange(video, "t h w c -> c t h w").contiguous(),
            "label": self.labels[index],
            "caption": self.captions[index],
            "fps": float(fps),
            "path": str(self.files[index]),
            "timestamps": torch.from_numpy(picked_pts * time_base),
            "frame_indices": torch.from_numpy(picks),
        }
