"""File permissions for outputs written through a temporary file.

``tempfile.mkstemp`` (and safetensors) create files ``0600``, whatever the umask; a file moved into
place from such a temporary name would stay private while every other output of a run follows the
umask. :func:`follow_umask` gives it the mode ``open()`` would have: ``0o666 & ~umask``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["current_umask", "new_file_mode", "follow_umask"]


def current_umask() -> int:
    """The process umask. Linux shows it in /proc/self/status; elsewhere it is read by setting and
    restoring it (racy only against another thread creating a file at that very moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def follow_umask(target: int | str | os.PathLike, mode: int | None = None) -> None:
    """Set ``target`` (an open file descriptor or a path) to ``mode`` (default :func:`new_file_mode`).
    A no-op where files have no POSIX permission bits (Windows)."""
    if os.name != "posix":
        return
    mode = new_file_mode() if mode is None else mode
    if isinstance(target, int):
        os.fchmod(target, mode)
    else:
        os.chmod(Path(target), mode)
