"""Reading moving-shapes captions: ``"a small red circle moving left"`` -> the attributes it names,
and checking a condition (caption or dict) against the classes a probe knows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..data.moving_shapes import DIRECTIONS, PALETTE, SHAPE_KINDS
from .spec import ATTRIBUTES, SIZES, ProbeSpec

__all__ = ["parse_caption", "parse_caption_objects"]

_ALIASES = {"colour": "color", "shape": "kind"}
_CAPTION_GRAMMAR = (
    "'[a] [small|large] [<colour>] <kind> [moving <direction>]', objects joined by ' and ' "
    "(e.g. 'a large red circle moving up-left')"
)


def parse_caption_objects(caption: str) -> list[dict[str, str]]:
    """Every object of a moving-shapes caption, in order, as ``{"kind", "size", "color", "direction"}``
    (only the words present): ``"a small red circle moving left and a large blue square"`` ->
    ``[{"size": "small", "color": "red", "kind": "circle", "direction": "left"}, {...}]``.

    Grammar (:meth:`ShapeSpec.phrase` and the datasets' captions; class names such as ``"red
    circle"`` also parse): ``[a] [small|large] [<colour>] <kind> [moving <direction>]``, objects
    joined by ``and``; case and a final full stop are ignored. Raises ``ValueError`` otherwise.
    """
    if not isinstance(caption, str):
        raise TypeError(f"expected caption to be a str, got {type(caption).__name__}")
    words = caption.strip().rstrip(".").lower().split()
    if not words:
        raise ValueError(f"expected a moving-shapes caption {_CAPTION_GRAMMAR}, got an empty caption")
    objects, current = [], []
    for word in words + ["and"]:
        if word != "and":
            current.append(word)
            continue
        obj, rest = {}, list(current)
        if rest[:1] in (["a"], ["an"]):
            rest.pop(0)
        if rest[:1] and rest[0] in SIZES:
            obj["size"] = rest.pop(0)
        if rest[:1] and rest[0] in PALETTE:
            obj["color"] = rest.pop(0)
        if rest[:1] and rest[0] in SHAPE_KINDS:
            obj["kind"] = rest.pop(0)
        if rest[:1] == ["moving"] and len(rest) >= 2 and rest[1] in DIRECTIONS:
            obj["direction"] = rest[1]
            rest = rest[2:]
        if "kind" not in obj or rest:
            raise ValueError(
                f"expected a moving-shapes caption {_CAPTION_GRAMMAR}, "
                f"could not read {' '.join(current)!r} in {caption!r}"
            )
        objects.append(obj)
        current = []
    return objects


def parse_caption(caption: str) -> dict[str, str]:
    """The first (primary) object of a moving-shapes caption: see :func:`parse_caption_objects`."""
    return parse_caption_objects(caption)[0]


def _condition(item: Any, index: int, spec: ProbeSpec) -> dict[str, str]:
    """A caption or a mapping -> the attributes this probe reads, checked against its classes."""
    if isinstance(item, str):
        cond = parse_caption(item)
    elif isinstance(item, Mapping):
        cond = {}
        for key, value in item.items():
            name = _ALIASES.get(key, key)
            if name not in ATTRIBUTES:
                raise ValueError(
                    f"conditions[{index}]: unknown key {key!r}; expected keys from {ATTRIBUTES} "
                    "('colour' and 'shape' are accepted too)"
                )
            if value is not None:
                cond[name] = value
    elif item is None:
        cond = {}
    else:
        raise TypeError(
            f"expected each condition to be a caption str, a dict with keys from {ATTRIBUTES} "
            f"or None, got {type(item).__name__} at conditions[{index}]"
        )
    out = {}
    for name, value in cond.items():
        if name not in spec.attributes:
            continue  # colour of gray clips, direction of stills: not measurable, not counted
        if value not in spec.classes(name):
            raise ValueError(
                f"conditions[{index}]: {name} {value!r} is not one this probe knows ({', '.join(spec.classes(name))})"
            )
        out[name] = value
    return out
