"""What every reference model's frozen dataclass config shares: JSON round trip, checks, presets.

A system's config subclasses :class:`ConfigBase` and is declared ``@dataclass(frozen=True)``. Fields
holding sequences are listed in ``_tuple_fields``: JSON gives lists, and the config stores tuples so
it stays hashable. Checkpoints store ``to_dict()`` beside the weights (as JSON), and
``from_dict`` rebuilds the config from it, refusing keys it does not know.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ConfigBase",
    "check_channel_mult",
    "check_config_fractions",
    "check_config_ints",
    "check_noise_schedule",
    "get_preset",
    "is_int",
    "is_number",
]

C = TypeVar("C", bound="ConfigBase")


def is_int(value: object) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_config_ints(config: object, names: Iterable[str], *, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``ValueError`` unless every field in ``names`` is an int ``>= minimum`` (or None if ``optional``)."""
    what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    for name in names:
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not is_int(value) or value < minimum:
            raise ValueError(f"expected {name} to be {what}{' or None' if optional else ''}, got {value!r}")


def _unknown_fields(cls: type, keys: Iterable[str]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")


class ConfigBase:
    """Mixin for frozen dataclass configs: tuples from lists, ``to_dict`` / ``from_dict``.

    Subclasses call ``super().__post_init__()`` first in their own ``__post_init__`` (or rely on this
    one when they have none) and list their sequence fields in ``_tuple_fields``.
    """

    _tuple_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # JSON gives lists; the dataclass is frozen and hashable, so store tuples.
        for name in self._tuple_fields:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name in self._tuple_fields:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild a config from ``to_dict()`` output (or its JSON); unknown keys raise ``TypeError``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
        _unknown_fields(cls, data)
        return cls(**dict(data))

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied, validated like any config; unknown keys raise ``TypeError``."""
        _unknown_fields(type(self), overrides)
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]


def get_preset(presets: Mapping[str, C], name: str, **overrides: Any) -> C:
    """``presets[name]`` with ``overrides`` applied; an unknown name raises ``ValueError`` listing the names."""
    if name not in presets:
        raise ValueError(f"expected a preset name in {sorted(presets)}, got {name!r}")
    return presets[name].replace(**overrides)


def check_config_fractions(config: object, names: Iterable[str], *, below_one: bool = False) -> None:
    """Raise ``ValueError`` unless every field in ``names`` is a number in ``[0, 1]`` (``[0, 1)`` if ``below_one``)."""
    for name in names:
        value = getattr(config, name)
        if not is_number(value) or not (0 <= value < 1 if below_one else 0 <= value <= 1):
            raise ValueError(f"expected {name} in [0, 1{')' if below_one else ']'}, got {value!r}")


def check_channel_mult(mult: object, name: str = "channel_mult") -> None:
    """Raise ``ValueError`` unless ``mult`` is a non-empty tuple of positive ints."""
    if not isinstance(mult, tuple) or not mult or not all(is_int(m) and m > 0 for m in mult):
        raise ValueError(f"expected {name} to be a non-empty tuple of positive ints, got {mult!r}")


def check_noise_schedule(config: object) -> None:
    """Check a config's ``schedule`` name and ``0 < beta_start < beta_end < 1``."""
    from vdblocks.diffusion import SCHEDULE_NAMES

    schedule, start, end = config.schedule, config.beta_start, config.beta_end  # type: ignore[attr-defined]
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f"expected schedule in {SCHEDULE_NAMES}, got {schedule!r}")
    if not (is_number(start) and is_number(end) and 0 < start < end < 1):
        raise ValueError(f"expected 0 < beta_start < beta_end < 1, got beta_start={start!r}, beta_end={end!r}")
