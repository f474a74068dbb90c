"""``python -m reference_models.common.probe``: see :mod:`.cli`."""

import sys

from .cli import main

__all__: list[str] = []

# Guarded: tools that import every submodule (pkgutil walks, API checks) must not run the CLI.
if __name__ == "__main__":
    sys.exit(main())
