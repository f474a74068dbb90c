"""The training loop shared by the reference systems: one readable function per concern.

``train(cfg, model, loss_fn, dataset)`` runs AdamW with a warm-up LR schedule, gradient clipping,
EMA, mixed precision, data-parallel training, periodic logging/sampling/checkpoints and exact
resume. The model-specific part is ``loss_fn(model, batch, generator=...) -> scalar loss`` (each
reference system passes one that noises the batch with ``q_sample`` and returns the denoising loss
its config's diffusion spec names) and an optional ``sample_fn(ema_model, step, out_dir) ->
list[Path]`` that writes sample videos.

Randomness is fully controlled, so that ``N`` straight steps and ``k`` steps + stop + resume to ``N``
give bitwise-identical weights (on CPU, with ``num_workers=0``):

* data order: a ``DistributedSampler`` (also on one process) shuffles with ``seed`` and the epoch
  number; the checkpoint stores the epoch and the number of batches consumed in it, and a resumed
  run skips exactly those indices (without loading them);
* noise and timestep draws: ``loss_fn`` receives an explicit ``torch.Generator`` when it takes a
  ``generator`` argument; dropout and anything else uses the global RNGs; every RNG state
  (Python, NumPy, torch CPU/CUDA, the generator) of every rank is saved in the checkpoint;
* sampling runs with the RNG states saved and restored around it, so it never shifts training.

With ``num_workers > 0`` the data order stays exact, but random augmentations done inside workers
restart their per-epoch worker seeds on resume.

Output directory: ``metrics.csv`` (see ``logging.MetricsLogger``), ``checkpoints/`` (see
``checkpoint``), ``samples/`` (``sample_fn``'s ``out_dir``). It holds one run: a fresh start into
a directory with checkpoints is refused instead of overwriting and pruning them, and ``resume``
only continues the run whose checkpoints are there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm import tqdm

from .checkpoint import (
    LATEST,
    CheckpointError,
    StateDictMismatchError,
    capture_rng_state,
    checkpoint_path,
    decode_state,
    encode_state,
    find_resumable_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)
from .distributed import (
    DistInfo,
    all_gather_strings,
    all_reduce_sum,
    any_rank,
    barrier,
    current_dist_info,
    make_sampler,
    wrap_model,
)
from .ema import EMA
from .logging import MetricsLogger
from .optim import WarmupCosine, build_optimizer, build_scheduler
from .precision import PRECISIONS, autocast, check_precision, make_grad_scaler

__all__ = [
    "TrainConfig",
    "TrainState",
    "NonFiniteLossError",
    "check_data_dir",
    "check_dataset",
    "derive_seed",
    "seed_everything",
    "enable_grad_checkpointing",
    "make_loader",
    "train_step",
    "write_checkpoint",
    "run_sampling",
    "check_fresh_out_dir",
    "resume_training",
    "train",
]

LossFn = Callable[..., torch.Tensor]
SampleFn = Callable[[nn.Module, int, Path], Sequence[Path]]

# Independent random streams derived from (seed, rank, stream): see derive_seed.
_STREAM_GLOBAL, _STREAM_LOSS, _STREAM_LOADER, _STREAM_RESEED = 0, 1, 2, 3


@dataclass(frozen=True)
class TrainConfig:
    """Everything the loop needs besides the model, the loss and the data.

    ``batch_size`` is per process: the global batch is ``batch_size * world_size``.
    ``steps`` counts loop iterations (updates, plus updates skipped for a non-finite loss).
    ``grad_clip``: max global gradient norm (``None`` or 0 disables clipping; the norm is still
    logged). ``warmup_steps``/``cosine``/``min_lr_ratio``: see ``optim.WarmupCosine``.
    ``precision``: ``"fp32"``, ``"bf16"`` (autocast, CPU or GPU) or ``"fp16"`` (CUDA, GradScaler).
    ``grad_checkpointing`` is passed to models that support it (``enable_grad_checkpointing``).
    ``log_every``/``sample_every``/``ckpt_every``: intervals in steps (0 disables sampling or
    periodic checkpoints; a final checkpoint is always written). ``keep_last``: number of
    checkpoints kept (``None`` keeps all). ``nonfinite``: ``"stop"`` raises ``NonFiniteLossError``,
    ``"skip"`` drops the update and counts it. ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``...
    (under ``torchrun`` on CUDA each rank uses ``cuda:<LOCAL_RANK>``). ``progress``: tqdm bar on a
    terminal. ``tensorboard``: ``None`` uses it when installed.
    """

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    cosine: bool = False
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    precision: str = "fp32"
    grad_checkpointing: bool = False
    log_every: int = 50
    sample_every: int = 0
    ckpt_every: int = 1000
    keep_last: int | None = 3
    out_dir: str | os.PathLike = "runs/train"
    seed: int = 0
    nonfinite: str = "stop"
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"expected TrainConfig.{name} to be a positive int, got {value!r}")
        for name in ("warmup_steps", "sample_every", "ckpt_every", "num_workers", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"expected TrainConfig.{name} to be an int >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"expected TrainConfig.lr > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"expected TrainConfig.weight_decay >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"expected TrainConfig.grad_clip >= 0 or None, got {self.grad_clip}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"expected TrainConfig.ema_decay in [0, 1], got {self.ema_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"expected TrainConfig.min_lr_ratio in [0, 1], got {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"expected TrainConfig.precision in {PRECISIONS}, got {self.precision!r}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"expected TrainConfig.nonfinite to be 'stop' or 'skip', got {self.nonfinite!r}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"expected TrainConfig.keep_last >= 1 or None, got {self.keep_last}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``out_dir`` as a string) for checkpoints."""
        d = dataclasses.asdict(self)
        d["out_dir"] = os.fspath(self.out_dir)
        return d


@dataclass
class TrainState:
    """The loop's position and objects; ``train`` returns it.

    ``step``: iterations done. ``epoch``/``batches_done``: data position (batches consumed in
    ``epoch``). ``skipped_steps``: updates dropped for a non-finite loss. ``history``: the logged
    metric rows (rank 0). ``model`` is the plain (unwrapped) model.
    """

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int = 0
    epoch: int = 0
    batches_done: int = 0
    skipped_steps: int = 0
    last_checkpoint: Path | None = None
    history: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLossError(RuntimeError):
    """A NaN or inf loss (or gradient norm) under ``nonfinite="stop"``; the weights were not
    updated by the bad step and the last checkpoint (``checkpoint``) is kept."""

    def __init__(self, step: int, what: str, value: float, checkpoint: Path | None) -> None:
        self.step, self.what, self.value, self.checkpoint = step, what, value, checkpoint
        kept = (
            f"the last good checkpoint at {checkpoint} is kept (resume from it with resume=True)"
            if checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"non-finite {what} ({value}) at step {step}: training stopped before updating the "
            f"weights; {kept}. Set TrainConfig.nonfinite='skip' to step over such batches."
        )


# --------------------------------------------------------------------------- checks and seeds


def check_data_dir(path: str | os.PathLike) -> Path:
    """Check that the data directory ``path`` exists and is a directory; return it as a Path."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"data directory {path} is not a directory")
    return path


def check_dataset(dataset: object, *, batch_size: int, world_size: int = 1) -> int:
    """Check before training that ``dataset`` can fill one global batch; return its length.

    Raises ``TypeError`` for something that is not a map-style dataset with ``__len__``,
    ``FileNotFoundError`` when its ``root`` directory is missing, and ``ValueError`` when it is
    empty or holds fewer items than ``batch_size * world_size``.
    """
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"expected a map-style dataset with __len__ and __getitem__, got "
            f"{type(dataset).__name__} (iterable datasets cannot resume at an exact position)"
        )
    root = getattr(dataset, "root", None)
    if isinstance(root, (str, os.PathLike)):
        check_data_dir(root)
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as err:
        raise TypeError(f"expected a dataset with __len__, got {type(dataset).__name__}") from err
    if n == 0:
        where = f" in {root}" if root is not None else ""
        raise ValueError(f"the dataset is empty: found 0 items{where}")
    global_batch = batch_size * world_size
    if n < global_batch:
        raise ValueError(
            f"the dataset has {n} items, fewer than one global batch of {global_batch} "
            f"(batch_size {batch_size} x {world_size} process(es)); lower batch_size or add data"
        )
    return n


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. seed, rank, stream) by NumPy's ``SeedSequence``, so
    different ranks and streams get unrelated random sequences."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_grad_checkpointing(model: nn.Module, enabled: bool = True) -> bool:
    """Turn on gradient checkpointing in ``model`` if it supports it; return whether it did.

    A model opts in with ``set_grad_checkpointing(enable)`` (timm's name, used by our reference
    models) or diffusers' ``enable_gradient_checkpointing()``; others get a warning.
    """
    if not enabled:
        return False
    if callable(getattr(model, "set_grad_checkpointing", None)):
        model.set_grad_checkpointing(True)
        return True
    if callable(getattr(model, "enable_gradient_checkpointing", None)):
        model.enable_gradient_checkpointing()
        return True
    warnings.warn(
        f"grad_checkpointing=True but {type(model).__name__} has no set_grad_checkpointing(); training without it",
        stacklevel=2,
    )
    return False


# --------------------------------------------------------------------------- data


class _SkipSampler(Sampler[int]):
    """The indices of ``base`` after its first ``skip`` (a resumed epoch starts mid-way)."""

    def __init__(self, base: Sampler[int], skip: int) -> None:
        self.base, self.skip = base, skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)  # type: ignore[arg-type]


def _seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch and `random` in each worker from its generator; NumPy it leaves alone.
    np.random.seed(torch.initial_seed() % 2**32)


def make_loader(
    dataset: Dataset,
    sampler: Any,
    cfg: TrainConfig,
    info: DistInfo,
    *,
    epoch: int,
    batches_done: int,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """The loader for the rest of ``epoch``, skipping the ``batches_done`` batches already used.

    The loader gets its own generator (its worker seeds would otherwise come from the global RNG,
    which would make the global RNG depend on where a run was resumed).
    """
    sampler.set_epoch(epoch)
    seed = derive_seed(cfg.seed, info.rank, _STREAM_LOADER, epoch)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=_SkipSampler(sampler, batches_done * cfg.batch_size),
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=True,
        pin_memory=info.device.type == "cuda",
        generator=generator,
        worker_init_fn=_seed_worker if cfg.num_workers > 0 else None,
    )


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------- one step


def _loss_caller(loss_fn: LossFn) -> Callable[[nn.Module, Any, torch.Generator], torch.Tensor]:
    """Call ``loss_fn(model, batch, generator=g)`` when it takes ``generator`` (or ``**kwargs``),
    else ``loss_fn(model, batch)``."""
    try:
        params = inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):
        return lambda m, b, g: loss_fn(m, b)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "generator" in params or takes_kwargs:
        return lambda m, b, g: loss_fn(m, b, generator=g)
    return lambda m, b, g: loss_fn(m, b)


def _check_loss(loss: object) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"expected loss_fn to return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"expected loss_fn to return a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError("the loss does not require grad: is the model's output detached?")
    return loss.reshape(())


@dataclass
class _StepResult:
    loss: float
    grad_norm: float
    lr: float
    skipped: bool


def _skip_or_stop(
    what: str, value: float, lr: float, state: TrainState, cfg: TrainConfig, logger: MetricsLogger
) -> _StepResult:
    """Apply ``cfg.nonfinite`` to a bad step (identically on every rank)."""
    step = state.step + 1
    if cfg.nonfinite == "stop":
        raise NonFiniteLossError(step, what, value, state.last_checkpoint)
    state.scheduler.step()
    state.skipped_steps += 1
    logger.warning(f"step {step}: non-finite {what} ({value}); update skipped ({state.skipped_steps} skipped so far)")
    return _StepResult(loss=value, grad_norm=float("nan"), lr=lr, skipped=True)


def train_step(
    model: nn.Module,
    batch: Any,
    call_loss: Callable,
    generator: torch.Generator,
    state: TrainState,
    cfg: TrainConfig,
    info: DistInfo,
    logger: MetricsLogger,
) -> _StepResult:
    """Forward (autocast), finite check, backward (scaled), clip, AdamW step, LR step, EMA update.

    A skipped step leaves weights, optimizer state and EMA untouched but still advances the LR
    schedule, which is a function of the step count.
    """
    model.train()
    optimizer, scaler = state.optimizer, state.scaler
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (the scheduler then moves on)
    with autocast(cfg.precision, info.device):
        loss = _check_loss(call_loss(model, batch, generator)).float()
    loss_value = float(loss.detach().item())
    if any_rank(not math.isfinite(loss_value), info):
        return _skip_or_stop("loss", loss_value, lr, state, cfg, logger)

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip else float("inf")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm).item())
    # Under fp16 an inf gradient is the GradScaler's business (it skips and lowers the scale).
    if not math.isfinite(grad_norm) and not scaler.is_enabled():
        optimizer.zero_grad(set_to_none=True)
        return _skip_or_stop("gradient norm", grad_norm, lr, state, cfg, logger)
    scaler.step(optimizer)
    scaler.update()
    state.scheduler.step()
    state.ema.update(model, cfg.ema_decay)
    return _StepResult(loss=loss_value, grad_norm=grad_norm, lr=lr, skipped=False)


# --------------------------------------------------------------------------- periodic work


def _data_state(state: TrainState, cfg: TrainConfig, info: DistInfo, dataset_len: int) -> dict:
    return {
        "epoch": state.epoch,
        "batches_done": state.batches_done,
        "batch_size": cfg.batch_size,
        "world_size": info.world_size,
        "dataset_len": dataset_len,
        "seed": cfg.seed,
    }


def write_checkpoint(
    state: TrainState,
    cfg: TrainConfig,
    info: DistInfo,
    generator: torch.Generator,
    *,
    dataset_len: int,
    config_dict: Mapping | None,
) -> Path:
    """Gather every rank's RNG states, write the checkpoint on rank 0, and keep all ranks in step.

    A failure on rank 0 is re-raised on every rank instead of leaving the others at a barrier.
    """
    rng_json = json.dumps(capture_rng_state({"loss": generator}))
    per_rank = [json.loads(s) for s in all_gather_strings(rng_json, info)]
    ckpt_dir = Path(cfg.out_dir) / "checkpoints"
    barrier(info)
    error: BaseException | None = None
    if info.is_main:
        try:
            save_checkpoint(
                ckpt_dir,
                model=state.model,
                ema=state.ema,
                optimizer=state.optimizer,
                scheduler=state.scheduler,
                scaler=state.scaler,
                step=state.step,
                data_state=_data_state(state, cfg, info, dataset_len),
                rng_state={"per_rank": per_rank},
                config={"train": cfg.to_dict(), "model": dict(config_dict or {})},
                extra={"skipped_steps": state.skipped_steps},
                keep_last=cfg.keep_last,
            )
        except BaseException as err:  # noqa: BLE001 - re-raised below, after telling the others
            error = err
    failed = any_rank(error is not None, info)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("rank 0 failed to write the checkpoint; see its error")
    state.last_checkpoint = checkpoint_path(ckpt_dir, state.step)
    return state.last_checkpoint


@contextlib.contextmanager
def _isolated_rng(device: torch.device) -> Iterator[None]:
    """Restore every global RNG afterwards, so sampling (rank 0 only) never shifts training."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def run_sampling(
    sample_fn: SampleFn,
    state: TrainState,
    cfg: TrainConfig,
    info: DistInfo,
    logger: MetricsLogger,
) -> list[Path]:
    """Call ``sample_fn(ema_model, step, out_dir/samples)`` on rank 0; the others wait."""
    paths: list[Path] = []
    if info.is_main:
        sample_dir = Path(cfg.out_dir) / "samples"
        sample_dir.mkdir(parents=True, exist_ok=True)
        with _isolated_rng(info.device), torch.no_grad():
            paths = [Path(p) for p in sample_fn(state.ema.module, state.step, sample_dir)]
        logger.info(f"step {state.step}: wrote {', '.join(map(str, paths)) or 'no samples'}")
    barrier(info)
    return paths


class _Meter:
    """Means of loss and gradient norm, and iterations per second, since the last log row."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.norm_sum = 0.0
        self.updates = self.iterations = 0
        self.lr = float("nan")
        self.start = time.perf_counter()

    def add(self, result: _StepResult) -> None:
        self.iterations += 1
        self.lr = result.lr
        if not result.skipped:
            self.loss_sum += result.loss
            self.norm_sum += result.grad_norm
            self.updates += 1

    def row(self, state: TrainState, info: DistInfo) -> dict[str, float]:
        totals = all_reduce_sum(
            torch.tensor([self.loss_sum, float(self.updates)], dtype=torch.float64, device=info.device),
            info,
        ).tolist()
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "loss": totals[0] / totals[1] if totals[1] else float("nan"),
            "lr": self.lr,
            "grad_norm": self.norm_sum / self.updates if self.updates else float("nan"),
            "it_per_s": self.iterations / elapsed,
            "skipped_steps": state.skipped_steps,
        }


# --------------------------------------------------------------------------- resume


def _restore_data_position(
    data_state: Mapping, cfg: TrainConfig, info: DistInfo, dataset_len: int, notes: list[str]
) -> tuple[int, int]:
    """Map the saved (epoch, batches consumed) onto this run's batch size and process count."""
    epoch, done = int(data_state["epoch"]), int(data_state["batches_done"])
    if data_state["dataset_len"] != dataset_len or data_state["seed"] != cfg.seed:
        notes.append(
            f"dataset length or seed changed ({data_state['dataset_len']} -> {dataset_len}, "
            f"seed {data_state['seed']} -> {cfg.seed}); continuing from a fresh epoch {epoch + 1}"
        )
        return epoch + 1, 0
    # The union of the ranks' first i batches is the first i * batch * world items of the epoch's
    # permutation, whatever the process count, so the position converts between layouts.
    consumed = done * int(data_state["batch_size"]) * int(data_state["world_size"])
    per_step = cfg.batch_size * info.world_size
    if consumed % per_step:
        notes.append(
            f"{consumed} samples of epoch {epoch} were used, not a multiple of the new global "
            f"batch {per_step}; resuming at the batch boundary before"
        )
    return epoch, consumed // per_step


class _Warning(str):
    """A note that ``train`` logs as a warning rather than as information."""


def check_fresh_out_dir(out_dir: str | os.PathLike) -> None:
    """Refuse to start a run from step 0 in ``out_dir`` when its ``checkpoints/`` holds checkpoints
    of an earlier run, which the new run would overwrite and prune (``CheckpointError``).

    ``train`` calls it when ``resume`` is false; a script that writes into ``out_dir`` before
    calling ``train`` (a latent cache, say) can call it first.
    """
    ckpt_dir = Path(out_dir) / "checkpoints"
    found = list_checkpoints(ckpt_dir)
    if found:
        raise CheckpointError(
            f"{ckpt_dir} already holds {len(found)} checkpoint(s) of an earlier run (newest "
            f"{found[-1].name}); a new run from step 0 would overwrite and delete them. Pass "
            "resume=True (--resume) to continue that run, or choose another output directory "
            "(--out)."
        )


def _checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory a ``resume`` directory means: itself, or its ``checkpoints/``."""
    if list_checkpoints(path) or (path / LATEST).exists() or not (path / "checkpoints").is_dir():
        return path
    return path / "checkpoints"


def _plain(value: Any) -> Any:
    """Tuples as lists and keys as strings, so a config compares equal to its JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


_ABSENT = object()


def _show(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _config_differences(stored: Mapping, current: Mapping) -> list[str]:
    """``field: checkpoint value -> this run's value`` for every field (dotted path) that differs
    between two model configs; ``current`` goes through the checkpoint's own JSON encoding first, so
    a tuple equals the list it was stored as."""
    current = decode_state(json.loads(json.dumps(encode_state(dict(current), "config", {}))), {})
    old, new = _flatten(_plain(stored)), _flatten(_plain(current))
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
        if not same:
            lines.append(f"{key}: {_show(a)} -> {_show(b)}")
    return lines


def resume_training(
    resume: bool | str | os.PathLike,
    state: TrainState,
    cfg: TrainConfig,
    info: DistInfo,
    generator: torch.Generator,
    dataset_len: int,
    notes: list[str],
    *,
    config_dict: Mapping | None = None,
) -> bool:
    """Load the checkpoint that ``resume`` names into ``state`` and restore the data position and
    this rank's RNG states. Returns whether it did.

    ``resume=True`` (or a directory) takes the newest checkpoint there that verifies
    (``find_resumable_checkpoint``: ``latest`` first, corrupt ones skipped with a note); ``True``
    with no checkpoint in ``out_dir`` starts from step 0. A manifest path takes that checkpoint.
    Raises ``CheckpointError`` when every checkpoint is corrupt, when ``out_dir`` holds checkpoints
    of another run than the one resumed, and, before any weight is copied, when the checkpoint's
    model does not fit ``state.model``: naming the ``config_dict`` fields that differ from the
    stored ones, or summarising the mismatched weights when there is no config to compare.
    """
    ckpt_dir = Path(cfg.out_dir) / "checkpoints"
    verified = False  # whether find_resumable_checkpoint already checked the SHA-256
    if resume is True or Path(resume).is_dir():
        directory = ckpt_dir if resume is True else _checkpoint_dir(Path(resume))
        path, found_notes = find_resumable_checkpoint(directory)
        notes.extend(_Warning(n) for n in found_notes)  # each says something was amiss
        if path is None:
            if resume is True:
                notes.append(f"resume=True but no checkpoint in {ckpt_dir}; starting from step 0")
                return False
            raise FileNotFoundError(f"no checkpoint in {resume} (no step_*.json manifest)")
        verified = True
    else:
        path = resolve_checkpoint(resume)
    if path.parent.resolve() != ckpt_dir.resolve() and list_checkpoints(ckpt_dir):
        raise CheckpointError(
            f"{ckpt_dir} holds checkpoints of another run than {path}, the one resumed; "
            "continuing would overwrite and delete them. Choose another output directory (--out), "
            f"or continue the run in {cfg.out_dir} with resume=True (--resume)."
        )

    manifest = verify_checkpoint(path, check_hash=not verified)  # a clear error if damaged
    stored = decode_state(manifest.get("config") or {}, {})
    stored = stored.get("model") if isinstance(stored, dict) else None
    differences = (
        _config_differences(stored, config_dict)
        if isinstance(stored, Mapping) and stored and config_dict is not None
        else []
    )
    try:
        ckpt = load_checkpoint(
            path,
            model=state.model,
            ema=state.ema,
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            scaler=state.scaler,
            verify=False,
        )
    except StateDictMismatchError as err:
        if differences:
            listing = "\n".join(f"  {line}" for line in differences)
            raise CheckpointError(
                f"cannot resume from {path}: its model was built from another config. Fields "
                f"that differ (checkpoint -> this run):\n{listing}\nResume with the checkpoint's "
                "settings, or train the new model in another output directory (--out)."
            ) from None
        raise StateDictMismatchError(f"cannot resume from {path}: {err}", err.summary) from None
    if differences:
        shown = differences[:12] + ([f"... ({len(differences) - 12} more)"] if len(differences) > 12 else [])
        notes.append(
            _Warning(
                "the config differs from the checkpoint's, but its weights fit this model; continuing "
                "with this run's values: " + "; ".join(shown)
            )
        )
    # The schedule follows this run's config (e.g. more total steps), not the checkpoint's.
    fresh = WarmupCosine(cfg.warmup_steps, cfg.steps, cosine=cfg.cosine, min_lr_ratio=cfg.min_lr_ratio)
    for factor in state.scheduler.lr_lambdas:
        factor.__dict__.update(fresh.__dict__)
    state.step = ckpt.step
    state.last_checkpoint = ckpt.path
    state.skipped_steps = int((ckpt.extra or {}).get("skipped_steps", 0))
    state.epoch, state.batches_done = _restore_data_position(ckpt.data_state, cfg, info, dataset_len, notes)
    per_rank = (ckpt.rng_state or {}).get("per_rank", [])
    if len(per_rank) == info.world_size:
        restore_rng_state(per_rank[info.rank], {"loss": generator})
    else:
        notes.append(
            f"checkpoint has RNG states for {len(per_rank)} process(es), this run has "
            f"{info.world_size}; reseeding from (seed, rank, step)"
        )
        seed_everything(derive_seed(cfg.seed, info.rank, _STREAM_RESEED, ckpt.step))
        generator.manual_seed(derive_seed(cfg.seed, info.rank, _STREAM_LOSS, ckpt.step))
    notes.append(f"resumed from {ckpt.path} at step {ckpt.step}")
    return True


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    *,
    sample_fn: SampleFn | None = None,
    collate_fn: Callable | None = None,
    config_dict: Mapping | None = None,
    resume: bool | str | os.PathLike = False,
    stop_at: int | None = None,
    dist_info: DistInfo | None = None,
    preflight: Callable[[nn.Module, Any], None] | None = None,
) -> TrainState:
    """Train ``model`` on ``dataset`` for ``cfg.steps`` steps and return the final ``TrainState``.

    ``loss_fn(model, batch[, generator=g])`` returns a scalar loss; ``model`` is DDP-wrapped under
    ``torchrun``, and ``batch`` is the collated batch on the training device. ``sample_fn(ema_model,
    step, out_dir)`` writes samples every ``cfg.sample_every`` steps and at the end (rank 0).
    ``config_dict`` (the model's config) is stored in every checkpoint. ``resume``: ``True``
    continues from the newest checkpoint in ``cfg.out_dir`` that verifies, if there is one (see
    ``resume_training``), a path continues from that checkpoint; optimizer hyperparameters come
    from the checkpoint, and a model config whose weights do not fit is refused with the fields that
    differ. Without ``resume``, a ``cfg.out_dir`` that already holds checkpoints is refused
    (``CheckpointError``) rather than overwritten and pruned. ``stop_at`` ends the run
    (with a checkpoint) after that many steps, as a preemption would, while the LR schedule still
    spans ``cfg.steps``. ``dist_info`` defaults to the current process group (``init_distributed``
    must be called first under ``torchrun``) or a single process.

    ``preflight(model, dataset[0])`` runs before anything else is built: a system passes a check
    that raises a clear error when the data's resolution or frame count is one its model cannot
    take, so a bad setup fails before the first step rather than deep inside it.

    Every RNG is seeded from ``cfg.seed`` and the rank. Raises ``NonFiniteLossError`` on a NaN/inf
    loss when ``cfg.nonfinite == "stop"``; bad datasets are rejected before anything runs.
    """
    info = dist_info or current_dist_info(cfg.device)
    check_precision(cfg.precision, info.device)
    if not resume:
        check_fresh_out_dir(cfg.out_dir)
    dataset_len = check_dataset(dataset, batch_size=cfg.batch_size, world_size=info.world_size)
    if preflight is not None:
        preflight(model, dataset[0])
    target = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    if target < 0:
        raise ValueError(f"expected stop_at >= 0, got {stop_at}")

    seed_everything(derive_seed(cfg.seed, info.rank, _STREAM_GLOBAL))
    generator = torch.Generator(device=info.device)
    generator.manual_seed(derive_seed(cfg.seed, info.rank, _STREAM_LOSS))
    model = model.to(info.device)
    enable_grad_checkpointing(model, cfg.grad_checkpointing)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    state = TrainState(
        model=model,
        ema=EMA(model, cfg.ema_decay),
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, cfg.warmup_steps, cfg.steps, cosine=cfg.cosine, min_lr_ratio=cfg.min_lr_ratio
        ),
        scaler=make_grad_scaler(cfg.precision, info.device),
    )
    notes: list[str] = []
    resumed = bool(resume) and resume_training(
        resume, state, cfg, info, generator, dataset_len, notes, config_dict=config_dict
    )

    logger = MetricsLogger(
        cfg.out_dir, enabled=info.is_main, resume_step=state.step if resumed else None, tensorboard=cfg.tensorboard
    )
    for note in notes:
        (logger.warning if isinstance(note, _Warning) else logger.info)(note)
    net = wrap_model(model, info)
    call_loss = _loss_caller(loss_fn)
    sampler = make_sampler(dataset, info, seed=cfg.seed)
    steps_per_epoch = len(sampler) // cfg.batch_size
    bar = tqdm(
        total=cfg.steps,
        initial=state.step,
        desc="train",
        dynamic_ncols=True,
        disable=True if not (info.is_main and cfg.progress) else None,
    )
    meter = _Meter()
    try:
        while state.step < target:
            if state.batches_done >= steps_per_epoch:
                state.epoch, state.batches_done = state.epoch + 1, 0
            loader = make_loader(
                dataset, sampler, cfg, info, epoch=state.epoch, batches_done=state.batches_done, collate_fn=collate_fn
            )
            for batch in loader:
                result = train_step(net, _to_device(batch, info.device), call_loss, generator, state, cfg, info, logger)
                state.step += 1
                state.batches_done += 1
                meter.add(result)
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == target:
                    row = meter.row(state, info)
                    logger.log(state.step, **row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.3g}", refresh=False)
                    meter.reset()
                if (
                    sample_fn is not None
                    and cfg.sample_every
                    and (state.step % cfg.sample_every == 0 or state.step == cfg.steps)
                ):
                    run_sampling(sample_fn, state, cfg, info, logger)
                if (cfg.ckpt_every and state.step % cfg.ckpt_every == 0) or state.step == target:
                    write_checkpoint(state, cfg, info, generator, dataset_len=dataset_len, config_dict=config_dict)
                if state.step >= target:
                    break
    finally:
        bar.close()
        state.history = list(logger.rows)
        logger.close()
    return state
