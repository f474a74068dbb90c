""":class:`DiffusionSpec`: the one object that says which diffusion a model is trained and sampled with.

A denoiser's weights mean something only together with the forward process they were trained on
(the beta schedule) and with what their output is (the prediction type). Both, and whether the
sampler clips the ``x_0`` estimate, travel together in one frozen, JSON-serialisable spec: configs
hold one, checkpoints store it, and :func:`~vdblocks.diffusion.diffusion_loss`,
:func:`~vdblocks.diffusion.sample_ddpm` and :func:`~vdblocks.diffusion.sample_ddim` take it
instead of a schedule plus loose strings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .schedules import PREDICTION_TYPES, SCHEDULE_NAMES, NoiseSchedule

__all__ = ["DiffusionSpec", "check_spec"]


@lru_cache(maxsize=32)
def _noise_schedule(name: str, num_steps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
    return NoiseSchedule.from_name(name, num_steps, beta_start, beta_end)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DiffusionSpec:
    """The discrete diffusion a denoiser is trained and sampled with; immutable, hashable, JSON-safe.

    Schedule (DDPM notation, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s <= t} alpha_s``):

    * ``schedule``: ``"linear"`` (DDPM: ``beta_t`` linear from ``beta_start`` to ``beta_end``),
      ``"scaled_linear"`` (Latent / Stable Diffusion: linear in ``sqrt(beta)``) or ``"cosine"``
      (Improved DDPM eq. 17, capped at 0.999; it ignores ``beta_start`` / ``beta_end``);
    * ``num_train_steps``: ``T``, the number of training timesteps ``0 .. T-1``;
    * ``beta_start``, ``beta_end``: ``0 < beta_start < beta_end < 1``.

    ``prediction_type``, what the network outputs given ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``
    (diffusers' names):

    * ``"epsilon"``: the noise ``eps`` (DDPM, Ho et al. 2020, eq. 14);
    * ``"v_prediction"``: the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans &
      Ho 2022, "Progressive Distillation", appendix D). Its error reaches ``x_0`` undivided where an
      ``eps`` error is multiplied by ``sqrt((1 - abar_t) / abar_t)`` (about 156 at the last step of
      DDPM's linear schedule), so briefly trained models sample far better with it;
    * ``"sample"``: the clean data ``x_0`` itself.

    ``clip_sample``: whether the samplers clip their ``x_0`` estimate to ``[-clip_range, clip_range]``
    (``clip_range`` is a sampler argument, 1 by default) before each step, as diffusers'
    ``clip_sample``. Right for pixels in ``[-1, 1]``; wrong for unbounded latents (Stable Diffusion's),
    so it is off by default.

    Build the schedule with :meth:`noise_schedule` (cached); store the spec with :meth:`to_dict`
    and rebuild it with :meth:`from_dict`. Invalid values raise ``ValueError`` / ``TypeError``
    naming the allowed ones at construction.
    """

    schedule: str = "linear"
    num_train_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "epsilon"
    clip_sample: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"expected schedule in {SCHEDULE_NAMES}, got {self.schedule!r}")
        steps = self.num_train_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"expected num_train_steps to be a positive int, got {steps!r}")
        start, end = self.beta_start, self.beta_end
        if not (_number(start) and _number(end) and 0 < start < end < 1):
            raise ValueError(f"expected 0 < beta_start < beta_end < 1, got beta_start={start!r}, beta_end={end!r}")
        # JSON may give 1 for 1.0; a float keeps to_dict() and the hash the same either way
        object.__setattr__(self, "beta_start", float(start))
        object.__setattr__(self, "beta_end", float(end))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"expected prediction_type in {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if not isinstance(self.clip_sample, bool):
            raise TypeError(f"expected clip_sample to be a bool, got {self.clip_sample!r}")

    def noise_schedule(self) -> NoiseSchedule:
        """The :class:`~vdblocks.diffusion.NoiseSchedule` of ``schedule``, ``num_train_steps`` and the betas.

        Cached: equal specs share one schedule (treat its tables as read-only).
        """
        return _noise_schedule(self.schedule, self.num_train_steps, self.beta_start, self.beta_end)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON types; :meth:`from_dict` inverts it."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffusionSpec:
        """Rebuild a spec from :meth:`to_dict` output (or its JSON); missing keys take the defaults,
        unknown keys raise ``TypeError``."""
        if isinstance(data, DiffusionSpec):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping of DiffusionSpec fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown DiffusionSpec fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> DiffusionSpec:
        """A copy with ``changes`` applied, validated like any spec."""
        return dataclasses.replace(self, **changes)


def check_spec(spec: object, name: str = "spec") -> DiffusionSpec:
    """``spec`` must be a :class:`DiffusionSpec`; returns it (a ``TypeError`` says how to build one)."""
    if not isinstance(spec, DiffusionSpec):
        raise TypeError(
            f"expected {name} to be a DiffusionSpec (e.g. DiffusionSpec(schedule='linear', "
            f"prediction_type='epsilon')), got {type(spec).__name__}"
        )
    return spec
