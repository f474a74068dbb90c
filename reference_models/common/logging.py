"""Training metrics on rank 0: a CSV file, TensorBoard when it is installed, and readable messages.

``metrics.csv`` has one row per logging interval with the columns ``METRIC_COLUMNS``:
``step`` (steps done), ``loss`` (mean over the interval and the ranks), ``lr`` (used by the last
step), ``grad_norm`` (mean pre-clipping norm), ``it_per_s`` (loop iterations per second over the
interval) and ``skipped_steps`` (total updates skipped for a non-finite loss so far).
On other ranks every method is a no-op, so the training loop calls them unconditionally.
"""

from __future__ import annotations

import csv
import logging as _pylogging
import os
from pathlib import Path
from typing import Any

__all__ = ["METRIC_COLUMNS", "MetricsLogger", "get_logger"]

METRIC_COLUMNS = ("step", "loss", "lr", "grad_norm", "it_per_s", "skipped_steps")


def get_logger(name: str = "reference_models") -> _pylogging.Logger:
    """The package's message logger, with a plain stderr handler if the application set none."""
    logger = _pylogging.getLogger(name)
    if not logger.handlers and not _pylogging.getLogger().handlers:
        handler = _pylogging.StreamHandler()
        handler.setFormatter(_pylogging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(_pylogging.INFO)
    return logger


def _number(value: float) -> float | int:
    return value if isinstance(value, int) and not isinstance(value, bool) else float(value)


def _tensorboard_writer(log_dir: Path, required: bool) -> Any | None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's wrapper needs the separate `tensorboard` package
        if required:
            raise ImportError("tensorboard=True needs the `tensorboard` package (pip install tensorboard)") from err
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLogger:
    """Append metric rows to ``out_dir/metrics.csv`` (and TensorBoard under ``out_dir/tb``).

    ``enabled=False`` (every rank but 0) makes it a no-op. ``resume_step`` keeps the rows of an
    existing file up to that step and drops later ones, which a crashed run wrote after its last
    checkpoint and the resumed run will write again. ``tensorboard``: ``None`` uses it when
    installed, ``True`` requires it, ``False`` never uses it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self.rows: list[dict[str, float]] = []
        self._messages = get_logger()
        self._file = None
        self._writer = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._file = open(self.path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
        self._writer.writeheader()
        self._writer.writerows(kept)
        self._file.flush()
        if tensorboard is not False:
            self._tb = _tensorboard_writer(Path(out_dir) / "tb", required=bool(tensorboard))

    def log(self, step: int, **metrics: float) -> None:
        """Write one row; ``metrics`` must be a subset of ``METRIC_COLUMNS`` (missing ones blank)."""
        unknown = set(metrics) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; columns are {METRIC_COLUMNS}")
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _number(v) for k, v in metrics.items()}}
        self.rows.append(row)
        self._writer.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for name, value in metrics.items():
                self._tb.add_scalar(f"train/{name}", value, step)

    def info(self, message: str) -> None:
        """A human-readable message (rank 0 only)."""
        if self.enabled:
            self._messages.info(message)

    def warning(self, message: str) -> None:
        if self.enabled:
            self._messages.warning(message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
