"""Mixed-precision helpers: one autocast context and one gradient scaler for every device.

``precision`` is one of ``"fp32"`` (no autocast), ``"bf16"`` (autocast to bfloat16 on CPU, and on CUDA
where the GPU supports it) or ``"fp16"`` (autocast to float16 with loss scaling, CUDA only: float16
without a scaler underflows its gradients, and PyTorch's CPU float16 autocast is slow and patchy).
Parameters and optimizer state always stay in float32; only the forward pass runs in low precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = [
    "PRECISIONS",
    "check_precision",
    "autocast_dtype",
    "autocast",
    "make_grad_scaler",
]

PRECISIONS = ("fp32", "bf16", "fp16")

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> str:
    """Check that ``precision`` is known and runs on ``device``; return it.

    Raises ``ValueError`` naming the reason: an unknown name, ``"fp16"`` off CUDA, or ``"bf16"`` on a
    GPU without bfloat16 support.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision to be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"precision 'fp16' needs a CUDA device (it relies on a GradScaler), got device "
            f"{device}; use 'bf16' or 'fp32' on {device.type}"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision 'bf16' is not supported by this GPU; use 'fp16' (with loss scaling) or 'fp32'")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None`` for ``"fp32"``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision to be one of {PRECISIONS}, got {precision!r}")
    return _DTYPES[precision]


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed forward pass under ``precision`` on ``device`` (a no-op for ``"fp32"``).

    Usage::

        with autocast("bf16", "cpu"):
            loss = loss_fn(model, batch)
    """
    check_precision(precision, device)
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def make_grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler:
    """A ``GradScaler`` that is enabled only for ``"fp16"`` (on CUDA).

    A disabled scaler passes ``scale``/``unscale_``/``step``/``update`` straight through, so the
    training step has one code path for every precision.
    """
    device = torch.device(device)
    check_precision(precision, device)
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
