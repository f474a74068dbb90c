"""The EVDM sampling CLI: prediction, interpolation or generation from a checkpoint (the library
functions are in ``sampling.py``).

CLI (config and EMA weights from a training checkpoint: safetensors + JSON, no pickle)::

    python -m reference_models.evdm.sample --checkpoint runs/evdm --task predict --frames 6 --out samples/
    python -m reference_models.evdm.sample --checkpoint runs/evdm --task interpolate --trajectories 10
    python -m reference_models.evdm.sample --checkpoint runs/evdm --task generate --num-samples 8
    python -m reference_models.evdm.sample --checkpoint runs/evdm --export-pretrained pretrained/evdm
    python -m reference_models.evdm.sample --checkpoint pretrained/evdm --task generate

``--checkpoint`` also takes a ``save_pretrained`` directory; ``--export-pretrained`` writes one
(EMA weights) and exits. Sampling writes ``<out>/<task>_00.mp4 ...`` (conditions and sampled frames in time order) and
``<out>/<task>_grid.png``; for prediction and interpolation also the real clips
(``<task>_real_*``) and ``<task>_metrics.json`` with best-of-k PSNR / SSIM of the sampled frames.
Conditioning clips come from ``--data DIR`` or, by default, from held-out clips of the training
data (moving shapes of an unseen seed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from reference_models.common.cli import add_sampling_arguments, check_checkpoint_kind, positive_fps
from reference_models.common.distributed import resolve_device
from reference_models.common.pretrained import export_pretrained

from .data import folder_videos, stack_videos, videos_from_record
from .sampling import SAMPLERS, TASKS, load_model, run_task, task_frames, write_task

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.evdm.sample",
        description="Sample videos from an EVDM checkpoint: prediction, interpolation or generation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="manifest, checkpoint directory, training output directory or save_pretrained directory",
    )
    p.add_argument("--task", default="predict", choices=TASKS)
    p.add_argument(
        "--data",
        default=None,
        help="directory of videos to take conditioning clips from (default: held-out training data)",
    )
    p.add_argument("--num-samples", type=int, default=4, help="videos (clips) to sample")
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames to predict / generate (default T; more are made autoregressively)",
    )
    p.add_argument("--trajectories", type=int, default=1, help="samples per clip for best-of-k PSNR/SSIM")
    p.add_argument("--sampler", default="ddpm", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=100, help="sampling steps (paper: DDPM 100 or 1000)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument(
        "--fps", type=positive_fps, default=None, help="playback rate of the files, > 0 (default: the data's, else 8)"
    )
    add_sampling_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """The CLI: load a checkpoint, sample the task, write videos, grids and metrics."""
    args = build_parser().parse_args(argv)
    try:
        check_checkpoint_kind(args.checkpoint, "evdm", "an EVDM")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--checkpoint: {error}") from None
    if args.export_pretrained:
        path = export_pretrained(args.checkpoint, args.export_pretrained, load_model, use_ema=not args.no_ema)
        print(f"{args.checkpoint} -> {path}/ (config.json, model.safetensors)")
        return [path]
    device = resolve_device(args.device)
    model, ckpt = load_model(args.checkpoint, device=device, use_ema=not args.no_ema)
    cfg = model.cfg
    record = ((ckpt.config or {}).get("model") or {}).get("data") or {"source": "moving_shapes"}
    fps = args.fps if args.fps is not None else float(record.get("fps") or 8.0)  # no stored rate (or 0): 8
    clips = None
    need = task_frames(cfg, args.task, args.frames)
    if need:
        if args.data is not None:
            videos = folder_videos(args.data, cfg, need, clip_start="first")
        elif record.get("source") == "moving_shapes" and "num_samples" in record:
            videos = videos_from_record(record, cfg, need, held_out=True)
        elif record.get("source") == "folder":
            videos = videos_from_record(record, cfg, need, held_out=True)
        else:
            raise SystemExit("give --data DIR: the checkpoint does not say where its training videos came from")
        count = min(args.num_samples, len(videos))
        clips = stack_videos(videos, range(count))
    generator = torch.Generator().manual_seed(args.seed)
    result = run_task(
        model,
        args.task,
        clips=clips,
        batch=args.num_samples,
        num_frames=args.frames,
        trajectories=args.trajectories,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        generator=generator,
    )
    out = Path(args.out)
    written = write_task(
        result,
        out,
        args.task,
        fps=fps,
        extra={
            "trajectories": args.trajectories,
            "sampler": args.sampler,
            "steps": args.steps,
            "checkpoint_step": ckpt.step,
        },
    )
    print(
        f"step {ckpt.step} of {ckpt.path}: {args.task}, {result.videos.shape[0]} videos of "
        f"{result.videos.shape[2]} frames -> {out}/"
    )
    if result.metrics:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        print(f"best of {args.trajectories} trajectories, mean over videos: {shown}")
    for path in written:
        print(f"  {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
