"""MAC and FLOP accounting for any module call, with attention counted on every device.

Built on :class:`torch.utils.flop_counter.FlopCounterMode`, which intercepts aten ops and applies a
per-op formula. Two things are added:

1. **Formulas for the SDPA ops that have none.** On CPU,
   :func:`torch.nn.functional.scaled_dot_product_attention` dispatches to
   ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its ``_backward`` under autograd), for
   which PyTorch 2.13 registers no formula, so ``FlopCounterMode`` reports 0 for attention on CPU.
   Importing this module registers formulas for those ops (and for the MPS math kernel and the
   ``fused_attention_overrideable`` pair, which share the gap), once and only where no formula
   exists yet. The registration is global: a plain ``FlopCounterMode`` created after the import counts
   them too. The formulas follow PyTorch's own for the CUDA kernels, so counts agree across devices:
   forward ``QK^T`` plus ``AV``; backward recomputes ``QK^T`` and runs four gradient matmuls. Like
   PyTorch's, they ignore ``is_causal`` and masks (a causal kernel may skip about half the work).

2. **A report** (:class:`FlopReport`) with MACs next to FLOPs, a per-module and per-op breakdown, a
   text table, and optionally the backward pass apart from the forward.

Conventions (those of ``FlopCounterMode``, kept so numbers compare with the wider ecosystem):

* Only matmul-like ops are counted (``mm``, ``addmm``, ``bmm``, convolutions, attention kernels).
  Element-wise work (softmax, ``exp``, normalisation, activations, bias additions) is not.
* ``FLOPs = 2 * MACs``: every counted formula is a sum of multiply-accumulates, each worth one
  multiply and one add. ``macs`` is therefore exactly ``flops // 2``.
* Biases are ignored (``addmm`` counts as ``mm``; convolution bias is not counted).
* The papers' "GFLOPs" (EVDM, PVDM, CMD) are **forward MACs**: compare them with ``report.macs``.

FAVOR+ (performer-pytorch's ``softmax_kernel`` and ``linear_attention``) needs no formula of its
own: its einsums lower to ``bmm``, which the counter already counts, so FAVOR+ is counted by its real
operations. Those are (:func:`favor_attention_macs`): the feature maps ``phi(q)``, ``phi(k)``
(``n r d + m r d`` per head), the context ``phi(k)^T v`` (``m r d``), the output ``phi(q) context``
(``n r d``) and the normaliser ``phi(q) (phi(k)^T 1)`` (``n r``, a matrix-vector product). The
``exp``, the squared norms and the feature sums are element-wise and not counted, exactly as the
softmax of exact attention is not. One caveat of counting real operations: ``torch.einsum`` runs a
contraction over an axis of length 1 (``m = 1``, ``d = 1`` or ``r = 1``) as an element-wise product,
which the counter does not see, so such degenerate sizes count less than the formula.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import flop_counter as _fc
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from .validation import check_positive_int

__all__ = [
    "FlopCount",
    "FlopCounter",
    "FlopReport",
    "conv2d_macs",
    "count_flops",
    "favor_attention_macs",
    "linear_macs",
    "registered_attention_ops",
    "softmax_attention_macs",
]


# ---------------------------------------------------------------------------------------------
# Formulas for the SDPA kernels PyTorch leaves uncounted.
# ---------------------------------------------------------------------------------------------


def _sdpa_dims(q_shape, k_shape, v_shape) -> tuple[int, int, int, int, int]:
    """``(batch * query heads, n, m, d, d_v)`` from q ``(..., n, d)``, k ``(..., m, d)``, v ``(..., m, d_v)``.

    The leading axes of ``q`` are used because grouped-query attention broadcasts k/v heads to q's.
    """
    bk = math.prod(q_shape[:-2])
    return bk, q_shape[-2], k_shape[-2], q_shape[-1], v_shape[-1]


def _sdpa_forward_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    bk, n, m, d, dv = _sdpa_dims(query, key, value)
    return 2 * bk * n * m * (d + dv)  # q k^T, then probs v


def _sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    bk, n, m, d, dv = _sdpa_dims(query, key, value)
    # recompute q k^T (d); dP = dO v^T (dv); dV = P^T dO (dv); dQ = dS k (d); dK = dS^T q (d)
    return 2 * bk * n * m * (3 * d + 2 * dv)


_FORWARD_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_fused_attention_overrideable",
)
_BACKWARD_OPS = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def _register_missing_formulas() -> tuple[str, ...]:
    """Register our formulas for the ops above that exist in this torch and lack one.

    Idempotent: an op that already has a formula (PyTorch's own in a later release, or ours from a
    previous import) is left alone, since ``register_flop_formula`` refuses duplicates.
    """
    registered = []
    for names, formula in ((_FORWARD_OPS, _sdpa_forward_flops), (_BACKWARD_OPS, _sdpa_backward_flops)):
        for name in names:
            op = getattr(torch.ops.aten, name, None)
            if op is None:
                continue
            if op not in _fc.flop_registry:
                register_flop_formula(op)(formula)
            registered.append(f"aten.{name}")
    return tuple(registered)


_ATTENTION_OPS = _register_missing_formulas()


def registered_attention_ops() -> tuple[str, ...]:
    """Names of the SDPA ops this module made countable (present in this torch, with a formula)."""
    return _ATTENTION_OPS


# ---------------------------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one scope (the whole call or one module), with the ops that make them up.

    Attributes:
        flops: floating-point operations, ``2 * macs``.
        by_op: op name (``"aten.bmm"``) -> FLOPs.
    """

    flops: int
    by_op: Mapping[str, int] = field(default_factory=dict)

    @property
    def macs(self) -> int:
        """Multiply-accumulates, ``flops // 2`` (the papers' "GFLOPs" are these, in the forward)."""
        return self.flops // 2


@dataclass(frozen=True)
class FlopReport:
    """What :func:`count_flops` or :class:`FlopCounter` counted.

    Attributes:
        flops: total FLOPs of the counted pass (``2 * macs``).
        by_op: op name -> FLOPs over the whole pass.
        by_module: module name -> :class:`FlopCount`. Names are ``FlopCounterMode``'s: the class
            name of the outermost module called, then attribute names, e.g.
            ``"MixedSelfAttention.to_qkv"``; a parent's count includes its children's. Work done
            outside any module appears only in the totals.
        backward: the backward pass, counted apart, when it was requested; else None.
    """

    flops: int
    by_op: Mapping[str, int] = field(default_factory=dict)
    by_module: Mapping[str, FlopCount] = field(default_factory=dict)
    backward: FlopReport | None = None

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the counted pass, ``flops // 2``."""
        return self.flops // 2

    @classmethod
    def from_counts(cls, counts: Mapping[str, Mapping[Any, int]], backward: FlopReport | None = None):
        """Build a report from ``FlopCounterMode.get_flop_counts()`` (``{scope: {op: flops}}``)."""

        def scope(ops: Mapping[Any, int]) -> FlopCount:
            by_op = {str(op): int(v) for op, v in ops.items() if v}
            return FlopCount(sum(by_op.values()), by_op)

        total = scope(counts.get("Global", {}))
        modules = {name: scope(ops) for name, ops in counts.items() if name != "Global"}
        # A module that did no counted work (a backward it took no part in) is left out.
        modules = {name: count for name, count in modules.items() if count.flops}
        return cls(total.flops, total.by_op, modules, backward)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON): MACs and FLOPs of the total, each op and each module."""
        out: dict[str, Any] = {
            "macs": self.macs,
            "flops": self.flops,
            "by_op": dict(self.by_op),
            "by_module": {n: {"macs": c.macs, "flops": c.flops} for n, c in self.by_module.items()},
        }
        if self.backward is not None:
            out["backward"] = self.backward.as_dict()
        return out

    def table(self, depth: int | None = None, ops: bool = True) -> str:
        """A text table of MACs, FLOPs and share of the total per module (and per op if ``ops``).

        ``depth`` limits the module nesting shown (1 = the outermost module only).
        """
        rows: list[tuple[str, int]] = [("Total", self.flops)]
        if ops:
            rows += [(f" - {op}", v) for op, v in self.by_op.items()]
        for name in sorted(self.by_module):
            level = name.count(".") + 1
            if depth is not None and level > depth:
                continue
            pad = "  " * level
            count = self.by_module[name]
            rows.append((pad + name, count.flops))
            if ops:
                rows += [(f"{pad} - {op}", v) for op, v in count.by_op.items()]
        header = ("Module", "MACs", "FLOPs", "% total")
        body = [
            (label, _si(flops // 2), _si(flops), f"{100 * flops / self.flops:.1f}%" if self.flops else "-")
            for label, flops in rows
        ]
        text = _format_rows(header, body)
        if self.backward is not None:
            text += "\n\nBackward pass\n" + self.backward.table(depth=depth, ops=ops)
        return text

    def __str__(self) -> str:
        return self.table()


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{int(n)}"


def _format_rows(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


# ---------------------------------------------------------------------------------------------
# Counting.
# ---------------------------------------------------------------------------------------------


class FlopCounter:
    """Context manager form: count everything run inside, forward and backward alike.

    >>> with FlopCounter() as counter:
    ...     _ = torch.nn.Linear(4, 8)(torch.randn(2, 4))
    >>> counter.report().macs
    64

    Not reentrant (as ``FlopCounterMode``). Use :func:`count_flops` with ``backward=True`` to get the
    backward pass apart from the forward.
    """

    def __init__(self) -> None:
        self._mode = FlopCounterMode(display=False)

    def __enter__(self) -> FlopCounter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def counts(self) -> dict[str, dict[Any, int]]:
        """The raw ``{scope: {op: flops}}`` counted so far (a copy)."""
        return {k: dict(v) for k, v in self._mode.get_flop_counts().items()}

    def report(self) -> FlopReport:
        """The counts so far as a :class:`FlopReport`."""
        return FlopReport.from_counts(self.counts())


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from _tensors(item)


def _subtract(total: Mapping[str, Mapping[Any, int]], part: Mapping[str, Mapping[Any, int]]):
    return {scope: {op: v - part.get(scope, {}).get(op, 0) for op, v in ops.items()} for scope, ops in total.items()}


def count_flops(module_or_fn: Callable[..., Any], *args: Any, backward: bool = False, **kwargs: Any) -> FlopReport:
    """Run ``module_or_fn(*args, **kwargs)`` once and count its MACs and FLOPs.

    Args:
        module_or_fn: an ``nn.Module`` or any callable; modules called inside it are broken down in
            ``report.by_module``.
        *args: passed to the call.
        **kwargs: passed to the call (``backward`` is taken by this function).
        backward: also run the backward of the sum of every floating output that requires grad, and
            count it apart in ``report.backward``. ``report.macs`` stays the forward count.

    Returns:
        :class:`FlopReport`: ``.macs``, ``.flops``, ``.by_op``, ``.by_module``, ``.backward``, ``table()``.

    Raises:
        ValueError: ``backward=True`` but no output requires grad.
    """
    if not callable(module_or_fn):
        raise TypeError(f"expected a module or callable, got {type(module_or_fn).__name__}")
    counter = FlopCounter()
    with counter:
        out = module_or_fn(*args, **kwargs)
        forward = counter.counts()
        if backward:
            outs = [t for t in _tensors(out) if t.is_floating_point() and t.requires_grad]
            if not outs:
                raise ValueError(
                    "backward=True needs an output that requires grad: give the call parameters or "
                    "inputs with requires_grad=True"
                )
            torch.autograd.backward([t.sum() for t in outs])
    if not backward:
        return FlopReport.from_counts(forward)
    back = FlopReport.from_counts(_subtract(counter.counts(), forward))
    return FlopReport.from_counts(forward, backward=back)


# ---------------------------------------------------------------------------------------------
# Analytic counts (forward MACs; FLOPs are twice these).
# ---------------------------------------------------------------------------------------------


def softmax_attention_macs(b: int, heads: int, n: int, m: int, d: int, d_v: int | None = None) -> int:
    """Forward MACs of exact attention ``softmax(q k^T / sqrt(d)) v`` (the softmax itself is free).

    q ``(b, k, n, d)``, k ``(b, k, m, d)``, v ``(b, k, m, d_v)``: ``q k^T`` costs ``b k n m d`` and
    ``probs v`` costs ``b k n m d_v``; self-attention (``m = n``, ``d_v = d``) gives ``2 b k n^2 d``.
    """
    for name, value in (("b", b), ("heads", heads), ("n", n), ("m", m), ("d", d)):
        check_positive_int(value, name)
    d_v = d if d_v is None else check_positive_int(d_v, "d_v")
    return b * heads * n * m * (d + d_v)


def favor_attention_macs(b: int, heads: int, n: int, m: int, d: int, r: int) -> int:
    """Forward MACs of FAVOR+ (EVDM eq. 13, performer-pytorch) with ``r`` random features.

    Counted by its matmuls, per batch and head: features ``phi(q)`` ``n r d`` and ``phi(k)`` ``m r d``
    (projection onto the ``r`` features), context ``phi(k)^T v`` ``m r d``, output
    ``phi(q) context`` ``n r d``, normaliser ``phi(q) sum_m phi(k)`` ``n r``. Total
    ``b k (2 (n + m) r d + n r)``, linear in the sequence lengths. :func:`count_flops` on the
    ``"favor"`` backend gives exactly this for ``m, d, r >= 2`` (``torch.einsum`` runs a length-1
    contraction element-wise, which is not counted).
    """
    for name, value in (("b", b), ("heads", heads), ("n", n), ("m", m), ("d", d), ("r", r)):
        check_positive_int(value, name)
    features = (n + m) * r * d
    linear = m * r * d + n * r * d + n * r
    return b * heads * (features + linear)


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"expected {name} to be an int or a pair, got {value!r}")
    return pair  # type: ignore[return-value]


def conv2d_macs(
    b: int,
    in_channels: int,
    out_channels: int,
    h: int,
    w: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> int:
    """Forward MACs of ``nn.Conv2d`` on ``(b, c, h, w)``, bias not counted.

    Each output element ``(b, out_channels, h', w')`` is a dot product over ``in_channels / groups``
    channels times the kernel window: ``b out h' w' (in / groups) kh kw``, with
    ``h' = floor((h + 2 p - dil (kh - 1) - 1) / s) + 1`` (likewise ``w'``).
    """
    for name, value in (
        ("b", b),
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("h", h),
        ("w", w),
        ("groups", groups),
    ):
        check_positive_int(value, name)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
    (kh, kw), (sh, sw) = _pair(kernel_size, "kernel_size"), _pair(stride, "stride")
    (ph, pw), (dh, dw) = _pair(padding, "padding"), _pair(dilation, "dilation")
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"kernel {kh}x{kw} does not fit the padded input {h}x{w}")
    return b * out_channels * out_h * out_w * (in_channels // groups) * kh * kw


def linear_macs(n: int, in_features: int, out_features: int) -> int:
    """Forward MACs of ``nn.Linear(in_features, out_features)`` on ``n`` rows (all leading axes
    multiplied, e.g. ``b * n`` tokens), bias not counted: ``n * in_features * out_features``."""
    for name, value in (("n", n), ("in_features", in_features), ("out_features", out_features)):
        check_positive_int(value, name)
    return n * in_features * out_features
