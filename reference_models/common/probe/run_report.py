"""Markdown tables of the examples' own measurements, rendered from the JSON their runs write.

Every example ends by measuring itself and writes JSON; a system's docs page shows that JSON through
:func:`render_run_table` (report dict -> markdown, nothing else: no file, clock or model is read), so
no figure on a page is ever typed by hand. Which table a report gets is read from its keys
(:func:`run_report_kind`), or named with ``kind=``:

* ``etc``: ``examples/train_etc.py``'s ``<out>/probe.json`` (key ``captions``: held-out captions scored);
* ``cmd``: ``examples/train_cmd.py``'s ``<out>/probe.json`` (keys ``classes`` and ``per_class``);
* ``pvdm``: ``examples/train_pvdm.py``'s ``<out>/probe.json`` (key ``keeps_its_object``);
* ``custom``: ``examples/custom_architecture.py``'s ``<out>/probe.json`` (key ``kind_distribution``);
* ``evdm``: ``reference_models.evdm.train``'s ``samples/step<N>_<task>_metrics.json`` (key ``tasks``,
  built by :func:`load_run_report` from the per-task files).

EVDM writes one metrics file per task; :func:`load_run_report` reads them into one report
``{"tasks": {task: metrics}}``, the task taken from each file's name. The command line does the same::

    python -m reference_models.common.probe --run-report docs/systems/cmd_probe/probe.json --page docs/systems/cmd.md
    python -m reference_models.common.probe --run-report docs/systems/evdm_probe/*_metrics.json --page docs/systems/evdm.md
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .spec import ATTRIBUTES

__all__ = ["RUN_REPORT_KINDS", "load_run_report", "render_run_table", "run_report_kind"]

RUN_REPORT_KINDS: tuple[str, ...] = ("etc", "cmd", "pvdm", "evdm", "custom")
"""The examples whose reports :func:`render_run_table` knows."""

# EVDM's per-task metrics files, ``samples/step<N>_<task>_metrics.json`` (reference_models/evdm/sampling.py
# write_task); renamed copies without the step prefix are read too.
_METRICS_FILE = re.compile(r"^(?:step(?P<step>\d+)_)?(?P<task>[A-Za-z0-9]+)_metrics\.json$")
# Rows in the order the paper presents the tasks, whatever order the files came in.
_TASK_ORDER = ("predict", "interpolate", "generate")
# EVDM's trivial baselines (reference_models.evdm.sampling.baseline_predictions), shown in this order.
_BASELINE_ORDER = ("copy_last", "mean_frame", "blend")
# Higher is better for both; MSE (also in the files) tells what PSNR tells, per clip, and is left out.
_EVDM_METRICS = {"psnr": "PSNR (dB)", "ssim": "SSIM"}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rates(probe: Mapping[str, Any]) -> str:
    rates = probe.get("fps")
    return "?" if not rates else ", ".join(f"{r:g}" for r in sorted(set(rates)))


def _run_sentence(run: Mapping[str, Any]) -> str:
    """How long the run took, as the examples record it (``run.seconds_to_here``, ``run.probe_seconds``)."""
    return (
        f"the run took {run.get('seconds_to_here', '?')} s from its start to the end of the probe, "
        f"{run.get('probe_seconds', '?')} s of them the probe's sampling and scoring."
    )


def _frechet_row(probe: Mapping[str, Any]) -> list[str]:
    if probe.get("frechet_distance") is None:
        return []
    return [
        f"| Frechet distance to {probe['num_real']} real clips (probe features) | "
        f"{probe['frechet_distance']:.1f} | {_fmt(probe.get('frechet_floor'))} between two real sets of that size |"
    ]


def _one_object_row(probe: Mapping[str, Any]) -> str:
    return f"| clips showing exactly one object | {probe['one_object_fraction']:.1%} of {probe['num_clips']} | |"


# --------------------------------------------------------------------------- one renderer per example


def _render_etc(report: Mapping[str, Any]) -> str:
    """ETC: accuracy per attribute of held-out captions, next to the probe's ceiling and chance."""
    probe, run, sampler = report["probe"], report.get("run", {}), report.get("sampler", {})
    rows = ["| attribute | clips | accuracy | probe on real clips | chance |", "|---|---:|---:|---:|---:|"]
    for a in ATTRIBUTES:
        if a in probe["chance"]:
            rows.append(
                f"| {a} | {probe['counts'][a]} | {_fmt(probe['accuracy'][a])} | "
                f"{_fmt(probe['ground_truth'][a])} | {probe['chance'][a]:.3f} |"
            )
            if a == "kind":
                rows += [
                    f"| &nbsp;&nbsp;{k} | {probe['kind_counts'][k]} | {_fmt(acc)} | | |"
                    for k, acc in probe["kind_accuracy"].items()
                    if probe["kind_counts"][k]
                ]
    floor = probe.get("frechet_floor")
    tail = [f"One object in {probe['one_object_fraction']:.1%} of the clips."]
    if probe.get("frechet_distance") is not None:
        tail.append(
            f"Frechet distance to {probe['num_real']} real clips (probe features): "
            f"{probe['frechet_distance']:.1f} (two real sets of that size: {_fmt(floor)})."
        )
    head = (
        f"{probe['num_clips']} held-out captions at {report.get('fps', '?')} fps, DDIM "
        f"{sampler.get('ddim_steps', '?')} steps, guidance {sampler.get('guidance_scale', '?')}, after "
        f"{run.get('steps', '?')} training steps of batch {run.get('batch_size', '?')}; the run took "
        f"{run.get('seconds_to_here', '?')} s from its start to the end of the probe, "
        f"{run.get('probe_seconds', '?')} s of them the probe's sampling and scoring."
    )
    return "\n".join([head, "", *rows, "", *tail])


def _render_cmd(report: Mapping[str, Any]) -> str:
    """CMD: per class, how often the probe reads the class's shape kind, and what it reads instead.

    ``examples/train_cmd.py`` samples ``per_class`` videos of each class in class order
    (``labels = arange(classes).repeat_interleave(per_class)``), so clip ``i`` asked for class
    ``classes[i // per_class]``; the "read as" column counts the probe's readings per class."""
    probe, run, sampler = report["probe"], report.get("run", {}), report.get("sampler", {})
    classes, per_class = list(report["classes"]), int(report["per_class"])
    predictions = probe.get("predictions") or []
    read_as = len(predictions) == len(classes) * per_class
    rows = [
        "| class | videos | kind read right | read as |" if read_as else "| class | videos | kind read right |",
        "|---|---:|---:|---|" if read_as else "|---|---:|---:|",
    ]
    for i, name in enumerate(classes):
        row = f"| {name} | {probe['kind_counts'].get(name, 0)} | {_fmt(probe['kind_accuracy'].get(name))} |"
        if read_as:
            read = [p.get("kind") for p in predictions[i * per_class : (i + 1) * per_class]]
            counts = sorted({k: read.count(k) for k in set(read)}.items(), key=lambda kv: (-kv[1], str(kv[0])))
            row += " " + ", ".join(f"{k} {n}" for k, n in counts) + " |"
        rows.append(row)
    rows.append(f"| all | {probe['counts']['kind']} | {_fmt(probe['accuracy']['kind'])} |" + (" |" if read_as else ""))
    head = (
        f"{probe['num_clips']} videos, {per_class} of each of the {len(classes)} classes, at {_rates(probe)} fps: "
        f"content frame by DDIM {sampler.get('content_steps', '?')} steps with guidance "
        f"{sampler.get('guidance_scale', '?')}, motion by DDIM {sampler.get('motion_steps', '?')} steps; "
        + _run_sentence(run)
    )
    ceiling = (
        f"On real clips the probe reads the kind right in {_fmt(probe['ground_truth'].get('kind'))} "
        f"of cases (its ceiling); chance is {_fmt(probe['chance'].get('kind'))}."
    )
    measures = ["| measure | value | compare with |", "|---|---:|---|", _one_object_row(probe), *_frechet_row(probe)]
    return "\n".join([head, "", *rows, "", ceiling, "", *measures])


def _render_pvdm(report: Mapping[str, Any]) -> str:
    """PVDM: long videos cut into their clips: one object per clip, Frechet distance, whether each
    long video keeps its object, and (when recorded) the autoencoder's reconstruction PSNR."""
    probe, run, sampler = report["probe"], report.get("run", {}), report.get("sampler", {})
    videos, clips = report["long_videos"], report["clips_per_video"]
    head = (
        f"{videos} long videos of {clips} clips each, sampled without a condition (the first clip by DDIM "
        f"{sampler.get('first_steps', '?')} steps, each next one by {sampler.get('next_steps', '?')} steps given "
        f"the clip before it), cut into their {probe['num_clips']} clips of {probe.get('probe', '?')} "
        f"(c x t x h x w) at {_rates(probe)} fps; " + _run_sentence(run)
    )
    rows = [
        "| measure | value | compare with |",
        "|---|---:|---|",
        _one_object_row(probe),
        *_frechet_row(probe),
        f"| long videos whose clips all show the same colour and kind (probe) | {report['keeps_its_object']:.1%} "
        f"of {videos} | |",
    ]
    recon = report.get("reconstruction")
    if recon and recon.get("psnr") is not None:
        step = f", step {recon['step']}" if recon.get("step") is not None else ""
        rows.append(f"| autoencoder reconstruction PSNR on held-out clips{step} | {recon['psnr']:.2f} dB | |")
    return "\n".join([head, "", *rows])


def _render_custom(report: Mapping[str, Any]) -> str:
    """The custom architecture (unconditional but for the frame rate): one object per clip, Frechet
    distance, and the share of each shape kind the probe reads next to the data's.

    ``kind_distribution`` is ``{kind: fraction}`` or ``{"kinds": [...], "fraction": {kind: fraction},
    "data_share": {kind: fraction}}``."""
    probe, run, sampler = report["probe"], report.get("run", {}), report.get("sampler", {})
    dist = report["kind_distribution"]
    if isinstance(dist.get("fraction"), Mapping):
        kinds = list(dist.get("kinds") or dist["fraction"])
        fraction, share = dist["fraction"], dist.get("data_share")
    else:
        kinds, fraction, share = list(dist), dist, None
    settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sampler.items())
    head = (
        f"{probe['num_clips']} clips at {report.get('fps', _rates(probe))} fps, asked for nothing but the frame "
        f"rate ({settings or 'sampler not recorded'}); " + _run_sentence(run)
    )
    rows = ["| measure | value | compare with |", "|---|---:|---|", _one_object_row(probe), *_frechet_row(probe)]
    kinds_table = (
        ["| kind the probe reads | share of clips | share in the data |", "|---|---:|---:|"]
        + [f"| {k} | {_fmt(fraction.get(k))} | {_fmt(share.get(k))} |" for k in kinds]
        if share is not None
        else ["| kind the probe reads | share of clips |", "|---|---:|"]
        + [f"| {k} | {_fmt(fraction.get(k))} |" for k in kinds]
    )
    return "\n".join([head, "", *rows, "", *kinds_table])


def _baselines(metrics: Mapping[str, Any], metric: str) -> list[str]:
    """The baselines scored with ``metric`` in one task's metrics: keys ``<baseline>_<metric>``."""
    names = {k[: -len(metric) - 1] for k in metrics if k.endswith(f"_{metric}")}
    return [n for n in _BASELINE_ORDER if n in names] + sorted(names - set(_BASELINE_ORDER))


def _render_evdm(report: Mapping[str, Any]) -> str:
    """EVDM: per task and metric, the model's held-out score next to each trivial baseline's, and
    whether the model beats each (higher is better for PSNR and SSIM; a tie does not beat)."""
    tasks = report["tasks"]
    order = sorted(tasks, key=lambda t: (_TASK_ORDER.index(t) if t in _TASK_ORDER else len(_TASK_ORDER), t))
    baselines: list[str] = []
    for task in order:
        for metric in _EVDM_METRICS:
            baselines += [b for b in _baselines(tasks[task], metric) if b not in baselines]
    label = {b: b.replace("_", "-") for b in baselines}
    rows = [
        "| task | clips | metric | model | " + " | ".join(label[b] for b in baselines) + " | model beats |",
        "|---|---:|---|---:|" + "---:|" * len(baselines) + "---|",
    ]
    for task in order:
        values = tasks[task]
        for metric, name in _EVDM_METRICS.items():
            if metric not in values:
                continue
            model = values[metric]
            cells = [_fmt(values.get(f"{b}_{metric}")) for b in baselines]
            verdict = ", ".join(
                f"{label[b]} {'yes' if model > values[f'{b}_{metric}'] else 'no'}"
                for b in baselines
                if f"{b}_{metric}" in values
            )
            clips = values.get("num_clips", "?")  # older metrics files do not say
            rows.append(
                f"| {task} | {clips} | {name} | {_fmt(model)} | " + " | ".join(cells) + f" | {verdict or '-'} |"
            )
    runs = sorted({(v.get("step"), v.get("sampler"), v.get("steps")) for v in tasks.values()}, key=str)
    setting = "; ".join(
        f"after {step if step is not None else '?'} training steps, {sampler or '?'} sampler with "
        f"{steps if steps is not None else '?'} steps"
        for step, sampler, steps in runs
    )
    head = (
        f"Held-out clips, {setting}: the model's frames against trivial guesses of them "
        "(copy-last repeats the last past frame, mean-frame the mean known frame, blend cross-fades from the "
        "last past to the first future frame); each score is the mean over the clips."
    )
    return "\n".join([head, "", *rows])


_RENDERERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "etc": _render_etc,
    "cmd": _render_cmd,
    "pvdm": _render_pvdm,
    "evdm": _render_evdm,
    "custom": _render_custom,
}


# --------------------------------------------------------------------------- the interface


def run_report_kind(report: Mapping[str, Any]) -> str:
    """Which example wrote ``report``, read from its keys (see the module docstring); ``ValueError``
    when no example's keys are there."""
    if not isinstance(report, Mapping):
        raise TypeError(f"expected a run report dict, got {type(report).__name__}")
    if isinstance(report.get("tasks"), Mapping):
        return "evdm"
    if "probe" in report:
        if "classes" in report and "per_class" in report:
            return "cmd"
        if "keeps_its_object" in report:
            return "pvdm"
        if "kind_distribution" in report:
            return "custom"
        if "captions" in report:
            return "etc"
    raise ValueError(
        f"cannot tell which example wrote this report (keys {sorted(report)}); expected an example's "
        f"probe.json or EVDM's metrics read by load_run_report, or pass kind= one of {RUN_REPORT_KINDS}"
    )


def render_run_table(report: Mapping[str, Any], kind: str | None = None) -> str:
    """The markdown table of an example's run report, as its docs page shows it.

    ``report``: the JSON an example wrote (``<out>/probe.json`` of ETC, CMD, PVDM and the custom
    architecture: ``{"probe": ProbeResult.to_dict(), "run": {...}, "sampler": {...}, ...}``; for
    EVDM ``{"tasks": {task: metrics}}`` from :func:`load_run_report`). ``kind``: one of
    ``RUN_REPORT_KINDS``; ``None`` reads it from the report's keys (:func:`run_report_kind`).
    Pure: the same dict always gives the same text.
    """
    if kind is None:
        kind = run_report_kind(report)
    elif kind not in _RENDERERS:
        raise ValueError(f"expected kind in {RUN_REPORT_KINDS}, got {kind!r}")
    return _RENDERERS[kind](report)


def load_run_report(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Read a run report: one example's ``probe.json``, or EVDM's per-task metrics files
    (``[step<N>_]<task>_metrics.json``, one per task) combined into ``{"tasks": {task: metrics}}``."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise ValueError("expected at least one run report JSON file")
    matches = [_METRICS_FILE.match(p.name) for p in paths]
    if not any(matches):
        if len(paths) > 1:
            raise ValueError(
                f"expected one probe.json, or EVDM's <task>_metrics.json files, got {[str(p) for p in paths]}"
            )
        return json.loads(paths[0].read_text(encoding="utf-8"))
    if not all(matches):
        odd = [str(p) for p, m in zip(paths, matches) if not m]
        raise ValueError(f"expected only EVDM metrics files named [step<N>_]<task>_metrics.json, got also {odd}")
    tasks: dict[str, Any] = {}
    for path, match in zip(paths, matches):
        task = match["task"]
        if task in tasks:
            raise ValueError(f"two metrics files for the task {task!r}: keep one run's files only ({path})")
        tasks[task] = json.loads(path.read_text(encoding="utf-8"))
    return {"tasks": tasks}
