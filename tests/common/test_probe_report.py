"""The examples' run reports rendered as markdown: each report kind is recognised from its keys, every
figure of the JSON reaches the table, the tables are well formed, rendering is pure, and the command
line fills a page's probe-run block.

Reports are built here: the probe part by the real :class:`ProbeResult` (as every example writes
it, ``result.to_dict()``), the rest with the exact keys of the writers (named at each builder); EVDM's
files are written by the real ``write_task`` with the metric keys ``run_task`` produces.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from reference_models.common.metrics import trajectory_metrics
from reference_models.common.probe import ATTRIBUTES, ProbeRecipe, ProbeResult, ShapesProbe, render_run_table
from reference_models.common.probe.cli import main as probe_main
from reference_models.common.probe.page import RUN_BLOCK, write_page_block
from reference_models.common.probe.run_report import RUN_REPORT_KINDS, load_run_report, run_report_kind

CLASSES = ["square", "circle", "triangle", "diamond", "cross"]  # CMD tiny's class names, in label order
COLORS = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "white"]


def probe_result(
    predictions: list[dict[str, str]], asked: list[str | None], *, frechet=(812.25, 17.5), one_object=0.625, fps=8.0
) -> dict:
    """A ``ProbeResult.to_dict()`` of clips whose condition asked for the kinds ``asked`` (``None``:
    nothing asked), with the counts and accuracies ``ShapesProbe.evaluate`` would compute."""
    named = [i for i, k in enumerate(asked) if k is not None]
    kind_counts = {k: sum(a == k for a in asked) for k in CLASSES}
    kind_accuracy = {
        k: (
            sum(predictions[i]["kind"] == k for i in named if asked[i] == k) / kind_counts[k]
            if kind_counts[k]
            else None
        )
        for k in CLASSES
    }
    accuracy = {a: None for a in ATTRIBUTES}
    accuracy["kind"] = sum(predictions[i]["kind"] == asked[i] for i in named) / len(named) if named else None
    ground_truth = {a: None for a in ATTRIBUTES}
    ground_truth["kind"] = 0.875 if named else None
    return ProbeResult(
        num_clips=len(asked),
        accuracy=accuracy,
        counts={a: len(named) if a == "kind" else 0 for a in ATTRIBUTES},
        ground_truth=ground_truth,
        chance={"color": 0.125, "kind": 0.2, "size": 0.5, "direction": 0.125},
        kind_accuracy=kind_accuracy,
        kind_counts=kind_counts,
        one_object_fraction=one_object,
        frechet_distance=frechet[0],
        frechet_floor=frechet[1],
        num_real=len(asked),
        fps=(fps,) * len(asked),
        predictions=tuple(predictions),
        probe="3x8x24x32",
    ).to_dict()


def reading(kind: str, color: str = "red") -> dict[str, str]:
    return {"color": color, "kind": kind, "size": "large", "direction": "left"}


def cmd_report() -> dict:
    """``examples/train_cmd.py`` ``probe_classes``: 2 videos per class, in class order."""
    per_class = 2
    asked = [k for k in CLASSES for _ in range(per_class)]
    read = ["square", "square", "circle", "square", "triangle", "triangle", "cross", "cross", "cross", "circle"]
    return {
        "probe": probe_result([reading(k) for k in read], asked),
        "classes": CLASSES,
        "per_class": per_class,
        "sampler": {"content_steps": 50, "motion_steps": 100, "guidance_scale": 4.0},
        "run": {"seconds_to_here": 241.3, "probe_seconds": 37.9},
    }


def pvdm_report(reconstruction: bool = True) -> dict:
    """``examples/train_pvdm.py`` ``probe_long_videos``: 3 long videos of 2 clips, unconditional."""
    read = [
        reading("square"),
        reading("square"),
        reading("circle", "blue"),
        reading("cross"),
        reading("diamond"),
        reading("diamond"),
    ]
    report = {
        "probe": probe_result(read, [None] * 6, frechet=(1534.75, 22.125), one_object=0.5),
        "long_videos": 3,
        "clips_per_video": 2,
        "keeps_its_object": 2 / 3,
        "sampler": {"first_steps": 50, "next_steps": 25},
        "run": {"seconds_to_here": 301.2, "probe_seconds": 44.4},
    }
    if reconstruction:  # <out>/ae/samples/step<N>_recon_metrics.json (reference_models/pvdm/train.py)
        report["reconstruction"] = {"psnr": 23.456, "step": 500}
    return report


def custom_report(legacy: bool = False) -> dict:
    """``examples/custom_architecture.py`` ``probe_samples``: unconditional clips at one rate."""
    read = ["square", "square", "circle", "cross"]
    fraction = {k: read.count(k) / len(read) for k in CLASSES}
    distribution = (
        fraction
        if legacy
        else {"kinds": CLASSES, "fraction": fraction, "data_share": {k: 1 / len(CLASSES) for k in CLASSES}}
    )
    return {
        "probe": probe_result([reading(k) for k in read], [None] * 4, frechet=(99.5, 41.0), one_object=0.75),
        "fps": 8.0,
        "sampler": {"name": "ddim", "steps": 25, "eta": 0.0, "seed": 0, "clips": 4, "prediction_type": "v_prediction"},
        "run": {"seconds_to_here": 288.8, "probe_seconds": 21.7},
        "kind_distribution": distribution,
    }


def etc_report() -> dict:
    """``reference_models/etc/train.py`` ``main``: held-out captions."""
    return {
        "probe": probe_result([reading("square")] * 2, ["square", "circle"]),
        "captions": ["a square", "a circle"],
        "fps": 8.0,
        "sampler": {"ddim_steps": 25, "guidance_scale": 7.0},
        "run": {"steps": 400, "batch_size": 8, "preset": "tiny", "seconds_to_here": 291.0, "probe_seconds": 96.4},
    }


def evdm_metrics(values: dict[str, float], *, interpolate: bool) -> dict[str, float]:
    """The keys ``reference_models.evdm.sampling.run_task`` writes (its metrics, then each baseline's),
    found by running the same metric function; values then set by the test."""
    from reference_models.evdm.sampling import baseline_predictions

    g = torch.Generator().manual_seed(0)
    past, target = torch.rand(2, 1, 2, 16, 16, generator=g) * 2 - 1, torch.rand(2, 1, 3, 16, 16, generator=g) * 2 - 1
    future = torch.rand(2, 1, 1, 16, 16, generator=g) * 2 - 1 if interpolate else None
    metrics = {name: float(v.mean()) for name, v in trajectory_metrics(target[None], target.clamp(-0.9, 0.9)).items()}
    for name, guess in baseline_predictions(past, 3, future=future).items():
        for metric, value in trajectory_metrics(guess[None], target).items():
            metrics[f"{name}_{metric}"] = float(value.mean())
    assert set(values) <= set(metrics), sorted(metrics)
    return {**metrics, **values}


def write_evdm_files(folder: Path, step: int = 600) -> list[Path]:
    """The two metrics files an EVDM run writes, by the real ``write_task``."""
    from reference_models.evdm.sampling import TaskResult, write_task

    tasks = {
        # predict: beats copy-last on both metrics, loses to mean-frame on SSIM, ties it on PSNR (a tie does not beat)
        "predict": evdm_metrics(
            {
                "psnr": 21.5,
                "ssim": 0.625,
                "copy_last_psnr": 18.25,
                "copy_last_ssim": 0.5,
                "mean_frame_psnr": 21.5,
                "mean_frame_ssim": 0.7,
            },
            interpolate=False,
        ),
        "interpolate": evdm_metrics(
            {
                "psnr": 24.0,
                "ssim": 0.8,
                "copy_last_psnr": 19.0,
                "copy_last_ssim": 0.55,
                "mean_frame_psnr": 20.0,
                "mean_frame_ssim": 0.65,
                "blend_psnr": 25.5,
                "blend_ssim": 0.75,
            },
            interpolate=True,
        ),
    }
    paths = []
    for task, metrics in tasks.items():
        clips = torch.zeros(1, 1, 4, 16, 16)
        written = write_task(
            TaskResult(videos=clips, real=clips, metrics=metrics),
            folder,
            f"step{step:06d}_{task}",
            fps=8.0,
            extra={"step": step, "sampler": "ddim", "steps": 25},
        )
        paths += [p for p in written if p.name.endswith("_metrics.json")]
    return paths


def tables(text: str) -> list[list[str]]:
    """The markdown tables of ``text`` (runs of lines starting with ``|``), each checked to be well
    formed: a separator after the header and the same number of cells in every row."""
    found, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    for table in found:
        assert len(table) >= 3, table
        assert re.fullmatch(r"\|(-+:?\|)+", table[1].replace("---:", "---")), table[1]
        widths = {line.count("|") for line in table}
        assert len(widths) == 1, table
    return found


def cells(text: str) -> list[list[str]]:
    return [[c.strip() for c in row.strip("|").split("|")] for t in tables(text) for row in t[2:]]


# --------------------------------------------------------------------------- kinds


@pytest.mark.parametrize(
    "kind, build", [("etc", etc_report), ("cmd", cmd_report), ("pvdm", pvdm_report), ("custom", custom_report)]
)
def test_each_report_is_recognised_and_explicit_kind_gives_the_same_table(kind, build):
    report = build()
    assert run_report_kind(report) == kind
    assert render_run_table(report) == render_run_table(report, kind=kind)


def test_evdm_report_is_recognised_from_its_tasks(tmp_path):
    report = load_run_report(write_evdm_files(tmp_path))
    assert run_report_kind(report) == "evdm"
    assert set(report["tasks"]) == {"predict", "interpolate"}


def test_unknown_reports_and_kinds_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="cannot tell which example"):
        render_run_table({"probe": {}, "something": 1})
    with pytest.raises(ValueError, match="expected kind in"):
        render_run_table(cmd_report(), kind="mcvd")
    with pytest.raises(TypeError, match="run report dict"):
        run_report_kind([1, 2])
    assert RUN_REPORT_KINDS == ("etc", "cmd", "pvdm", "evdm", "custom")


@pytest.mark.parametrize("build", [etc_report, cmd_report, pvdm_report, custom_report])
def test_rendering_is_pure(build):
    report = build()
    before = copy.deepcopy(report)
    assert render_run_table(report) == render_run_table(json.loads(json.dumps(report)))
    assert report == before


# --------------------------------------------------------------------------- the figures


def test_cmd_table_shows_each_class_its_accuracy_and_what_the_probe_read():
    report = cmd_report()
    text = render_run_table(report)
    rows = {r[0]: r for r in cells(text)}
    assert rows["square"] == ["square", "2", "1.000", "square 2"]
    assert rows["circle"] == ["circle", "2", "0.500", "circle 1, square 1"]
    assert rows["triangle"] == ["triangle", "2", "1.000", "triangle 2"]
    assert rows["diamond"] == ["diamond", "2", "0.000", "cross 2"]
    assert rows["cross"] == ["cross", "2", "0.500", "circle 1, cross 1"]
    assert rows["all"][:3] == ["all", "10", "0.600"]  # 6 of 10 read right
    assert "2 of each of the 5 classes" in text and "at 8 fps" in text
    assert "DDIM 50 steps with guidance 4.0" in text and "DDIM 100 steps" in text
    assert "241.3 s" in text and "37.9 s" in text
    assert "right in 0.875 of cases" in text and "chance is 0.200" in text  # the probe's ceiling and chance
    assert rows["clips showing exactly one object"][1] == "62.5% of 10"
    assert rows["Frechet distance to 10 real clips (probe features)"][1:] == [
        "812.2",
        "17.500 between two real sets of that size",
    ]


def test_cmd_table_without_matching_predictions_drops_the_read_as_column():
    report = cmd_report()
    report["probe"]["predictions"] = report["probe"]["predictions"][:3]  # not one per video of each class
    text = render_run_table(report)
    assert "read as" not in text
    assert {r[0]: r for r in cells(text)}["circle"] == ["circle", "2", "0.500"]


def test_pvdm_table_shows_clips_frechet_kept_objects_and_reconstruction():
    text = render_run_table(pvdm_report())
    rows = {r[0]: r for r in cells(text)}
    assert rows["clips showing exactly one object"][1] == "50.0% of 6"
    assert rows["Frechet distance to 6 real clips (probe features)"][1:] == [
        "1534.8",
        "22.125 between two real sets of that size",
    ]
    assert rows["long videos whose clips all show the same colour and kind (probe)"][1] == "66.7% of 3"
    assert rows["autoencoder reconstruction PSNR on held-out clips, step 500"][1] == "23.46 dB"
    assert "3 long videos of 2 clips each" in text and "DDIM 50 steps" in text and "by 25 steps" in text
    assert "6 clips of 3x8x24x32" in text and "301.2 s" in text and "44.4 s" in text
    assert "reconstruction" not in render_run_table(pvdm_report(reconstruction=False))


@pytest.mark.parametrize("legacy", [False, True])
def test_custom_table_shows_clips_frechet_and_the_kinds_read(legacy):
    text = render_run_table(custom_report(legacy=legacy))
    rows = {r[0]: r for r in cells(text)}
    assert rows["clips showing exactly one object"][1] == "75.0% of 4"
    assert rows["Frechet distance to 4 real clips (probe features)"][1:] == [
        "99.5",
        "41.000 between two real sets of that size",
    ]
    share = ["0.200"] if not legacy else []
    assert rows["square"] == ["square", "0.500", *share]
    assert rows["circle"] == ["circle", "0.250", *share]
    assert rows["triangle"] == ["triangle", "0.000", *share]
    assert rows["cross"] == ["cross", "0.250", *share]
    assert "4 clips at 8.0 fps" in text and "steps 25" in text and "prediction type v_prediction" in text
    assert "288.8 s" in text and "21.7 s" in text


def test_evdm_table_puts_the_model_next_to_each_baseline_with_a_verdict(tmp_path):
    text = render_run_table(load_run_report(write_evdm_files(tmp_path)))
    header = tables(text)[0][0]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "task",
        "clips",
        "metric",
        "model",
        "copy-last",
        "mean-frame",
        "blend",
        "model beats",
    ]
    assert {r[1] for r in cells(text)} == {"1"}  # write_task records how many clips each mean is over
    rows = {(r[0], r[2]): r[3:] for r in cells(text)}
    assert list(rows) == [
        ("predict", "PSNR (dB)"),
        ("predict", "SSIM"),
        ("interpolate", "PSNR (dB)"),
        ("interpolate", "SSIM"),
    ]  # the paper's task order, not the files' order
    assert rows["predict", "PSNR (dB)"] == ["21.500", "18.250", "21.500", "-", "copy-last yes, mean-frame no"]
    assert rows["predict", "SSIM"] == ["0.625", "0.500", "0.700", "-", "copy-last yes, mean-frame no"]
    assert rows["interpolate", "PSNR (dB)"] == [
        "24.000",
        "19.000",
        "20.000",
        "25.500",
        "copy-last yes, mean-frame yes, blend no",
    ]
    assert rows["interpolate", "SSIM"] == [
        "0.800",
        "0.550",
        "0.650",
        "0.750",
        "copy-last yes, mean-frame yes, blend yes",
    ]
    assert "after 600 training steps, ddim sampler with 25 steps" in text


def test_load_run_report_reads_one_probe_json_or_one_metrics_file_per_task(tmp_path):
    probe_json = tmp_path / "probe.json"
    probe_json.write_text(json.dumps(cmd_report()))
    assert load_run_report(probe_json) == cmd_report()
    paths = write_evdm_files(tmp_path / "a")
    renamed = tmp_path / "predict_metrics.json"  # a copy without the step prefix reads the same
    renamed.write_text(paths[0].read_text())
    assert load_run_report([renamed])["tasks"]["predict"] == json.loads(paths[0].read_text())
    with pytest.raises(ValueError, match="two metrics files"):
        load_run_report([paths[0], renamed])
    with pytest.raises(ValueError, match="only EVDM metrics"):
        load_run_report([paths[0], probe_json])
    with pytest.raises(ValueError, match="one probe.json"):
        load_run_report([probe_json, probe_json])


def test_a_real_probe_result_renders_for_every_probe_kind(tmp_path):
    """Whatever a real evaluation holds (``None`` accuracies, unnamed attributes) renders."""
    recipe = ProbeRecipe(num_clips=128, epochs=1, batch_size=64, hidden=16, features=8, heldout_clips=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probe = ShapesProbe.for_geometry(3, 4, 12, 12, size_range=(0.2, 0.3), recipe=recipe, cache_dir=False)
        clips, conditions, _ = probe.real_clips(4, fps=8.0)
        asked = probe.evaluate(clips, [{"kind": c["kind"]} for c in conditions], fps=8.0).to_dict()
        free = probe.evaluate(clips, [None] * 4, fps=8.0).to_dict()
    finally:
        torch.set_num_threads(threads)
    kinds = [c["kind"] for c in conditions]
    reports = [
        {**cmd_report(), "probe": asked, "classes": kinds, "per_class": 1},
        {**pvdm_report(), "probe": free, "long_videos": 2, "clips_per_video": 2},
        {**custom_report(), "probe": free},
        {**etc_report(), "probe": asked},
    ]
    for report in reports:
        text = render_run_table(report)
        tables(text)
        assert f"{report['probe']['one_object_fraction']:.1%}" in text
        assert f"{report['probe']['frechet_distance']:.1f}" in text


# --------------------------------------------------------------------------- pages and the command line


def test_the_command_line_fills_the_probe_run_block_of_a_page(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("# CMD\n\nbefore\n\n<!-- probe-run:start -->\nold text\n<!-- probe-run:end -->\n\nafter\n")
    report = tmp_path / "probe.json"
    report.write_text(json.dumps(cmd_report(), indent=1))
    assert probe_main(["--run-report", str(report), "--page", str(page)]) == 0
    text = page.read_text()
    block = text.split("<!-- probe-run:start -->\n", 1)[1].split("\n<!-- probe-run:end -->", 1)[0]
    assert block == render_run_table(cmd_report())
    assert text.startswith("# CMD\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old text" not in text
    assert block in capsys.readouterr().out
    paths = write_evdm_files(tmp_path / "samples")
    assert probe_main(["--run-report", *map(str, paths), "--kind", "evdm", "--page", str(page)]) == 0
    assert render_run_table(load_run_report(paths)) in page.read_text()


def test_a_page_without_the_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("no block here\n")
    with pytest.raises(ValueError, match="probe-run:start"):
        write_page_block(page, "table", RUN_BLOCK)
    assert page.read_text() == "no block here\n"
