"""What every reference model's frozen dataclass config shares: JSON round trip, checks, presets.

A system's config subclasses :class:`ConfigBase` and is declared ``@dataclass(frozen=True)``. Fields
holding sequences are listed in ``_tuple_fields``: JSON gives lists, and the config stores tuples so
it stays hashable. Each system's config holds its diffusion as one
:class:`~vdblocks.diffusion.DiffusionSpec` field ``diffusion``, stored as a nested mapping.
Checkpoints store ``to_dict()`` beside the weights (as JSON), and ``from_dict`` rebuilds the config
from it, refusing keys it does not know; configs saved before the spec existed, with the diffusion
fields flat, still load (:meth:`ConfigBase.from_dict`). ``replace`` (and so ``--set``) reaches into
the spec with dotted names: ``replace(**{"diffusion.prediction_type": "v_prediction"})``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from vdblocks.diffusion import DiffusionSpec

__all__ = [
    "LEGACY_DIFFUSION_FIELDS",
    "ConfigBase",
    "check_channel_mult",
    "check_config_fractions",
    "check_config_ints",
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


LEGACY_DIFFUSION_FIELDS: tuple[str, ...] = ("schedule", "num_train_steps", "beta_start", "beta_end", "prediction_type")
"""The flat fields that configs saved before :class:`~vdblocks.diffusion.DiffusionSpec` held; they
now live in the config's ``diffusion`` spec (the clip setting was implied by the system)."""


def _unknown_fields(cls: type, keys: Iterable[str]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - known)
    if unknown:
        hint = ""
        if "diffusion" in known and set(unknown) & {f.name for f in dataclasses.fields(DiffusionSpec)}:
            hint = "; diffusion settings live in the DiffusionSpec field: set them as diffusion.NAME"
        raise TypeError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}{hint}")


def _spec_fields(cls: type) -> dict[str, DiffusionSpec]:
    """``{field name: default spec}`` for the :class:`DiffusionSpec` fields of a config class."""
    return {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if isinstance(f.default, DiffusionSpec)  # specs are frozen and hashable: plain defaults
    }


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
        # JSON (and --set diffusion={...}) gives a mapping where the config holds a DiffusionSpec.
        for name in _spec_fields(type(self)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, DiffusionSpec.from_dict(value))
            elif not isinstance(value, DiffusionSpec):
                raise TypeError(f"expected {name} to be a DiffusionSpec (or its to_dict()), got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name in self._tuple_fields:
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild a config from ``to_dict()`` output (or its JSON); unknown keys raise ``TypeError``.

        A config saved before the diffusion settings moved into the ``diffusion`` spec (flat
        ``schedule``, ``num_train_steps``, ``beta_start``, ``beta_end``, ``prediction_type``) is
        read through :meth:`upgrade_legacy_dict`.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
        data = cls.upgrade_legacy_dict(data)
        _unknown_fields(cls, data)
        return cls(**data)

    @classmethod
    def upgrade_legacy_dict(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` with flat legacy diffusion fields folded into the ``diffusion`` spec.

        Fields the old dict lacks take the class's default spec's values (PVDM's configs never
        stored a prediction type: they were epsilon models); ``clip_sample``, which the systems used
        to decide at sampling time, comes from :meth:`legacy_clip_sample`. A dict that already has
        ``diffusion``, or none of the legacy fields, is returned unchanged (as a new dict).
        """
        data = dict(data)
        specs = _spec_fields(cls)
        flat = {k: data[k] for k in LEGACY_DIFFUSION_FIELDS if k in data}
        if "diffusion" not in specs or "diffusion" in data or not flat:
            return data
        for key in flat:
            del data[key]
        legacy = {**specs["diffusion"].to_dict(), **flat, "clip_sample": cls.legacy_clip_sample(data)}
        data["diffusion"] = legacy
        return data

    @classmethod
    def legacy_clip_sample(cls, data: Mapping[str, Any]) -> bool:
        """The ``clip_sample`` a config saved before the spec was sampled with: by default the class's
        default spec's; systems that decided it from the data (pixels or latents) override this."""
        return _spec_fields(cls)["diffusion"].clip_sample

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied, validated like any config; unknown keys raise ``TypeError``.

        A dotted key changes one field of a nested spec: ``replace(**{"diffusion.prediction_type":
        "v_prediction"})`` (what ``--set diffusion.prediction_type=v_prediction`` does).
        """
        plain = {k: v for k, v in overrides.items() if "." not in k}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            if "." in key:
                head, _, rest = key.partition(".")
                nested.setdefault(head, {})[rest] = value
        _unknown_fields(type(self), [*plain, *nested])
        for head, changes in nested.items():
            current = plain.get(head, getattr(self, head))
            if isinstance(current, Mapping):
                current = DiffusionSpec.from_dict(current) if head in _spec_fields(type(self)) else current
            if not dataclasses.is_dataclass(current):
                raise TypeError(
                    f"{type(self).__name__}.{head} is not a nested config; got dotted keys "
                    f"{sorted(f'{head}.{k}' for k in changes)}"
                )
            known = {f.name for f in dataclasses.fields(current)}
            unknown = sorted(set(changes) - known)
            if unknown:
                raise TypeError(
                    f"unknown {type(current).__name__} fields {[f'{head}.{k}' for k in unknown]}; "
                    f"known fields: {sorted(f'{head}.{k}' for k in known)}"
                )
            plain[head] = dataclasses.replace(current, **changes)
        return dataclasses.replace(self, **plain)  # type: ignore[type-var]


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
