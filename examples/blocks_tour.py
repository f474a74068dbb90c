"""A tour of the seven vdblocks blocks at realistic sizes, on the CPU.

Builds each block at a size taken from its paper, runs forward and backward, and prints a table of
input and output shapes, parameters, forward MACs and time per block:

    python examples/blocks_tour.py            # the table
    python examples/blocks_tour.py --repeat 5 # more timing repeats
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from vdblocks import (
    BottleneckResidualPathway,
    ChannelSplit,
    ContentFrameHead,
    FPSEmbedding,
    MixedSelfAttention,
    SpatialTemporalMixedEmbedding,
    TimestepEmbedding,
    TriplaneProjector,
    video_to_grid,
)
from vdblocks.flops import count_flops


@dataclass
class Case:
    name: str
    paper: str
    module: nn.Module
    make_inputs: Callable[[], tuple]
    note: str = ""


def cases() -> list[Case]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # Widths from the papers: EVDM's KTH U-Net (c0 = 96, layer 2 at 32x32, embedding 384), PVDM's
    # projector (width 384 in the paper; 128 here to keep the tour quick), CMD at 16 frames of
    # 64x64 with patch 4, ETC on Stable Diffusion latents (4 channels, 16 frames of 32x32, a 4x4
    # grid) and SD 2.1's time embedding (320 -> 1280).
    timestep = TimestepEmbedding(1280, frequency_dim=320)
    msa = MixedSelfAttention(288, heads=3, dim_head=96)
    return [
        Case(
            "BottleneckResidualPathway",
            "EVDM eqs. 8-10",
            BottleneckResidualPathway(192, 192, emb_dim=384, bottleneck_ratio=4),
            lambda: (randn(2, 192, 32, 32), randn(2, 384)),
        ),
        Case(
            "ChannelSplit",
            "EVDM sec. 3.4",
            ChannelSplit(96, 192, emb_dim=384, bottleneck_ratio=8),
            lambda: (randn(2, 96, 32, 32), randn(2, 384)),
        ),
        Case(
            "MixedSelfAttention",
            "EVDM eq. 14",
            msa,
            lambda: (randn(2, 288, 16, 16),),
            note=f"L=256 > 2*96 -> {msa.select_algorithm(256)}",
        ),
        Case(
            "TriplaneProjector",
            "PVDM sec. 3.2",
            TriplaneProjector(128, latent_channels=4, depth=2, heads=4),
            lambda: (randn(1, 128, 8, 16, 16),),
        ),
        Case(
            "ContentFrameHead",
            "CMD eq. 3",
            ContentFrameHead(384, channels=3, patch_size=4),
            lambda: (randn(2, 3, 16, 64, 64), randn(2, 384, 16, 16, 16)),
        ),
        Case(
            "SpatialTemporalMixedEmbedding",
            "ETC eqs. 1-4",
            _GridEmbed(SpatialTemporalMixedEmbedding(4), grid=(4, 4)),
            lambda: (randn(2, 4, 16, 32, 32),),
            note="video -> 4x4 grid + ME",
        ),
        Case(
            "FPSEmbedding",
            "ETC sec. 4.2",
            FPSEmbedding(1280, timestep),
            lambda: (torch.tensor([0.0, 8.0, 30.0, 120.0]),),
        ),
    ]


class _GridEmbed(nn.Module):
    """Tiles the video into its grid (eq. 1) and adds the mixed embedding (eqs. 2-4)."""

    def __init__(self, embed: SpatialTemporalMixedEmbedding, grid: tuple[int, int]) -> None:
        super().__init__()
        self.embed, self.grid = embed, grid

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.embed(video_to_grid(video, self.grid), self.grid)


def _shape(obj) -> str:
    if isinstance(obj, torch.Tensor):
        return "x".join(map(str, obj.shape))
    return ", ".join(_shape(o) for o in obj)


def _outputs(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]


def run_case(case: Case, repeat: int) -> dict:
    inputs = case.make_inputs()
    for t in inputs:
        if t.is_floating_point():
            t.requires_grad_(True)
    macs = count_flops(case.module, *inputs).macs
    times = []
    for _ in range(repeat + 1):  # the first run warms up
        case.module.zero_grad(set_to_none=True)
        start = time.perf_counter()
        out = case.module(*inputs)
        torch.autograd.backward([o.float().sum() for o in _outputs(out) if o.requires_grad])
        times.append(time.perf_counter() - start)
    out = case.module(*inputs)
    params = sum(p.numel() for p in case.module.parameters())
    grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in case.module.parameters())
    return {
        "block": case.name,
        "paper": case.paper,
        "input": _shape(inputs),
        "output": _shape(out),
        "params": params,
        "macs": macs,
        "ms": 1000 * statistics.median(times[1:]),
        "grads": "ok" if grads_ok else "MISSING",
        "note": case.note,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed forward+backward runs per block")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [run_case(case, args.repeat) for case in cases()]
    header = ["block", "paper", "input", "output", "params", "fwd MACs", "fwd+bwd ms", "grads", "note"]
    body = [
        [
            r["block"],
            r["paper"],
            r["input"],
            r["output"],
            f"{r['params'] / 1e6:.3f} M",
            f"{r['macs'] / 1e9:.3f} G",
            f"{r['ms']:.1f}",
            r["grads"],
            r["note"],
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    for i, line in enumerate([header, *body]):
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device cpu; "
        "MACs are forward multiply-accumulates counted by vdblocks.flops"
    )


if __name__ == "__main__":
    main()
