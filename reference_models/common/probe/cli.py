"""The probe's command line, ``python -m reference_models.common.probe``: measure and write the
ground-truth figures of ``docs/probe.md``, or render an example's run report into its docs page.

::

    python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json --page docs/probe.md
    python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json --page docs/probe.md --render-only
    python -m reference_models.common.probe --run-report docs/systems/etc_probe/probe.json --page docs/systems/etc.md
    python -m reference_models.common.probe --run-report docs/systems/evdm_probe/*_metrics.json --page docs/systems/evdm.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from .cache import _write_atomic
from .ground_truth import _DOC_PROBES, ground_truth_record, render_ground_truth_table
from .page import GROUND_TRUTH_BLOCK, RUN_BLOCK, write_page_block
from .run_report import RUN_REPORT_KINDS, load_run_report, render_run_table

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m reference_models.common.probe",
        description="Train the moving-shapes probes of the examples' geometries "
        "and write their held-out ground-truth accuracies, or render "
        "an example's run report into its docs page.",
    )
    parser.add_argument("--ground-truth", action="store_true", help="measure the ground-truth figures")
    parser.add_argument(
        "--run-report",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="render an example's probe.json (or EVDM's <task>_metrics.json files, one per task) "
        "into --page's probe-run block instead",
    )
    parser.add_argument(
        "--kind",
        choices=RUN_REPORT_KINDS,
        default=None,
        help="with --run-report: which example wrote it (default: read from its keys)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write (with --render-only: to read)")
    parser.add_argument("--render-only", action="store_true", help="only rebuild --page from the JSON in --out")
    parser.add_argument(
        "--page",
        type=Path,
        default=None,
        help="markdown page whose generated block (ground-truth, or probe-run with --run-report) to rebuild",
    )
    parser.add_argument("--probe", action="append", choices=sorted(_DOC_PROBES), help="only these (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (timings are for 1)")
    args = parser.parse_args(argv)
    if args.run_report is not None:
        table = render_run_table(load_run_report(args.run_report), kind=args.kind)
        if args.page is not None:
            write_page_block(args.page, table, RUN_BLOCK)
        print(table)
        return 0
    if not args.ground_truth or args.out is None:
        parser.error("give --ground-truth --out JSON, or --run-report JSON")
    if args.render_only:
        record = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        torch.set_num_threads(args.threads)
        record = ground_truth_record(args.probe, cache_dir=False)  # always trained here: the times are real
        _write_atomic(args.out, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    table = render_ground_truth_table(record)
    if args.page is not None:
        write_page_block(args.page, table, GROUND_TRUTH_BLOCK)
    print(table)
    return 0
