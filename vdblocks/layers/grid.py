"""ETC's frame grid: a video laid out as one image, and the spatial-temporal mixed embedding.

ETC (section 4.1) drops temporal attention altogether: the ``t`` frames of a video are tiled into a
``rows x cols`` grid so that a plain image model (spatial attention and 2D convolutions) sees the
whole video at once, and a fixed position embedding tells it where the frame boundaries are.

* :func:`video_to_grid` / :func:`grid_to_video`: the temporal-to-spatial transfer of eq. 1 and its
  exact inverse;
* :func:`grid_for`: a near-square grid for any frame count;
* :class:`SpatialTemporalMixedEmbedding`: the spatial-temporal mixed embedding (ME) of eqs. 2-4.

Frame order (eq. 1). ``I(x, y) = V^{floor(x / h) + floor(y / w) * sqrt(T)}(x mod h, y mod w)`` with
``x`` the row coordinate (it is reduced modulo the frame height ``h``). The frame in grid cell
(row ``r``, column ``q``) is therefore ``t = r + q * rows``: frames fill the grid **column by
column** (``b c (gc gr) h w -> b c (gr h) (gc w)``). We follow that literal reading by default
(``order="column"``), since a model trained with the paper's layout expects it; ``order="row"``
(``t = r * cols + q``, the reading order of the figures) is offered for code that tiles row-major.
For a non-square grid the factor ``sqrt(T)`` of eq. 1 becomes ``rows``, the number of cells along
``x``, which keeps ``t`` a bijection between frames and cells.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from einops import rearrange, repeat
from torch._subclasses.fake_tensor import FakeTensor

from ..validation import check_positive_int, check_tensor

__all__ = ["video_to_grid", "grid_to_video", "grid_for", "SpatialTemporalMixedEmbedding"]

_ORDERS = ("column", "row")
_PATTERNS = {
    # frame index t = r + q * rows (eq. 1 read literally) or t = r * cols + q
    "column": "b c (gc gr) h w -> b c (gr h) (gc w)",
    "row": "b c (gr gc) h w -> b c (gr h) (gc w)",
}


def _check_grid(grid: object) -> tuple[int, int]:
    if isinstance(grid, torch.Tensor) or not isinstance(grid, Sequence) or isinstance(grid, str):
        raise TypeError(f"expected grid to be a pair (rows, cols) of positive ints, got {grid!r}")
    if len(grid) != 2:
        raise ValueError(f"expected grid to be a pair (rows, cols) of positive ints, got {grid!r}")
    rows = check_positive_int(grid[0], "grid rows")
    cols = check_positive_int(grid[1], "grid cols")
    return rows, cols


def _check_order(order: str) -> str:
    if order not in _ORDERS:
        raise ValueError(f"expected order to be one of {_ORDERS}, got {order!r}")
    return order


def _check_divisible(x: torch.Tensor, name: str, rows: int, cols: int) -> tuple[int, int]:
    height, width = x.shape[-2:]
    if height % rows or width % cols:
        raise ValueError(
            f"expected {name} of shape (b, c, rows*h, cols*w) with rows={rows}, cols={cols}: "
            f"height divisible by rows and width by cols, got {tuple(x.shape)}"
        )
    return height // rows, width // cols


def grid_for(num_frames: int) -> tuple[int, int]:
    """A near-square ``(rows, cols)`` grid with room for ``num_frames`` frames.

    ``cols = ceil(sqrt(t))`` and ``rows = ceil(t / cols)``: a square ``sqrt(t) x sqrt(t)`` grid when
    ``t`` is a perfect square (the paper's case, eq. 1), otherwise the fewest cells whose longer side
    is ``ceil(sqrt(t))``. So ``rows <= cols <= rows + 1`` and fewer than ``cols`` cells stay empty
    (e.g. 6 -> (2, 3), 8 -> (3, 3), 2 -> (1, 2)); :func:`video_to_grid` pads those.
    """
    check_positive_int(num_frames, "num_frames")
    cols = math.isqrt(num_frames - 1) + 1  # ceil(sqrt(t))
    rows = -(-num_frames // cols)
    return rows, cols


def video_to_grid(
    video: torch.Tensor,
    grid: tuple[int, int],
    *,
    order: str = "column",
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Tile the frames of a video into one image (ETC eq. 1, temporal-to-spatial transfer).

    Shapes: ``video (b, c, t, h, w)``, ``grid = (rows, cols)`` -> ``(b, c, rows*h, cols*w)``.
    Frame ``t`` goes to grid cell ``(t % rows, t // rows)`` (``order="column"``, eq. 1 read
    literally; see the module docstring) or ``(t // cols, t % cols)`` (``order="row"``).

    A video with fewer frames than cells (``t < rows*cols``) has its remaining cells filled with
    ``pad_value``; :func:`grid_to_video` drops them again given ``num_frames``. More frames than
    cells raise ``ValueError``. Any dtype is accepted: this is a pure rearrangement.
    """
    check_tensor(video, "video", "(b, c, t, h, w)", floating=False)
    rows, cols = _check_grid(grid)
    order = _check_order(order)
    b, c, t, h, w = video.shape
    if t > rows * cols:
        raise ValueError(
            f"expected video of shape (b, c, t, h, w) with t <= rows*cols = {rows * cols} for "
            f"grid ({rows}, {cols}), got {tuple(video.shape)}"
        )
    if t < rows * cols:
        pad = video.new_full((b, c, rows * cols - t, h, w), pad_value)
        video = torch.cat([video, pad], dim=2)  # b c (rows cols) h w
    return rearrange(video, _PATTERNS[order], gr=rows, gc=cols)  # b c (rows h) (cols w)


def grid_to_video(
    image: torch.Tensor,
    grid: tuple[int, int],
    num_frames: int | None = None,
    *,
    order: str = "column",
) -> torch.Tensor:
    """Cut a frame-grid image back into a video: the exact inverse of :func:`video_to_grid`.

    Shapes: ``image (b, c, rows*h, cols*w)``, ``grid = (rows, cols)`` -> ``(b, c, num_frames, h, w)``.
    ``num_frames`` (default ``rows*cols``) keeps the first frames in eq. 1's order and drops the
    padding cells; it may not exceed ``rows*cols``. ``order`` must match the one used to tile.
    """
    check_tensor(image, "image", "(b, c, rows*h, cols*w)", floating=False)
    rows, cols = _check_grid(grid)
    order = _check_order(order)
    cells = rows * cols
    num_frames = cells if num_frames is None else check_positive_int(num_frames, "num_frames")
    if num_frames > cells:
        raise ValueError(f"expected num_frames <= rows*cols = {cells} for grid ({rows}, {cols}), got {num_frames}")
    _check_divisible(image, "image", rows, cols)
    lhs, rhs = _PATTERNS[order].split(" -> ")
    video = rearrange(image, f"{rhs} -> {lhs}", gr=rows, gc=cols)  # b c (rows cols) h w
    return video[:, :, :num_frames]  # b c t h w


@functools.lru_cache(maxsize=16)
def _mixed_embedding(
    channels: int,
    theta: float,
    order: str,
    height: int,
    width: int,
    rows: int,
    cols: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    # Built outside inference mode and without autograd so one cached constant serves every call.
    with torch.inference_mode(False), torch.no_grad():
        work = torch.float64 if dtype == torch.float64 else torch.float32
        h, w = height // rows, width // cols
        n_sp = channels // 2  # floor(C/2) spatial channels, eq. 4
        n_te = channels - n_sp
        # eqs. 2-3: channel c of a half has frequency theta^(-c / C), C the total channel count
        freq_sp = theta ** (-torch.arange(n_sp, dtype=work, device=device) / channels)  # c
        freq_te = theta ** (-torch.arange(n_te, dtype=work, device=device) / channels)  # c
        x = torch.arange(h, dtype=work, device=device)  # in-frame row
        y = torch.arange(w, dtype=work, device=device)  # in-frame column
        sp = torch.sin(freq_sp[:, None, None] * x[None, :, None]) + torch.cos(
            freq_sp[:, None, None] * y[None, None, :]
        )  # c h w
        sp = repeat(sp, "c h w -> c (gr h) (gc w)", gr=rows, gc=cols)
        r = torch.arange(rows, device=device)[:, None]
        q = torch.arange(cols, device=device)[None, :]
        t = (r + q * rows if order == "column" else r * cols + q).to(work)  # rows cols, eq. 1
        te = torch.sin(freq_te[:, None, None] * t) + torch.cos(freq_te[:, None, None] * t)  # c rows cols
        te = repeat(te, "c gr gc -> c (gr h) (gc w)", h=h, w=w)
        return torch.cat([sp, te], dim=0).to(dtype)  # c (rows h) (cols w)


class SpatialTemporalMixedEmbedding(nn.Module):
    """ETC's spatial-temporal mixed embedding (ME, eqs. 2-4), added to a frame-grid image.

    Shapes: ``x (b, c, rows*h, cols*w)`` with ``c = channels`` and ``grid = (rows, cols)`` ->
    ``x + embedding`` of the same shape. With ``C = channels``, ``S = floor(C/2)`` and ``Θ = theta``:

    * channels ``c < S`` (eq. 2): ``sin(x / Θ^(c/C)) + cos(y / Θ^(c/C))``, ``(x, y)`` the row and
      column *inside the frame*; the same in every frame (appendix C.3, step 1);
    * channels ``c >= S`` (eqs. 3-4): ``sin(t / Θ^(c'/C)) + cos(t / Θ^(c'/C))``, ``c' = c - S``,
      ``t`` the frame index of the cell under eq. 1's order; constant inside a frame.

    Readings. ``C`` in the exponents is the total channel count (the text: "C stand[s] the total"),
    not the size of each half, and ``c`` restarts at 0 in the temporal half (eq. 4 indexes
    ``c - floor(C/2)``). Eq. 3 writes the temporal position as ``x * X + y`` over the grid cell
    coordinates (eq. 21); we use eq. 1's frame index ``t`` instead, which is the same kind of
    linear cell index but orders the cells exactly as the frames were tiled, so that frame ``t``
    of any video carries the same temporal code whatever the grid shape. Cells left empty by
    :func:`video_to_grid` get the indices after the last frame.

    Collisions (appendix C.3). Summing the two embeddings on the same channels (eq. 22) lets
    distinct positions share a vector; splitting them over the channels (eq. 4) removes that. We
    checked the literal eqs. 2-4 numerically in float64 (C from 4 to 320, frames up to 64x64, up to
    256 frames; two positions differ in their frame or in their in-frame position, so the spatial and
    temporal halves can be checked apart): every grid position keeps a distinct vector, so no fix
    is needed. Dividing by the per-half channel count instead of ``C`` is no better (at C = 8 and
    320 it brings the closest pair closer). Margins shrink with few channels and large frames
    (C = 4, 16x16 frames: the closest pair is a few thousandths apart, fine in float32, marginal
    in half precision); with ``C < 4`` (one or no spatial channel) positions inside a frame are no
    longer reliably told apart, and with ``C = 1`` not at all.

    The embedding has no parameters and no buffers, so one module serves any frame count and
    resolution. It is computed in float32 (float64 for float64 inputs) as the paper keeps its
    embeddings in FP32 (appendix E.2), cast to ``x``'s dtype, and cached per (size, grid, device,
    dtype) as a constant that never requires grad.
    """

    def __init__(self, channels: int, theta: float = 10000.0, *, order: str = "column") -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
            raise ValueError(f"expected theta to be a number > 1, got {theta!r}")
        self.theta = float(theta)
        self.order = _check_order(order)

    def embedding(
        self,
        height: int,
        width: int,
        grid: tuple[int, int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The embedding of a ``height x width`` grid image: ``-> (channels, height, width)``.

        ``height = rows * h`` and ``width = cols * w`` are the whole grid image's sizes. The result
        is a cached constant: clone it before modifying it in place.
        """
        check_positive_int(height, "height")
        check_positive_int(width, "width")
        rows, cols = _check_grid(grid)
        if height % rows or width % cols:
            raise ValueError(
                f"expected a grid image of size (rows*h, cols*w) with rows={rows}, cols={cols}, "
                f"got height={height}, width={width}"
            )
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        # Under torch.compile the trace itself is the cache; dynamo would warn about lru_cache. Under a
        # FakeTensorMode (shape-only MAC counts) the table is a fake tensor, which must not be cached
        # for the real calls that follow.
        uncached = torch.compiler.is_compiling() or isinstance(torch.empty(0), FakeTensor)
        build = _mixed_embedding.__wrapped__ if uncached else _mixed_embedding
        return build(self.channels, self.theta, self.order, height, width, rows, cols, device, dtype)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, rows*h, cols*w)", sizes={"c": self.channels})
        rows, cols = _check_grid(grid)
        _check_divisible(x, "x", rows, cols)
        emb = self.embedding(x.shape[-2], x.shape[-1], (rows, cols), device=x.device, dtype=x.dtype)
        return x + emb  # b c (rows h) (cols w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, theta={self.theta}, order={self.order!r}"
