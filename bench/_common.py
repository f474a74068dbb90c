"""Helpers shared by the benchmark scripts: command line, machine description, timing, output.

A benchmark script builds its parser with :func:`base_parser`, describes the machine with
:func:`machine_info`, times calls with :func:`time_call`, renders rows with :func:`format_table` and
ends with :func:`emit`, which prints the table and, under ``--json``, one JSON object as the very last
line of stdout (so ``json.loads(stdout.splitlines()[-1])`` reads every figure).

Scripts run as files (``python bench/attention.py``), which puts this folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "base_parser",
    "emit",
    "format_table",
    "load_average",
    "machine_info",
    "parse_dtype",
    "parse_ints",
    "synchronizer",
    "time_call",
    "time_calls",
]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares: --json, --quick, --device, --dtype."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--quick", action="store_true", help="a few small points, for smoke tests")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES), help="tensor dtype")
    return parser


def parse_dtype(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16`` (names as in :func:`base_parser`'s choices)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(sorted(_DTYPES))}") from None


def parse_ints(text: str) -> list[int]:
    """``"64,128,256"`` -> ``[64, 128, 256]`` (for list-valued options)."""
    return [int(s) for s in text.split(",") if s.strip()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, threads, load, torch, the device."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": _cpu_model(),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    # Other processes share the cores; a high load explains noisy timings.
    info["load_average_1min"] = load_average()
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS does not report it."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (asynchronous accelerators)."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def time_call(
    fn: Callable[[], Any],
    *,
    warmup: int = 1,
    repeat: int = 5,
    min_time: float = 0.02,
    sync: Callable[[], None] | None = None,
) -> float:
    """Median seconds per call of ``fn()``.

    ``warmup`` untimed calls first; then ``repeat`` timed rounds, each of as many calls as make it
    last at least ``min_time`` seconds (estimated from the last warm-up), so microsecond calls are
    not lost in timer resolution. ``sync`` waits for asynchronous devices before each clock read.
    """
    return time_calls({"fn": fn}, warmup=warmup, repeat=repeat, min_time=min_time, sync=sync)["fn"]


def time_calls(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeat: int = 5,
    min_time: float = 0.02,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """:func:`time_call` for several alternatives at once, their rounds interleaved.

    Round ``i`` of every function runs before round ``i + 1`` of any, so a burst of load from other
    processes slows all alternatives alike instead of one of them; medians discard the bursts. The
    order rotates from round to round, so no function always runs right after the same other one
    (whose allocations and cache footprint it would inherit).
    """
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], Any], number: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        return (time.perf_counter() - start) / number

    numbers = {}
    for name, fn in fns.items():
        per_call = min(timed(fn, 1) for _ in range(max(1, warmup)))
        numbers[name] = max(1, int(min_time / per_call)) if per_call > 0 else 1
    names = list(fns)
    rounds: dict[str, list[float]] = {name: [] for name in names}
    for i in range(max(1, repeat)):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            rounds[name].append(timed(fns[name], numbers[name]))
    return {name: statistics.median(r) for name, r in rounds.items()}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, Callable[[Any], str]]]) -> str:
    """A plain-text table; ``columns`` are ``(key, header, formatter)``."""
    cells = [[fmt(row.get(key)) for key, _, fmt in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max(len(c) for c in col) for col in zip(headers, *cells)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def emit(payload: dict[str, Any], as_json: bool, table: str | None = None) -> None:
    """Print ``table`` (if any); under ``as_json`` the last stdout line is ``payload`` as JSON."""
    if table:
        print(table)
    if as_json:
        sys.stdout.flush()
        print(json.dumps(payload, sort_keys=False))
    sys.stdout.flush()
