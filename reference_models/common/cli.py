"""Command-line helpers shared by the systems' training and sampling scripts."""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .distributed import DistInfo
    from .trainer import TrainConfig

__all__ = [
    "MODEL_CONFIG_KEYS",
    "OPTIONAL_TRAINING_FLAGS",
    "TRAINING_FLAGS",
    "CLIRun",
    "TrainingGroups",
    "add_sampling_arguments",
    "add_training_arguments",
    "check_checkpoint_kind",
    "describe_checkpoint",
    "distributed_cli",
    "fps_condition",
    "in_process_group",
    "parse_cli_args",
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
    tuples for frozen configs); anything that is not JSON stays a string
    (``--set diffusion.schedule=cosine``). A dotted FIELD names a field of a nested spec, which
    ``ConfigBase.replace`` applies (``--set diffusion.prediction_type=v_prediction``).
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


# The flags (argparse dests) add_training_arguments gives every training CLI, in --help order, and
# the ones a CLI asks for by name; train_config_from_args turns them into a TrainConfig.
TRAINING_FLAGS: tuple[str, ...] = (
    "steps",
    "batch_size",
    "lr",
    "warmup_steps",
    "ema_decay",
    "precision",
    "num_workers",
    "device",
    "seed",
    "out",
    "resume",
    "log_every",
    "ckpt_every",
    "no_progress",
    "sample_every",
)
OPTIONAL_TRAINING_FLAGS: tuple[str, ...] = ("cosine", "grad_clip", "grad_checkpointing")


class TrainingGroups(NamedTuple):
    """The ``--help`` groups :func:`add_training_arguments` made, for a CLI's own flags of each kind:
    ``training``, and ``samples`` (which starts with ``--sample-every``)."""

    training: argparse._ArgumentGroup
    samples: argparse._ArgumentGroup


def add_training_arguments(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    out: str,
    warmup_steps: int = 50,
    log_every: int = 50,
    ckpt_every: int = 1000,
    optional: Collection[str] = (),
    grad_clip: float = 1.0,
    paper: Mapping[str, str] | None = None,
) -> TrainingGroups:
    """The flags every training CLI shares (``TRAINING_FLAGS``), with the system's own defaults.

    Adds a ``training`` group (``--steps``, ``--batch-size`` per process, ``--lr``, ``--warmup-steps``,
    ``--ema-decay`` (default ``None``: ``1 - 10 / steps``), ``--precision`` (fp32), ``--num-workers``
    (0), ``--device`` (auto), ``--seed`` (0), ``--out``, ``--resume [CHECKPOINT]``, ``--log-every``,
    ``--ckpt-every``, ``--no-progress``) and a ``samples`` group with ``--sample-every`` (default
    ``None``: at the end only), and returns both for the CLI's own flags. Call it after the CLI's
    model and data groups: ``--help`` lists groups in the order they were made.

    ``optional`` names the flags of ``OPTIONAL_TRAINING_FLAGS`` this CLI offers: ``"cosine"``
    (``--cosine``), ``"grad_clip"`` (``--grad-clip``, default ``grad_clip``) and
    ``"grad_checkpointing"`` (``--grad-checkpointing``); a CLI without them trains with
    TrainConfig's values. ``out``: the output directory; one with ``<stage>`` in it (a CLI with
    ``--stage``) leaves ``--out`` at ``None`` for the CLI to fill in per stage. ``paper``: the
    paper's setting of a flag, added to its help as ``(paper: ...)``, e.g. ``{"lr": "1e-4"}``.
    :func:`train_config_from_args` reads the flags back.
    """
    unknown = sorted(set(optional) - set(OPTIONAL_TRAINING_FLAGS))
    if unknown:
        raise ValueError(f"expected optional training flags from {OPTIONAL_TRAINING_FLAGS}, got {unknown}")
    notes = dict(paper or {})
    unknown = sorted(set(notes) - set(TRAINING_FLAGS) - set(optional))
    if unknown:
        raise ValueError(f"paper notes for flags this parser does not have: {unknown}")

    def explain(dest: str, text: str) -> str:
        return text if dest not in notes else f"{text} (paper: {notes[dest]})"

    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=steps, help=explain("steps", "training steps"))
    g.add_argument("--batch-size", type=int, default=batch_size, help=explain("batch_size", "per process"))
    g.add_argument("--lr", type=float, default=lr, help=explain("lr", "peak learning rate of AdamW"))
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=warmup_steps,
        help=explain("warmup_steps", "linear learning-rate warm-up (at most --steps)"),
    )
    if "cosine" in optional:
        g.add_argument("--cosine", action="store_true", help="cosine decay of the learning rate after the warm-up")
    if "grad_clip" in optional:
        g.add_argument(
            "--grad-clip",
            type=float,
            default=grad_clip,
            help=explain("grad_clip", "max global gradient norm (0: no clipping)"),
        )
    g.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="default: 1 - 10/steps, capped at 0.9999 (the initial weights keep a share of e^-10)",
    )
    g.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="bf16: autocast on CPU or CUDA; fp16: autocast with loss scaling (CUDA)",
    )
    if "grad_checkpointing" in optional:
        g.add_argument(
            "--grad-checkpointing",
            action="store_true",
            help="recompute activations in the backward pass: less memory, more time",
        )
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument(
        "--seed", type=int, default=0, help="random seed (initial weights, built-in data, data order, noise)"
    )
    staged = "<stage>" in out
    g.add_argument(
        "--out",
        default=None if staged else out,
        help="output directory (checkpoints/, samples/, metrics.csv" + (f"; default {out})" if staged else ")"),
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue the run in --out (or from CHECKPOINT)",
    )
    g.add_argument(
        "--log-every", type=int, default=log_every, help="steps between rows of metrics.csv (means over those steps)"
    )
    g.add_argument(
        "--ckpt-every",
        type=int,
        default=ckpt_every,
        help="steps between checkpoints (0: only the final one, which is always written)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    samples = parser.add_argument_group("samples")
    samples.add_argument("--sample-every", type=int, default=None, help="default: only at the end (0: never)")
    return TrainingGroups(g, samples)


def parse_cli_args(
    build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | argparse.Namespace | None
) -> argparse.Namespace:
    """A CLI ``main``'s arguments: ``argv`` parsed by ``build_parser()`` (``None``: ``sys.argv``), or
    ``argv`` itself when it is already a parsed ``Namespace`` (calling ``main`` from Python)."""
    return argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)


class CLIRun(NamedTuple):
    """What :func:`distributed_cli` gives a CLI body: this process's ``info`` and ``say``, which is
    ``print`` on rank 0 and does nothing on the other ranks."""

    info: DistInfo
    say: Callable[..., None]


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


@contextmanager
def distributed_cli(device: str = "auto") -> Iterator[CLIRun]:
    """Run a CLI body in the process group: ``init_distributed(device)`` on entry, ``cleanup()`` on
    exit, also when the body raises (a failed rank leaves the group instead of holding it)::

        args = parse_cli_args(build_parser, argv)
        with distributed_cli(args.device) as (info, say):
            ...  # one process, or one rank of torchrun
    """
    from .distributed import cleanup, init_distributed

    info = init_distributed(device)
    try:
        yield CLIRun(info, print if info.is_main else _quiet)
    finally:
        cleanup()


def in_process_group(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Let a system's training function (``run(cfg, train_cfg, *, ..., info=None)``) be called from
    Python without a process group: with ``info=None`` it runs under :func:`distributed_cli`
    (``train_cfg.device``) and gets that process's ``DistInfo``; a CLI ``main`` already inside
    ``distributed_cli`` passes its own ``info``."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        if bound.arguments.get("info") is not None:
            return fn(*bound.args, **bound.kwargs)
        with distributed_cli(bound.arguments["train_cfg"].device) as (info, _):
            bound.arguments["info"] = info
            return fn(*bound.args, **bound.kwargs)

    return wrapper


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

    Reads the flags :func:`add_training_arguments` gives every system's training script
    (``TRAINING_FLAGS``: ``--steps``, ``--batch-size``, ``--lr``, ``--warmup-steps``, ``--ema-decay``,
    ``--precision``, ``--log-every``, ``--sample-every``, ``--ckpt-every``, ``--out``, ``--seed``,
    ``--num-workers``, ``--device``, ``--no-progress``) and the optional ones some have
    (``OPTIONAL_TRAINING_FLAGS``: ``--cosine``, ``--grad-clip``, ``--grad-checkpointing``; absent ones
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
