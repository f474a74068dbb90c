"""Sampling cost of CMD versus a DiT that denoises the whole video volume, and the content-patch knob.

CMD (Figure 1, Figure 6a, section 4.3) samples a 16-frame 512x1024 video with 46.83 TFLOPs where
ModelScope, which denoises the full ``(c, t, h, w)`` volume, needs 938.9 ("~16.7x less computation",
Figure 1). This script counts the same comparison for our models, in one run:

* **CMD** = content-frame DiT (50 DDIM steps with classifier-free guidance: 2 passes per step)
  + motion DiT (100 DDIM steps, one pass: the paper gives no motion guidance) + the CMD decoder once;
  Stable Diffusion's image decoder is left out, as the paper does for every model.
* **Full-volume DiT** at the same width and depth: one DiT over all frames' patches (50 DDIM steps
  with guidance, 2 passes), in two flavours: *full* 3D attention over every token of the clip, and
  *divided* attention (Latte-style alternating spatial and temporal blocks, the cheaper design
  video DiTs use).

Setting (the paper's Figure 1/6): 16 frames of 512x1024 pixels, i.e. Stable Diffusion latents of
4x64x128. CMD's parts are the ``webvid_sd21`` preset (Tables 5-6: autoencoder patch 2, ``C' = 384``,
depth 12, ``D = 8``; motion DiT-XL/2 with content patch 8), the content model a DiT-XL/2 on 64x128
latents (the paper fine-tunes SD 2.1 there; we keep every model a DiT-XL/2 so that the comparison is
"same width"). MACs are forward multiply-accumulates counted by :func:`vdblocks.flops.count_flops` on
the ``meta`` device (no memory, no compute), attention included; FLOPs are twice that.

Time per video is measured at a size this CPU runs (``--time-frames``, ``--time-height``,
``--time-width`` latents, DiT-S width): each network's forward is timed (median of interleaved rounds,
:func:`_common.time_calls`) and multiplied by its number of passes; the ratios are what matter.
Last, the motion DiT's MACs and sequence length for content patches 4 / 8 / 16 (Table 4c) at the
paper size.

    python bench/cmd_cost.py                 # table
    python bench/cmd_cost.py --json          # ... then one JSON object on the last line
    python bench/cmd_cost.py --quick --json  # tiny sizes, for the smoke test
"""

from __future__ import annotations

from typing import Any

import torch
from _common import base_parser, emit, format_table, machine_info, time_calls
from einops import rearrange
from torch import nn

from reference_models.cmd.autoencoder import CMDAutoencoder
from reference_models.cmd.config import CMDConfig, get_config, with_dit
from reference_models.cmd.content_model import ContentDiT
from reference_models.cmd.motion_model import MotionDiT, motion_sequence_length
from vdblocks.flops import count_flops
from vdblocks.layers.dit import (
    DiTBlock,
    DiTFinalLayer,
    PatchEmbed2d,
    dit_positions,
    unpatchify,
)
from vdblocks.layers.embeddings import TimestepEmbedding

PAPER = {"cmd_tflops": 46.83, "modelscope_tflops": 938.9, "claimed_ratio": 16.7}
CONTENT_STEPS, MOTION_STEPS, BASELINE_STEPS = 50, 100, 50  # B.4; the baseline as the content model
GUIDED_PASSES = 2  # classifier-free guidance: conditional and null halves


class VideoDiT(nn.Module):
    """The full-volume baseline: a class-conditional DiT over the patches of every frame.

    ``(b, C, t, H, W), (b,), (b,) -> (b, C, t, H, W)``. ``attention="full"``: every block attends over
    all ``t (H/p) (W/p)`` tokens; ``"divided"``: blocks alternate between attention within a frame and
    attention along time at each position (Latte's interleaved variant), with the same block count.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int,
        heads: int,
        patch: int = 2,
        attention: str = "full",
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.patch, self.attention, self.channels = patch, attention, channels
        self.embed = PatchEmbed2d(channels, dim, patch)
        self.time = TimestepEmbedding(dim, frequency_dim=256)
        self.labels = nn.Embedding(num_classes + 1, dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads) for _ in range(depth))
        self.final = DiTFinalLayer(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b, _, frames, height, width = x.shape
        gh, gw = height // self.patch, width // self.patch
        c = self.time(t) + self.labels(labels)  # b dim
        tokens = self.embed(rearrange(x, "b c t h w -> (b t) c h w"))  # (b t) n dim
        tokens = tokens + dit_positions(tokens.shape[-1], gh, gw, like=tokens)
        tokens = rearrange(tokens, "(b t) n d -> b t n d", b=b)
        for i, block in enumerate(self.blocks):
            if self.attention == "full":
                flat = block(rearrange(tokens, "b t n d -> b (t n) d"), c)  # b (t n) dim
                tokens = rearrange(flat, "b (t n) d -> b t n d", t=frames)
            elif i % 2 == 0:  # spatial: each frame's tokens
                frame_c = c.repeat_interleave(frames, dim=0)
                tokens = rearrange(
                    block(rearrange(tokens, "b t n d -> (b t) n d"), frame_c), "(b t) n d -> b t n d", b=b
                )
            else:  # temporal: each position's frames
                pos_c = c.repeat_interleave(gh * gw, dim=0)
                tokens = rearrange(block(rearrange(tokens, "b t n d -> (b n) t d"), pos_c), "(b n) t d -> b t n d", b=b)
        out = self.final(rearrange(tokens, "b t n d -> (b t) n d"), c.repeat_interleave(frames, dim=0))
        return rearrange(unpatchify(out, self.patch, gh, gw), "(b t) c h w -> b c t h w", b=b)


def _models(cfg: CMDConfig, dim: int, depth: int, heads: int) -> dict[str, nn.Module]:
    cfg = cfg.replace(
        content_dit_dim=dim,
        content_dit_depth=depth,
        content_dit_heads=heads,
        motion_dim=dim,
        motion_depth=depth,
        motion_heads=heads,
        num_classes=1000,
    )
    return {
        "content": ContentDiT(cfg),
        "motion": MotionDiT(cfg),
        "decoder": CMDAutoencoder(cfg),
        "video_dit_full": VideoDiT(cfg.channels, dim, depth, heads, cfg.content_dit_patch, "full"),
        "video_dit_divided": VideoDiT(cfg.channels, dim, depth, heads, cfg.content_dit_patch, "divided"),
    }


def _inputs(cfg: CMDConfig, frames: int, height: int, width: int, device: str | torch.device) -> dict[str, tuple]:
    """One batch-1 call per network (the guided halves are counted as passes, not batch)."""
    kw = {"device": device}
    t, y = torch.full((1,), 500, **kw), torch.zeros(1, dtype=torch.long, **kw)
    content = torch.randn(1, cfg.channels, height, width, **kw)
    h, w = height // cfg.ae_patch, width // cfg.ae_patch
    z = torch.randn(1, cfg.motion_channels, frames, h + w, **kw)
    video = torch.randn(1, cfg.channels, frames, height, width, **kw)
    return {
        "content": (content, t, y),
        "motion": (z, t, content, y),
        "decoder": (content, z[..., :h], z[..., h:]),
        "video_dit_full": (video, t, y),
        "video_dit_divided": (video, t, y),
    }


PASSES = {
    "content": CONTENT_STEPS * GUIDED_PASSES,
    "motion": MOTION_STEPS,
    "decoder": 1,
    "video_dit_full": BASELINE_STEPS * GUIDED_PASSES,
    "video_dit_divided": BASELINE_STEPS * GUIDED_PASSES,
}


def _call(name: str, model: nn.Module, args: tuple) -> Any:
    if name == "decoder":
        return model.decode(*args)
    if name in ("content", "motion"):
        return model(*args[:-1], labels=args[-1])
    return model(*args)


def count_macs(
    cfg: CMDConfig, frames: int, height: int, width: int, dim: int, depth: int, heads: int
) -> dict[str, int]:
    """Forward MACs of one pass of every network, counted on the meta device."""
    with torch.device("meta"):
        models = _models(cfg, dim, depth, heads)
        inputs = _inputs(cfg, frames, height, width, "meta")
    return {name: count_flops(lambda m=m, n=name: _call(n, m, inputs[n])).macs for name, m in models.items()}


def per_video(values: dict[str, float]) -> dict[str, float]:
    """Per-pass figures -> per-video: CMD (content + motion + decoder) and the two baselines."""
    cmd = sum(values[k] * PASSES[k] for k in ("content", "motion", "decoder"))
    return {
        "cmd": cmd,
        "video_dit_full": values["video_dit_full"] * PASSES["video_dit_full"],
        "video_dit_divided": values["video_dit_divided"] * PASSES["video_dit_divided"],
        **{f"cmd_{k}": values[k] * PASSES[k] for k in ("content", "motion", "decoder")},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=16, help="MACs: frames (paper: 16)")
    p.add_argument("--height", type=int, default=64, help="MACs: latent height (512 px / 8)")
    p.add_argument("--width", type=int, default=128, help="MACs: latent width (1024 px / 8)")
    p.add_argument("--dit", default="XL", help="MACs: DiT size of every diffusion network (paper: XL)")
    p.add_argument("--time-frames", type=int, default=16)
    p.add_argument("--time-height", type=int, default=16, help="timing: latent height (128 px)")
    p.add_argument("--time-width", type=int, default=32, help="timing: latent width (256 px)")
    p.add_argument("--time-dit", default="S", help="timing: DiT size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_config("webvid_sd21")
    if args.quick:
        cfg = cfg.replace(ae_dim=32, ae_depth=1, ae_heads=2, ae_dim_head=16)
        args.frames, args.height, args.width = 4, 16, 16
        args.time_frames, args.time_height, args.time_width = 4, 8, 16
        args.repeat = 1
        mac_size = time_size = (64, 2, 4)
    else:
        from reference_models.cmd.config import DIT_SIZES

        mac_size, time_size = DIT_SIZES[args.dit], DIT_SIZES[args.time_dit]

    macs = count_macs(cfg, args.frames, args.height, args.width, *mac_size)
    video_macs = per_video(macs)

    torch.manual_seed(0)
    models = _models(cfg, *time_size)
    inputs = _inputs(cfg, args.time_frames, args.time_height, args.time_width, args.device)
    for m in models.values():
        m.to(args.device).eval()
    with torch.no_grad():
        seconds = time_calls(
            {n: (lambda n=n: _call(n, models[n], inputs[n])) for n in models},
            warmup=1,
            repeat=args.repeat,
            min_time=0.0 if args.quick else 0.02,
        )
    time_macs = count_macs(cfg, args.time_frames, args.time_height, args.time_width, *time_size)
    video_seconds = per_video(seconds)
    video_time_macs = per_video(time_macs)

    patches = []
    for q in (4, 8, 16):
        c = with_dit(cfg, content_patch=q).replace(content_dit_patch=2)
        m = count_macs(c, args.frames, args.height, args.width, *mac_size)["motion"]
        motion_tokens, content_tokens = motion_sequence_length(c, args.frames, args.height, args.width)
        patches.append(
            {
                "content_patch": q,
                "motion_tokens": motion_tokens,
                "content_tokens": content_tokens,
                "gmacs_per_pass": m / 1e9,
                "tmacs_per_video": m * PASSES["motion"] / 1e12,
            }
        )

    rows = []
    for name in ("cmd", "cmd_content", "cmd_motion", "cmd_decoder", "video_dit_full", "video_dit_divided"):
        rows.append(
            {
                "model": name,
                "tmacs": video_macs[name] / 1e12,
                "tflops": 2 * video_macs[name] / 1e12,
                "time_s": video_seconds[name],
                "time_gmacs": video_time_macs[name] / 1e9,
            }
        )
    ratios = {
        f"{base}_over_cmd": {
            "macs": video_macs[base] / video_macs["cmd"],
            "time": video_seconds[base] / video_seconds["cmd"],
            "macs_at_timing_size": video_time_macs[base] / video_time_macs["cmd"],
        }
        for base in ("video_dit_full", "video_dit_divided")
    }
    payload = {
        "benchmark": "cmd_cost",
        "machine": machine_info(args.device),
        "config": {
            "frames": args.frames,
            "latent": [cfg.channels, args.height, args.width],
            "dit": args.dit if not args.quick else "quick",
            "time_dit": args.time_dit if not args.quick else "quick",
            "time_latent": [args.time_frames, args.time_height, args.time_width],
            "passes": PASSES,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "ae": {
                "patch": cfg.ae_patch,
                "dim": cfg.ae_dim,
                "depth": cfg.ae_depth,
                "motion_channels": cfg.motion_channels,
                "content_patch": cfg.content_patch,
            },
        },
        "results": rows,
        "ratios": ratios,
        "content_patch": patches,
        "paper": {**PAPER, "ratio_from_tflops": PAPER["modelscope_tflops"] / PAPER["cmd_tflops"]},
        "per_pass_macs": macs,
        "per_pass_seconds": seconds,
    }
    table = format_table(
        rows,
        [
            ("model", "model", str),
            ("tmacs", f"TMACs/video @{args.frames}x{args.height}x{args.width}", lambda v: f"{v:.2f}"),
            ("tflops", "TFLOPs/video", lambda v: f"{v:.2f}"),
            ("time_s", f"s/video @{args.time_frames}x{args.time_height}x{args.time_width}", lambda v: f"{v:.2f}"),
            ("time_gmacs", "GMACs @timing size", lambda v: f"{v:.1f}"),
        ],
    )
    table += "\n\n" + "\n".join(
        f"{k}: {v['macs']:.1f}x the MACs of CMD, {v['time']:.1f}x the time (at the timing size: "
        f"{v['macs_at_timing_size']:.1f}x the MACs)"
        for k, v in ratios.items()
    )
    table += (
        f"\npaper (Figure 1): ModelScope / CMD = {PAPER['modelscope_tflops']} / {PAPER['cmd_tflops']} TFLOPs "
        f"= {payload['paper']['ratio_from_tflops']:.1f}x (text: ~{PAPER['claimed_ratio']}x)\n\n"
    )
    table += format_table(
        patches,
        [
            ("content_patch", "content patch", str),
            ("motion_tokens", "motion tokens", str),
            ("content_tokens", "content tokens", str),
            ("gmacs_per_pass", "motion GMACs/pass", lambda v: f"{v:.1f}"),
            ("tmacs_per_video", "motion TMACs/video", lambda v: f"{v:.2f}"),
        ],
    )
    emit(payload, args.json, table)
    return payload


if __name__ == "__main__":
    main()
