"""The ETC sampling CLI: DDIM with classifier-free guidance at chosen frame rates
(the library functions are in ``sampling.py``).

CLI (weights from a training checkpoint, EMA by default; the config from its JSON manifest)::

    python -m reference_models.etc.sample --checkpoint runs/etc --caption "a red circle moving left" \\
        --fps 8 --frames 8 --out samples/

writes ``<out>/fps<F>_00.mp4 ...`` (one video per caption and sample) and ``<out>/fps<F>_grid.png``
(one row of frames per video) for every ``--fps``. ``--checkpoint`` also takes a ``save_pretrained``
directory of an :class:`~reference_models.etc.model.ETCSystem`; ``--export-pretrained DIR`` writes one (EMA weights) and exits::

    python -m reference_models.etc.sample --checkpoint runs/etc --export-pretrained pretrained/etc
    python -m reference_models.etc.sample --checkpoint pretrained/etc --caption "a red circle moving left"
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from reference_models.common.cli import add_sampling_arguments, check_checkpoint_kind, fps_condition
from reference_models.common.distributed import resolve_device
from reference_models.common.pretrained import export_pretrained
from reference_models.common.video_io import write_samples

from .sampling import load_system, playback_fps, sample

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.etc.sample",
        description="Sample videos from an ETC checkpoint (DDIM + classifier-free guidance).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="manifest, checkpoint directory, training output directory or save_pretrained directory",
    )
    p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
    p.add_argument("--label", action="append", type=int, default=[], help="a class label (repeat for several)")
    p.add_argument(
        "--fps",
        action="append",
        type=fps_condition,
        default=[],
        help="frame rate (repeat for several): 1-60 video, 0 label-image group, 120 still (default 8)",
    )
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the training config's)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1, help="samples per caption/label")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (paper: 50)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model config's; paper: 7, tiny: 1)",
    )
    p.add_argument("--eta", type=float, default=0.0)
    add_sampling_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """The CLI: load, sample every caption/label at every ``--fps``, write .mp4 files and grids."""
    args = build_parser().parse_args(argv)
    try:
        check_checkpoint_kind(args.checkpoint, "etc", "an ETC")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--checkpoint: {error}") from None
    if args.export_pretrained:
        path = export_pretrained(args.checkpoint, args.export_pretrained, load_system, use_ema=not args.no_ema)
        print(f"{args.checkpoint} -> {path}/ (config.json, model.safetensors)")
        return [path]
    device = resolve_device(args.device)
    system, ckpt = load_system(args.checkpoint, device=device, use_ema=not args.no_ema)
    max_fps = float(system.cfg.max_fps)
    beyond = [f for f in args.fps if f > max_fps]
    if beyond:
        raise SystemExit(
            f"--fps {beyond[0]:g}: this model takes rates in [0, {max_fps:g}] "
            "(0: label images, 1-60: video, 120: a still)"
        )
    captions, labels = list(args.caption), list(args.label)
    if not captions and not labels:
        stored = (ckpt.config or {}).get("model", {}).get("samples", {})
        captions = list(stored.get("captions", []))
        if not captions:
            raise SystemExit("give --caption or --label (the checkpoint stores no default captions)")
        print(f"no --caption/--label given; using the training run's sample captions: {captions}")
    prompts = [(c, -1) for c in captions] + [("", lab) for lab in labels]
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    text = [c for c, _ in prompts]
    label_tensor = torch.tensor([lab for _, lab in prompts]) if labels else None
    use_text = system.conditioner.text_encoder is not None
    if captions and not use_text:
        raise SystemExit("this model has no text encoder; sample with --label")
    generator = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    written: list[Path] = []
    for fps in args.fps or [8.0]:
        videos = sample(
            system.unet,
            system.conditioner,
            captions=text if use_text else None,
            labels=label_tensor,
            fps=fps,
            frames=args.frames,
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            eta=args.eta,
            generator=generator,
        )
        names = [c or f"label {lab}" for c, lab in prompts]
        written += write_samples(videos, out, stem=f"fps{fps:g}", fps=playback_fps(fps), captions=names)
    print(f"step {ckpt.step} of {ckpt.path}: wrote {len(written)} files to {out}/")
    for path in written:
        print(f"  {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
