"""The CMD example ends by scoring its classes with the shapes probe (a seconds-long run at toy scale)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_cmd_example_writes_per_class_probe_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("VDBLOCKS_CACHE", str(tmp_path / "cache"))
    example = _example("train_cmd")
    example.main(
        [
            "--out",
            str(tmp_path / "run"),
            "--scale",
            "0.004",
            "--batch-size",
            "4",
            "--samples-per-class",
            "1",
            "--probe-per-class",
            "2",
            "--content-steps",
            "2",
            "--motion-steps",
            "2",
        ]
    )
    report = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert report["classes"] == ["square", "circle", "triangle", "diamond", "cross"]
    probe = report["probe"]
    assert probe["num_clips"] == 10 and probe["counts"]["kind"] == 10
    assert set(probe["kind_counts"].values()) == {2}  # every class scored on its own clips
    assert 0.0 <= probe["accuracy"]["kind"] <= 1.0
    assert (tmp_path / "run" / "probe_grid.png").is_file()


@pytest.mark.timeout(300)
def test_pvdm_example_scores_the_clips_of_its_long_videos(tmp_path, monkeypatch):
    monkeypatch.setenv("VDBLOCKS_CACHE", str(tmp_path / "cache"))
    example = _example("train_pvdm")
    example.main(
        [
            "--out",
            str(tmp_path / "run"),
            "--ae-steps",
            "1",
            "--diffusion-steps",
            "1",
            "--num-videos",
            "16",
            "--clips",
            "2",
            "--first-steps",
            "2",
            "--next-steps",
            "2",
            "--probe-videos",
            "3",
            "--device",
            "cpu",
        ]
    )
    report = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert report["long_videos"] == 3 and report["clips_per_video"] == 2
    assert report["probe"]["num_clips"] == 6 and len(report["probe"]["predictions"]) == 6
    assert 0.0 <= report["probe"]["one_object_fraction"] <= 1.0 and 0.0 <= report["keeps_its_object"] <= 1.0
    assert all(v is None for v in report["probe"]["accuracy"].values())  # unconditional: nothing was asked for
    recon = report["reconstruction"]  # the autoencoder's held-out reconstruction score at its last step
    assert recon["step"] == 1 and math.isfinite(recon["psnr"]) and recon["psnr"] >= 0  # clamped: MSE <= 1
