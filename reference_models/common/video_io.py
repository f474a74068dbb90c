"""Video and frame-grid files: write ``(c, t, h, w)`` float tensors, read videos back with timestamps.

Formats are chosen by suffix:

* ``.mp4``: H.264 (libx264) through PyAV. Even sizes use ``yuv420p``, the pixel format every player
  understands. 4:2:0 chroma cannot represent an odd width or height (H.264 crops in steps of two
  pixels there), so odd sizes are written in ``yuv444p`` instead: the decoded frames keep the exact
  ``h x w`` of the tensor, at the price of needing a player that supports the High 4:4:4 profile
  (ffmpeg, VLC, browsers built on ffmpeg; not QuickTime). We chose exact round trips over padding
  because these files are read back by our own data pipeline and tests.
* ``.gif``: PyAV's GIF encoder on ``pal8`` frames. One 256-colour palette is fitted (Pillow median
  cut) to the whole clip, so colours do not flicker between frames. Pillow's own GIF writer is not
  used because it merges identical consecutive frames, which would break ``decoded frames == t``.
  GIF delays are whole centiseconds, so a 30 fps clip is stored with delays of 3 or 4 cs (average
  30 fps over the clip, each frame within 5 ms of its nominal time).

Every writer creates the parent directory and writes to a hidden temporary name in the same
directory, then renames it over ``path``, so a crash never leaves a half-written file under the
final name.

Frames are converted with ``frame_to_array``, never with PyAV's ``frame.to_ndarray``/``reformat``
defaults: those share one thread-local swscale context per thread whose slice threads (FFmpeg's
``avpriv_slicethread``) do not survive ``fork``, so a DataLoader worker forked after the parent
converted a frame waited forever in ``sws_scale_frame``. ``frame_to_array`` scales single-threaded
(``threads=1``: no slice-thread pool exists to inherit) with a context owned by this module and
rebuilt in every new process and thread.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import einops
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from PIL import Image

from vdblocks.validation import check_tensor

from .files import follow_umask

__all__ = [
    "write_video",
    "write_samples",
    "save_frame_grid",
    "read_video",
    "frame_to_array",
    "VIDEO_SUFFIXES",
]

VIDEO_SUFFIXES = (".mp4", ".gif")
"""Suffixes ``write_video`` can write. ``read_video`` reads anything PyAV can demux."""

# Constant-quality x264: visually lossless for the small synthetic clips this library writes, and
# small enough that sample grids stay cheap to keep around.
_X264_CRF = "18"


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's swscale context, created anew after a fork (the pid no longer matches)."""
    owner = getattr(_local, "owner", None)
    if owner is None or owner[0] != os.getpid():
        _local.owner = owner = (os.getpid(), VideoReformatter())
    return owner[1]


def frame_to_array(
    frame: av.VideoFrame,
    *,
    width: int | None = None,
    height: int | None = None,
    format: str = "rgb24",
    interpolation: str | None = None,
) -> np.ndarray:
    """Scale/convert a decoded ``frame`` and return it as a uint8 ``(h, w, c)`` array (``(h, w)``
    for ``format="gray"``), safely in any process: see the module docstring for why it does not
    use ``frame.to_ndarray``'s shared, multi-threaded swscale context."""
    out = _reformatter().reformat(
        frame, width=width, height=height, format=format, interpolation=interpolation, threads=1
    )
    return out.to_ndarray()


def _check_value_range(value_range: Sequence[float]) -> tuple[float, float]:
    if len(value_range) != 2:
        raise ValueError(f"expected value_range as (low, high), got {value_range!r}")
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"expected value_range with low < high, got {value_range!r}")
    return low, high


def _to_uint8_rgb(video: torch.Tensor, value_range: Sequence[float]) -> np.ndarray:
    """Map ``(c, t, h, w)`` floats in ``value_range`` to uint8 ``(t, h, w, 3)`` (gray repeated)."""
    low, high = _check_value_range(value_range)
    if not torch.isfinite(video).all():
        raise ValueError("expected video with finite values, got NaN or inf")
    x = video.detach().to("cpu", torch.float32)
    # Samples from a diffusion model overshoot the range a little; clamping is the usual convention.
    x = ((x - low) / (high - low)).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1, -1)
    return einops.rearrange(x, "c t h w -> t h w c").contiguous().numpy()


def _check_video(video: object) -> torch.Tensor:
    video = check_tensor(video, "video", "(c, t, h, w)")
    if video.shape[0] not in (1, 3):
        raise ValueError(f"expected video of shape (c, t, h, w) with c in {{1, 3}}, got {tuple(video.shape)}")
    return video


def _atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_name)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(tmp)
        follow_umask(tmp)  # mkstemp made it 0600; outputs follow the umask
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _frame_rate(fps: float) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise TypeError(f"expected fps to be a positive number, got {fps!r}")
    if not (fps > 0 and np.isfinite(float(fps))):
        raise ValueError(f"expected fps to be a positive finite number, got {fps!r}")
    # NTSC-style rates (29.97 = 30000/1001) survive the limit exactly.
    return Fraction(fps).limit_denominator(1001 * 1000)


def _encode(
    tmp: str,
    container_format: str,
    frames: list[av.VideoFrame],
    codec: str,
    pix_fmt: str,
    rate: Fraction,
    width: int,
    height: int,
    options: dict[str, str],
) -> None:
    with av.open(tmp, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        for i, frame in enumerate(frames):
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush: x264 holds back frames for lookahead


def _gif_frames(rgb: np.ndarray) -> list[av.VideoFrame]:
    """Quantise ``(t, h, w, 3)`` uint8 to one shared palette, as PyAV ``pal8`` frames."""
    t, h, w, _ = rgb.shape
    # A vertical mosaic of (a subsample of) all frames: the palette sees every colour of the clip.
    step = max(1, t // 32)
    mosaic = Image.fromarray(einops.rearrange(rgb[::step], "t h w c -> (t h) w c"))
    palette_image = mosaic.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = np.asarray(palette_image.getpalette(), dtype=np.uint8)[: 256 * 3].reshape(-1, 3)
    argb = np.zeros((256, 4), dtype=np.uint8)
    argb[:, 0] = 255
    argb[: len(palette), 1:] = palette
    frames = []
    for image in rgb:
        index = Image.fromarray(image).quantize(palette=palette_image, dither=Image.Dither.NONE)
        frames.append(av.VideoFrame.from_ndarray((np.asarray(index), argb), format="pal8"))
    return frames


def write_video(
    path: str | os.PathLike,
    video: torch.Tensor,
    fps: float,
    *,
    value_range: Sequence[float] = (-1.0, 1.0),
) -> Path:
    """Write a video tensor to ``path`` (``.mp4`` or ``.gif``) and return the path.

    ``video`` is ``(c, t, h, w)`` float with ``c`` in {1, 3}; values in ``value_range`` map linearly
    to 0..255 (values outside are clamped); one channel is written as gray RGB. The file decodes to
    exactly ``t`` frames of ``h x w`` pixels (see the module docstring for odd sizes in mp4).
    """
    video = _check_video(video)
    rate = _frame_rate(fps)
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"expected a path ending in one of {VIDEO_SUFFIXES}, got {str(path)!r}")
    rgb = _to_uint8_rgb(video, value_range)  # (t, h, w, 3)
    t, h, w, _ = rgb.shape

    if suffix == ".mp4":
        pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"

        def write(tmp: str) -> None:
            frames = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in rgb]
            _encode(tmp, "mp4", frames, "libx264", pix_fmt, rate, w, h, {"crf": _X264_CRF})

    else:

        def write(tmp: str) -> None:
            _encode(tmp, "gif", _gif_frames(rgb), "gif", "pal8", rate, w, h, {})

    return _atomic_write(path, write)


def save_frame_grid(
    path: str | os.PathLike,
    video: torch.Tensor,
    *,
    value_range: Sequence[float] = (-1.0, 1.0),
    pad: int = 2,
) -> Path:
    """Save the frames of one video ``(c, t, h, w)`` (one row) or a batch ``(b, c, t, h, w)``
    (``b`` rows of ``t`` frames) as a PNG and return the path.

    Frames are separated and framed by ``pad`` black pixels, so the image is
    ``(b * h + (b + 1) * pad)`` pixels high and ``(t * w + (t + 1) * pad)`` wide (``b = 1`` for a
    single video), the layout of torchvision's ``make_grid``.
    """
    if isinstance(video, torch.Tensor) and video.ndim == 4:
        video = einops.rearrange(video, "c t h w -> 1 c t h w")
    video = check_tensor(video, "video", "(b, c, t, h, w)")
    if video.shape[1] not in (1, 3):
        raise ValueError(
            f"expected video of shape (b, c, t, h, w) or (c, t, h, w) with c in {{1, 3}}, got {tuple(video.shape)}"
        )
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"expected pad to be a non-negative int, got {pad!r}")
    if Path(path).suffix.lower() != ".png":
        raise ValueError(f"expected a path ending in .png, got {str(path)!r}")
    b, _, t, h, w = video.shape
    rows = _to_uint8_rgb(einops.rearrange(video, "b c t h w -> c (b t) h w"), value_range)
    rows = einops.rearrange(rows, "(b t) h w c -> b t h w c", b=b)
    grid = np.zeros((b * h + (b + 1) * pad, t * w + (t + 1) * pad, 3), dtype=np.uint8)
    for i in range(b):
        for j in range(t):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = rows[i, j]
    return _atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))


def read_video(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Decode every frame of the first video stream of ``path`` with PyAV.

    Returns ``(frames, timestamps, fps)``: frames uint8 ``(t, h, w, c)`` RGB (``c = 3``),
    presentation timestamps in seconds ``(t,)`` float64, and the average frame rate over the clip,
    ``(t - 1) / (timestamps[-1] - timestamps[0])`` (the container's nominal rate for a single
    frame; for GIF this reflects the centisecond delays actually stored).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file with no decodable
    video frames (the PyAV error is chained).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {str(path)!r}")
    frames, times = [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"no video stream in {str(path)!r}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            nominal = stream.average_rate or stream.guessed_rate
            for i, frame in enumerate(container.decode(stream)):
                frames.append(frame_to_array(frame))
                # Some demuxers leave pts unset; fall back to the nominal rate.
                times.append(float(frame.time) if frame.pts is not None else i / float(nominal or 1))
    except av.error.FFmpegError as error:
        raise ValueError(f"could not decode video {str(path)!r}: {error}") from error
    if not frames:
        raise ValueError(f"no decodable video frames in {str(path)!r}")
    timestamps = torch.tensor(times, dtype=torch.float64)
    span = times[-1] - times[0]
    fps = (len(times) - 1) / span if len(times) > 1 and span > 0 else float(nominal or 0.0)
    return torch.from_numpy(np.stack(frames)), timestamps, fps


def write_samples(
    videos: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    stem: str,
    fps: float,
    value_range: Sequence[float] = (-1.0, 1.0),
    captions: Sequence[str] | None = None,
) -> list[Path]:
    """Write a batch of sampled videos ``(b, c, t, h, w)``: one ``.mp4`` each and one PNG frame grid.

    Files are ``{stem}_{i:02d}.mp4`` for each sample and ``{stem}_grid.png`` (one row per sample),
    under ``out_dir``. ``captions`` (one per sample), when given, are written beside them in
    ``{stem}_captions.txt``. Returns the paths written: the videos, then the grid, then the captions file if any.
    """
    videos = check_tensor(videos, "videos", "(b, c, t, h, w)")
    if captions is not None and len(captions) != videos.shape[0]:
        raise ValueError(f"expected one caption per sample ({videos.shape[0]}), got {len(captions)}")
    out = Path(out_dir)
    paths = [write_video(out / f"{stem}_{i:02d}.mp4", v, fps, value_range=value_range) for i, v in enumerate(videos)]
    paths.append(save_frame_grid(out / f"{stem}_grid.png", videos, value_range=value_range))
    if captions is not None:
        text = "".join(f"{stem}_{i:02d}.mp4\t{c}\n" for i, c in enumerate(captions))
        paths.append(_atomic_write(out / f"{stem}_captions.txt", lambda tmp: Path(tmp).write_text(text)))
    return paths
