"""Boundary checks shared by every public block.

Each check raises ``ValueError`` (wrong shape or value) or ``TypeError`` (wrong type or dtype) with a
message that names the expected layout in einops letters and what was received, e.g.
``expected x of shape (b, c, h, w) with c=64, got (2, 32, 8, 8)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["check_tensor", "check_positive_int", "check_same_batch"]


def _layout_letters(layout: str) -> list[str]:
    return [s.strip() for s in layout.strip().strip("()").split(",") if s.strip()]


def check_tensor(
    x: object,
    name: str,
    layout: str,
    *,
    sizes: Mapping[str, int] | None = None,
    floating: bool = True,
    ndim: int | None = None,
) -> torch.Tensor:
    """Check that ``x`` is a tensor laid out as ``layout`` (e.g. ``"(b, c, h, w)"``).

    ``sizes`` pins named axes (``{"c": 64}``); ``floating`` demands a floating-point dtype.
    ``ndim`` overrides the rank implied by ``layout`` (for layouts with optional axes).
    Returns ``x`` so the call can be used inline.
    """
    letters = _layout_letters(layout)
    expected_rank = len(letters) if ndim is None else ndim
    pinned = ""
    if sizes:
        pinned = " with " + ", ".join(f"{k}={v}" for k, v in sizes.items())
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"expected {name} to be a torch.Tensor of shape {layout}{pinned}, got {type(x).__name__}"
        )
    if x.ndim != expected_rank:
        raise ValueError(
            f"expected {name} of shape {layout}{pinned} (rank {expected_rank}), "
            f"got shape {tuple(x.shape)} (rank {x.ndim})"
        )
    if sizes:
        for letter, size in sizes.items():
            axis = letters.index(letter)
            if x.shape[axis] != size:
                raise ValueError(
                    f"expected {name} of shape {layout}{pinned}, got {tuple(x.shape)}"
                )
    if floating and not x.is_floating_point():
        raise TypeError(
            f"expected {name} of shape {layout} to have a floating-point dtype, got {x.dtype}"
        )
    if any(s == 0 for s in x.shape):
        raise ValueError(f"expected {name} of shape {layout} with no empty axis, got {tuple(x.shape)}")
    return x


def check_positive_int(value: object, name: str) -> int:
    """Check that ``value`` is a positive ``int`` (bools rejected) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} to be a positive int, got {value!r}")
    if value <= 0:
        raise ValueError(f"expected {name} to be a positive int, got {value}")
    return value


def check_same_batch(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Check that two tensors share their first (batch) axis."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"expected {a_name} and {b_name} to share the batch size b, "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
