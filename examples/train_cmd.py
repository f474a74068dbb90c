"""Train CMD end to end on moving shapes and sample class-conditional videos, on the CPU in minutes.

The three stages of CMD (section 3.2) run one after the other with the ``tiny`` preset (8 RGB frames of
24x32, 5 shape classes), each a separate, resumable training run of
``python -m reference_models.cmd.train``, called from Python as ``reference_models.cmd.train.run`` with
a config and a ``TrainConfig``:

1. ``ae``: the autoencoder (video -> content frame + motion latents, l2 reconstruction);
2. ``content``: the class-conditional content-frame model (``tiny``: a small ADM U-Net; the paper's
   DiT with ``--set content_model=dit``) on the frozen autoencoder's content frames;
3. ``motion``: the motion DiT on its motion latents, given the content frame and the class.

Then one video per class is sampled (content frame by guided DDIM, motion given it, decode) and
written as ``<out>/samples/cmd_<i>.mp4`` with a PNG grid, exactly what
``python -m reference_models.cmd.sample`` does with the three checkpoints::

    python examples/train_cmd.py                       # ~5 minutes on two CPU threads, probe included
    python examples/train_cmd.py --out runs/cmd --scale 4   # 4x the steps of every stage

Every stage writes its own checkpoints and samples under ``<out>/<stage>/``; rerunning with the same
``--out`` resumes each stage where it stopped.

Last, the run measures itself: ``--probe-per-class`` more videos per class (8 by default) are scored by
the moving-shapes probe (``reference_models.common.probe``), which reads the shape kind each video
shows; the per-class accuracy is printed and written to ``<out>/probe.json`` (first clips of each class
in ``<out>/probe_grid.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import einops
import torch

from reference_models.cmd import sampling
from reference_models.cmd import train as train_mod
from reference_models.cmd.config import get_config
from reference_models.common.cli import parse_override
from reference_models.common.data import MovingShapes
from reference_models.common.distributed import resolve_device
from reference_models.common.probe import ShapesProbe
from reference_models.common.trainer import TrainConfig
from reference_models.common.video_io import save_frame_grid

# Steps per stage at --scale 1 (the whole example, probe included, takes about five minutes on two CPU
# threads).
STEPS = {"ae": 250, "content": 900, "motion": 600}
LR = {"ae": 2e-3, "content": 1e-3, "motion": 1e-3}


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cmd_example")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--guidance", type=float, default=4.0, help="content model guidance (paper: 4.0)")
    p.add_argument("--content-steps", type=int, default=50, help="DDIM steps of the content model (paper: 50)")
    p.add_argument("--motion-steps", type=int, default=100, help="DDIM steps of the motion model (paper: 100)")
    p.add_argument("--samples-per-class", type=int, default=2)
    p.add_argument("--probe-per-class", type=int, default=8, help="videos per class scored by the probe (0: skip)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a CMDConfig field of the tiny preset",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    out = Path(args.out)
    start = time.perf_counter()
    for stage in train_mod.STAGES:
        steps = max(1, round(STEPS[stage] * args.scale))
        train_cfg = TrainConfig(
            steps=steps,
            batch_size=args.batch_size,
            lr=LR[stage],
            warmup_steps=min(50, steps),
            ema_decay=min(0.9999, max(0.0, 1.0 - 10.0 / steps)),
            log_every=min(100, steps),
            sample_every=steps,  # samples at the end of each stage
            out_dir=out / stage,
            device=args.device,
            progress=False,
        )
        # The autoencoder takes the tiny preset (with --set); the other stages take its config.
        cfg = get_config("tiny", **dict(parse_override(o) for o in args.overrides)) if stage == "ae" else None
        print(f"== stage {stage}: {steps} steps ({time.perf_counter() - start:.0f} s so far)", flush=True)
        train_mod.run(
            cfg,
            train_cfg,
            stage=stage,
            ae=None if stage == "ae" else out / "ae",
            preset="tiny",
            sample_steps=25,
            guidance=args.guidance,
            resume=True,
        )

    device = resolve_device(args.device)
    autoencoder, _ = sampling.load_autoencoder(out / "ae", device=device)
    content_model, _, content_cfg = sampling.load_content_model(out / "content", device=device)
    motion_model, _ = sampling.load_motion_model(out / "motion", device=device)
    sampling.check_compatible(autoencoder.cfg, content_cfg, "autoencoder", "content model")
    sampling.check_compatible(autoencoder.cfg, motion_model.cfg, "autoencoder", "motion model")
    labels = torch.arange(5).repeat_interleave(args.samples_per_class)
    result = sampling.sample_videos(
        autoencoder,
        content_model,
        motion_model,
        labels=labels,
        content_steps=args.content_steps,
        motion_steps=args.motion_steps,
        guidance=args.guidance,
        generator=torch.Generator().manual_seed(0),
    )
    paths = sampling.write_videos(result, out / "samples", labels=labels)
    for path in paths:
        print(path)
    if args.probe_per_class > 0:
        probe_classes(
            out,
            per_class=args.probe_per_class,
            guidance=args.guidance,
            content_steps=args.content_steps,
            motion_steps=args.motion_steps,
            device=args.device,
            started=start,
        )
    print(
        f"done in {time.perf_counter() - start:.0f} s; videos per class (0 square, 1 circle, 2 triangle, "
        f"3 diamond, 4 cross) in {out / 'samples'}, frame grid {out / 'samples' / 'cmd_grid.png'}"
    )
    return paths


def probe_classes(
    out: Path,
    *,
    per_class: int,
    guidance: float,
    content_steps: int,
    motion_steps: int,
    device: str,
    started: float,
    seed: int = 1,
) -> dict:
    """Sample ``per_class`` videos of every class and let the shapes probe read their shape kind."""
    probe_start = time.perf_counter()
    autoencoder, _ = sampling.load_autoencoder(out / "ae", device=device)
    content_model, _, _ = sampling.load_content_model(out / "content", device=device)
    motion_model, _ = sampling.load_motion_model(out / "motion", device=device)
    cfg = motion_model.cfg
    # The training data's distribution (train.py's built-in moving shapes), for the probe's geometry.
    data = MovingShapes(
        64, frames=cfg.frames, height=cfg.height, width=cfg.width, channels=cfg.channels, **train_mod.SHAPES
    )
    probe = ShapesProbe.for_dataset(data)
    labels = torch.arange(data.num_classes).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        videos = (
            sampling.sample_videos(
                autoencoder,
                content_model,
                motion_model,
                labels=labels,
                content_steps=content_steps,
                motion_steps=motion_steps,
                guidance=guidance,
                generator=generator,
            )
            .video.float()
            .cpu()
            .clamp(-1, 1)
        )
    result = probe.evaluate(videos, [{"kind": data.class_names[int(y)]} for y in labels], fps=data.fps_choices[0])
    first = videos[::per_class]  # the first clip of each class
    save_frame_grid(out / "probe_grid.png", einops.repeat(first, "b c t h w -> b c t (h u) (w v)", u=2, v=2))
    report = {
        "probe": result.to_dict(),
        "classes": data.class_names,
        "per_class": per_class,
        "sampler": {"content_steps": content_steps, "motion_steps": motion_steps, "guidance_scale": guidance},
        "run": {
            "seconds_to_here": round(time.perf_counter() - started, 1),
            "probe_seconds": round(time.perf_counter() - probe_start, 1),
        },
    }
    (out / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(result.format())
    print(f"probe: {out / 'probe.json'}, one clip per class in {out / 'probe_grid.png'}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
