"""Train PVDM end to end on built-in moving shapes and sample a long video, on the CPU in minutes.

Three steps, each the command-line tool a real run would use:

1. ``python -m reference_models.pvdm.train --stage ae``: the triplane autoencoder (``tiny`` preset:
   8 frames of 32x32 RGB -> three 8x8 planes);
2. ``python -m reference_models.pvdm.train --stage diffusion``: encode every pair of consecutive
   clips once into a latent cache, then train the shared-weight triplane U-Net on it, conditional
   on the previous clip or on the null condition (section 3.3);
3. ``python -m reference_models.pvdm.sample``: Algorithm 1, a first clip from the null condition
   and each next one conditioned on the last, ``--clips`` clips long, written as .mp4 and a PNG grid.

::

    python examples/train_pvdm.py                       # ~4 minutes on two CPU threads, probe included
    python examples/train_pvdm.py --ae-steps 2000 --diffusion-steps 3000 --out runs/pvdm_long

Each stage can be resumed or run alone with the commands this script prints.

Last, the run measures itself with the moving-shapes probe (``reference_models.common.probe``) on
``--probe-videos`` more long videos, cut into their clips: the fraction of clips showing exactly one
object, the Frechet distance of the clips to real ones (probe features), and whether each long video
keeps its object (the probe reads the same colour and kind in every clip). The data has one shape per
scene by default (``--max-shapes``), so that these figures mean something. Written to
``<out>/probe.json``, with the autoencoder's last held-out reconstruction PSNR (``reconstruction``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import einops
import torch

from reference_models.common.checkpoint import read_checkpoint_config
from reference_models.common.probe import ShapesProbe
from reference_models.pvdm import sample as pvdm_sample
from reference_models.pvdm import train as pvdm_train
from reference_models.pvdm.sampling import generate_long_video, load_autoencoder, load_diffusion


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/pvdm_example")
    p.add_argument("--ae-steps", type=int, default=500)
    p.add_argument("--diffusion-steps", type=int, default=700)
    p.add_argument("--num-videos", type=int, default=512, help="moving-shapes scenes (each gives 2 clips)")
    p.add_argument("--clips", type=int, default=4, help="clips per sampled long video")
    p.add_argument("--first-steps", type=int, default=50)
    p.add_argument("--next-steps", type=int, default=25)
    p.add_argument("--max-shapes", type=int, default=1, help="moving shapes per scene")
    p.add_argument("--probe-videos", type=int, default=8, help="long videos scored by the shapes probe (0: skip)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    out = Path(args.out)
    common = [
        "--device",
        args.device,
        "--no-progress",
        "--log-every",
        "50",
        "--num-videos",
        str(args.num_videos),
        "--max-shapes",
        str(args.max_shapes),
    ]
    start = time.perf_counter()

    print("== stage 1: triplane autoencoder")
    pvdm_train.main(
        [
            "--stage",
            "ae",
            "--preset",
            "tiny",
            "--out",
            str(out / "ae"),
            "--steps",
            str(args.ae_steps),
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            *common,
        ]
    )
    print(f"   reconstructions: {out / 'ae' / 'samples'}  ({time.perf_counter() - start:.0f} s so far)")

    print("== stage 2: latent diffusion on cached latents")
    pvdm_train.main(
        [
            "--stage",
            "diffusion",
            "--preset",
            "tiny",
            "--autoencoder",
            str(out / "ae"),
            "--out",
            str(out / "diffusion"),
            "--steps",
            str(args.diffusion_steps),
            "--batch-size",
            "16",
            "--lr",
            "2e-3",
            "--sample-every",
            "0",
            *common,
        ]
    )
    print(f"   ({time.perf_counter() - start:.0f} s so far)")

    print(f"== long video: {args.clips} clips, {args.first_steps}/{args.next_steps}-step DDIM")
    pvdm_sample.main(
        [
            "--checkpoint",
            str(out / "diffusion"),
            "--clips",
            str(args.clips),
            "--first-steps",
            str(args.first_steps),
            "--next-steps",
            str(args.next_steps),
            "--num-samples",
            "4",
            "--device",
            args.device,
            "--out",
            str(out / "long"),
        ]
    )
    if args.probe_videos > 0:
        probe_long_videos(
            out,
            videos=args.probe_videos,
            clips=args.clips,
            first_steps=args.first_steps,
            next_steps=args.next_steps,
            started=start,
        )
    print(
        f"done in {time.perf_counter() - start:.0f} s; resume a stage with --resume, e.g.\n"
        f"  python -m reference_models.pvdm.train --stage diffusion --preset tiny --autoencoder {out / 'ae'} "
        f"--out {out / 'diffusion'} --steps 3000 --resume"
    )


def probe_long_videos(
    out: Path, *, videos: int, clips: int, first_steps: int, next_steps: int, started: float, seed: int = 1
) -> dict:
    """Sample ``videos`` long videos, cut them into clips and score the clips with the shapes probe."""
    probe_start = time.perf_counter()
    model, _ = load_diffusion(out / "diffusion")
    autoencoder, _ = load_autoencoder(out / "ae")
    record = (read_checkpoint_config(out / "ae")[1].get("model") or {}).get("data") or {}
    cfg = autoencoder.cfg
    probe = ShapesProbe.for_geometry(
        cfg.channels,
        cfg.frames,
        cfg.height,
        cfg.width,
        fps=float(record["fps"]),
        size_range=tuple(record["size_range"]),
        speed_range=tuple(record["speed_range"]),
    )
    generator = torch.Generator().manual_seed(seed)
    long = (
        generate_long_video(
            model, autoencoder, videos, clips, first_steps=first_steps, next_steps=next_steps, generator=generator
        )
        .float()
        .cpu()
        .clamp(-1, 1)
    )  # b c (L T) h w
    cut = einops.rearrange(long, "b c (l t) h w -> (b l) c t h w", l=clips)
    result = probe.evaluate(cut, [None] * cut.shape[0], fps=float(record["fps"]))
    read = [(p.get("color"), p.get("kind")) for p in result.predictions]
    kept = sum(len(set(read[i * clips : (i + 1) * clips])) == 1 for i in range(videos)) / videos
    report = {
        "probe": result.to_dict(),
        "long_videos": videos,
        "clips_per_video": clips,
        "keeps_its_object": kept,
        "sampler": {"first_steps": first_steps, "next_steps": next_steps},
        "run": {
            "seconds_to_here": round(time.perf_counter() - started, 1),
            "probe_seconds": round(time.perf_counter() - probe_start, 1),
        },
    }
    recon = sorted((out / "ae" / "samples").glob("step*_recon_metrics.json"))  # zero-padded steps: last = latest
    if recon:  # the ae stage scores its held-out reconstructions when it samples (at its end by default)
        report["reconstruction"] = json.loads(recon[-1].read_text(encoding="utf-8"))  # {"psnr", "step"}
    (out / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
    print(result.format())
    print(f"long videos whose clips all show the same colour and kind (probe): {kept:.1%} of {videos}")
    print(f"probe: {out / 'probe.json'}")
    return report


if __name__ == "__main__":
    main()
