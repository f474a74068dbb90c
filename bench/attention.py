"""Exact softmax vs FAVOR+ vs MixedSelfAttention's automatic choice, by sequence length and head dim.

For every length ``L`` and head dim ``d`` of the grid, on ``(b, k, L, d)`` tensors, this times the
attention kernels alone (no projections) through :func:`vdblocks.attention.attention`:

* softmax: exact attention, ``backend="sdpa"``;
* favor: FAVOR+ with performer's default ``r = int(d ln d)`` random features (the projection matrix
  of a :class:`~vdblocks.attention.MixedSelfAttention` built for ``d``);
* auto: whichever of the two that block's rule (EVDM eq. 14: FAVOR+ when ``L > 2 d``) picks;
* calibrated: whichever ``MixedSelfAttention(algorithm="calibrated")`` picks: FAVOR+ above the
  crossover :func:`vdblocks.attention.favor_crossover` measured on this device before the timing.

and counts each one's forward MACs with :func:`vdblocks.flops.count_flops`. Per point it reports the
faster algorithm and the slowdown of auto and calibrated against it
(``time_auto / min(time_softmax, time_favor)``); per
head dim, the measured crossover (the shortest length from which FAVOR+ stays faster) next to the
rule's ``2 d``.

    python bench/attention.py                  # full grid, table
    python bench/attention.py --json           # table, then one JSON object on the last line
    python bench/attention.py --quick --json   # a few tiny points (smoke test)
"""

from __future__ import annotations

import time
from typing import Any

import torch
from _common import (
    base_parser,
    emit,
    format_table,
    load_average,
    machine_info,
    parse_dtype,
    parse_ints,
    synchronizer,
    time_calls,
)

from vdblocks.attention import MixedSelfAttention, attention
from vdblocks.flops import count_flops, favor_attention_macs, softmax_attention_macs

FULL_LENGTHS = [2**i for i in range(6, 15)]  # 64 ... 16384
FULL_HEAD_DIMS = [32, 64, 96]
QUICK_LENGTHS = [64, 256]
QUICK_HEAD_DIMS = [32]


def measure_point(block: MixedSelfAttention, calibrated: MixedSelfAttention, length: int, args, sync) -> dict[str, Any]:
    """Time and count softmax, FAVOR+, auto and calibrated for one ``(L, d)``."""
    shape = (args.batch, block.heads, length, block.dim_head)
    q, k, v = (torch.randn(shape, device=args.device, dtype=args.torch_dtype) for _ in range(3))
    rows = args.batch * block.heads
    proj = block.favor.projection_matrix

    def softmax():
        return attention(q, k, v, backend="sdpa")

    def favor():
        return attention(q, k, v, backend="favor", projection_matrix=proj)

    def auto():
        # The rule is evaluated inside the timed call, as MixedSelfAttention does on every forward.
        return favor() if block.select_algorithm(q.shape[2]) == "favor" else softmax()

    def calibrated_choice():
        return favor() if calibrated.select_algorithm(q.shape[2], q.device, q.dtype, rows) == "favor" else softmax()

    row: dict[str, Any] = {
        "L": length,
        "d": block.dim_head,
        "heads": block.heads,
        "batch": args.batch,
        "nb_features": block.nb_features,
        "auto_pick": block.select_algorithm(length),
        "calibrated_pick": calibrated.select_algorithm(length, q.device, q.dtype, rows),
    }
    fns = {"softmax": softmax, "favor": favor, "auto": auto, "calibrated": calibrated_choice}
    times = time_calls(fns, warmup=args.warmup, repeat=args.repeat, min_time=args.min_time, sync=sync)
    for name, fn in fns.items():
        row[f"time_{name}"] = times[name]
        row[f"macs_{name}"] = count_flops(fn).macs
    for name in ("softmax", "favor"):
        row[f"gmacs_per_s_{name}"] = row[f"macs_{name}"] / row[f"time_{name}"] / 1e9
    row["faster"] = "softmax" if row["time_softmax"] <= row["time_favor"] else "favor"
    row["auto_slowdown"] = row["time_auto"] / min(row["time_softmax"], row["time_favor"])
    row["auto_picked_faster"] = row["auto_pick"] == row["faster"]
    row["calibrated_slowdown"] = row["time_calibrated"] / min(row["time_softmax"], row["time_favor"])
    return row


def macs_crossover(d: int, r: int) -> int:
    """Shortest self-attention length at which FAVOR+ does fewer MACs than softmax (per batch and head)."""
    length = 1
    while favor_attention_macs(1, 1, length, length, d, r) >= softmax_attention_macs(1, 1, length, length, d):
        length += 1
    return length


def summarise(rows: list[dict[str, Any]], threshold: float, crossovers: dict[int, float]) -> dict[str, Any]:
    """Per head dim: the rule's switch length, the measured and the MAC crossovers, auto's mistakes."""
    out: dict[str, Any] = {}
    for d in sorted({r["d"] for r in rows}):
        points = sorted((r for r in rows if r["d"] == d), key=lambda r: r["L"])
        crossover = None
        for i, r in enumerate(points):
            if all(p["faster"] == "favor" for p in points[i:]):
                crossover = r["L"]
                break
        out[str(d)] = {
            "rule_switches_above_L": threshold * d,
            "measured_crossover_L": crossover,
            "macs_crossover_L": macs_crossover(d, points[0]["nb_features"]),
            "mispicked_L": [r["L"] for r in points if not r["auto_picked_faster"]],
            "worst_auto_slowdown": max(r["auto_slowdown"] for r in points),
            "calibrated_switches_above_L": crossovers[d],
            "worst_calibrated_slowdown": max(r["calibrated_slowdown"] for r in points),
            "calibrated_within_10pct": all(r["calibrated_slowdown"] <= 1.1 for r in points),
        }
    return out


def _ms(x: float) -> str:
    return f"{1e3 * x:.3f}"


def _macs(x: int) -> str:
    return f"{x / 1e6:.2f}"


COLUMNS = [
    ("d", "d", str),
    ("L", "L", str),
    ("nb_features", "r", str),
    ("time_softmax", "softmax ms", _ms),
    ("time_favor", "favor ms", _ms),
    ("time_auto", "auto ms", _ms),
    ("macs_softmax", "softmax MMACs", _macs),
    ("macs_favor", "favor MMACs", _macs),
    ("gmacs_per_s_softmax", "softmax GMAC/s", lambda x: f"{x:.1f}"),
    ("gmacs_per_s_favor", "favor GMAC/s", lambda x: f"{x:.1f}"),
    ("auto_pick", "auto picks", str),
    ("faster", "faster", str),
    ("auto_slowdown", "auto/faster", lambda x: f"{x:.2f}"),
    ("calibrated_pick", "calibrated picks", str),
    ("calibrated_slowdown", "calibrated/faster", lambda x: f"{x:.2f}"),
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=parse_ints, help="comma list of L (default 64..16384)")
    parser.add_argument("--head-dims", type=parse_ints, help="comma list of d (default 32,64,96)")
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=2.0, help="lambda of EVDM eq. 14")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--min-time", type=float, default=None, help="seconds per timed round")
    args = parser.parse_args(argv)
    args.torch_dtype = parse_dtype(args.dtype)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else FULL_LENGTHS)
    head_dims = args.head_dims or (QUICK_HEAD_DIMS if args.quick else FULL_HEAD_DIMS)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.repeat = args.repeat if args.repeat is not None else (2 if args.quick else 9)
    args.min_time = args.min_time if args.min_time is not None else (0.002 if args.quick else 0.05)

    torch.manual_seed(0)
    machine = machine_info(args.device)
    sync = synchronizer(args.device)
    rows = []
    crossovers: dict[int, float] = {}
    calibration_s = 0.0
    with torch.inference_mode():
        for d in head_dims:
            block = MixedSelfAttention(args.heads * d, heads=args.heads, dim_head=d, threshold=args.threshold)
            block = block.to(args.device)
            calibrated = MixedSelfAttention(args.heads * d, heads=args.heads, dim_head=d, algorithm="calibrated")
            calibrated.load_state_dict(block.state_dict())  # the same random features
            calibrated = calibrated.to(args.device, args.torch_dtype)
            start = time.perf_counter()
            # measured once here for this workload (b * k rows), cached for the timed calls
            crossovers[d] = calibrated.crossover(torch.device(args.device), args.torch_dtype, args.batch * args.heads)
            calibration_s += time.perf_counter() - start
            rows += [measure_point(block, calibrated, length, args, sync) for length in lengths]
    machine["load_average_1min_end"] = load_average()
    summary = summarise(rows, args.threshold, crossovers)

    lines = [
        f"attention kernels on {machine['device']} ({machine['device_name']}), {args.dtype}, "
        f"b={args.batch}, heads={args.heads}, torch {machine['torch']}, {machine['torch_threads']} threads, "
        f"load average {machine['load_average_1min']} at start, {machine['load_average_1min_end']} at end",
        format_table(rows, COLUMNS),
        "",
        "per head dim: auto switches to FAVOR+ above L = threshold * d; measured crossover = shortest L "
        "of the grid from which FAVOR+ stays faster; FAVOR+ does fewer MACs than softmax from the L given",
    ]
    for d, s in summary.items():
        lines.append(
            f"  d={d}: rule switches above L={s['rule_switches_above_L']:g}, measured crossover "
            f"L={s['measured_crossover_L']}, fewer MACs from L={s['macs_crossover_L']}, auto picked the slower at L={s['mispicked_L']}, "
            f"worst auto/faster={s['worst_auto_slowdown']:.2f}; calibrated switches above L={s['calibrated_switches_above_L']:g}, "
            f"worst calibrated/faster={s['worst_calibrated_slowdown']:.2f}"
        )
    lines.append(
        f"calibration took {calibration_s:.1f} s in all; calibrated within 10 % of the faster algorithm "
        f"at every point: {all(s['calibrated_within_10pct'] for s in summary.values())}"
    )
    payload = {
        "benchmark": "attention",
        "machine": machine,
        "config": {
            "device": args.device,
            "dtype": args.dtype,
            "batch": args.batch,
            "heads": args.heads,
            "threshold": args.threshold,
            "lengths": lengths,
            "head_dims": head_dims,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "min_time": args.min_time,
            "timing": "median seconds per call",
            "calibration_s": round(calibration_s, 2),
            "macs": "forward multiply-accumulates (FLOPs = 2 MACs)",
        },
        "results": rows,
        "summary": summary,
    }
    emit(payload, args.json, "\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
