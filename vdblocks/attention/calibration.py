"""A measured crossover between exact softmax attention and FAVOR+ for the current device.

EVDM's gate (eq. 14) switches to FAVOR+ when the token count ``L`` exceeds ``lambda * d``
(``lambda = 2``). That is a statement about the paper's GPU; on other hardware the exact kernel
(fused SDPA on CPU, flash attention on recent GPUs) stays faster well beyond ``2 d`` (see
docs/benchmarks/attention.md). :func:`favor_crossover` times both algorithms on the device at
doubling lengths and returns the length from which FAVOR+ is faster; ``MixedSelfAttention(
algorithm="calibrated")`` gates on that length instead of ``lambda * d``.

Results are cached in memory per ``(device, dtype, d, r, b k)`` (``r`` the random-feature count,
``b k`` the rows of attention per call), so a process measures each combination once (a few hundred milliseconds to a few seconds on a CPU).
Timing uses ``torch.utils.benchmark.Timer`` (which synchronises CUDA). The measurement runs the
kernels only, without projections: those cost the same under both algorithms.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
from torch.utils import benchmark

from ..validation import check_positive_int
from .dispatch import BackendSpec, attention

__all__ = [
    "CalibrationKey",
    "calibration_cache",
    "clear_calibration_cache",
    "batch_heads_bucket",
    "favor_crossover",
    "time_attention_algorithms",
]

DEFAULT_LENGTHS = tuple(2**i for i in range(5, 15))  # 32 .. 16384


@dataclass(frozen=True)
class CalibrationKey:
    """What the crossover depends on: device (``"cpu"``, ``"cuda:0"``), dtype, head dim, features,
    and the rows of attention per call (``b * k``, a power of two: the FAVOR+ feature tensors
    outgrow the caches as it grows, which moves the crossover for large head dims)."""

    device: str
    dtype: str
    dim_head: int
    nb_features: int
    batch_heads: int


_CACHE: dict[CalibrationKey, int] = {}
_LOCK = threading.Lock()


MAX_CALIBRATION_BATCH_HEADS = 16


def batch_heads_bucket(batch_heads: int) -> int:
    """The ``b * k`` a workload is calibrated at: the next power of two, at most 16 (beyond that the
    kernels' time per row no longer changes much, and calibrating would take long)."""
    check_positive_int(batch_heads, "batch_heads")
    return min(1 << (batch_heads - 1).bit_length(), MAX_CALIBRATION_BATCH_HEADS)


def calibration_cache() -> dict[CalibrationKey, int]:
    """A copy of the measured crossovers: ``{CalibrationKey: L}`` (``L`` = tokens from which FAVOR+ wins)."""
    with _LOCK:
        return dict(_CACHE)


def clear_calibration_cache() -> None:
    """Forget every measured crossover (the next calibrated call measures again)."""
    with _LOCK:
        _CACHE.clear()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def time_attention_algorithms(
    seq_len: int,
    projection_matrix: torch.Tensor,
    *,
    batch_heads: int = 4,
    min_run_time: float = 0.02,
    backend: BackendSpec | None = None,
) -> tuple[float, float]:
    """Seconds per call of exact attention and of FAVOR+ on ``(1, batch_heads, seq_len, d)`` inputs.

    ``projection_matrix (r, d)`` sets ``d``, the device and the dtype; the exact kernel goes through
    the dispatch (``backend`` as for :func:`~vdblocks.attention.attention`). Each figure is the
    median of ``torch.utils.benchmark.Timer.blocked_autorange(min_run_time=...)``.
    """
    check_positive_int(seq_len, "seq_len")
    check_positive_int(batch_heads, "batch_heads")
    d = projection_matrix.shape[-1]
    g = torch.Generator(device="cpu").manual_seed(seq_len)
    q, k, v = (
        torch.randn(1, batch_heads, seq_len, d, generator=g).to(projection_matrix.device, projection_matrix.dtype)
        for _ in range(3)
    )
    times = []
    for kwargs in ({"backend": backend}, {"backend": "favor", "projection_matrix": projection_matrix}):
        timer = benchmark.Timer(
            stmt="attention(q, k, v, **kwargs)",
            globals={"attention": attention, "q": q, "k": k, "v": v, "kwargs": kwargs},
            num_threads=torch.get_num_threads(),
        )
        with torch.no_grad():
            attention(q, k, v, **kwargs)  # warm-up: first-call allocations and kernel selection
            times.append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return times[0], times[1]


def favor_crossover(
    projection_matrix: torch.Tensor,
    *,
    lengths: tuple[int, ...] = DEFAULT_LENGTHS,
    batch_heads: int = 4,
    min_run_time: float = 0.02,
    backend: BackendSpec | None = None,
    refresh: bool = False,
) -> int:
    """The token count from which FAVOR+ is faster than exact attention here, measured and cached.

    Walks ``lengths`` upward timing both (:func:`time_attention_algorithms`) and stops once FAVOR+
    has won at two lengths in a row. The crossover is the geometric midpoint between the last
    length exact attention won and the first of that winning run, rounded up (at each measured
    length the faster algorithm is then chosen, up to timing noise between near-equal kernels).
    If FAVOR+ never wins, the result is ``2 * max(lengths)`` (exact attention everywhere measured);
    if it wins from the first length on, it is ``lengths[0]``.

    The key is ``(device, dtype, d, r)`` of ``projection_matrix (r, d)`` and ``batch_heads``; ``refresh=True`` measures
    again. Not callable on the meta device or inside a trace (there is nothing to time).
    """
    if not isinstance(projection_matrix, torch.Tensor) or projection_matrix.ndim != 2:
        raise ValueError("expected projection_matrix of shape (r, d)")
    if projection_matrix.device.type == "meta":
        raise ValueError("cannot time attention on the meta device; calibrate on a real device")
    lengths = tuple(sorted({check_positive_int(n, "length") for n in lengths}))
    if not lengths:
        raise ValueError("expected at least one length to measure")
    r, d = projection_matrix.shape
    key = CalibrationKey(
        _device_name(projection_matrix.device),
        str(projection_matrix.dtype).removeprefix("torch."),
        int(d),
        int(r),
        int(batch_heads),
    )
    with _LOCK:
        if not refresh and key in _CACHE:
            return _CACHE[key]
    last_softmax_win: int | None = None
    first_favor_win: int | None = None
    streak = 0
    for n in lengths:
        softmax_s, favor_s = time_attention_algorithms(
            n, projection_matrix, batch_heads=batch_heads, min_run_time=min_run_time, backend=backend
        )
        if favor_s < softmax_s:
            first_favor_win = n if streak == 0 else first_favor_win
            streak += 1
            if streak == 2:
                break
        else:
            last_softmax_win, first_favor_win, streak = n, None, 0
    if first_favor_win is None:
        crossover = 2 * lengths[-1]
    elif last_softmax_win is None:
        crossover = lengths[0]
    else:
        crossover = math.ceil(math.sqrt(last_softmax_win * first_favor_win))
    with _LOCK:
        _CACHE[key] = crossover
    return crossover
