"""Command-line helpers shared by the systems' training and sampling scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_sampling_arguments", "parse_override"]


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


def add_sampling_arguments(parser: argparse.ArgumentParser, *, out: str = "samples", device: str = "auto") -> None:
    """The flags every sampling CLI shares: ``--seed``, ``--device``, ``--no-ema``, ``--out``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=device, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights, not the EMA")
    parser.add_argument("--out", default=out, help="output directory")
