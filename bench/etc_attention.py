"""ETC's one attention over the frame grid vs factorised spatial + temporal attention: MACs, time, memory.

ETC (section 4.1) tiles the ``T`` frames of a video into one grid image and runs a plain image model
on it, so its spatial self-attention sees all ``T*H*W`` latent tokens at once. Video U-Nets in the
VDM/LVDM line factorise instead: spatial attention over the ``H*W`` tokens of each frame (``b*T``
sequences), then temporal attention over the ``T`` tokens of each pixel (``b*H*W`` sequences), each
with its own projections. ETC's appendix A.1 compares the two and A.2 times them (Table 3); this
benchmark redoes both for the four settings of Table 3 (16 or 32 frames at 256 or 512 pixels, i.e.
32x32 or 64x64 latents under Stable Diffusion's 8x VAE), with ``C`` = 320 channels (SD's first U-Net
level) in heads of 64 by default.

Variants, both ``(b, c, t, h, w) -> (b, c, t, h, w)``, attention only (no norms, residuals or
position terms, which cost no MACs):

* ``full`` (ETC): :func:`~vdblocks.layers.grid.video_to_grid`, then one
  :class:`~vdblocks.layers.transformer.Attention` on ``(b, T*H*W, C)`` tokens;
* ``factorised``: an ``Attention`` on ``((b t), (h w), C)``, then another on ``((b h w), t, C)``.

Per setting it reports

* **MACs** (forward multiply-accumulates; FLOPs = 2 MACs) of each variant, counted by
  :func:`vdblocks.flops.count_flops` on fake CPU tensors (``FakeTensorMode``: the same aten ops as a
  real call, the CPU flash SDPA kernel included, without computing anything, so even the
  131072-token attention is counted), also for forward + backward; the measured ratio full /
  factorised; the exact formula for that ratio; and the paper's ratio ``(4C + THW) / (8C + HW + T)``.
  With ``L`` tokens per sequence, ``N`` tokens in all and inner width ``C`` (heads * dim_head = C),
  one ``Attention`` costs ``N C (4C + 2L)`` MACs (q, k, v and output projections ``4 N C^2``;
  ``q k^T`` and ``probs v`` ``N L C`` each). Hence

      full       = b T H W C (4C + 2 T H W)
      factorised = b T H W C (8C + 2 H W + 2 T)
      full / factorised = (2C + THW) / (4C + HW + T)

  The paper's (4C + THW) / (8C + HW + T) is also full / factorised ("image diffusion has ... times
  the calculation amount of video diffusion"), but its per-attention count 2BLC(4C + L) FLOPs books
  ``probs v`` as ``2BLC^2`` instead of ``2BL^2C`` and leaves out the output projection; the two
  ratios meet when C << HW (the paper's C = 4) and part at C = 320.
* **time** (median seconds per call, interleaved rounds) of the forward under ``torch.no_grad``
  (inference, as Table 3) and of forward + backward (``x`` and every parameter get gradients),
  and the time ratios. A case whose longest attention sequence exceeds ``--max-tokens`` is not run:
  its time is estimated as its MACs divided by the GMAC/s measured for the full attention at the
  largest setting that was run (the CPU flash kernel's throughput is flat in ``L`` once ``L`` is in
  the thousands, see docs/benchmarks/attention.md), and marked as estimated.
* **peak memory** of each case that was run: on CPU, each variant's cases run in a fresh subprocess
  (after one warm-up call on 2x2 frames, which initialises thread pools and BLAS workspaces); before
  each measured call it hands freed heap pages back to the OS (``malloc_trim``), reads its resident
  set (``VmRSS``) and resets the high-water mark (``echo 5 > /proc/self/clear_refs``), and after it
  reads ``VmHWM``: the difference is the extra resident memory at the peak of that call alone
  (``ru_maxrss`` stands in where ``clear_refs`` cannot be written); repeated runs of one case agree
  within about 15%. On CUDA it is ``torch.cuda.max_memory_allocated`` above the memory allocated
  before the call. Beside it, the analytic size of the score matrices ``b * heads * L^2 * itemsize``
  that the math backend materialises (per attention), which fused flash kernels (CPU flash, which
  the default ``sdpa`` backend runs here) never do.

    python bench/etc_attention.py                   # the four settings of Table 3, table
    python bench/etc_attention.py --json            # table, then one JSON object on the last line
    python bench/etc_attention.py --quick --json    # tiny sizes (smoke test)
    python bench/etc_attention.py --max-tokens 0    # MACs only, nothing run
    python bench/etc_attention.py --channels 4 --modes fwd --max-tokens 131072   # the paper's C = 4
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
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
from einops import rearrange
from torch._subclasses.fake_tensor import FakeTensorMode

from vdblocks.flops import count_flops
from vdblocks.layers.grid import grid_to_video, video_to_grid
from vdblocks.layers.transformer import Attention

VAE_FACTOR = 8  # Stable Diffusion's autoencoder: 256 px -> 32x32 latents
# (name, frames, pixels): the four settings of ETC's Table 3
FULL_SETTINGS = [("base", 16, 256), ("long video", 32, 256), ("high res", 16, 512), ("high quality", 32, 512)]
QUICK_SETTINGS = [("quick", 4, 32), ("quick long", 8, 32)]  # 4x4 latents
FULL_MAX_TOKENS = 16384
QUICK_MAX_TOKENS = 100
VARIANTS = ("full", "factorised")
CASE_KEYS = ("setting", "frames", "pixels", "latent", "grid", "channels", "heads", "dim_head", "batch")
MODES = ("fwd", "train")  # inference forward; forward + backward


def exact_grid(frames: int) -> tuple[int, int]:
    """The most nearly square ``(rows, cols)`` with ``rows * cols == frames`` exactly.

    ``grid_for(32)`` would give 6x6 and pad 4 empty cells, i.e. 12.5% more tokens; the paper's
    Table 3 has exactly ``T*H*W`` tokens (``[1, 32768, 4]`` for 32 frames of 1024), so 32 -> 4x8.
    """
    rows = max(r for r in range(1, int(frames**0.5) + 1) if frames % r == 0)
    return rows, frames // rows


def split_heads(channels: int, head_dim: int) -> tuple[int, int]:
    """``(heads, dim_head)`` with ``heads * dim_head == channels``: heads of ``head_dim`` channels, or
    one head of all channels when ``channels < head_dim`` (the paper's C = 4)."""
    if channels < head_dim:
        return 1, channels
    if channels % head_dim:
        raise ValueError(f"--channels {channels} is not a multiple of the head dim {head_dim}")
    return channels // head_dim, head_dim


class GridAttention(nn.Module):
    """ETC: one self-attention over every token of the frame grid.

    Shapes: ``video (b, c, t, h, w)`` -> ``(b, c, t, h, w)``; the attention runs on
    ``(b, rows*h * cols*w, c)`` tokens with ``rows * cols = t``.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.attn = Attention(dim, heads=heads, dim_head=dim_head)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        frames = video.shape[2]
        image = video_to_grid(video, self.grid)  # b c (rows h) (cols w)
        tokens = rearrange(image, "b c y x -> b (y x) c")
        out = self.attn(tokens)  # b (rows h cols w) c
        image = rearrange(out, "b (y x) c -> b c y x", y=image.shape[2])
        return grid_to_video(image, self.grid, frames)  # b c t h w


class FactorisedAttention(nn.Module):
    """VDM/LVDM-style factorised attention: spatial per frame, then temporal per pixel.

    Shapes: ``video (b, c, t, h, w)`` -> ``(b, c, t, h, w)``; spatial attention on
    ``((b t), (h w), c)``, temporal on ``((b h w), t, c)``, each with its own projections.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int) -> None:
        super().__init__()
        self.spatial = Attention(dim, heads=heads, dim_head=dim_head)
        self.temporal = Attention(dim, heads=heads, dim_head=dim_head)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, _, _, h, _ = video.shape
        x = rearrange(video, "b c t h w -> (b t) (h w) c")
        x = self.spatial(x)  # (b t) (h w) c
        x = rearrange(x, "(b t) (h w) c -> (b h w) t c", b=b, h=h)
        x = self.temporal(x)  # (b h w) t c
        return rearrange(x, "(b h w) t c -> b c t h w", b=b, h=h)


def build(variant: str, case: dict[str, Any]) -> nn.Module:
    """The module of ``variant`` for ``case`` (a dict with channels, heads, dim_head, frames)."""
    kw = dict(heads=case["heads"], dim_head=case["dim_head"])
    if variant == "full":
        return GridAttention(case["channels"], grid=tuple(case["grid"]), **kw)
    return FactorisedAttention(case["channels"], **kw)


def video_shape(case: dict[str, Any]) -> tuple[int, ...]:
    return (case["batch"], case["channels"], case["frames"], case["latent"], case["latent"])


def longest_sequence(variant: str, case: dict[str, Any]) -> int:
    hw = case["latent"] ** 2
    return case["frames"] * hw if variant == "full" else max(hw, case["frames"])


# ---------------------------------------------------------------------------------------------
# Analytic counts
# ---------------------------------------------------------------------------------------------


def formula_macs(b: int, t: int, h: int, w: int, c: int) -> dict[str, int]:
    """Forward MACs of both variants with inner width ``c`` (see the module docstring)."""
    n = b * t * h * w
    return {"full": n * c * (4 * c + 2 * t * h * w), "factorised": n * c * (8 * c + 2 * h * w + 2 * t)}


def paper_ratio(t: int, h: int, w: int, c: int) -> float:
    """ETC appendix A.1.3: full (image diffusion) over factorised (video diffusion)."""
    return (4 * c + t * h * w) / (8 * c + h * w + t)


def score_bytes(variant: str, case: dict[str, Any], itemsize: int) -> int:
    """Bytes of one ``(n, n)`` score matrix per sequence and head, summed over the variant's attentions."""
    b, k, t, hw = case["batch"], case["heads"], case["frames"], case["latent"] ** 2
    if variant == "full":
        return b * k * (t * hw) ** 2 * itemsize
    return (b * t * k * hw**2 + b * hw * k * t**2) * itemsize


def count_case(variant: str, case: dict[str, Any]) -> dict[str, int]:
    """Forward and backward MACs of ``variant`` with count_flops on fake CPU tensors."""
    with FakeTensorMode():
        module = build(variant, case)
        video = torch.randn(video_shape(case), requires_grad=True)
        report = count_flops(module, video, backward=True)
        params = sum(p.numel() for p in module.parameters())
    return {"macs": report.macs, "flops": report.flops, "macs_backward": report.backward.macs, "params": params}


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def callables(module: nn.Module, video: torch.Tensor) -> dict[str, Any]:
    """``fwd``: inference forward; ``train``: forward + backward with fresh gradients each call."""
    grad_out = torch.randn_like(video)
    leaf = video.detach().requires_grad_(True)
    params = list(module.parameters())

    def fwd():
        with torch.no_grad():
            return module(video)

    def train():
        for p in (*params, leaf):
            p.grad = None
        module(leaf).backward(grad_out)

    return {"fwd": fwd, "train": train}


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> str:
    """Reset the resident high-water mark; returns the method the peak will be read with."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)  # hand freed heap pages back, so a later call cannot reuse them unseen
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _peak_bytes(method: str) -> int | None:
    if method == "VmHWM":
        return _rss_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_memory_here(
    variant: str, cases: list[dict[str, Any]], device: str, dtype: torch.dtype, modes: tuple[str, ...] = MODES
) -> list[dict]:
    """Peak extra memory of one call per mode (inference forward, forward + backward) per case, here.

    Before each measured call the freed heap pages go back to the OS and the high-water mark is
    reset, so a call's peak counts only what it allocates itself, not memory an earlier call freed.
    """
    results = []
    for case in cases:
        torch.manual_seed(0)
        module = build(variant, case).to(device=device, dtype=dtype)
        video = torch.randn(video_shape(case), device=device, dtype=dtype)
        fns = callables(module, video)
        # A first call initialises thread pools, BLAS workspaces and the autograd engine, which a
        # fresh process would otherwise book against its first case: run both modes on 2x2 frames.
        tiny = torch.randn(*video_shape(case)[:3], 2, 2, device=device, dtype=dtype)
        for warm in callables(module, tiny).values():
            warm()
        out: dict[str, Any] = {mode: None for mode in MODES}
        for mode in modes:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                fns[mode]()
                torch.cuda.synchronize(device)
                out[mode] = torch.cuda.max_memory_allocated(device) - before
                out["method"] = "torch.cuda.max_memory_allocated above the allocated before the call"
            else:
                method = _reset_peak()
                before = _rss_bytes("VmRSS")
                fns[mode]()
                peak = _peak_bytes(method)
                out[mode] = None if before is None or peak is None else max(0, peak - before)
                out["method"] = f"{method} - VmRSS before the call, fresh process per variant"
        results.append(out)
        del module, video, fns
    return results


def measure_memory(variant: str, cases: list[dict[str, Any]], args) -> list[dict[str, Any]]:
    """On CPU, :func:`measure_memory_here` in a fresh subprocess; on CUDA, in this process."""
    if not cases:
        return []
    if torch.device(args.device).type == "cuda":
        return measure_memory_here(variant, cases, args.device, args.torch_dtype, args.modes)
    if torch.device(args.device).type != "cpu":
        return [{"fwd": None, "train": None, "method": f"not measured on {args.device}"} for _ in cases]
    spec = json.dumps({"variant": variant, "cases": cases, "dtype": args.dtype, "modes": args.modes})
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-worker", spec],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed for the {variant} variant:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_worker(spec: str) -> None:
    data = json.loads(spec)
    results = measure_memory_here(
        data["variant"], data["cases"], "cpu", parse_dtype(data["dtype"]), tuple(data["modes"])
    )
    print(json.dumps(results))


def add_memory(rows: list[dict[str, Any]], args) -> None:
    """Measure the peak memory of every case that was run (its time measured), one worker per variant."""
    for variant in VARIANTS:
        run = [r for r in rows if any(r[f"time_{m}_{variant}_source"] == "measured" for m in MODES)]
        cases = [{k: r[k] for k in CASE_KEYS} for r in run]
        for row, mem in zip(run, measure_memory(variant, cases, args)):
            for mode in MODES:
                row[f"mem_{mode}_{variant}"] = mem[mode]
            row["memory_method"] = mem["method"]
        for row in rows:
            for mode in MODES:
                row.setdefault(f"mem_{mode}_{variant}", None)


def measure_setting(name: str, frames: int, pixels: int, args, sync) -> dict[str, Any]:
    """One row: counts and formulas for both variants, and the times of those within --max-tokens."""
    latent = pixels // VAE_FACTOR
    heads, dim_head = split_heads(args.channels, args.head_dim)
    case = {
        "setting": name,
        "frames": frames,
        "pixels": pixels,
        "latent": latent,
        "grid": list(exact_grid(frames)),
        "channels": args.channels,
        "heads": heads,
        "dim_head": dim_head,
        "batch": args.batch,
    }
    row: dict[str, Any] = dict(case)
    hw = latent * latent
    row.update(tokens_full=frames * hw, tokens_spatial=hw, tokens_temporal=frames)
    itemsize = torch.empty((), dtype=args.torch_dtype).element_size()
    for variant in VARIANTS:
        counted = count_case(variant, case)
        row[f"params_{variant}"] = counted["params"]
        row[f"macs_{variant}"] = counted["macs"]
        row[f"flops_{variant}"] = counted["flops"]
        row[f"macs_train_{variant}"] = counted["macs"] + counted["macs_backward"]
        row[f"score_bytes_{variant}"] = score_bytes(variant, case, itemsize)
    formula = formula_macs(args.batch, frames, latent, latent, args.channels)
    row["macs_formula_full"], row["macs_formula_factorised"] = formula["full"], formula["factorised"]
    row["mac_ratio"] = row["macs_full"] / row["macs_factorised"]
    row["mac_ratio_formula"] = formula["full"] / formula["factorised"]
    row["mac_ratio_paper"] = paper_ratio(frames, latent, latent, args.channels)
    row["param_ratio"] = row["params_full"] / row["params_factorised"]

    run = [v for v in VARIANTS if longest_sequence(v, case) <= args.max_tokens]
    fns: dict[str, Any] = {}
    for variant in run:
        torch.manual_seed(0)
        module = build(variant, case).to(device=args.device, dtype=args.torch_dtype)
        video = torch.randn(video_shape(case), device=args.device, dtype=args.torch_dtype)
        for mode, fn in callables(module, video).items():
            fns[f"{mode}_{variant}"] = fn
    for mode in MODES:
        group = {key: fn for key, fn in fns.items() if key.startswith(mode + "_")}
        if mode not in args.modes:
            group = {}
        times = (
            time_calls(group, warmup=args.warmup, repeat=args.repeat, min_time=args.min_time, sync=sync)
            if group
            else {}
        )
        for variant in VARIANTS:
            key = f"{mode}_{variant}"
            row[f"time_{key}"] = times.get(key)
            source = "measured" if key in times else "not run"
            row[f"time_{key}_source"] = source if mode in args.modes else "skipped (--modes)"
    fns.clear()
    return row


def estimate_unrun(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Fill the times of cases not run from MACs at the full attention's throughput at the largest
    setting that was run (per mode); returns those throughputs in GMAC/s."""
    throughput: dict[str, float | None] = {}
    for mode in MODES:
        macs_key = "macs_full" if mode == "fwd" else "macs_train_full"
        timed = [r for r in rows if r[f"time_{mode}_full_source"] == "measured"]
        ref = max(timed, key=lambda r: r["tokens_full"]) if timed else None
        throughput[mode] = ref[macs_key] / ref[f"time_{mode}_full"] / 1e9 if ref else None
        for r in rows:
            for variant in VARIANTS:
                key = f"time_{mode}_{variant}"
                if r[f"{key}_source"] == "measured":
                    r[f"gmacs_per_s_{mode}_{variant}"] = r[macs_key.replace("full", variant)] / r[key] / 1e9
                elif r[f"{key}_source"] == "not run" and throughput[mode]:
                    r[key] = r[macs_key.replace("full", variant)] / throughput[mode] / 1e9
                    r[f"{key}_source"] = "estimated"
    for r in rows:
        for mode in MODES:
            full, fact = r[f"time_{mode}_full"], r[f"time_{mode}_factorised"]
            r[f"time_ratio_{mode}"] = full / fact if full and fact else None
    return throughput


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _g(x: int | None) -> str:
    return "-" if x is None else f"{x / 1e9:.1f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def _gib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**30:.2f}"


def _time(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "-" if row[f"{key}_source"].startswith("skipped") else "not run"
    text = f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return text + ("*" if row[f"{key}_source"] == "estimated" else "")


MAC_COLUMNS = [
    ("setting", "setting", str),
    ("frames", "T", str),
    ("latent", "HxW", lambda x: f"{x}x{x}"),
    ("grid", "grid", lambda g: f"{g[0]}x{g[1]}"),
    ("tokens_full", "L full", str),
    ("macs_full", "full GMACs", _g),
    ("macs_factorised", "fact GMACs", _g),
    ("mac_ratio", "MAC ratio", _ratio),
    ("mac_ratio_formula", "(2C+THW)/(4C+HW+T)", _ratio),
    ("mac_ratio_paper", "paper (4C+THW)/(8C+HW+T)", _ratio),
    ("macs_train_full", "full fwd+bwd GMACs", _g),
    ("macs_train_factorised", "fact fwd+bwd GMACs", _g),
    ("param_ratio", "params full/fact", _ratio),
]


TIME_COLUMNS = [("setting", "setting", str)]
for _mode, _label in (("fwd", "fwd"), ("train", "fwd+bwd")):
    TIME_COLUMNS += [
        (f"time_{_mode}_full_text", f"{_label} full s", str),
        (f"time_{_mode}_factorised_text", f"{_label} fact s", str),
        (f"time_ratio_{_mode}", f"{_label} ratio", _ratio),
    ]
TIME_COLUMNS += [
    ("mem_fwd_full", "fwd peak full MiB", _mib),
    ("mem_fwd_factorised", "fwd peak fact MiB", _mib),
    ("mem_train_full", "fwd+bwd peak full MiB", _mib),
    ("mem_train_factorised", "fwd+bwd peak fact MiB", _mib),
    ("score_bytes_full", "scores full GiB", _gib),
    ("score_bytes_factorised", "scores fact GiB", _gib),
]


def time_table(rows: list[dict[str, Any]]) -> str:
    """The time and memory table; a time not run reads "not run", an estimated one ends in "*"."""
    shown = [
        dict(r, **{f"time_{m}_{v}_text": _time(r, f"time_{m}_{v}") for m in MODES for v in VARIANTS}) for r in rows
    ]
    return format_table(shown, TIME_COLUMNS)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=320, help="C, the token width (default 320)")
    parser.add_argument("--head-dim", type=int, default=64, help="channels per head (default 64)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="run no case whose longest attention sequence is longer (default 16384; "
        f"{QUICK_MAX_TOKENS} under --quick); its time is estimated from its MACs",
    )
    parser.add_argument(
        "--modes",
        type=lambda text: tuple(m for m in text.split(",") if m),
        default=MODES,
        help="comma list of fwd (inference forward) and train (forward + backward); default both",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 2; 1 under --quick)")
    parser.add_argument(
        "--min-time", type=float, default=None, help="seconds per timed round (default 0.05; 0.01 under --quick)"
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker)
        return None
    args.torch_dtype = parse_dtype(args.dtype)
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes a comma list of {', '.join(MODES)}, got {','.join(args.modes)!r}")
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    if args.max_tokens is None:
        args.max_tokens = QUICK_MAX_TOKENS if args.quick else FULL_MAX_TOKENS
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    if args.min_time is None:
        args.min_time = 0.01 if args.quick else 0.05
    split_heads(args.channels, args.head_dim)  # reject a bad --channels before any work

    torch.manual_seed(0)
    machine = machine_info(args.device)
    sync = synchronizer(args.device)
    rows = [measure_setting(name, frames, pixels, args, sync) for name, frames, pixels in settings]
    add_memory(rows, args)
    throughput = estimate_unrun(rows)
    machine["load_average_1min_end"] = load_average()

    heads, dim_head = split_heads(args.channels, args.head_dim)
    lines = [
        f"ETC grid attention vs factorised spatial+temporal on {machine['device']} ({machine['device_name']}), "
        f"{args.dtype}, b={args.batch}, C={args.channels} ({heads} heads of {dim_head}), torch {machine['torch']}, "
        f"{machine['torch_threads']} threads, load average {machine['load_average_1min']} at start, "
        f"{machine['load_average_1min_end']} at end",
        "",
        "MACs (forward multiply-accumulates, FLOPs = 2 MACs; ratios are full / factorised)",
        format_table(rows, MAC_COLUMNS),
        "",
        f"time (median s per call; * = not run, longest sequence > --max-tokens {args.max_tokens}: its MACs at "
        f"the full attention's measured {_ratio(throughput['fwd'])} GMAC/s fwd, "
        f"{_ratio(throughput['train'])} GMAC/s fwd+bwd), peak extra memory ({rows[0].get('memory_method', '-')}), "
        "score matrices a math backend would hold (b*heads*L^2*itemsize, summed over a variant's attentions)",
        time_table(rows),
    ]
    payload = {
        "benchmark": "etc_attention",
        "machine": machine,
        "config": {
            "device": args.device,
            "dtype": args.dtype,
            "batch": args.batch,
            "channels": args.channels,
            "heads": heads,
            "dim_head": dim_head,
            "vae_factor": VAE_FACTOR,
            "max_tokens": args.max_tokens,
            "modes": list(args.modes),
            "warmup": args.warmup,
            "repeat": args.repeat,
            "min_time": args.min_time,
            "settings": [list(s) for s in settings],
            "timing": "median seconds per call; fwd under torch.no_grad, train = forward + backward",
            "macs": "forward multiply-accumulates (FLOPs = 2 MACs), count_flops on fake CPU tensors",
            "mac_ratio_formula": "(2C + THW) / (4C + HW + T), full / factorised",
            "mac_ratio_paper": "(4C + THW) / (8C + HW + T), ETC appendix A.1.3, full / factorised",
            "estimated_time": "MACs / GMAC/s of the full attention at the largest setting run",
        },
        "throughput_gmacs_per_s": throughput,
        "results": rows,
    }
    emit(payload, args.json, "\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
