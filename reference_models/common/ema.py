"""Exponential moving average of model weights, kept in a separate frozen copy of the model.

After every optimizer update the shadow weights move toward the live ones,

    shadow <- decay * shadow + (1 - decay) * param,

and buffers (e.g. normalisation statistics) are copied as they are. Sampling from the shadow copy
gives the smoother models that diffusion papers report (DDPM, DiT: decay 0.9999).
The shadow is a full ``nn.Module`` (``ema.module``) so a sampler can call it like the live model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel``/``DataParallel`` or ``torch.compile``
    wrapper (``model`` itself when not wrapped)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """Shadow weights of ``model``, updated by ``update(model)`` after each optimizer step.

    ``decay`` is the default per-update decay; ``update(model, decay=...)`` overrides it for one
    call (e.g. a warm-up of the decay). ``decay=0`` copies the live weights.
    Floating-point parameters are averaged; buffers and integer tensors are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.decay = self._check_decay(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)

    @staticmethod
    def _check_decay(decay: float) -> float:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise ValueError(f"expected EMA decay to be a float in [0, 1], got {decay!r}")
        return float(decay)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Move the shadow weights toward ``model``'s: ``shadow = d * shadow + (1 - d) * param``."""
        d = self.decay if decay is None else self._check_decay(decay)
        live = dict(unwrap_model(model).named_parameters())
        for name, shadow in self.module.named_parameters():
            param = live[name].detach()
            if shadow.is_floating_point():
                # lerp_ computes shadow + (1 - d) * (param - shadow), the same average in one kernel.
                shadow.lerp_(param.to(shadow.dtype), 1.0 - d)
            else:
                shadow.copy_(param)
        live_buffers = dict(unwrap_model(model).named_buffers())
        for name, buf in self.module.named_buffers():
            buf.copy_(live_buffers[name])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the shadow ones."""
        unwrap_model(model).load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict:
        """``{"decay", "num_updates", "shadow": {name: tensor}}``; the shadow tensors are the
        EMA module's ``state_dict`` (parameters and buffers)."""
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": dict(self.module.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (tensors are copied into the existing shadow)."""
        self.decay = self._check_decay(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["shadow"])
