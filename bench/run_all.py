"""Run every benchmark and rebuild the efficiency report: docs/benchmarks.md with tables and PNG plots.

Each benchmark script runs in its own process with ``--json`` (so one slow or failing script does not
take the others down); its last output line is parsed, stored beside the report as
``benchmarks/results/<name>.json``, summarised in a table and drawn in a PNG of cost versus size.
Every figure and table names the machine it was measured on.

A run changes no tracked file unless asked: without ``--write-docs`` or ``--out`` the report's tables
are printed and nothing is written. ``--write-docs`` rebuilds the report in docs/ and passes
``--write-docs`` on to the benchmarks that also rewrite a page of their own (``Benchmark.writes_docs``);
``--out DIR`` writes the report to DIR instead.

    python bench/run_all.py                       # everything, full size (tens of minutes on 2 cores); prints
    python bench/run_all.py --write-docs          # the same, and rebuilds docs/benchmarks.md and the pages
    python bench/run_all.py --only attention,evdm_table --write-docs  # re-run two; the others' stored results stay
    python bench/run_all.py --quick --out /tmp/r  # smoke test: tiny sizes, written elsewhere
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DOCS = ROOT / "docs"  # where --write-docs puts the report

Payload = dict[str, Any]


def machine_line(payload: Payload) -> str:
    m = payload.get("machine", {})
    threads = m.get("torch_threads", "?")
    return f"{m.get('device_name', m.get('cpu', '?'))}, {threads} thread(s), torch {m.get('torch', '?')}"


# ---------------------------------------------------------------- per-benchmark tables and figures


def attention_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    p = runs[0]
    rows = p["results"]
    dims = sorted({r["d"] for r in rows})
    fig, axes = ax_fig(1, len(dims), figsize=(4.2 * len(dims), 3.6))
    for ax, d in zip(axes, dims):
        pts = sorted((r for r in rows if r["d"] == d), key=lambda r: r["L"])
        ls = [r["L"] for r in pts]
        for key, style in (("softmax", "-o"), ("favor", "-s"), ("auto", ":x"), ("calibrated", "--+")):
            if f"time_{key}" in pts[0]:
                ax.plot(ls, [1e3 * r[f"time_{key}"] for r in pts], style, label=key, markersize=4)
        ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="ms per call", title=f"d = {d}")
        ax.legend(fontsize=7)
    header = ["d", "L", "softmax ms", "favor ms", "auto/faster", "calibrated/faster"]
    table = [
        [
            r["d"],
            r["L"],
            f"{1e3 * r['time_softmax']:.3f}",
            f"{1e3 * r['time_favor']:.3f}",
            f"{r['auto_slowdown']:.2f}",
            f"{r['calibrated_slowdown']:.2f}" if "calibrated_slowdown" in r else "-",
        ]
        for r in rows
    ]
    return header, table


def evdm_table_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    rows = runs[0]["table8"]
    fig, (ax1, ax2) = ax_fig(1, 2, figsize=(11, 3.8))
    names = [r["row"] for r in rows]
    x = range(len(rows))
    ax1.bar([i - 0.2 for i in x], [r["gmacs"] for r in rows], 0.4, label="ours (forward GMACs, batch 64)")
    ax1.bar([i + 0.2 for i in x], [r["paper_gflops"] for r in rows], 0.4, label='paper ("GFLOPs")')
    ax2.bar([i - 0.2 for i in x], [r["params_m"] for r in rows], 0.4, label="ours")
    ax2.bar([i + 0.2 for i in x], [r["paper_params_m"] for r in rows], 0.4, label="paper")
    for ax, ylabel in ((ax1, "GMACs at batch 64"), (ax2, "parameters (M)")):
        ax.set_xticks(list(x), names, rotation=35, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    header = ["row", "params (M)", "paper (M)", "GMACs", "paper", "cut", "paper cut"]
    table = [
        [
            r["row"],
            f"{r['params_m']:.2f}",
            r["paper_params_m"],
            f"{r['gmacs']:.1f}",
            r["paper_gflops"],
            f"{r['cut']:.2f}",
            f"{r['paper_cut']:.2f}",
        ]
        for r in rows
    ]
    return header, table


def evdm_speed_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    p = runs[0]
    rows = p["results"]
    fig, ax = ax_fig(1, 1, figsize=(6, 3.6))
    ax = ax[0]
    names = [r["label"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.27 for i in x], [r["mac_cut"] for r in rows], 0.27, label="MAC cut")
    ax.bar(list(x), [r["train_speedup"] for r in rows], 0.27, label="training-step speedup")
    ax.bar([i + 0.27 for i in x], [r["sample_speedup"] for r in rows], 0.27, label="sampling-step speedup")
    ax.axhline(2.7, color="gray", linestyle=":", label="paper: 2.7x (A40)")
    ax.set_xticks(list(x), names, fontsize=8)
    ax.set_ylabel("x vs MCVD")
    ax.legend(fontsize=7)
    header = ["model", "GMACs/sample", "MAC cut", "train s", "train speedup", "sample s", "sample speedup"]
    table = [
        [
            r["label"],
            f"{r['gmacs_per_sample']:.3f}",
            f"{r['mac_cut']:.2f}",
            f"{r['train_s']:.3f}",
            f"{r['train_speedup']:.2f}",
            f"{r['sample_s']:.3f}",
            f"{r['sample_speedup']:.2f}",
        ]
        for r in rows
    ]
    return header, table


def etc_attention_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    p = runs[0]
    rows = p["results"]
    fig, (ax1, ax2) = ax_fig(1, 2, figsize=(10, 3.6))
    labels = [f"{r['frames']}f {r['pixels']}px" for r in rows]
    x = range(len(rows))
    ax1.bar([i - 0.2 for i in x], [r["macs_full"] / 1e9 for r in rows], 0.4, label="ETC: one attention over the grid")
    ax1.bar([i + 0.2 for i in x], [r["macs_factorised"] / 1e9 for r in rows], 0.4, label="spatial + temporal")
    ax1.set(yscale="log", ylabel="forward GMACs")
    ax2.plot(list(x), [r["mac_ratio"] for r in rows], "-o", label="MAC ratio (ours)")
    ax2.plot(list(x), [r["mac_ratio_paper"] for r in rows], "--s", label="paper's formula")
    ax2.plot(list(x), [r["time_ratio_fwd"] for r in rows], ":x", label="time ratio, forward")
    ax2.set(ylabel="grid / factorised", yscale="log")
    for ax in (ax1, ax2):
        ax.set_xticks(list(x), labels, fontsize=7, rotation=20)
        ax.legend(fontsize=7)
    header = ["setting", "tokens", "GMACs grid", "GMACs factorised", "MAC ratio", "paper ratio", "time ratio fwd"]
    table = [
        [
            r["setting"],
            r["tokens_full"],
            f"{r['macs_full'] / 1e9:.2f}",
            f"{r['macs_factorised'] / 1e9:.2f}",
            f"{r['mac_ratio']:.2f}",
            f"{r['mac_ratio_paper']:.2f}",
            f"{r['time_ratio_fwd']:.2f}",
        ]
        for r in rows
    ]
    return header, table


def pvdm_cost_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    runs = sorted(runs, key=lambda r: r["results"]["pixel_numbers"])
    res = [r["results"] for r in runs]
    labels = [f"{r['config']['frames']}x{r['config']['size']}x{r['config']['size']}" for r in runs]
    fig, (ax1, ax2) = ax_fig(1, 2, figsize=(10, 3.6))
    ax1.plot(labels, [r["pvdm_macs_per_step"] / 1e9 for r in res], "-o", label="PVDM triplane U-Net")
    ax1.plot(labels, [r["baseline_macs_per_step"] / 1e9 for r in res], "-s", label="pixel 3D U-Net")
    ax1.set(yscale="log", ylabel="GMACs per denoiser step", xlabel="video size")
    ax1.legend(fontsize=7)
    last = res[-1]
    bars = {
        "numbers per video": last["latent_reduction"],
        "MACs per step": last["mac_ratio_per_step"],
        f"time per step @{last['time_size']}px": last["step_speedup"],
        f"time per sample @{last['time_size']}px": last["sampling_speedup"],
    }
    ax2.bar(list(bars), list(bars.values()))
    ax2.axhline(17.6, color="gray", linestyle=":", label="paper: 17.6x faster sampling than VDM")
    ax2.set(yscale="log", ylabel="pixel baseline / PVDM")
    ax2.set_xticks(range(len(bars)), list(bars), fontsize=7, rotation=15)
    ax2.legend(fontsize=7)
    header = [
        "video",
        "latent numbers",
        "pixel numbers",
        "GMACs/step PVDM",
        "GMACs/step 3D U-Net",
        "MAC ratio",
        "time ratio/step",
        "time ratio/sample",
    ]
    table = [
        [
            lab,
            r["latent_numbers"],
            r["pixel_numbers"],
            f"{r['pvdm_macs_per_step'] / 1e9:.2f}",
            f"{r['baseline_macs_per_step'] / 1e9:.1f}",
            f"{r['mac_ratio_per_step']:.1f}",
            f"{r['step_speedup']:.1f}",
            f"{r['sampling_speedup']:.1f}",
        ]
        for lab, r in zip(labels, res)
    ]
    return header, table


def cmd_cost_report(runs: list[Payload], ax_fig: Callable[..., Any]) -> tuple[list[str], list[list[Any]]]:
    p = runs[0]
    fig, (ax1, ax2) = ax_fig(1, 2, figsize=(10, 3.6))
    rows = p["results"]
    ax1.bar([r["model"] for r in rows], [r["tmacs"] for r in rows])
    ax1.set(yscale="log", ylabel="TMACs per video")
    ax1.set_xticks(range(len(rows)), [r["model"] for r in rows], fontsize=7, rotation=20)
    patches = p["content_patch"]
    ax2.plot([c["content_patch"] for c in patches], [c["gmacs_per_pass"] for c in patches], "-o")
    ax2.set(xscale="log", xlabel="content-frame patch size (motion DiT)", ylabel="GMACs per motion-DiT pass")
    ax2.set_xticks([c["content_patch"] for c in patches], [str(c["content_patch"]) for c in patches])
    header = ["model", "TMACs/video", "s/video (timing size)"]
    table = [[r["model"], f"{r['tmacs']:.3g}", f"{r['time_s']:.3g}"] for r in rows]
    for name, ratio in p["ratios"].items():
        table.append([name, f"{ratio['macs']:.1f}x MACs", f"{ratio['time']:.1f}x time"])
    return header, table


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    script: str
    report: Callable[[list[Payload], Callable[..., Any]], tuple[list[str], list[list[Any]]]]
    full_runs: tuple[tuple[str, ...], ...] = ((),)  # one run per argument tuple (e.g. one per size)
    quick_runs: tuple[tuple[str, ...], ...] = (("--quick",),)
    page: str | None = None  # the benchmark's own page with the method and discussion
    writes_docs: bool = False  # the script takes --write-docs and then rewrites its page under docs/


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "attention",
        "Attention: exact softmax vs FAVOR+ vs EVDM's rule vs the calibrated choice",
        "attention.py",
        attention_report,
        page="benchmarks/attention.md",
    ),
    Benchmark(
        "evdm_table",
        "EVDM Table 8: parameters and MACs against the MCVD baseline",
        "evdm_table.py",
        evdm_table_report,
        page="benchmarks/evdm_table.md",
        writes_docs=True,
    ),
    Benchmark(
        "evdm_speed",
        "EVDM: training- and sampling-step time against MCVD",
        "evdm_speed.py",
        evdm_speed_report,
        page="benchmarks/evdm_speed.md",
    ),
    Benchmark(
        "etc_attention",
        "ETC: one attention over the frame grid vs factorised attention",
        "etc_attention.py",
        etc_attention_report,
        page="benchmarks/etc_attention.md",
    ),
    Benchmark(
        "pvdm_cost",
        "PVDM: triplane latent denoiser vs a pixel-space 3D U-Net",
        "pvdm_cost.py",
        pvdm_cost_report,
        page="benchmarks/pvdm_cost.md",
        full_runs=tuple(("--size", str(s), "--time-size", "32", "--sample-steps", "20") for s in (64, 128, 256)),
        quick_runs=(("--quick",), ("--quick", "--size", "64")),
    ),
    Benchmark(
        "cmd_cost",
        "CMD: content frame + motion latents vs denoising the whole video volume",
        "cmd_cost.py",
        cmd_cost_report,
        page="benchmarks/cmd_cost.md",
    ),
)


def run_one(bench: Benchmark, quick: bool, timeout: float, write_docs: bool = False) -> list[Payload]:
    """Run ``bench``'s script once per argument tuple; ``write_docs`` lets a script that has its own
    page rewrite it (never in a quick run, whose tiny sizes are not results)."""
    payloads = []
    for extra in bench.quick_runs if quick else bench.full_runs:
        flags = ["--write-docs"] if write_docs and bench.writes_docs and not quick else []
        args = [sys.executable, str(BENCH / bench.script), "--json", *extra, *flags]
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"{bench.script} {' '.join(extra)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
            )
        payloads.append(json.loads(lines[-1]))
    return payloads


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def write_report(
    results: dict[str, list[Payload]], errors: dict[str, str], out: Path | None, quick: bool
) -> Path | str:
    """Write ``out/benchmarks.md``, ``out/benchmarks/report_<name>.png`` and the raw JSON and return
    the report's path; with ``out=None`` write nothing and return the report's markdown."""
    figures = out / "benchmarks" if out is not None else None
    if figures is not None:
        (figures / "results").mkdir(parents=True, exist_ok=True)
    sections = [
        "# Efficiency report\n",
        "Regenerated by `python bench/run_all.py`"
        + (" (**--quick smoke run: tiny sizes, not results**)" if quick else "")
        + ". Each section: the benchmark's summary table, a plot, the machine it ran on, and a link to"
        " the benchmark's own page with the method and the discussion. Raw figures: "
        "`benchmarks/results/<name>.json` (each script's `--json` output).\n",
    ]
    for bench in BENCHMARKS:
        if bench.name in errors:
            sections.append(f"## {bench.title}\n\nNot run: {errors[bench.name]}\n")
            continue
        if bench.name not in results:
            continue
        runs = results[bench.name]
        payload = runs[0]
        raw = runs[0] if len(runs) == 1 else runs
        if figures is not None:
            (figures / "results" / f"{bench.name}.json").write_text(json.dumps(raw, indent=1) + "\n")

        def ax_fig(nrows: int, ncols: int, **kw: Any) -> tuple[Any, Any]:
            fig, axes = plt.subplots(nrows, ncols, **kw)
            axes_list = list(axes.flat) if hasattr(axes, "flat") else [axes]
            return fig, axes_list

        header, rows = bench.report(runs, ax_fig)
        fig = plt.gcf()
        fig.suptitle(f"{bench.title}\n{machine_line(payload)}", fontsize=9)
        fig.tight_layout()
        png = Path("benchmarks") / f"report_{bench.name}.png"
        if figures is not None:
            fig.savefig(figures / png.name, dpi=110)
        plt.close(fig)
        link = f" Details: [{bench.page}]({bench.page})." if bench.page else ""
        sections.append(
            f"## {bench.title}\n\nMeasured on {machine_line(payload)}.{link}\n\n"
            f"![{bench.title}](benchmarks/{png.name})\n\n{markdown_table(header, rows)}\n"
        )
    if out is None:
        return "\n".join(sections)
    path = out / "benchmarks.md"
    path.write_text("\n".join(sections))
    return path


def main(argv: list[str] | None = None) -> Payload:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test); write with --out")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="rebuild the report in docs/ (or --out) and let benchmarks rewrite their own pages",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="directory for benchmarks.md (default: docs/ with --write-docs, else nothing is written)",
    )
    parser.add_argument("--only", default="", help="comma list of benchmarks (default: all)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per benchmark")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = parser.parse_args(argv)
    names = [b.name for b in BENCHMARKS]
    only = [n for n in args.only.split(",") if n] or names
    unknown = sorted(set(only) - set(names))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {names}")
    if args.write_docs and args.quick:
        parser.error("--write-docs with --quick would publish tiny smoke-test sizes; use --quick --out DIR")
    out = Path(args.out) if args.out is not None else (DOCS if args.write_docs else None)
    results: dict[str, list[Payload]] = {}
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for bench in BENCHMARKS:
        if bench.name not in only:
            continue
        start = time.perf_counter()
        print(f"running {bench.script} ...", flush=True)
        try:
            results[bench.name] = run_one(bench, args.quick, args.timeout, write_docs=args.write_docs)
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
            errors[bench.name] = str(err).splitlines()[0]
            print(f"  {bench.name}: {err}", file=sys.stderr)
        seconds[bench.name] = round(time.perf_counter() - start, 1)
    stored = (out if out is not None else DOCS) / "benchmarks" / "results"  # read only, without --out
    for bench in BENCHMARKS:  # benchmarks not re-run keep their stored results in the report
        raw = stored / f"{bench.name}.json"
        if bench.name not in results and bench.name not in errors and raw.is_file() and not args.quick:
            loaded = json.loads(raw.read_text())
            results[bench.name] = loaded if isinstance(loaded, list) else [loaded]
    report = write_report(results, errors, out, args.quick)
    if isinstance(report, Path):
        print(f"wrote {report} and {len(results)} figure(s) under {report.parent / 'benchmarks'}")
    else:
        print(report)
        print("nothing written (--write-docs rebuilds docs/benchmarks.md, --out DIR writes the report to DIR)")
    summary = {
        "benchmark": "run_all",
        "report": str(report) if isinstance(report, Path) else None,
        "ran": sorted(seconds.keys() - errors.keys()),
        "failed": errors,
        "seconds": seconds,
        "machine": next(iter(results.values()))[0]["machine"] if results else {},
    }
    if args.json:
        print(json.dumps(summary))
    if errors:
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
