"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

Launch one process per device::

    torchrun --nproc_per_node=2 examples/train_etc.py ...

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
``init_distributed`` reads them and joins the process group (``nccl`` on CUDA, ``gloo`` on CPU).
Without those variables it returns a single-process ``DistInfo`` and the same script runs as is.

Batch size: ``TrainConfig.batch_size`` is the batch of *one* process, so the global batch of an
update is ``batch_size * world_size``. ``DistributedDataParallel`` averages the gradients over the
processes, so one update on ``world_size`` processes with batch ``b`` each equals one update of a
single process with batch ``b * world_size`` (same samples, same mean loss), up to float rounding.

Only rank 0 logs, samples and writes checkpoints; every rank reads checkpoints when resuming
(the output directory must be on a filesystem all ranks see).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

__all__ = [
    "DistInfo",
    "resolve_device",
    "init_distributed",
    "current_dist_info",
    "wrap_model",
    "make_sampler",
    "barrier",
    "all_reduce_sum",
    "any_rank",
    "all_gather_strings",
    "cleanup",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node,
    and the ``device`` it trains on. ``is_main`` is rank 0, the one that logs and writes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; a bare ``"cuda"``
    becomes ``cuda:<local_rank>``; anything else is taken as given."""
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available; use 'cpu'")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(
    device: str | torch.device = "auto",
    *,
    backend: str | None = None,
    timeout_s: float = 1800.0,
) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment variables.

    Returns a single-process ``DistInfo`` when ``WORLD_SIZE`` is unset or 1. The backend defaults to
    ``nccl`` on CUDA and ``gloo`` on CPU; on CUDA the process is bound to ``cuda:<LOCAL_RANK>``.
    Calling it again after the group exists returns the same description.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=resolve_device(device))
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    if dist.is_initialized():
        return current_dist_info(device)
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch with "
            "`torchrun --nproc_per_node=N script.py` so every process gets its rank"
        )
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def current_dist_info(device: str | torch.device = "auto") -> DistInfo:
    """Describe the already-initialised process group (or a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=resolve_device(device))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dist.get_backend() == "nccl" and dev.type != "cuda":
        dev = torch.device("cuda", local_rank)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_model(model: nn.Module, info: DistInfo, **ddp_kwargs) -> nn.Module:
    """``DistributedDataParallel(model)`` when running on several processes, ``model`` otherwise.

    The model must already be on ``info.device``. DDP broadcasts rank 0's parameters and buffers at
    construction, so every rank starts from the same weights.
    """
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def make_sampler(dataset: Dataset, info: DistInfo, *, seed: int, shuffle: bool = True) -> DistributedSampler:
    """A ``DistributedSampler`` giving rank ``r`` the items ``perm[r::world_size]`` of one seeded
    permutation per epoch (call ``set_epoch``). Also used with one process, so the order of the
    samples in a global batch does not depend on the number of processes."""
    return DistributedSampler(
        dataset,
        num_replicas=info.world_size,
        rank=info.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
    )


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op on one process)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``x`` over the ranks (a copy of ``x`` on one process)."""
    x = x.detach().clone()
    if info.distributed:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is true on at least one rank, so every rank takes the same branch (a rank
    that skipped a backward pass the others run would hang the gradient all-reduce)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_strings(text: str, info: DistInfo) -> list[str]:
    """Every rank's ``text``, in rank order (``[text]`` on one process).

    Sent as padded UTF-8 byte tensors rather than with ``all_gather_object``, which pickles.
    """
    if not info.distributed:
        return [text]
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device=info.device)
    length = torch.tensor([data.numel()], dtype=torch.int64, device=info.device)
    lengths = [torch.zeros_like(length) for _ in range(info.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(n.item() for n in lengths))
    padded = torch.zeros(longest, dtype=torch.uint8, device=info.device)
    padded[: data.numel()] = data
    chunks = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(chunks, padded)
    return [bytes(chunk[: int(n.item())].cpu().tolist()).decode("utf-8") for chunk, n in zip(chunks, lengths)]


def cleanup() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
