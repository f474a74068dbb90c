"""The committed ground-truth figures of ``docs/probe.md``: the probes of the examples' geometries,
trained afresh, their held-out accuracies and training times (:func:`ground_truth_record`), and the
markdown table of that record (:func:`render_ground_truth_table`)."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .shapes_probe import ShapesProbe
from .spec import _FORMAT, PROBE_VERSION

__all__ = ["ground_truth_record", "render_ground_truth_table"]


_DOC_PROBES: dict[str, dict[str, Any]] = {
    # The geometries the examples' tiny presets train on (see each system's config.py / train.py).
    "etc_tiny": dict(
        channels=3,
        frames=4,
        height=16,
        width=16,
        size_range=(0.15, 0.3),
        fps=8,
        kinds=("square", "circle"),
        directions=("left", "right", "up", "down"),
    ),
    "cmd_tiny": dict(channels=3, frames=8, height=24, width=32, size_range=(0.18, 0.3), fps=8),
    "pvdm_tiny": dict(channels=3, frames=8, height=32, width=32, size_range=(0.15, 0.3), fps=8),
    "evdm_tiny": dict(channels=1, frames=5, height=32, width=32, size_range=(0.15, 0.3), fps=8),
}


def ground_truth_record(
    names: Sequence[str] | None = None, *, cache_dir: str | os.PathLike | bool | None = False
) -> dict[str, Any]:
    """Train (or load) the probes of the examples' geometries and collect their held-out accuracies
    and training times as JSON-able data (what ``docs/probe/ground_truth.json`` holds)."""
    names = list(_DOC_PROBES) if names is None else list(names)
    load_before = _load_average()
    probes = {}
    for name in names:
        if name not in _DOC_PROBES:
            raise ValueError(f"unknown probe {name!r}; expected one of {sorted(_DOC_PROBES)}")
        probe = ShapesProbe.for_geometry(**_DOC_PROBES[name], cache_dir=cache_dir)
        probes[name] = {
            "spec": probe.spec.to_dict(),
            "key": probe.spec.key(),
            "train_seconds": probe.train_seconds,
            "ground_truth": probe.ground_truth,
        }
    return {
        "format": _FORMAT + "-ground-truth",
        "version": PROBE_VERSION,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": _load_average()},
        "command": "python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json "
        "--page docs/probe.md",
        "probes": probes,
    }


def _load_average() -> float | None:
    """The 1-minute load average (timings from a busy machine are not comparable), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def render_ground_truth_table(record: Mapping[str, Any]) -> str:
    """The markdown table of :func:`ground_truth_record`'s output (what ``docs/probe.md`` shows)."""
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = [
        "| probe | clip (c x t x h x w) | fps | colour | kind | size | direction | direction, no bounce "
        "| bounce before frame 1 | one object | train s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, p in record["probes"].items():
        s, g = p["spec"], p["ground_truth"]
        acc = g["accuracy"]
        rows.append(
            f"| {name} | {s['channels']}x{s['frames']}x{s['height']}x{s['width']} | "
            f"{', '.join(f'{r:g}' for r in s['fps'])} | {fmt(acc.get('color'))} | {fmt(acc.get('kind'))} | "
            f"{fmt(acc.get('size'))} | {fmt(acc.get('direction'))} | {fmt(g.get('direction_without_bounce'))} | "
            f"{fmt(g.get('bounce_before_frame_1'))} | {fmt(g['one_object_fraction'])} | {p['train_seconds']:.1f} |"
        )
    per_fps = [
        "",
        "Per frame rate:",
        "",
        "| probe | " + " | ".join(["fps", "direction", "size"]) + " |",
        "|---|---:|---:|---:|",
    ]
    for name, p in record["probes"].items():
        for rate, accs in p["ground_truth"]["per_fps"].items():
            per_fps.append(f"| {name} | {rate} | {fmt(accs.get('direction'))} | {fmt(accs.get('size'))} |")
    load = record.get("load_average_1min") or {}
    busy = (
        f" (1-minute load average {load['before']:g} before, {load['after']:g} after, on {record['cpu_count']} cores)"
        if load.get("before") is not None and load.get("after") is not None
        else ""
    )
    head = (
        f"Measured on {next(iter(record['probes'].values()))['ground_truth']['num_clips']} held-out clips per "
        f"probe; training time on {record['threads']} CPU thread(s) of {record['processor'] or 'an unnamed CPU'}"
        f"{busy}, torch {record['torch']}."
    )
    return "\n".join([head, ""] + rows + per_fps)
