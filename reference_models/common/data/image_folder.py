"""Image folders with folder-name labels and sidecar captions, and the folder plumbing that
``VideoFolder`` shares (scan, labels, captions, skipping unreadable files).

Layout: ``root/<class name>/.../<file>``. Class names are the sorted names of the top-level
sub-directories holding at least one matching file (torchvision's ``class_to_idx``); a file directly
under ``root`` has label -1 (unlabelled), as does every file when ``labels_from_folders=False``.

Captions come from a sidecar file, either CSV with a header holding the columns ``file`` and
``caption``, or a JSON object ``{file: caption}``. A key is matched against the file's path relative
to ``root`` (POSIX separators, ``"cats/001.png"``), then against its bare name (``"001.png"``); a file
with no entry gets the empty caption.

Unreadable files never stop training. Each is skipped, a ``RuntimeWarning`` names it, and it is
recorded in ``skipped`` (``SkippedFile(path, reason)``). Headers are probed at construction, so files
that cannot even be opened are dropped from the index up front; a file that fails later while
decoding (truncated data) makes ``__getitem__`` fall back deterministically to the next index
(``i + 1, i + 2, ...`` modulo the length) and is never tried again by that process. With DataLoader
workers each worker process keeps its own record, so the main process's ``skipped`` only lists what
it saw itself (construction-time skips are seen by all).
"""

from __future__ import annotations

import abc
import csv
import json
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import einops
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vdblocks.validation import check_positive_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "SkippedFile",
    "load_captions",
    "resize_crop_size",
    "center_crop_box",
    "ImageFolder",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class SkippedFile(NamedTuple):
    """A file left out of a folder dataset, and why."""

    path: str
    reason: str


def load_captions(path: str | os.PathLike) -> dict[str, str]:
    """Read a caption sidecar: CSV with columns ``file, caption`` or JSON ``{file: caption}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(
                    f"expected caption CSV {str(path)!r} with columns 'file' and 'caption', "
                    f"got columns {reader.fieldnames!r}"
                )
            return {row["file"]: row["caption"] for row in reader}
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"expected caption JSON {str(path)!r} to hold an object {{file: caption}}")
        return {str(k): v for k, v in data.items()}
    raise ValueError(f"expected a caption file ending in .csv or .json, got {str(path)!r}")


def resize_crop_size(src_h: int, src_w: int, height: int, width: int) -> tuple[int, int]:
    """Size ``(h', w')`` to resize to so the frame covers ``height x width`` before a centre crop
    (the shorter side relative to the target aspect ends at the target size)."""
    scale = max(height / src_h, width / src_w)
    return max(height, round(src_h * scale)), max(width, round(src_w * scale))


def center_crop_box(h: int, w: int, height: int, width: int) -> tuple[int, int]:
    """Top-left corner of the centred ``height x width`` window of an ``h x w`` frame."""
    return (h - height) // 2, (w - width) // 2


class _FolderDataset(Dataset, abc.ABC):
    """Scan, labels, captions and skip-and-fall-back; subclasses implement ``_probe`` and ``_load``."""

    _kind = "file"
    _errors: tuple[type[BaseException], ...] = (OSError, ValueError)

    def __init__(self, root, extensions: Sequence[str], captions, labels_from_folders: bool) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{type(self).__name__} root {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{type(self).__name__} root {str(self.root)!r} is not a directory")
        self.extensions = tuple(e.lower() for e in extensions)
        found = sorted(
            p
            for p in self.root.rglob("*")
            if p.is_file() and p.suffix.lower() in self.extensions and not p.name.startswith(".")
        )
        if not found:
            raise ValueError(f"no {self._kind} files with extensions {self.extensions} under {str(self.root)!r}")
        rel = [p.relative_to(self.root) for p in found]
        if labels_from_folders:
            self.classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
        else:
            self.classes = []
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        table = load_captions(captions) if captions is not None else {}

        self._skipped: list[SkippedFile] = []
        self._bad: set[int] = set()
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.captions: list[str] = []
        for path, r in zip(found, rel):
            try:
                self._probe(path)
            except self._errors as error:
                self._skip(path, error)
                continue
            self.files.append(path)
            self.labels.append(self.class_to_idx.get(r.parts[0], -1) if len(r.parts) > 1 else -1)
            self.captions.append(table.get(r.as_posix(), table.get(r.name, "")))
        if not self.files:
            raise ValueError(
                f"no readable {self._kind} files under {str(self.root)!r}; skipped {len(self._skipped)}: "
                + "; ".join(f"{s.path}: {s.reason}" for s in self._skipped[:5])
            )

    # -- subclass hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def _probe(self, path: Path) -> None:
        """Cheap header check at construction; raise one of ``_errors`` to skip the file."""

    @abc.abstractmethod
    def _load(self, index: int) -> dict:
        """Full load of item ``index``; raise one of ``_errors`` to skip the file."""

    # -- shared behaviour -----------------------------------------------------------------------
    def _skip(self, path: Path, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        self._skipped.append(SkippedFile(str(path), reason))
        warnings.warn(f"{type(self).__name__}: skipping {str(path)!r} ({reason})", RuntimeWarning, stacklevel=3)

    @property
    def skipped(self) -> list[SkippedFile]:
        """Files left out so far by this process, with reasons (see the module docstring)."""
        return list(self._skipped)

    @property
    def num_skipped(self) -> int:
        return len(self._skipped)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def indices_for_label(self, label: int) -> list[int]:
        """Indices of the files whose folder label is ``label`` (-1: unlabelled files)."""
        return [i for i, lab in enumerate(self.labels) if lab == label]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        n = len(self.files)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"expected an int index, got {index!r}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} {self._kind}s")
        index = int(index) % n
        for offset in range(n):
            j = (index + offset) % n
            if j in self._bad:
                continue
            try:
                return self._load(j)
            except self._errors as error:
                self._bad.add(j)
                self._skip(self.files[j], error)
        raise RuntimeError(
            f"{type(self).__name__}: every {self._kind} under {str(self.root)!r} failed to load; "
            f"skipped {len(self._skipped)}: " + "; ".join(f"{s.path}: {s.reason}" for s in self._skipped[-5:])
        )


class ImageFolder(_FolderDataset):
    """Labelled, captioned images read with Pillow, resized (shorter side) and centre-cropped.

    Item: ``{"image": (c, h, w) float in [-1, 1], "label": int, "caption": str, "path": str}`` with
    ``c = channels`` (1: Pillow ``"L"`` luma, 3: RGB). Labels, captions and the handling of corrupt
    files are described in the module docstring.
    """

    _kind = "image"
    # Pillow reports corrupt data through all of these, depending on the format and where it breaks.
    _errors = (OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error, Image.DecompressionBombError)

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        height: int,
        width: int,
        channels: int = 3,
        captions: str | os.PathLike | None = None,
        labels_from_folders: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.height = check_positive_int(height, "height")
        self.width = check_positive_int(width, "width")
        if channels not in (1, 3):
            raise ValueError(f"expected channels in {{1, 3}}, got {channels!r}")
        self.channels = channels
        super().__init__(root, extensions, captions, labels_from_folders)

    def _probe(self, path: Path) -> None:
        with Image.open(path) as image:  # reads the header only
            if image.width < 1 or image.height < 1:
                raise ValueError(f"empty image {image.size}")

    def _load(self, index: int) -> dict:
        path = self.files[index]
        with Image.open(path) as image:
            image = image.convert("RGB" if self.channels == 3 else "L")  # decodes the pixel data
        rh, rw = resize_crop_size(image.height, image.width, self.height, self.width)
        image = image.resize((rw, rh), Image.Resampling.BICUBIC)
        top, left = center_crop_box(rh, rw, self.height, self.width)
        pixels = np.asarray(image.crop((left, top, left + self.width, top + self.height)))
        pixels = pixels.reshape(self.height, self.width, self.channels)
        x = torch.from_numpy(pixels.copy()).float() / 127.5 - 1.0
        return {
            "image": einops.rearrange(x, "h w c -> c h w").contiguous(),
            "label": self.labels[index],
            "caption": self.captions[index],
            "path": str(path),
        }
