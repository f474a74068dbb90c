"""Every training CLI that reads a folder of videos trains a few steps with ``--num-workers 2``.

The folder holds real H.264 files written with PyAV at 25 and 29.97 fps (two class folders), as a
user's camera clips would be. The CLIs decode an item in the main process before the DataLoader
forks its workers (the preflight check), which is what used to deadlock FFmpeg's scaling threads in
the workers (issue 13). Each run is bounded by its pytest time limit.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from reference_models.cmd import train as cmd_train
from reference_models.common.video_io import read_video, write_video
from reference_models.etc import train as etc_train
from reference_models.evdm import train as evdm_train
from reference_models.pvdm import train as pvdm_train

RATES = {"pal": 25, "ntsc": Fraction(30000, 1001)}
COMMON = [
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--num-workers",
    "2",
    "--log-every",
    "1",
    "--warmup-steps",
    "1",
    "--device",
    "cpu",
    "--no-progress",
]


def _sets(overrides: dict) -> list[str]:
    return [f"--set={k}={json.dumps(v)}" for k, v in overrides.items()]


def _moving_square(frames: int, size: int, offset: int) -> torch.Tensor:
    """(3, t, size, size) in [-1, 1]: a bright square sliding right over a dark background."""
    video = -torch.ones(3, frames, size, size)
    for i in range(frames):
        x = (offset + i) % (size - 8)
        video[:, i, 8:16, x : x + 8] = torch.tensor([0.8, -0.2, 0.4])[:, None, None]
    return video


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    """Two class folders of 48x48 clips, 2 s long, at 25 and at 29.97 fps."""
    root = tmp_path_factory.mktemp("camera_clips")
    captions = ["file,caption"]
    for label in ("left", "right"):
        for name, rate in RATES.items():
            for k in range(2):
                path = root / label / f"{name}_{k}.mp4"
                write_video(path, _moving_square(round(2 * float(rate)), 48, 3 * k), rate)
                captions.append(f"{label}/{path.name},a square moving in a {name} clip")
    (root / "captions.csv").write_text("\n".join(captions) + "\n")
    return root


def test_the_folder_holds_real_25_and_29_97_fps_files(video_root):
    for name, rate in RATES.items():
        _, timestamps, fps = read_video(video_root / "left" / f"{name}_0.mp4")
        assert fps == pytest.approx(float(rate), rel=1e-3)
        assert timestamps.diff().mean().item() == pytest.approx(1 / float(rate), rel=1e-3)


def _check(state, steps: int = 2) -> None:
    assert state.step == steps
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in state.history)


@pytest.mark.timeout(180)
def test_etc_trains_on_videos_with_worker_processes(video_root, tmp_path):
    sets = {
        "model_channels": 8,
        "channel_mult": [1, 2],
        "attention_levels": [1],
        "num_head_channels": 8,
        "norm_groups": 4,
        "context_dim": 8,
        "text_heads": 2,
        "text_vocab_size": 64,
        "text_max_len": 6,
        "frames": 4,
        "height": 16,
        "width": 16,
    }
    _check(
        etc_train.main(
            [
                *_sets(sets),
                "--data-videos",
                str(video_root),
                "--out",
                str(tmp_path),
                *COMMON,
                "--sample-steps",
                "1",
                "--num-prompts",
                "1",
            ]
        )
    )


@pytest.mark.timeout(180)
def test_evdm_trains_on_videos_with_worker_processes(video_root, tmp_path):
    sets = {
        "base_channels": 8,
        "head_channels": 8,
        "channel_mult": [1, 2],
        "attn_levels": [1],
        "num_res_blocks": 1,
        "image_size": 16,
    }
    _check(
        evdm_train.main(
            [
                *_sets(sets),
                "--data",
                str(video_root),
                "--fps",
                "10",
                "--out",
                str(tmp_path),
                *COMMON,
                "--sampler",
                "ddim",
                "--sample-steps",
                "1",
                "--num-samples",
                "1",
            ]
        )
    )


@pytest.mark.timeout(180)
def test_pvdm_autoencoder_trains_on_videos_with_worker_processes(video_root, tmp_path):
    sets = {
        "frames": 2,
        "height": 8,
        "width": 12,
        "patch_size": [1, 4, 4],
        "dim": 8,
        "encoder_depth": 1,
        "decoder_depth": 1,
        "heads": 1,
        "dim_head": 8,
        "proj_depth": 1,
        "proj_heads": 1,
        "proj_mlp_dim": 8,
        "latent_channels": 2,
    }
    _check(
        pvdm_train.main(
            [
                "--stage",
                "ae",
                *_sets(sets),
                "--data",
                str(video_root),
                "--out",
                str(tmp_path),
                *COMMON,
                "--num-samples",
                "1",
            ]
        )
    )


@pytest.mark.timeout(180)
def test_cmd_autoencoder_trains_on_videos_with_worker_processes(video_root, tmp_path):
    sets = {
        "frames": 4,
        "height": 16,
        "width": 24,
        "ae_patch": 4,
        "ae_dim": 16,
        "ae_depth": 1,
        "ae_heads": 2,
        "ae_dim_head": 8,
        "motion_channels": 2,
    }
    _check(
        cmd_train.main(
            [
                "--stage",
                "ae",
                *_sets(sets),
                "--data",
                str(video_root),
                "--out",
                str(tmp_path),
                *COMMON,
                "--sample-steps",
                "1",
                "--num-samples",
                "1",
            ]
        )
    )
