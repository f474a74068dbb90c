"""What PVDM's triplane latent saves: latent size, denoiser MACs per step and sampling time against a
pixel-space video U-Net of the same width, in one run.

PVDM (section 4.3, Table 5) samples a 16-frame 256x256 video about 17.6x faster than VDM, a
diffusion model on pixels (7.88 s vs. > 2 minutes, 100/20-step DDIM, RTX 3090 Ti). The saving has
two sources: the latent is small (``(h w + t w + t h) C`` numbers instead of ``T H W 3``) and its
denoiser is a 2D U-Net on three planes instead of a 3D U-Net on a volume. This script measures both
for the two denoisers, built from our code:

* **PVDM-S**: :class:`reference_models.pvdm.TriplaneUNet` with Table 6's PVDM-S config on the
  planes of a ``frames x size x size`` video cut into ``patch x patch`` patches (size 256, patch 8:
  32x32, 16x32, 16x32 planes of C = 4, 8192 numbers);
* **pixel baseline**: ``VideoUNet3D`` (``bench/_video_unet3d.py``), VDM's recipe (space-only
  ``1x3x3`` convolutions, space attention then time attention) with PVDM-S's width and depth (base
  128, 2 res blocks, ``128 * [1, 2, 4]``, then 512 for every further level) and log2(patch) more
  levels, so that it reaches the same grids and attends at the same grid sizes as PVDM-S (32, 16
  and 8 at 256 px). Our stand-in for VDM, whose exact 256 px configuration the papers do not give.

Figures:

1. latent size vs. pixels (numbers per video);
2. forward MACs per denoiser step at ``--size`` (counted by :func:`vdblocks.flops.count_flops`
   under ``FakeTensorMode``: shapes only, so the 256 px baseline, far too large for this CPU, is
   counted without running), plus the MACs of the ``paper`` autoencoder's decoder, which PVDM runs
   once per clip;
3. measured seconds per denoiser step (batch 1, no grad) at ``--time-size`` (default 64 px, which
   a CPU runs), medians of interleaved rounds, and the decoder's seconds per clip; a sampling time
   estimate ``steps x step (+ one decode for PVDM)`` for ``--sample-steps`` steps (default 100, the
   paper's first-clip setting).

Ratios are the baseline's figure over PVDM's ("17.6x" = PVDM is 17.6 times cheaper)::

    python bench/pvdm_cost.py                  # 256 px counts, 64 px timings
    python bench/pvdm_cost.py --threads 1 --json
    python bench/pvdm_cost.py --quick --json   # toy sizes (smoke test)
"""

from __future__ import annotations

import math

import torch
from _common import (
    base_parser,
    emit,
    format_table,
    load_average,
    machine_info,
    parse_dtype,
    synchronizer,
    time_calls,
)
from _video_unet3d import VideoUNet3D
from torch._subclasses.fake_tensor import FakeTensorMode

from reference_models.pvdm import (
    PVDMAutoencoder,
    TriplaneUNet,
    get_autoencoder_config,
    get_diffusion_config,
)
from vdblocks.flops import count_flops
from vdblocks.layers.triplane import triplane_latent_size

PAPER_SAMPLING_SPEEDUP = 17.6  # PVDM-S (100/20-s DDIM) vs VDM, 16x256x256 video, Table 5 / section 4.3
PAPER_SECONDS = {"pvdm_s": 7.88, "vdm": 113.0}  # Table 5, one 16x256x256 video, RTX 3090 Ti


def build(kind: str, *, size: int, frames: int, patch: int, base: int, channels: int, quick: bool):
    """``(model, inputs)`` for ``kind`` in {"pvdm", "baseline", "decoder"} at a ``frames x size x size`` video."""
    grid = (frames, size // patch, size // patch)
    if kind == "pvdm":
        overrides = dict(base_channels=base, latent_frames=grid[0], latent_height=grid[1], latent_width=grid[2])
        if quick:
            overrides["heads"] = 4
        cfg = get_diffusion_config("pvdm_s", **overrides)
        n = triplane_latent_size(*grid, 1)
        return TriplaneUNet(cfg).eval(), (torch.zeros(1, cfg.latent_channels, n), torch.zeros(1, dtype=torch.long))
    if kind == "baseline":
        extra = int(math.log2(patch))
        model = VideoUNet3D(
            channels,
            base,
            channel_mult=(1, 2, 4) + (4,) * extra,
            num_res_blocks=2,
            attn_resolutions=tuple(patch * 2**i for i in range(3)),
            heads=4 if quick else 8,
        )
        return model.eval(), (torch.zeros(1, channels, frames, size, size), torch.zeros(1, dtype=torch.long))
    if kind == "decoder":
        cfg = get_autoencoder_config(
            "tiny" if quick else "paper",
            channels=channels,
            frames=frames,
            height=size,
            width=size,
            patch_size=(1, patch, patch),
        )
        ae = PVDMAutoencoder(cfg).eval()
        z = [
            torch.zeros(1, cfg.latent_channels, *s)
            for s in ((grid[1], grid[2]), (grid[0], grid[2]), (grid[0], grid[1]))
        ]
        return ae, tuple(z)
    raise ValueError(kind)


def count_macs(kind: str, **kw) -> tuple[int, int]:
    """``(forward MACs, parameters)`` of one call, on fake tensors (nothing is allocated)."""
    with FakeTensorMode():
        model, inputs = build(kind, **kw)
        fn = model.decode if kind == "decoder" else model
        with torch.no_grad():
            report = count_flops(fn, *inputs)
        parts = (model.from_latent, model.decoder, model.unembed) if kind == "decoder" else (model,)
        params = sum(q.numel() for part in parts for q in part.parameters())
    return report.macs, params


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="frame size for the MAC counts (paper: 256)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (paper: 16)")
    parser.add_argument("--patch", type=int, default=8, help="spatial patch of the autoencoder (256 -> 32x32 planes)")
    parser.add_argument("--time-size", type=int, default=64, help="frame size at which steps are timed")
    parser.add_argument("--time-frames", type=int, default=None, help="frames for the timings (default --frames)")
    parser.add_argument("--base-channels", type=int, default=128, help="U-Net base width (PVDM-S: 128)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--sample-steps", type=int, default=100, help="denoiser steps per sampled clip")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (medians)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.quick:
        args.size, args.frames, args.patch, args.time_size = 32, 8, 4, 16
        args.base_channels, args.sample_steps, args.repeat = 16, 4, 2
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    for name in ("size", "time_size"):
        if getattr(args, name) % args.patch:
            parser.error(f"--{name.replace('_', '-')} must be a multiple of --patch {args.patch}")
    time_frames = args.time_frames or args.frames
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    machine = machine_info(device)
    common = dict(patch=args.patch, base=args.base_channels, channels=args.channels, quick=args.quick)

    # 1-2. sizes and MACs at --size
    grid = (args.frames, args.size // args.patch, args.size // args.patch)
    latent = triplane_latent_size(*grid, 4)
    pixels = args.channels * args.frames * args.size * args.size
    macs = {k: count_macs(k, size=args.size, frames=args.frames, **common) for k in ("pvdm", "baseline", "decoder")}

    # 3. timings at --time-size
    timed = {}
    for kind in ("pvdm", "baseline", "decoder"):
        model, inputs = build(kind, size=args.time_size, frames=time_frames, **common)
        model = model.to(device, dtype)
        inputs = tuple(x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in inputs)
        fn = model.decode if kind == "decoder" else model
        timed[kind] = lambda fn=fn, inputs=inputs: fn(*inputs)
    with torch.no_grad():
        seconds = time_calls(timed, warmup=1, repeat=args.repeat, min_time=0.0, sync=synchronizer(device))
    machine["load_average_1min_end"] = load_average()
    steps = args.sample_steps
    sample_pvdm = steps * seconds["pvdm"] + seconds["decoder"]
    sample_base = steps * seconds["baseline"]
    time_macs = {k: count_macs(k, size=args.time_size, frames=time_frames, **common)[0] for k in ("pvdm", "baseline")}

    results = {
        "latent_numbers": latent,
        "pixel_numbers": pixels,
        "latent_reduction": pixels / latent,
        "plane_grid": list(grid),
        "pvdm_macs_per_step": macs["pvdm"][0],
        "baseline_macs_per_step": macs["baseline"][0],
        "decoder_macs_per_clip": macs["decoder"][0],
        "pvdm_params": macs["pvdm"][1],
        "baseline_params": macs["baseline"][1],
        "decoder_params": macs["decoder"][1],
        "mac_ratio_per_step": macs["baseline"][0] / macs["pvdm"][0],
        "mac_ratio_per_sample": steps * macs["baseline"][0] / (steps * macs["pvdm"][0] + macs["decoder"][0]),
        "time_size": args.time_size,
        "time_frames": time_frames,
        "time_macs_per_step": time_macs,
        "pvdm_step_s": seconds["pvdm"],
        "baseline_step_s": seconds["baseline"],
        "decoder_s": seconds["decoder"],
        "step_speedup": seconds["baseline"] / seconds["pvdm"],
        "pvdm_sample_s": sample_pvdm,
        "baseline_sample_s": sample_base,
        "sampling_speedup": sample_base / sample_pvdm,
    }
    payload = {
        "benchmark": "pvdm_cost",
        "machine": machine,
        "config": {
            "size": args.size,
            "frames": args.frames,
            "patch": args.patch,
            "base_channels": args.base_channels,
            "channels": args.channels,
            "sample_steps": steps,
            "repeat": args.repeat,
            "threads": torch.get_num_threads(),
            "dtype": args.dtype,
            "quick": args.quick,
        },
        "results": results,
        "paper": {"sampling_speedup": PAPER_SAMPLING_SPEEDUP, "seconds": PAPER_SECONDS, "latent_numbers": 8192},
    }

    def g(v):
        return f"{v / 1e9:,.1f} G"

    rows = [
        {"what": "numbers per video", "pvdm": f"{latent:,}", "base": f"{pixels:,}", "ratio": f"{pixels / latent:.0f}x"},
        {
            "what": f"MACs per step @{args.size}",
            "pvdm": g(macs["pvdm"][0]),
            "base": g(macs["baseline"][0]),
            "ratio": f"{results['mac_ratio_per_step']:.1f}x",
        },
        {
            "what": f"MACs per sample ({steps} steps, +decode)",
            "pvdm": g(steps * macs["pvdm"][0] + macs["decoder"][0]),
            "base": g(steps * macs["baseline"][0]),
            "ratio": f"{results['mac_ratio_per_sample']:.1f}x",
        },
        {
            "what": "parameters",
            "pvdm": f"{macs['pvdm'][1] / 1e6:.1f} M",
            "base": f"{macs['baseline'][1] / 1e6:.1f} M",
            "ratio": "",
        },
        {
            "what": f"s per step @{args.time_size}",
            "pvdm": f"{seconds['pvdm']:.4f}",
            "base": f"{seconds['baseline']:.4f}",
            "ratio": f"{results['step_speedup']:.1f}x",
        },
        {
            "what": f"s per sample @{args.time_size} ({steps} steps)",
            "pvdm": f"{sample_pvdm:.2f}",
            "base": f"{sample_base:.2f}",
            "ratio": f"{results['sampling_speedup']:.1f}x",
        },
        {
            "what": "paper: s per 16x256x256 sample (GPU)",
            "pvdm": f"{PAPER_SECONDS['pvdm_s']}",
            "base": f">{PAPER_SECONDS['vdm']:.0f} (VDM)",
            "ratio": f"{PAPER_SAMPLING_SPEEDUP}x",
        },
    ]
    columns = [
        ("what", "", str),
        ("pvdm", "PVDM-S (triplane)", str),
        ("base", "pixel 3D U-Net", str),
        ("ratio", "baseline / PVDM", str),
    ]
    header = (
        f"PVDM cost, {args.frames} frames of {args.size}x{args.size}, patch {args.patch} -> planes "
        f"{grid[1]}x{grid[2]}, {grid[0]}x{grid[2]}, {grid[0]}x{grid[1]}; timings at {time_frames} x "
        f"{args.time_size}x{args.time_size}, batch 1, {torch.get_num_threads()} thread(s), "
        f"{machine['cpu']}; decoder {macs['decoder'][0] / 1e9:,.1f} GMACs, {seconds['decoder']:.3f} s per clip"
    )
    emit(payload, args.json, header + "\n" + format_table(rows, columns))


if __name__ == "__main__":
    main()
