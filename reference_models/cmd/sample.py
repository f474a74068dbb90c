"""The CMD sampling CLI: content frame, motion, decoder from the three training runs (the library
functions are in ``sampling.py``).

CLI (weights from the three training runs, EMA by default)::

    python -m reference_models.cmd.sample --ae runs/cmd/ae --content runs/cmd/content \\
        --motion runs/cmd/motion --labels 0,1,2 --guidance 4.0 --out samples/

writes ``<out>/cmd_00.mp4 ...``, ``<out>/cmd_grid.png`` (one row per video), ``<out>/cmd_captions.txt``
and ``<out>/cmd_content_grid.png`` (the sampled content frames). The three flags also take
``save_pretrained`` directories; ``--export-pretrained DIR`` writes the three models as ``DIR/ae``,
``DIR/content`` and ``DIR/motion`` (EMA weights) and exits::

    python -m reference_models.cmd.sample --ae runs/cmd/ae --content runs/cmd/content \\
        --motion runs/cmd/motion --export-pretrained pretrained/cmd
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from reference_models.common.checkpoint import Checkpoint
from reference_models.common.cli import add_sampling_arguments, check_checkpoint_kind, positive_fps
from reference_models.common.distributed import resolve_device
from reference_models.common.pretrained import export_pretrained

from .autoencoder import CMDAutoencoder
from .sampling import (
    PAPER_CONTENT_STEPS,
    PAPER_GUIDANCE,
    PAPER_MOTION_STEPS,
    check_compatible,
    load_autoencoder,
    load_content_model,
    load_motion_model,
    sample_videos,
    write_videos,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.cmd.sample",
        description="Sample videos from CMD checkpoints (content, then motion, then decode).",
    )
    p.add_argument(
        "--ae",
        required=True,
        help="autoencoder run (checkpoint, checkpoint dir or output dir) or save_pretrained directory",
    )
    p.add_argument("--content", required=True, help="content-frame model run or save_pretrained directory")
    p.add_argument("--motion", required=True, help="motion model run or save_pretrained directory")
    p.add_argument("--labels", default=None, help="comma-separated class labels, e.g. 0,1,2")
    p.add_argument("--num-samples", type=int, default=1, help="videos per label (or in all, without labels)")
    p.add_argument("--guidance", type=float, default=PAPER_GUIDANCE, help="content model (paper: 4.0)")
    p.add_argument("--motion-guidance", type=float, default=1.0, help="motion model (paper: none given)")
    p.add_argument("--content-steps", type=int, default=PAPER_CONTENT_STEPS)
    p.add_argument("--motion-steps", type=int, default=PAPER_MOTION_STEPS)
    p.add_argument("--fps", type=positive_fps, default=8.0, help="frame rate of the written videos (> 0)")
    add_sampling_arguments(p, out="samples/cmd", device="cpu")
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the CLI; returns the files written."""
    args = build_parser().parse_args(argv)
    for flag, path, key, expected in (
        ("--ae", args.ae, "cmd_ae", "a CMD autoencoder"),
        ("--content", args.content, "cmd_content", "a CMD content-model"),
        ("--motion", args.motion, "cmd_motion", "a CMD motion-model"),
    ):
        try:
            check_checkpoint_kind(path, key, expected)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"{flag}: {error}") from None
    use_ema = not args.no_ema
    if args.export_pretrained:
        root = Path(args.export_pretrained)

        def load_ae(checkpoint: str | Path, use_ema: bool) -> tuple[CMDAutoencoder, Checkpoint]:
            return load_autoencoder(checkpoint, use_ema=use_ema, with_codec=False)  # the codec is not stored

        paths = [
            export_pretrained(source, root / name, load, use_ema=use_ema)
            for source, name, load in (
                (args.ae, "ae", load_ae),
                (args.content, "content", load_content_model),
                (args.motion, "motion", load_motion_model),
            )
        ]
        print(
            f"wrote {', '.join(f'{p}/' for p in paths)}; sample with: python -m reference_models.cmd.sample "
            f"--ae {paths[0]} --content {paths[1]} --motion {paths[2]}"
        )
        return paths
    device = resolve_device(args.device)
    autoencoder, _ = load_autoencoder(args.ae, device=device, use_ema=use_ema)
    content_model, _, content_cfg = load_content_model(args.content, device=device, use_ema=use_ema)
    motion_model, _ = load_motion_model(args.motion, device=device, use_ema=use_ema)
    check_compatible(autoencoder.cfg, content_cfg, "autoencoder", "content model")
    check_compatible(autoencoder.cfg, motion_model.cfg, "autoencoder", "motion model")
    labels = None
    if args.labels:
        labels = torch.tensor([int(s) for s in args.labels.split(",") for _ in range(args.num_samples)])
        batch = None
    else:
        batch = args.num_samples
    generator = torch.Generator().manual_seed(args.seed)
    result = sample_videos(
        autoencoder,
        content_model,
        motion_model,
        labels=labels,
        batch=batch,
        content_steps=args.content_steps,
        motion_steps=args.motion_steps,
        guidance=args.guidance,
        motion_guidance=args.motion_guidance,
        generator=generator,
    )
    paths = write_videos(result, args.out, labels=labels, fps=args.fps)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main(sys.argv[1:])
