"""Data-parallel training: two CPU processes (gloo) under torchrun against one process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reference_models.common.checkpoint import load_checkpoint
from reference_models.common.distributed import (
    DistInfo,
    all_gather_strings,
    any_rank,
    init_distributed,
    make_sampler,
    wrap_model,
)
from reference_models.common.trainer import train

WORKER = Path(__file__).with_name("_ddp_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_each_other_and_one_process(tmp_path: Path) -> None:
    worker = load_worker()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc_per_node={worker.WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(worker.WORLD)]
    meta = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(worker.WORLD)]
    for name, value in ranks[0].items():  # DDP keeps every rank's weights identical
        assert torch.equal(value, ranks[1][name]), name
    assert [m["is_main"] for m in meta] == [True, False]
    assert all(m["gathered"] == ["ré", "rré"] for m in meta)
    assert meta[0]["history"] and not meta[1]["history"]  # only rank 0 logs
    assert all(m["draws"] == m["replayed"] for m in meta)  # each rank got its own RNG state back
    assert meta[0]["draws"] != meta[1]["draws"]  # ranks draw different noise

    # Rank 0 wrote the checkpoints; the final one holds the trained weights.
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.step == worker.STEPS and len(ckpt.rng_state["per_rank"]) == worker.WORLD
    for name, value in ckpt.state["model"].items():
        assert torch.equal(value, ranks[0][f"model.{name}"])

    # One process with the same global batch, trained straight through.
    single = train(
        worker.make_config(tmp_path / "single", worker.PER_RANK_BATCH * worker.WORLD),
        worker.make_model(),
        worker.loss_fn,
        worker.make_dataset(),
    )
    start = worker.make_model().state_dict()
    for name, value in single.model.state_dict().items():
        assert not torch.allclose(value, start[name])  # it did train
        torch.testing.assert_close(ranks[0][f"model.{name}"], value, rtol=1e-5, atol=1e-6)
    for name, value in single.ema.module.state_dict().items():
        torch.testing.assert_close(ranks[0][f"ema.{name}"], value, rtol=1e-5, atol=1e-6)


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(device=torch.device("cpu")) and info.is_main and not info.distributed
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, info) is model
    assert all_gather_strings("x", info) == ["x"] and any_rank(True, info)


def test_missing_torchrun_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="RANK.*torchrun"):
        init_distributed("cpu")


def test_global_batches_do_not_depend_on_process_count() -> None:
    """The union of the ranks' i-th batches is the single process's i-th global batch."""
    data = list(range(24))
    batch, world = 3, 2
    single = list(make_sampler(data, DistInfo(), seed=4))
    per_rank = [list(make_sampler(data, DistInfo(rank=r, world_size=world), seed=4)) for r in range(world)]
    for i in range(len(data) // (batch * world)):
        union = sorted(sum((idx[i * batch : (i + 1) * batch] for idx in per_rank), []))
        assert union == sorted(single[i * batch * world : (i + 1) * batch * world])
