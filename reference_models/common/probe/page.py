"""Filling the generated blocks of a markdown page: the text between a start and an end marker is
replaced by a rendered table, so every figure on a page comes from a committed JSON file."""

from __future__ import annotations

import re
from pathlib import Path

from .cache import _write_atomic

__all__ = ["GROUND_TRUTH_BLOCK", "RUN_BLOCK", "write_page_block"]

GROUND_TRUTH_BLOCK = ("<!-- ground-truth:start -->", "<!-- ground-truth:end -->")
"""The markers of ``docs/probe.md``'s ground-truth table (:func:`~.ground_truth.render_ground_truth_table`)."""
RUN_BLOCK = ("<!-- probe-run:start -->", "<!-- probe-run:end -->")
"""The markers of a system page's run-report table (:func:`~.run_report.render_run_table`)."""


def write_page_block(page: str | Path, table: str, markers: tuple[str, str] = GROUND_TRUTH_BLOCK) -> None:
    """Replace what lies between ``markers`` (start, end) in ``page`` by ``table``, atomically.

    Raises ``ValueError`` when the page has no such block: a typo in a marker must not pass silently.
    """
    page = Path(page)
    start, end = markers
    text = page.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{page} has no {start} ... {end} block to fill")
    _write_atomic(page, pattern.sub(lambda _: f"{start}\n{table}\n{end}", text).encode("utf-8"))
