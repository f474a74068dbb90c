"""Command-line helpers shared by the systems' training and sampling scripts."""

from __future__ import annotations

import argparse
import json
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import TrainConfig

__all__ = ["add_sampling_arguments", "parse_override", "run_summary", "train_config_from_args"]


def parse_override(text: str) -> tuple[str, Any]:
    """``"FIELD=VALUE"`` (a ``--set`` flag) -> ``(field, value)``.

    The value is read as JSON (``--set frames=16``, ``--set channel_mult=[1,2,2]``, lists become
    tuples for frozen configs); anything that is not JSON stays a string (``--set schedule=linear``).
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected --set FIELD=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def add_sampling_arguments(parser: argparse.ArgumentParser, *, out: str = "samples", device: str = "auto") -> None:
    """The flags every sampling CLI shares: ``--seed``, ``--device``, ``--no-ema``, ``--out``."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=device, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--no-ema", action="store_true", help="use the trained weights, not the EMA")
    parser.add_argument("--out", default=out, help="output directory")


def train_config_from_args(args: argparse.Namespace, *, out_dir: Any = None) -> TrainConfig:
    """The :class:`~reference_models.common.trainer.TrainConfig` a training CLI's flags describe.

    Reads the flags every system's training script has (``--steps``, ``--batch-size``, ``--lr``,
    ``--warmup-steps``, ``--ema-decay``, ``--precision``, ``--log-every``, ``--sample-every``,
    ``--ckpt-every``, ``--out``, ``--seed``, ``--num-workers``, ``--device``, ``--no-progress``) and
    the optional ones some have (``--cosine``, ``--grad-clip``, ``--grad-checkpointing``; absent ones
    keep TrainConfig's defaults). Defaults that depend on the run length: the EMA decay is
    ``1 - 10 / steps`` (capped at 0.9999), samples are written at the end only, and the warm-up and
    logging intervals are cut to the run. ``out_dir`` replaces ``--out`` (a stage's own directory).
    """
    from .trainer import TrainConfig

    steps = args.steps
    ema = args.ema_decay if args.ema_decay is not None else min(0.9999, max(0.0, 1.0 - 10.0 / steps))
    optional = {name: getattr(args, name) for name in ("cosine", "grad_clip", "grad_checkpointing") if hasattr(args, name)}
    return TrainConfig(
        steps=steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=min(args.warmup_steps, steps),
        ema_decay=ema, precision=args.precision, log_every=min(args.log_every, steps),
        sample_every=steps if args.sample_every is None else args.sample_every, ckpt_every=args.ckpt_every,
        out_dir=args.out if out_dir is None else out_dir, seed=args.seed, num_workers=args.num_workers,
        device=args.device, progress=not args.no_progress, **optional,
    )


def run_summary(state: Any, seconds: float, prefix: str = "") -> list[str]:
    """The lines a training CLI prints when it is done: first and last logged loss, time, checkpoint.

    ``state`` is the :class:`~reference_models.common.trainer.TrainState` the run returned; non-finite
    logged losses (skipped steps) are left out of the loss line, which is omitted when nothing was logged.
    """
    losses = [row["loss"] for row in state.history if "loss" in row and math.isfinite(row["loss"])]
    lines = []
    if losses:
        lines.append(f"{prefix}loss {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log) over "
                     f"{state.step} steps; {seconds:.0f} s")
    return lines + [f"checkpoint: {state.last_checkpoint}"]

