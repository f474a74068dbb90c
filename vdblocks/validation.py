"""Boundary checks shared by every public block, public for your own blocks too.

``from vdblocks.validation import check_tensor`` gives a block of yours the errors the library's
blocks give.

Each check raises ``ValueError`` (wrong shape, value or device) or ``TypeError`` (wrong type or
dtype) with a message that names the expected layout in einops letters and what was received, e.g.
``expected x of shape (b, c, h, w) with c=64, got (2, 32, 8, 8)`` or
``expected x of shape (b, c, h, w) with dtype torch.float32 on cpu (the module's parameters), got
torch.float16 on cpu``.

* :func:`check_tensor`: type, rank, pinned axis sizes, dtype kind, empty axes and, with ``like=``,
  agreement of dtype and device with a module's parameters or another tensor (a dtype that differs
  under an active ``torch.autocast`` on the input's device is allowed: autocast makes it so);
* :func:`check_values`: data-dependent value checks of small conditioning tensors (timesteps,
  frame rates): NaN/inf and ranges. They read values, so they are skipped where no values exist
  (meta and fake tensors, ``torch.compile``/``torch.export`` tracing, ``vmap``): see
  :func:`values_available`;
* :func:`check_positive_int`, :func:`check_same_batch`.

Layouts are einops-style strings. ``"..."`` or ``"*name"`` stands for any number of axes (so
``"(b, c, *spatial)"`` takes rank 2 and up, ``"(b, ..., dim)"`` rank 2 and up with the last axis
``dim``); sizes of axes after it are counted from the end.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor

__all__ = [
    "check_tensor",
    "check_values",
    "check_positive_int",
    "check_same_batch",
    "values_available",
]

_is_batched = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)


_LAYOUTS: dict[str, tuple[int, int | None, dict[str, int]]] = {}


def _parse_layout(layout: str) -> tuple[int, int | None, dict[str, int]]:
    """``"(b, c, *spatial)"`` -> ``(3, 2, {"b": 0, "c": 1, "*spatial": 2})``: the number of named
    axes, the index of the variadic one (``...`` or ``*name``) if any, and each name's index.
    Memoised in a plain dict (layouts are a handful of literals and this runs on every forward;
    not ``functools.lru_cache``, which ``torch.compile`` warns about)."""
    parsed = _LAYOUTS.get(layout)
    if parsed is None:
        letters = tuple(s.strip() for s in layout.strip().strip("()").split(",") if s.strip())
        var = next((i for i, s in enumerate(letters) if s == "..." or s.startswith("*")), None)
        parsed = _LAYOUTS[layout] = (len(letters), var, {s: i for i, s in enumerate(letters)})
    return parsed


def _pinned(sizes: Mapping[str, int] | None) -> str:
    return " with " + ", ".join(f"{k}={v}" for k, v in sizes.items()) if sizes else ""


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # device types without autocast (meta, used for shape/cost tracing)
        return False


def _first_tensor(module: nn.Module, kind: str) -> torch.Tensor | None:
    # A depth-first walk over _parameters / _buffers: a few times cheaper than
    # next(module.parameters()), which matters on the forward path of small blocks.
    stack = [module]
    while stack:
        m = stack.pop()
        for t in getattr(m, kind).values():
            if t is not None:
                return t
        stack.extend(reversed([c for c in m._modules.values() if c is not None]))
    return None


def _reference(like: nn.Module | torch.Tensor, like_name: str | None) -> tuple[torch.Tensor | None, str]:
    """The tensor whose dtype and device an input must share, and how to name it in a message."""
    if isinstance(like, torch.Tensor):
        return like, f"as {like_name}" if like_name else "as the reference tensor"
    if isinstance(like, nn.Module):
        p = _first_tensor(like, "_parameters")
        if p is not None:
            return p, like_name or "the module's parameters"
        b = _first_tensor(like, "_buffers")
        if b is not None:
            return b, like_name or "the module's buffers"
        return None, ""
    raise TypeError(f"like must be an nn.Module or a torch.Tensor, got {type(like).__name__}")


def check_tensor(
    x: object,
    name: str,
    layout: str,
    *,
    sizes: Mapping[str, int] | None = None,
    floating: bool = True,
    numeric: bool = False,
    ndim: int | None = None,
    min_ndim: int | None = None,
    like: nn.Module | torch.Tensor | None = None,
    like_name: str | None = None,
    match_dtype: bool = True,
    autocast: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a tensor laid out as ``layout`` (e.g. ``"(b, c, h, w)"``).

    Args:
        sizes: pins named axes (``{"c": 64}``).
        floating: demand a real floating-point dtype (complex, integer and bool raise ``TypeError``).
        numeric: with ``floating=False``, still demand an integer or real floating dtype (bool and
            complex raise ``TypeError``): conditioning scalars such as timesteps.
        ndim: overrides the rank implied by ``layout`` (for layouts with optional axes).
        min_ndim: with a variadic layout, the smallest rank accepted (default: the named axes).
        like: a module (its first parameter, else buffer) or a tensor whose device ``x`` must share
            (``ValueError``) and, with ``match_dtype``, its dtype (``TypeError``). A module without
            parameters or buffers imposes nothing.
        like_name: how the message names ``like`` (default: "the module's parameters" or the tensor).
        autocast: accept a dtype that differs from ``like``'s while ``torch.autocast`` is active on
            ``x``'s device (inputs there legitimately come in the autocast dtype).

    Empty axes raise ``ValueError``. Returns ``x`` so the call can be used inline.
    """
    count, var, index = _parse_layout(layout)
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"expected {name} to be a torch.Tensor of shape {layout}{_pinned(sizes)}, got {type(x).__name__}"
        )
    rank = x.ndim
    if ndim is not None:
        if rank != ndim:
            raise ValueError(
                f"expected {name} of shape {layout}{_pinned(sizes)} (rank {ndim}), "
                f"got shape {tuple(x.shape)} (rank {rank})"
            )
    elif var is None:
        if rank != count:
            raise ValueError(
                f"expected {name} of shape {layout}{_pinned(sizes)} (rank {count}), "
                f"got shape {tuple(x.shape)} (rank {rank})"
            )
    else:
        lowest = count - 1 if min_ndim is None else min_ndim
        if rank < lowest:
            raise ValueError(
                f"expected {name} of shape {layout}{_pinned(sizes)} (rank >= {lowest}), "
                f"got shape {tuple(x.shape)} (rank {rank})"
            )
    if sizes:
        shape = x.shape
        for letter, size in sizes.items():
            axis = index[letter]
            if var is not None and axis > var and ndim is None:
                axis -= count  # counted from the end, after the variadic axes
            if shape[axis] != size:
                raise ValueError(f"expected {name} of shape {layout}{_pinned(sizes)}, got {tuple(shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"expected {name} of shape {layout} to have a floating-point dtype, got {x.dtype}")
    if numeric and (x.dtype == torch.bool or x.is_complex()):
        raise TypeError(
            f"expected {name} of shape {layout} to have an integer or real floating-point dtype, got {x.dtype}"
        )
    if x.numel() == 0:
        raise ValueError(f"expected {name} of shape {layout} with no empty axis, got {tuple(x.shape)}")
    if like is not None:
        ref, source = _reference(like, like_name)
        if ref is not None:
            other = "the module" if isinstance(like, nn.Module) else (like_name or "the reference tensor")
            if x.device != ref.device:
                what = f"with dtype {ref.dtype} on {ref.device}" if match_dtype else f"on {ref.device}"
                raise ValueError(
                    f"expected {name} of shape {layout} {what} ({source}), got {x.dtype} on {x.device}; "
                    f"move {name} or {other}"
                )
            if match_dtype and x.dtype != ref.dtype and not (autocast and _autocasting(x.device.type)):
                raise TypeError(
                    f"expected {name} of shape {layout} with dtype {ref.dtype} on {ref.device} ({source}), "
                    f"got {x.dtype} on {x.device}; cast {name} or {other}"
                    + (", or run under torch.autocast" if autocast else "")
                )
    return x


def values_available(x: torch.Tensor) -> bool:
    """Whether ``x`` holds values a check may read without breaking a trace.

    False on the meta device, for fake tensors (``FakeTensorMode``, ``torch.export``), while
    ``torch.compile``/``torch.export``/``torch.jit.trace`` trace, and for ``vmap``'s batched
    tensors: there a data-dependent check would fail or be baked into the graph.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if x.device.type == "meta" or isinstance(x, FakeTensor):
        return False
    if _is_batched is not None and _is_batched(x):
        return False
    return True


def _fmt(v: float) -> str:
    return f"{v:g}"


def check_values(
    x: torch.Tensor,
    name: str,
    layout: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check the values of a small conditioning tensor: finite, ``>= low`` (``> low`` with
    ``low_inclusive=False``) and ``<= high``; ``ValueError`` lists the offending values.

    Call after :func:`check_tensor`. Reads the values (one device sync on a GPU), so meant for
    conditioning scalars such as timesteps, not for activations; skipped where
    :func:`values_available` says there are none. Returns ``x``.
    """
    if not values_available(x):
        return x
    bad = None
    if finite and x.is_floating_point():
        bad = ~torch.isfinite(x)
    if low is not None:
        below = x < low if low_inclusive else x <= low
        bad = below if bad is None else bad | below
    if high is not None:
        above = x > high
        bad = above if bad is None else bad | above
    if bad is not None and bool(bad.any()):
        if low is not None and high is not None:
            what = f"in {'[' if low_inclusive else '('}{_fmt(low)}, {_fmt(high)}]"
        elif low is not None:
            what = f"{'>=' if low_inclusive else '>'} {_fmt(low)}"
        elif high is not None:
            what = f"<= {_fmt(high)}"
        else:
            what = ""
        noun = "values" if name.endswith("values") else f"{name} values"  # "fps values", not "values values"
        kind = f"finite {noun}" if finite else noun
        shown = x[bad].flatten()[:8].tolist()
        raise ValueError(f"expected {name} of shape {layout} with {kind} {what}".rstrip() + f", got {shown}")
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
        raise ValueError(f"expected {a_name} and {b_name} to share the batch size b, got {a.shape[0]} and {b.shape[0]}")
