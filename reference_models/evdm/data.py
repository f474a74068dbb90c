"""EVDM's training clips: one video cut into past, current and future frames (eqs. 6-7).

EVDM (like MCVD, whose "concat" U-Net it slims down) learns ``eps_theta(x_t | t, m_p p, m_f f)``:
the ``T`` current frames ``x_0`` are noised and denoised, the ``P`` frames before them (``p``) and
the ``F`` frames after them (``f``) are clean conditions. A clip of ``P + T + F`` consecutive
frames is therefore split along time as::

    frames  0 .. P-1        P .. P+T-1        P+T .. P+T+F-1
            past p          current x_0       future f

(:func:`split_clip`). :class:`EVDMClips` applies that split to any dataset whose items hold a
``"video"`` ``(c, t, h, w)`` in ``[-1, 1]``: the built-in :class:`MovingShapes`
(:func:`moving_shapes_videos`) or a :class:`VideoFolder` of the user's videos
(:func:`folder_videos`); ``channels`` 1 (grayscale, KTH and SM-MNIST) or 3 (RGB, BAIR and UCF)
follow the config. The masks of eq. 7 are drawn by the loss, not here, so one dataset serves
prediction, interpolation and generation training alike.

A data *record* (a small JSON-able dict, stored in checkpoints) says where the videos come from, so
the sampler can rebuild the same kind of data: :func:`data_record` and :func:`videos_from_record`.
Held-out moving shapes use the next seed (scenes never seen in training).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from reference_models.common.data import MovingShapes, VideoFolder
from reference_models.common.trainer import check_data_dir
from vdblocks.validation import check_positive_int, check_tensor

from .config import EVDMConfig

__all__ = [
    "clip_frames",
    "split_clip",
    "check_clip",
    "EVDMClips",
    "moving_shapes_videos",
    "folder_videos",
    "data_record",
    "videos_from_record",
    "build_clips",
    "stack_videos",
    "SHAPES_DEFAULTS",
]

# Built-in data: one bright shape per clip, large enough to read at 32x32, so a tiny run learns it.
SHAPES_DEFAULTS: dict[str, Any] = {"fps": 8.0, "max_shapes": 1, "size_range": (0.15, 0.3), "speed_range": (0.25, 1.0)}


def clip_frames(cfg: EVDMConfig) -> int:
    """Frames of one training clip: ``P + T + F``."""
    return cfg.num_past + cfg.num_frames + cfg.num_future


def split_clip(
    video: torch.Tensor, num_past: int, num_frames: int, num_future: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut ``(c, t, h, w)`` or ``(b, c, t, h, w)`` along time into past, current and future.

    Returns views with ``P``, ``T`` and ``F`` frames (an empty ``F = 0`` future keeps the batch
    collatable). ``t`` must be at least ``P + T + F``; later frames are not used.
    """
    if not isinstance(video, torch.Tensor) or video.ndim not in (4, 5):
        got = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"expected video of shape (c, t, h, w) or (b, c, t, h, w), got {got}")
    for name, value in (("num_past", num_past), ("num_future", num_future)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected {name} to be an int >= 0, got {value!r}")
    check_positive_int(num_frames, "num_frames")
    need = num_past + num_frames + num_future
    if video.shape[-3] < need:
        layout = "(c, t, h, w)" if video.ndim == 4 else "(b, c, t, h, w)"
        raise ValueError(
            f"expected video of shape {layout} with t >= P + T + F = {num_past} + {num_frames} + {num_future} "
            f"= {need}, got {tuple(video.shape)}"
        )
    past = video.narrow(-3, 0, num_past)  # ... c P h w
    current = video.narrow(-3, num_past, num_frames)  # ... c T h w
    future = video.narrow(-3, num_past + num_frames, num_future)  # ... c F h w
    return past, current, future


def check_clip(cfg: EVDMConfig, item: Mapping[str, torch.Tensor]) -> None:
    """Raise a ``ValueError`` naming the mismatch when an :class:`EVDMClips` item does not fit ``cfg``
    (channels, frame counts, or a frame size that is not a multiple of ``cfg.size_multiple``)."""
    for key, count in (("past", cfg.num_past), ("current", cfg.num_frames), ("future", cfg.num_future)):
        if key not in item:
            raise ValueError(f"expected a clip item with 'past', 'current' and 'future' entries, got {sorted(item)}")
        x = item[key]
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != cfg.channels or x.shape[1] != count:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"expected {key} frames of shape (c, t, h, w) with c={cfg.channels}, t={count} for this model, got {got}"
            )
    h, w = item["current"].shape[-2:]
    if h % cfg.size_multiple or w % cfg.size_multiple:
        raise ValueError(
            f"expected frames whose height and width are multiples of {cfg.size_multiple} (the U-Net "
            f"halves them {cfg.num_levels - 1} times), got {h}x{w}"
        )


class EVDMClips(Dataset):
    """``{"past": (c, P, h, w), "current": (c, T, h, w), "future": (c, F, h, w)}`` items cut
    from the ``"video"`` of each item of ``videos`` (see :func:`split_clip`).

    ``root`` mirrors the wrapped dataset's (the trainer checks that it exists).
    """

    def __init__(self, videos: Dataset, num_past: int, num_frames: int, num_future: int = 0) -> None:
        if not hasattr(videos, "__getitem__") or not hasattr(videos, "__len__"):
            raise TypeError(
                f"expected a map-style dataset of {{'video': (c, t, h, w)}} items, got {type(videos).__name__}"
            )
        self.videos = videos
        self.num_past, self.num_frames, self.num_future = num_past, num_frames, num_future
        root = getattr(videos, "root", None)
        if root is not None:
            self.root = root

    @classmethod
    def from_config(cls, videos: Dataset, cfg: EVDMConfig) -> EVDMClips:
        return cls(videos, cfg.num_past, cfg.num_frames, cfg.num_future)

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        video = check_tensor(self.videos[index]["video"], "video", "(c, t, h, w)")
        past, current, future = split_clip(video, self.num_past, self.num_frames, self.num_future)
        return {"past": past.contiguous(), "current": current.contiguous(), "future": future.contiguous()}


def moving_shapes_videos(
    cfg: EVDMConfig,
    frames: int,
    *,
    num_samples: int = 4096,
    seed: int = 0,
    fps: float = SHAPES_DEFAULTS["fps"],
    max_shapes: int = SHAPES_DEFAULTS["max_shapes"],
    size_range: tuple[float, float] = SHAPES_DEFAULTS["size_range"],
    speed_range: tuple[float, float] = SHAPES_DEFAULTS["speed_range"],
) -> MovingShapes:
    """Bouncing shapes at the config's size and channels (1: luma of the colours), ``frames`` long."""
    return MovingShapes(
        num_samples,
        frames=frames,
        height=cfg.image_size,
        width=cfg.image_size,
        fps=fps,
        channels=cfg.channels,
        max_shapes=max_shapes,
        seed=seed,
        size_range=tuple(size_range),
        speed_range=tuple(speed_range),
    )


def folder_videos(
    root: str | os.PathLike,
    cfg: EVDMConfig,
    frames: int,
    *,
    fps: float | None = None,
    clip_start: str = "random",
    seed: int | None = None,
) -> VideoFolder:
    """Clips of ``frames`` frames from every video under ``root``, resized and centre-cropped to the
    config's square size, gray (luma) or RGB as ``cfg.channels`` says. ``fps=None`` keeps the files'
    rate (KTH is 25 fps; MCVD takes consecutive frames)."""
    check_data_dir(root)
    return VideoFolder(
        root,
        frames=frames,
        height=cfg.image_size,
        width=cfg.image_size,
        fps=fps,
        channels=cfg.channels,
        clip_start=clip_start,
        seed=seed,
    )


def data_record(data: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description of the training videos: a folder (``data``) or moving shapes.

    ``kwargs``: for folders ``fps``; for moving shapes ``num_samples``, ``seed``, ``fps``,
    ``max_shapes``, ``size_range``, ``speed_range`` (defaults filled in).
    """
    if data is not None:
        return {"source": "folder", "root": os.fspath(data), "fps": kwargs.get("fps")}
    record: dict[str, Any] = {"source": "moving_shapes", "num_samples": 4096, "seed": 0, **SHAPES_DEFAULTS}
    record.update({k: v for k, v in kwargs.items() if v is not None})
    record["size_range"], record["speed_range"] = list(record["size_range"]), list(record["speed_range"])
    return record


def videos_from_record(record: Mapping[str, Any], cfg: EVDMConfig, frames: int, *, held_out: bool = False) -> Dataset:
    """The videos a :func:`data_record` describes, ``frames`` long.

    ``held_out=True`` gives evaluation clips: moving shapes from the next seed (unseen scenes), or
    the folder's clips from their first frame.
    """
    source = record.get("source")
    if source == "moving_shapes":
        return moving_shapes_videos(
            cfg,
            frames,
            num_samples=int(record["num_samples"]),
            seed=int(record["seed"]) + int(held_out),
            fps=float(record["fps"]),
            max_shapes=int(record["max_shapes"]),
            size_range=tuple(record["size_range"]),
            speed_range=tuple(record["speed_range"]),
        )
    if source == "folder":
        return folder_videos(
            record["root"], cfg, frames, fps=record.get("fps"), clip_start="first" if held_out else "random"
        )
    raise ValueError(f"expected a data record with source 'moving_shapes' or 'folder', got {dict(record)!r}")


def build_clips(record: Mapping[str, Any], cfg: EVDMConfig) -> EVDMClips:
    """The training dataset: :class:`EVDMClips` of ``P + T + F`` frames from the record's videos."""
    return EVDMClips.from_config(videos_from_record(record, cfg, clip_frames(cfg)), cfg)


def stack_videos(videos: Dataset, indices: Sequence[int]) -> torch.Tensor:
    """The ``"video"`` of the given items as one batch ``(b, c, t, h, w)``."""
    return torch.stack([videos[i]["video"] for i in indices])
