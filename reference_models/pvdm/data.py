"""PVDM's data: video clips for the autoencoder, consecutive clip pairs, and cached latents.

Stage 1 (autoencoder) trains on clips ``(c, T, H, W)``. Stage 2 (diffusion) learns
``p(x)`` and ``p(x^2 | x^1)`` for two *consecutive* clips (section 3.3), so its data are pairs cut
from ``2T``-frame videos (:class:`ClipPairs`): frames ``0 .. T-1`` are ``x^1``, ``T .. 2T-1`` are
``x^2``. Built-in moving shapes render ``2T`` frames directly; a folder of videos gives ``2T``
consecutive frames per clip.

The diffusion stage never re-encodes videos: :func:`cache_latents` runs the frozen (EMA)
autoencoder once over the pairs and writes the packed latents ``z1, z2 (N, C, n)`` to a
safetensors file with a JSON description in its metadata (the autoencoder checkpoint, the data
record, the plane grid); :class:`LatentPairs` serves them. :func:`latent_cache_matches` tells
whether an existing file was made from the same checkpoint and data, so a resumed run reuses it.

A data *record* (a small JSON-able dict stored in checkpoints) says where the videos come from,
so the sampler and stage 2 can rebuild the same data: :func:`data_record`,
:func:`videos_from_record`. Held-out moving shapes use the next seed (scenes never trained on).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reference_models.common.data import MovingShapes, VideoFolder
from reference_models.common.trainer import check_data_dir
from vdblocks.validation import check_positive_int, check_tensor

from .config import AutoencoderConfig

__all__ = [
    "SHAPES_DEFAULTS",
    "ClipPairs",
    "LatentPairs",
    "VideoClips",
    "cache_latents",
    "data_record",
    "latent_cache_matches",
    "read_cache_meta",
    "videos_from_record",
]

# Built-in data: one or two bright shapes large enough to read at 32x32, so a tiny run learns them.
SHAPES_DEFAULTS: dict[str, Any] = {"fps": 8.0, "max_shapes": 2, "size_range": (0.15, 0.3), "speed_range": (0.25, 1.0)}


def data_record(data: str | os.PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """A JSON-able description of the training videos: a folder (``data``) or moving shapes.

    ``kwargs``: for folders ``fps``; for moving shapes ``num_samples``, ``seed``, ``fps``,
    ``max_shapes``, ``size_range``, ``speed_range`` (defaults filled in).
    """
    if data is not None:
        return {"source": "folder", "root": os.fspath(data), "fps": kwargs.get("fps")}
    record: dict[str, Any] = {"source": "moving_shapes", "num_samples": 2048, "seed": 0, **SHAPES_DEFAULTS}
    record.update({k: v for k, v in kwargs.items() if v is not None})
    record["size_range"], record["speed_range"] = list(record["size_range"]), list(record["speed_range"])
    return record


def videos_from_record(
    record: Mapping[str, Any], cfg: AutoencoderConfig, frames: int, *, held_out: bool = False
) -> Dataset:
    """The videos a :func:`data_record` describes, ``frames`` long, at the config's size and channels.

    ``held_out=True``: moving shapes from the next seed, or the folder's clips from their first frame.
    """
    check_positive_int(frames, "frames")
    source = record.get("source")
    if source == "moving_shapes":
        return MovingShapes(
            int(record["num_samples"]),
            frames=frames,
            height=cfg.height,
            width=cfg.width,
            fps=float(record["fps"]),
            channels=cfg.channels,
            max_shapes=int(record["max_shapes"]),
            seed=int(record["seed"]) + int(held_out),
            size_range=tuple(record["size_range"]),
            speed_range=tuple(record["speed_range"]),
        )
    if source == "folder":
        check_data_dir(record["root"])
        return VideoFolder(
            record["root"],
            frames=frames,
            height=cfg.height,
            width=cfg.width,
            fps=record.get("fps"),
            channels=cfg.channels,
            clip_start="first" if held_out else "random",
        )
    raise ValueError(f"expected a data record with source 'moving_shapes' or 'folder', got {dict(record)!r}")


def _video(item: Any) -> torch.Tensor:
    if not isinstance(item, Mapping) or "video" not in item:
        raise TypeError(f"expected dataset items with a 'video' (c, t, h, w) entry, got {type(item).__name__}")
    return check_tensor(item["video"], "video", "(c, t, h, w)")


class _ConsecutiveClips(Dataset):
    """The first ``clips`` consecutive ``frames``-frame clips of each item of ``videos``."""

    clips = 1

    def __init__(self, videos: Dataset, frames: int) -> None:
        self.videos, self.frames = videos, check_positive_int(frames, "frames")
        if getattr(videos, "root", None) is not None:
            self.root = videos.root

    def __len__(self) -> int:
        return len(self.videos)

    def _clips(self, index: int) -> list[torch.Tensor]:
        video = _video(self.videos[index])
        T, n = self.frames, self.clips
        if video.shape[1] < n * T:
            need = f"t >= {T}" if n == 1 else f"t >= {n}T = {n * T} ({n} consecutive clips)"
            raise ValueError(f"expected video of shape (c, t, h, w) with {need}, got {tuple(video.shape)}")
        return [video[:, k * T : (k + 1) * T].contiguous() for k in range(n)]


class VideoClips(_ConsecutiveClips):
    """``{"video": (c, T, H, W)}``: the first ``frames`` frames of each item of ``videos``."""

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        (clip,) = self._clips(index)
        return {"video": clip}


class ClipPairs(_ConsecutiveClips):
    """``{"x1": (c, T, H, W), "x2": (c, T, H, W)}``: two consecutive clips of each ``2T``-frame video."""

    clips = 2

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x1, x2 = self._clips(index)
        return {"x1": x1, "x2": x2}


# ----------------------------------------------------------------------------- latent cache


def read_cache_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description stored in a latent cache file (without loading its tensors)."""
    with safetensors.safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "pvdm" not in meta:
        raise ValueError(f"{path} is not a PVDM latent cache (no 'pvdm' metadata)")
    return json.loads(meta["pvdm"])


def latent_cache_matches(path: str | os.PathLike, description: Mapping[str, Any]) -> bool:
    """Whether ``path`` exists and was written with exactly this ``description`` (checkpoint, data...)."""
    if not Path(path).is_file():
        return False
    try:
        meta = read_cache_meta(path)
    except (ValueError, OSError, json.JSONDecodeError):
        return False
    return meta.get("description") == json.loads(json.dumps(dict(description)))


@torch.no_grad()
def cache_latents(
    autoencoder: nn.Module,
    pairs: Dataset,
    path: str | os.PathLike,
    *,
    description: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Path:
    """Encode every pair of ``pairs`` with ``autoencoder.encode_packed`` and write ``z1, z2 (N, C, n)``.

    ``autoencoder``: a :class:`~reference_models.pvdm.autoencoder.PVDMAutoencoder` (run in eval
    mode, no gradients). ``description`` (JSON-able) is stored with the plane grid and the latent
    width in the file's metadata. Written to a temporary name and renamed, so a crash never leaves
    a partial cache under ``path``. Returns ``path``.
    """
    check_positive_int(batch_size, "batch_size")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = autoencoder.training
    autoencoder.eval()
    z1s, z2s, grid = [], [], None
    loader = DataLoader(pairs, batch_size=batch_size, shuffle=False, drop_last=False)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="encode latents", dynamic_ncols=True)
    try:
        for batch in loader:
            x1, x2 = batch["x1"].to(device), batch["x2"].to(device)
            grid = autoencoder.latent_grid(*x1.shape[2:])
            z = autoencoder.encode_packed(torch.cat([x1, x2]))  # (2 b) C n
            a, b = z.chunk(2)
            z1s.append(a.float().cpu())
            z2s.append(b.float().cpu())
    finally:
        autoencoder.train(was_training)
    if grid is None:
        raise ValueError("the dataset of clip pairs is empty: nothing to encode")
    z1, z2 = torch.cat(z1s), torch.cat(z2s)
    meta = {
        "grid": list(grid),
        "latent_channels": int(z1.shape[1]),
        "count": int(z1.shape[0]),
        "description": json.loads(json.dumps(dict(description or {}))),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors.torch.save_file(
        {"z1": z1.contiguous(), "z2": z2.contiguous()}, os.fspath(tmp), metadata={"pvdm": json.dumps(meta)}
    )
    os.replace(tmp, path)
    return path


class LatentPairs(Dataset):
    """The cached latents of :func:`cache_latents`: ``{"z1": (C, n), "z2": (C, n)}`` per pair.

    ``grid`` ``(t, h, w)`` is the plane grid the latents belong to; ``meta`` the stored description.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"latent cache {self.path} does not exist")
        self.meta = read_cache_meta(self.path)
        tensors = safetensors.torch.load_file(os.fspath(self.path))
        self.z1, self.z2 = tensors["z1"], tensors["z2"]
        self.grid: tuple[int, int, int] = tuple(self.meta["grid"])  # type: ignore[assignment]
        if self.z1.shape != self.z2.shape or self.z1.ndim != 3:
            raise ValueError(
                f"{self.path}: expected z1 and z2 of one shape (N, C, n), got "
                f"{tuple(self.z1.shape)} and {tuple(self.z2.shape)}"
            )

    def __len__(self) -> int:
        return self.z1.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"z1": self.z1[index], "z2": self.z2[index]}
