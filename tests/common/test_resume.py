"""Resume never destroys a run: it finds the newest good checkpoint without ``latest``, falls back
past corrupt ones, refuses to start afresh over old checkpoints or into another model, and saving
cleans up after a crash and follows the umask (issue 13, items 4 and 5)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from reference_models.common.checkpoint import (
    CheckpointError,
    StateDictMismatchError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from reference_models.common.trainer import TrainConfig, train


class Clips(Dataset):
    """Fixed random clips (c, t, h, w) = (1, 2, 4, 4) with 3-number targets."""

    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(5)
        self.x = torch.randn(n, 1, 2, 4, 4, generator=g)
        self.y = torch.randn(n, 3, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"video": self.x[i], "target": self.y[i]}


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, width, 3, padding=1)
        self.norm = nn.BatchNorm3d(width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3, 4)))  # (b, 3)


def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
    x = batch["video"]
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return nn.functional.mse_loss(model(x + 0.1 * noise), batch["target"])


def config(out: Path, **overrides) -> TrainConfig:
    base = dict(
        steps=6,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        log_every=1,
        ckpt_every=2,
        keep_last=None,
        out_dir=str(out),
        seed=3,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def net(width: int = 4, seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(width)


def run(out: Path, *, width: int = 4, seed: int = 0, config_dict=None, **kwargs):
    fields = TrainConfig.__dataclass_fields__
    cfg_overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    return train(config(out, **cfg_overrides), net(width, seed), loss_fn, Clips(), config_dict=config_dict, **kwargs)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def tensor_file(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["tensors_file"]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.fixture
def straight(tmp_path: Path):
    """A 6-step run without interruption, for bitwise comparison."""
    return run(tmp_path / "straight")


@pytest.fixture
def stopped(tmp_path: Path) -> Path:
    """A run stopped at step 4 with checkpoints at steps 2 and 4; returns its output directory."""
    out = tmp_path / "run"
    run(out, stop_at=4)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step_00000002.json", "step_00000004.json"]
    return out


# --------------------------------------------------------------------------- which checkpoint


def test_missing_latest_resumes_from_the_newest(stopped: Path, straight, caplog) -> None:
    caplog.set_level(logging.INFO, logger="reference_models")
    (stopped / "checkpoints" / "latest").unlink()
    state = run(stopped, resume=True, seed=9)
    assert [int(r["step"]) for r in state.history] == [5, 6]  # continued after step 4
    assert_same_weights(state.model, straight.model)
    assert "no 'latest' pointer" in caplog.text and "step_00000004.json at step 4" in caplog.text


@pytest.mark.parametrize("damage", ["truncated tensors", "garbage manifest"])
def test_corrupt_newest_falls_back_to_the_one_before(stopped: Path, straight, caplog, damage: str) -> None:
    caplog.set_level(logging.INFO, logger="reference_models")
    newest = stopped / "checkpoints" / "step_00000004.json"
    if damage == "truncated tensors":
        path = tensor_file(newest)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        reason = "SHA-256"
    else:
        newest.write_text('{"format": "vdblocks-chec')
        reason = "not valid JSON"
    # Checkpoint every step: the save at step 3 prunes while the damaged step 4 is still there.
    state = run(stopped, resume=True, seed=9, ckpt_every=1)
    assert [int(r["step"]) for r in state.history] == [3, 4, 5, 6]  # resumed from step 2
    assert_same_weights(state.model, straight.model)
    skipped = [r for r in caplog.records if "skipped checkpoint step_00000004.json" in r.message]
    assert len(skipped) == 1 and reason in skipped[0].message
    assert skipped[0].levelno == logging.WARNING
    assert "falling back to step_00000002.json" in caplog.text
    assert load_checkpoint(newest).step == 4  # rewritten by the resumed run, and whole again


def test_all_corrupt_refuses_naming_each_problem(stopped: Path) -> None:
    ckpt_dir = stopped / "checkpoints"
    first, second = list_checkpoints(ckpt_dir)
    first.write_text("not json")
    tensor_file(second).unlink()
    before = snapshot(ckpt_dir)
    with pytest.raises(CheckpointError) as info:
        run(stopped, resume=True)
    message = str(info.value)
    assert str(ckpt_dir) in message and "none of the 2 checkpoint(s)" in message
    assert f"{first} is not valid JSON" in message
    assert "step_00000004.json refers to" in message and "which does not exist" in message
    assert snapshot(ckpt_dir) == before


# --------------------------------------------------------------------------- never another run's files


def test_fresh_start_over_old_checkpoints_is_refused(stopped: Path) -> None:
    before, metrics = snapshot(stopped / "checkpoints"), (stopped / "metrics.csv").read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds 2 checkpoint\(s\).*--resume.*--out"):
        run(stopped)
    assert snapshot(stopped / "checkpoints") == before
    assert (stopped / "metrics.csv").read_bytes() == metrics


def test_resuming_another_runs_checkpoint_into_a_dir_with_checkpoints_is_refused(stopped: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run(other, steps=2, ckpt_every=1)
    before = snapshot(stopped / "checkpoints")
    with pytest.raises(CheckpointError, match="holds checkpoints of another run"):
        run(stopped, resume=other / "checkpoints" / "step_00000002.json")
    assert snapshot(stopped / "checkpoints") == before
    # Into a directory without checkpoints it is a fine-tuning start, as before.
    state = run(tmp_path / "fresh", resume=other, steps=4)
    assert [int(r["step"]) for r in state.history] == [3, 4]


# --------------------------------------------------------------------------- another model


def test_resume_into_another_model_config_names_the_fields(tmp_path: Path) -> None:
    out = tmp_path / "run"
    stored = {"toy": {"width": 4, "depth": 1, "sizes": (1, 2)}, "data": {"n": 12}}
    run(out, width=4, config_dict=stored, stop_at=2)
    model = net(width=8, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {"toy": {"width": 8, "depth": 1, "sizes": [1, 2]}, "data": {"n": 12}}
    with pytest.raises(CheckpointError) as info:
        train(config(out), model, loss_fn, Clips(), config_dict=changed, resume=True)
    message = str(info.value)
    listed = [
        line.strip()
        for line in message.splitlines()
        if "->" in line and ":" in line and not line.startswith("cannot") and "(checkpoint -> this run)" not in line
    ]
    assert listed == ["toy.width: 4 -> 8"]
    assert "conv.weight" not in message  # the config, not the state-dict keys
    for k, v in model.state_dict().items():  # refused before any weight was copied
        assert torch.equal(v, before[k]), k


def test_config_change_that_keeps_the_weights_resumes_with_a_warning(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="reference_models")
    out = tmp_path / "run"
    run(out, config_dict={"toy": {"width": 4}, "data": {"n": 12}}, stop_at=2)
    state = run(out, config_dict={"toy": {"width": 4}, "data": {"n": 16}}, resume=True)
    assert state.step == 6
    assert "data.n: 12 -> 16" in caplog.text


def test_resume_into_another_model_without_config_gives_a_short_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(out, width=4, stop_at=2)
    with pytest.raises(StateDictMismatchError) as info:
        run(out, width=8, resume=True)
    message = str(info.value)
    assert "7 with another shape" in message and "(3 more)" in message
    assert "conv.weight (4, 1, 3, 3, 3) in the checkpoint, (8, 1, 3, 3, 3) in the model" in message
    assert len(message) < 800


# --------------------------------------------------------------------------- crashes and modes


CRASH = """
import os, signal, sys, torch
from torch import nn
from reference_models.common.checkpoint import save_checkpoint
real = os.replace
def crash(src, dst):
    if str(dst).endswith(".safetensors"):  # killed after writing the tensors, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = crash
save_checkpoint(sys.argv[1], model=nn.Linear(3, 2), step=2)
"""


@pytest.mark.skipif(os.name != "posix", reason="simulates a crash with SIGKILL")
def test_stale_temp_files_of_a_crash_are_removed_by_the_next_save(tmp_path: Path) -> None:
    first = save_checkpoint(tmp_path, model=nn.Linear(3, 2), step=1)
    proc = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path)], timeout=120, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(left) == 1 and left[0].endswith(".safetensors")  # a whole tensor file, leaked
    ours = [".tmp-latest-a1b2_c3d", ".tmp-step_00000002.json-xYz09_ab"]  # mkstemp leftovers
    others = [".tmp-notes.txt", ".tmp-0123.safetensors", "notes.tmp", "README.md", ".tmp-latest"]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-latest-dir_1234").mkdir()  # only files are ever removed

    second = save_checkpoint(tmp_path, model=nn.Linear(3, 2), step=2)
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(left + ours)
    assert set(others) | {".tmp-latest-dir_1234"} <= names
    assert load_checkpoint(first).step == 1 and load_checkpoint(tmp_path).path == second


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        manifest = save_checkpoint(tmp_path, model=nn.Linear(3, 2), step=1)
    finally:
        os.umask(old)
    for path in (manifest, tensor_file(manifest), tmp_path / "latest"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
