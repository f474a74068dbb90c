"""Command-line helpers shared by the systems' training and sampling scripts."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["parse_override"]


def parse_override(text: str) -> tuple[str, Any]:
    """``"FIELD=VALUE"`` (a ``--set`` flag) -> ``(field, value)``.

    The value is read as JSON (``--set frames=16``, ``--set channel_mult=[1,2,2]``, lists become
    tuples for frozen configs); anything that is not JSON stays a string (``--set schedule=linear``).
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected --set FIELD=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed
