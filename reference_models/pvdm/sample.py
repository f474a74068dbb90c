"""Sample long videos from a trained PVDM: Algorithm 1 in latent space, then the decoder per clip.

    python -m reference_models.pvdm.sample --checkpoint runs/pvdm/diffusion --clips 4 \\
        --first-steps 100 --next-steps 20 --out samples/

``--checkpoint`` is a diffusion run (its output directory, checkpoint directory or manifest); the
autoencoder it was trained on is the one its config names (override with ``--autoencoder``).
:func:`generate_long_video` samples the first clip with the null condition and each later clip
conditioned on the previous clip's latent (``--first-steps`` / ``--next-steps``: Table 1's
"N/M-s" DDIM steps), decodes every clip with ``g_psi`` and concatenates them in time. The files are
``long_XX.mp4`` (one per video) and ``long_grid.png`` (one row of frames per video).

Both flags also take ``save_pretrained`` directories; ``--export-pretrained DIR`` writes the two
stages as ``DIR/diffusion`` and ``DIR/autoencoder`` (EMA weights) and exits::

    python -m reference_models.pvdm.sample --checkpoint runs/pvdm/diffusion --export-pretrained pretrained/pvdm
    python -m reference_models.pvdm.sample --checkpoint pretrained/pvdm/diffusion \\
        --autoencoder pretrained/pvdm/autoencoder --out samples/
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
from reference_models.common.video_io import write_samples

from .sampling import (
    AUTOENCODER_KEY,
    DIFFUSION_KEY,
    SAMPLERS,
    generate_long_video,
    load_autoencoder,
    load_diffusion,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.pvdm.sample",
        description="Sample long videos clip by clip from a PVDM diffusion checkpoint (Algorithm 1).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="diffusion run (output directory, checkpoint dir or manifest) or save_pretrained directory",
    )
    p.add_argument(
        "--autoencoder",
        default=None,
        help="autoencoder run or save_pretrained directory (default: the one the diffusion run names)",
    )
    p.add_argument("--clips", type=int, default=4, help="clips per video (L)")
    p.add_argument("--first-steps", type=int, default=100, help="steps for the first clip (N of 'N/M-s')")
    p.add_argument("--next-steps", type=int, default=20, help="steps for every later clip (M of 'N/M-s')")
    p.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--num-samples", type=int, default=4, help="videos to sample")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the training size)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--fps", type=positive_fps, default=None, help="playback rate, > 0 (default: the data's, else 8)")
    add_sampling_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """The CLI: load both stages, sample ``--num-samples`` long videos, write mp4s and a grid."""
    args = build_parser().parse_args(argv)
    try:
        _, config = check_checkpoint_kind(args.checkpoint, DIFFUSION_KEY, "a PVDM diffusion")
    except (FileNotFoundError, ValueError) as error:
        hint = ""
        if isinstance(error, ValueError) and "pvdm_autoencoder" in str(error):
            hint = "; give the run of 'python -m reference_models.pvdm.train --stage diffusion'"
        raise SystemExit(f"--checkpoint: {error}{hint}") from None
    ae_path = args.autoencoder or ((config.get("model") or {}).get("autoencoder") or {}).get("checkpoint")
    if ae_path is None:
        raise SystemExit("give --autoencoder: the diffusion checkpoint does not name its autoencoder")
    try:
        check_checkpoint_kind(ae_path, AUTOENCODER_KEY, "a PVDM autoencoder")
    except (FileNotFoundError, ValueError) as error:
        source = "--autoencoder" if args.autoencoder else "the autoencoder the diffusion checkpoint names"
        raise SystemExit(f"{source}: {error}") from None
    if args.export_pretrained:
        root, use_ema = Path(args.export_pretrained), not args.no_ema
        paths = [
            export_pretrained(args.checkpoint, root / "diffusion", load_diffusion, use_ema=use_ema),
            export_pretrained(ae_path, root / "autoencoder", load_autoencoder, use_ema=use_ema),
        ]
        print(
            f"wrote {paths[0]}/ and {paths[1]}/; sample with: python -m reference_models.pvdm.sample "
            f"--checkpoint {paths[0]} --autoencoder {paths[1]}"
        )
        return paths
    device = resolve_device(args.device)
    model, ckpt = load_diffusion(args.checkpoint, device=device, use_ema=not args.no_ema)
    autoencoder, _ = load_autoencoder(ae_path, device=device)
    record = (config.get("model") or {}).get("data") or {}
    fps = args.fps if args.fps is not None else float(record.get("fps") or 8.0)  # no stored rate (or 0): 8
    generator = torch.Generator().manual_seed(args.seed)
    video = generate_long_video(
        model,
        autoencoder,
        args.num_samples,
        args.clips,
        frames=args.frames,
        height=args.height,
        width=args.width,
        first_steps=args.first_steps,
        next_steps=args.next_steps,
        sampler=args.sampler,
        eta=args.eta,
        generator=generator,
    )
    written = write_samples(video.cpu(), args.out, stem="long", fps=float(fps))
    print(
        f"step {ckpt.step} of {ckpt.path}: {video.shape[0]} videos of {args.clips} clips = {video.shape[2]} "
        f"frames ({args.first_steps}/{args.next_steps}-step {args.sampler}) -> {args.out}/"
    )
    for path in written:
        print(f"  {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
