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

    python examples/train_pvdm.py                       # ~5 minutes on one CPU thread
    python examples/train_pvdm.py --ae-steps 2000 --diffusion-steps 3000 --out runs/pvdm_long

Each stage can be resumed or run alone with the commands this script prints.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from reference_models.pvdm import sample as pvdm_sample
from reference_models.pvdm import train as pvdm_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/pvdm_example")
    p.add_argument("--ae-steps", type=int, default=500)
    p.add_argument("--diffusion-steps", type=int, default=700)
    p.add_argument("--num-videos", type=int, default=512, help="moving-shapes scenes (each gives 2 clips)")
    p.add_argument("--clips", type=int, default=4, help="clips per sampled long video")
    p.add_argument("--first-steps", type=int, default=50)
    p.add_argument("--next-steps", type=int, default=25)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    out = Path(args.out)
    common = ["--device", args.device, "--no-progress", "--log-every", "50", "--num-videos", str(args.num_videos)]
    start = time.perf_counter()

    print("== stage 1: triplane autoencoder")
    pvdm_train.main(["--stage", "ae", "--preset", "tiny", "--out", str(out / "ae"), "--steps", str(args.ae_steps),
                     "--batch-size", "8", "--lr", "3e-3", *common])
    print(f"   reconstructions: {out / 'ae' / 'samples'}  ({time.perf_counter() - start:.0f} s so far)")

    print("== stage 2: latent diffusion on cached latents")
    pvdm_train.main(["--stage", "diffusion", "--preset", "tiny", "--autoencoder", str(out / "ae"),
                     "--out", str(out / "diffusion"), "--steps", str(args.diffusion_steps), "--batch-size", "16",
                     "--lr", "2e-3", "--sample-every", "0", *common])
    print(f"   ({time.perf_counter() - start:.0f} s so far)")

    print(f"== long video: {args.clips} clips, {args.first_steps}/{args.next_steps}-step DDIM")
    pvdm_sample.main(["--checkpoint", str(out / "diffusion"), "--clips", str(args.clips), "--first-steps",
                      str(args.first_steps), "--next-steps", str(args.next_steps), "--num-samples", "4",
                      "--device", args.device, "--out", str(out / "long")])
    print(f"done in {time.perf_counter() - start:.0f} s; resume a stage with --resume, e.g.\n"
          f"  python -m reference_models.pvdm.train --stage diffusion --preset tiny --autoencoder {out / 'ae'} "
          f"--out {out / 'diffusion'} --steps 3000 --resume")


if __name__ == "__main__":
    main()
