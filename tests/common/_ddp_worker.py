"""Run under ``torchrun --nproc_per_node=2`` by ``test_distributed.py``: train a small model on CPU.

Each rank trains ``STOP`` steps, stops, resumes from the checkpoint rank 0 wrote and finishes
``STEPS`` steps (one launch covers DDP training, the checkpoint barrier and the RNG gathering);
then it saves its parameters to ``<out_dir>/rank<r>.safetensors`` and, to ``<out_dir>/rank<r>.json``,
the strings it gathered from all ranks and random draws made before and after restoring its RNG
state from the checkpoint.

The test process imports this file for ``make_model``, ``make_dataset``, ``loss_fn`` and
``make_config``, and trains one process with the same global batch to compare.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

STEPS, STOP, PER_RANK_BATCH, WORLD = 6, 4, 2, 2


def make_model() -> nn.Module:
    """Deterministic (no dropout) and identical on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def make_dataset() -> TensorDataset:
    """16 items: 4 global batches of 4 per epoch, so 6 steps cross an epoch boundary."""
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g))


def loss_fn(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def make_config(out_dir: str | Path, batch_size: int):
    from reference_models.common.trainer import TrainConfig

    return TrainConfig(
        steps=STEPS,
        batch_size=batch_size,
        lr=5e-2,
        weight_decay=0.01,
        warmup_steps=2,
        grad_clip=1.0,
        ema_decay=0.5,
        log_every=2,
        ckpt_every=100,
        out_dir=str(out_dir),
        seed=11,
        device="cpu",
        progress=False,
        tensorboard=False,
    )


def main(out_dir: str) -> None:
    from reference_models.common.checkpoint import load_checkpoint, restore_rng_state
    from reference_models.common.distributed import all_gather_strings, cleanup, init_distributed
    from reference_models.common.trainer import train

    torch.set_num_threads(1)
    info = init_distributed("cpu")
    try:
        assert info.world_size == WORLD, info
        cfg = make_config(Path(out_dir) / "run", PER_RANK_BATCH)
        first = train(cfg, make_model(), loss_fn, make_dataset(), stop_at=STOP, dist_info=info)
        assert first.step == STOP
        # The checkpoint holds each rank's own RNG state: restoring it replays this rank's draws.
        draws = torch.rand(3).tolist()
        ckpt = load_checkpoint(first.last_checkpoint)
        restore_rng_state(ckpt.rng_state["per_rank"][info.rank])
        replayed = torch.rand(3).tolist()
        state = train(cfg, make_model(), loss_fn, make_dataset(), resume=True, dist_info=info)
        assert state.step == STEPS
        # Strings of different lengths per rank exercise the padding in all_gather_strings.
        gathered = all_gather_strings("r" * (info.rank + 1) + "é", info)
        tensors = {f"model.{k}": v.contiguous() for k, v in state.model.state_dict().items()}
        ema = state.ema.module.state_dict()
        tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
        save_file(tensors, str(Path(out_dir) / f"rank{info.rank}.safetensors"))
        (Path(out_dir) / f"rank{info.rank}.json").write_text(
            json.dumps(
                {
                    "gathered": gathered,
                    "is_main": info.is_main,
                    "history": state.history,
                    "draws": draws,
                    "replayed": replayed,
                }
            )
        )
    finally:
        cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
