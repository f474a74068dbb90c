"""Command-line helpers shared by the systems' training and sampling scripts."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .trainer import TrainConfig

__all__ = [
    "MODEL_CONFIG_KEYS",
    "add_sampling_arguments",
    "check_checkpoint_kind",
    "describe_checkpoint",
    "fps_condition",
    "parse_override",
    "positive_fps",
    "run_summary",
    "train_config_from_args",
]

# The model configs the systems' training scripts store in a checkpoint (``config["model"][key]``),
# and what each one is: how a sampler tells "another system's checkpoint" from a broken one.
MODEL_CONFIG_KEYS: dict[str, str] = {
    "etc": "an ETC model",
    "evdm": "an EVDM U-Net",
    "pvdm_autoencoder": "a PVDM autoencoder",
    "pvdm_diffusion": "a PVDM diffusion U-Net",
    "cmd_ae": "a CMD autoencoder",
    "cmd_content": "a CMD content-frame model",
    "cmd_motion": "a CMD motion model",
}


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
    """The flags every sampling CLI shares: ``--seed``, ``--device``, ``--no-ema``, ``--out``,
    ``--export-pretrained DIR`` (write the loaded model(s) as save_pretrained directories instead of
    sampling; see :func:`reference_models.common.pretrained.export_pretrained`).

    A CLI's own ``--fps`` takes ``type=positive_fps`` (the rate written into the files: positive) or
    ``type=fps_condition`` (ETC's conditioning rate, where 0 means label images), so that a bad rate
    is an argparse error rather than a silent default: never read a rate as ``args.fps or 8``.
    """
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=device, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the trained weights, not the EMA (training checkpoints only)"
    )
    parser.add_argument("--out", default=out, help="output directory")
    parser.add_argument(
        "--export-pretrained",
        metavar="DIR",
        default=None,
        help="write the model(s) as save_pretrained directories (config.json + model.safetensors, "
        "EMA weights unless --no-ema) under DIR and exit without sampling",
    )


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a frame rate (a number), got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite frame rate, got {text!r}")
    return value


def positive_fps(text: str) -> float:
    """``argparse`` type of a playback rate (frames per second of a written file): a positive number."""
    value = _rate(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive frame rate, got {text!r}")
    return value


def fps_condition(text: str) -> float:
    """``argparse`` type of ETC's FPS condition: a non-negative number (0: label-image group, 1-60:
    video, 120: a still; the model's ``max_fps`` bounds it once the checkpoint is loaded)."""
    value = _rate(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative frame rate (0: label images, 1-60: video, 120: a still), got {text!r}"
        )
    return value


def describe_checkpoint(config: dict) -> str:
    """What a checkpoint's stored config says it holds, for error messages: the known model configs
    (``MODEL_CONFIG_KEYS``) by name, any other ``config["model"]`` keys as they are."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not model:
        return "no model config: config['model'] is empty or missing"
    known = [MODEL_CONFIG_KEYS[k] for k in model if k in MODEL_CONFIG_KEYS]
    keys = ", ".join(repr(k) for k in model)
    return f"{' and '.join(known) if known else 'no model config a sampler here knows'}; config['model'] keys: {keys}"


def check_checkpoint_kind(checkpoint: str | os.PathLike, key: str, expected: str) -> tuple[Path, dict]:
    """``(manifest path, config)`` of ``checkpoint`` when it stores the model config ``key``.

    Otherwise ``ValueError``: "``<path>`` is not ``<expected>`` checkpoint (it holds ...)", naming
    what it does hold (see :func:`describe_checkpoint`), so that a sampler given another system's or
    another stage's checkpoint says so instead of failing on a missing setting. Reads the JSON
    manifest only (for a save_pretrained directory, its config.json; a malformed one is a
    ``ValueError`` too). A missing checkpoint raises ``FileNotFoundError`` as
    :func:`~reference_models.common.checkpoint.read_checkpoint_config` does.
    """
    from .checkpoint import CheckpointError, read_checkpoint_config

    try:
        path, config = read_checkpoint_config(checkpoint)
    except CheckpointError as err:  # a malformed save_pretrained config.json
        raise ValueError(str(err)) from err
    if not isinstance((config.get("model") or {}).get(key), dict):
        raise ValueError(f"{checkpoint} is not {expected} checkpoint (it holds {describe_checkpoint(config)})")
    return path, config


def train_config_from_args(args: argparse.Namespace, *, out_dir: Any = None) -> TrainConfig:
    """The :class:`~reference_models.common.trainer.TrainConfig` a training CLI's flags describe.

    Reads the flags every system's training script has (``--steps``, ``--batch-size``, ``--lr``,
    ``--warmup-steps``, ``--ema-decay``, ``--precision``, ``--log-every``, ``--sample-every``,
    ``--ckpt-every``, ``--out``, ``--seed``, ``--num-workers``, ``--device``, ``--no-progress``) and
    the optional ones some have (``--cosine``, ``--grad-clip``, ``--grad-checkpointing``; absent ones
    keep TrainConfig's defaults). Defaults that depend on the run length: the EMA decay is
    ``1 - 10 / steps`` (capped at 0.9999), samples are written at the end only, and the warm-up and
    logging intervals are cut to the run. ``out_dir`` replaces ``--out`` (a stage's own directory).

    Without ``--resume``, an output directory that already holds checkpoints of an earlier run ends
    the CLI here with the trainer's message (pass ``--resume`` or another ``--out``), before any data
    is read or anything is written there.
    """
    from .checkpoint import CheckpointError
    from .trainer import TrainConfig, check_fresh_out_dir

    out = args.out if out_dir is None else out_dir
    if not getattr(args, "resume", False):
        try:
            check_fresh_out_dir(out)
        except CheckpointError as err:
            raise SystemExit(f"error: {err}") from None

    steps = args.steps
    ema = args.ema_decay if args.ema_decay is not None else min(0.9999, max(0.0, 1.0 - 10.0 / steps))
    optional = {
        name: getattr(args, name) for name in ("cosine", "grad_clip", "grad_checkpointing") if hasattr(args, name)
    }
    return TrainConfig(
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(args.warmup_steps, steps),
        ema_decay=ema,
        precision=args.precision,
        log_every=min(args.log_every, steps),
        sample_every=steps if args.sample_every is None else args.sample_every,
        ckpt_every=args.ckpt_every,
        out_dir=out,
        seed=args.seed,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.no_progress,
        **optional,
    )


def run_summary(state: Any, seconds: float, prefix: str = "") -> list[str]:
    """The lines a training CLI prints when it is done: first and last logged loss, time, checkpoint.

    ``state`` is the :class:`~reference_models.common.trainer.TrainState` the run returned; non-finite
    logged losses (skipped steps) are left out of the loss line, which is omitted when nothing was logged.
    """
    losses = [row["loss"] for row in state.history if "loss" in row and math.isfinite(row["loss"])]
    lines = []
    if losses:
        lines.append(
            f"{prefix}loss {losses[0]:.4f} (first log) -> {losses[-1]:.4f} (last log) over "
            f"{state.step} steps; {seconds:.0f} s"
        )
    return lines + [f"checkpoint: {state.last_checkpoint}"]
