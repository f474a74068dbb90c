"""Package re-exports that import their module on first use (PEP 562).

A system's ``sample`` module is also its CLI (``python -m reference_models.etc.sample``). If the
package ``__init__`` imported it eagerly, ``runpy`` would find the module already in
``sys.modules`` and warn that running it "may result in unpredictable behaviour". Re-exporting its
names lazily keeps ``from reference_models.etc import load_system`` working without that import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves ``names[name]`` (a submodule) on use.

    ``names`` maps an exported name to the submodule that defines it, e.g. ``{"load_system": "sample"}``.
    """

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f".{names[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
