"""Classifier-free guidance (Ho & Salimans 2022): one batched model call for both conditions.

Eq. 6 of the paper writes ``eps~ = (1 + w) eps(x, c) - w eps(x, null)``; we use the guidance
scale ``s = 1 + w`` as diffusers and most codebases do:
``eps~ = eps(x, null) + s (eps(x, c) - eps(x, null))``, so ``s = 1`` is the plain conditional model
and ``s = 0`` the unconditional one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from einops import rearrange

__all__ = ["Condition", "guided_eps", "cfg_model_fn"]

# labels (b,), embeddings (b, n, d), or keyword tensors for the model (e.g. {"labels": ..., "fps": ...})
Condition = torch.Tensor | Mapping[str, torch.Tensor]
# model(x (b, ...), t (b,), cond) for a tensor condition, model(x, t, **cond) for a mapping
CondModelFn = Callable[..., torch.Tensor]


def _pair_tensor(c: object, n: object, name: str, batch: int) -> torch.Tensor:
    """``cat([c, n])`` along the batch, with a batch-1 null condition expanded to ``batch``."""
    for value, which in ((c, "cond"), (n, "null_cond")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"expected {which}{name} to be a torch.Tensor of shape (b, ...), got {type(value).__name__}"
            )
        if value.ndim < 1:
            raise ValueError(f"expected {which}{name} of shape (b, ...), got a 0-d tensor")
    if c.shape[0] != batch:
        raise ValueError(f"expected cond{name} of shape (b, ...) with b={batch} like x_t, got {tuple(c.shape)}")
    if n.shape[0] == 1 and batch > 1:
        n = n.expand(batch, *n.shape[1:])
    if n.shape != c.shape:
        raise ValueError(
            f"expected null_cond{name} of shape {tuple(c.shape)} like cond (or with b=1), got {tuple(n.shape)}"
        )
    return torch.cat([c, n.to(c.dtype)], dim=0)  # (2 b) ...


def guided_eps(
    model_fn: CondModelFn,
    x_t: torch.Tensor,
    t: torch.Tensor | int,
    cond: Condition,
    null_cond: Condition,
    scale: float,
) -> torch.Tensor:
    """Guided noise prediction ``eps(x, null) + scale * (eps(x, c) - eps(x, null))``.

    Runs the model once on a batch of ``2b``: ``x_t`` twice, ``t`` twice, and the conditions
    stacked as ``[cond; null_cond]`` along the batch axis. ``cond`` is a tensor ``(b, ...)``
    (class labels ``(b,)``, text embeddings ``(b, n, d)``), passed positionally as
    ``model_fn(x, t, cond)``, or a mapping of such tensors passed as keywords
    ``model_fn(x, t, **cond)``. ``null_cond`` has the same structure; each of its tensors may have
    batch 1 (one learned null embedding) and is then expanded to ``b``.

    Shapes: ``x_t (b, ...)``, ``t (b,)`` or an int -> ``(b, ...)`` like the model's output.
    """
    if not isinstance(x_t, torch.Tensor) or x_t.ndim < 1:
        raise TypeError(f"expected x_t to be a torch.Tensor of shape (b, ...), got {type(x_t).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"expected scale to be a finite float, got {scale!r}")
    b = x_t.shape[0]
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.full((b,), t, dtype=torch.long, device=x_t.device)
    if not isinstance(t, torch.Tensor) or t.shape != (b,):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"expected t of shape (b,) with b={b}, got {got}")

    x_in = torch.cat([x_t, x_t], dim=0)  # (2 b) ...
    t_in = torch.cat([t, t], dim=0)  # (2 b)
    if isinstance(cond, Mapping):
        if not isinstance(null_cond, Mapping) or set(cond) != set(null_cond):
            got = sorted(null_cond) if isinstance(null_cond, Mapping) else type(null_cond).__name__
            raise ValueError(f"expected null_cond to be a mapping with the keys of cond {sorted(cond)}, got {got}")
        kwargs = {k: _pair_tensor(cond[k], null_cond[k], f"[{k!r}]", b) for k in cond}
        out = model_fn(x_in, t_in, **kwargs)
    else:
        out = model_fn(x_in, t_in, _pair_tensor(cond, null_cond, "", b))
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != 2 * b:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"expected the model to return a tensor of shape (2b, ...) with 2b={2 * b}, got {got}")
    eps_cond, eps_null = rearrange(out, "(two b) ... -> two b ...", two=2)  # b ...
    return eps_null + scale * (eps_cond - eps_null)


def cfg_model_fn(
    model: CondModelFn, cond: Condition, null_cond: Condition, scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Turn a conditional model into the samplers' ``model_fn(x_t, t) -> prediction`` with guidance ``scale``.

    The same formula guides an epsilon, velocity or ``x_0`` model: each is affine in the others with
    coefficients both branches share.

    ``cond``/``null_cond`` are fixed for the whole sampling run (see :func:`guided_eps`).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"expected scale to be a finite float, got {scale!r}")
    if not callable(model):
        raise TypeError(f"expected model to be callable, got {type(model).__name__}")

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return guided_eps(model, x_t, t, cond, null_cond, scale)

    return model_fn
