"""Wall-clock of one training step and one sampling step: MCVD baseline vs EVDM vs EVDM-L.

EVDM reports 2.7x lower latency for EVDM-L than for its MCVD baseline on an A40 (section 4). This
script measures the same comparison on whatever machine runs it, for the three models the presets
``{data}_mcvd``, ``{data}_evdm`` and ``{data}_evdm_l`` build (:mod:`reference_models.evdm`):

* **training step**: forward, backward and an AdamW step (the training loop's
  :func:`reference_models.common.build_optimizer`, fused where PyTorch can) on DDPM's epsilon loss
  (:func:`vdblocks.diffusion.diffusion_loss`, the model conditioned on its past / future frames),
  model in train mode (the presets' dropout on);
* **sampling step**: one no-grad forward of the denoiser in eval mode, what one DDPM / DDIM step
  costs (the sampler's own arithmetic on ``x_t`` is a few element-wise ops, left out).

All models see the same batch (KTH: 64x64 grayscale, 10 past -> 5 frames, batch 8 by default), in
one process; the six calls (two steps x three models) are timed in interleaved rounds after a
warm-up (:func:`_common.time_calls`), and medians are reported. Ratios are the baseline's time over
the model's ("2.7x" = 2.7 times faster). Beside each time: forward MACs per sample
(:func:`reference_models.evdm.count_model_flops`), the MAC cut against the baseline and the share of
that cut the clock realises (``speedup / MAC cut``; 1 means time scales with MACs).

``--profile`` adds, per model and step, one run under :mod:`torch.profiler` with the self time of
every op grouped into convolutions, matmuls (linears, attention, FAVOR+), GroupNorm, element-wise
ops and copies (cat, slices, channel shuffles, zero fills), to show where the time goes.
``--blocks`` times single res blocks (one per level, forward and forward+backward) beside their
MACs and MCVD's block at the same place, to show how the time per MAC depends on width and size.

The machine may be shared: the 1-minute load average is recorded at the start and the end (the
end one counts this run's own threads), and so is the number of cores other processes kept busy
while the calls were timed (``/proc/stat`` minus this process's CPU time); a run is flagged busy
unless the start load is below 1 and the others used under a quarter of a core. Other processes slow every model, but not alike: with
more than one thread, each parallel op waits at an OpenMP barrier for a descheduled thread, a fixed
cost per op that weighs most on the model with the most (and smallest) ops, EVDM-L.

    python bench/evdm_speed.py                  # table, KTH at batch 8, float32
    python bench/evdm_speed.py --threads 1      # one core
    python bench/evdm_speed.py --profile        # plus the op breakdown
    python bench/evdm_speed.py --blocks         # plus single res blocks, one per level, with MACs
    python bench/evdm_speed.py --json           # ... then one JSON object on the last line
    python bench/evdm_speed.py --quick          # tiny presets, batch 2, two rounds (smoke test)
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Callable
from typing import Any

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

from reference_models.common import build_optimizer
from reference_models.evdm import (
    DATASETS,
    VARIANTS,
    EVDMUNet,
    count_model_flops,
    get_config,
)
from vdblocks.diffusion import diffusion_loss

MODELS = ("mcvd", "evdm", "evdm_l")
LABELS = {
    "mcvd": "MCVD (baseline)",
    "brp": "+BRP",
    "brp_eh": "+BRP+BRP-eh",
    "brp_msm": "+BRP+MSM",
    "evdm": "EVDM",
    "evdm_so": "EVDM+SO",
    "evdm_split": "EVDM+Split",
    "evdm_so_split": "EVDM+SO+Split",
    "evdm_l": "EVDM-L",
}
PAPER_SPEEDUP = 2.7  # EVDM-L vs MCVD latency, A40 GPU (the paper's only timing)
TARGET_SPEEDUP = 3.0  # what this benchmark asks of EVDM-L on CPU
STEPS = ("train", "sample")

# Op name (without "aten::") -> profile category. Anything else is "other".
_CATEGORY_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("conv", lambda n: "conv" in n and "convert" not in n),
    (
        "matmul",
        lambda n: (
            n in ("mm", "bmm", "addmm", "baddbmm", "matmul", "linear", "einsum")
            or "scaled_dot_product" in n
            or "flash_attention" in n
        ),
    ),
    ("groupnorm", lambda n: "group_norm" in n),
    (
        "copy",
        lambda n: (
            n
            in (
                "copy_",
                "cat",
                "clone",
                "contiguous",
                "index_select",
                "narrow_copy",
                "fill_",
                "zero_",
                "zeros",
                "zeros_like",
                "constant_pad_nd",
                "new_zeros",
                "slice_backward",
                "index",
                "stack",
                "_to_copy",
            )
        ),
    ),
    ("dropout", lambda n: n in ("bernoulli_", "native_dropout", "native_dropout_backward")),
    (
        "elementwise",
        lambda n: (
            n.startswith("_foreach")
            or n
            in (
                "add",
                "add_",
                "mul",
                "mul_",
                "div",
                "div_",
                "sub",
                "sub_",
                "rsub",
                "neg",
                "clamp_min",
                "relu",
                "threshold_backward",
                "silu",
                "silu_backward",
                "sigmoid",
                "exp",
                "exp_",
                "pow",
                "pow_",
                "sqrt",
                "sqrt_",
                "sum",
                "mean",
                "amax",
                "max",
                "maximum",
                "addcmul_",
                "addcdiv_",
                "lerp_",
                "where",
                "log",
                "abs",
                "masked_fill",
                "mse_loss",
                "mse_loss_backward",
                "sin",
                "cos",
            )
        ),
    ),
)
CATEGORIES = tuple(name for name, _ in _CATEGORY_RULES) + ("other",)


def op_category(name: str) -> str:
    """The profile category of a profiler event name (``"aten::cat"`` -> ``"copy"``)."""
    op = name.removeprefix("aten::")
    for category, rule in _CATEGORY_RULES:
        if rule(op):
            return category
    return "other"


def _cpu_busy_seconds() -> float | None:
    """Seconds of CPU time every process on the machine has used since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is inside user
    return busy / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Average number of cores that *other* processes kept busy between ``start()`` and ``stop()``.

    The load average counts this benchmark's own threads too (a 2-thread run on 2 cores reads about
    2 by its end), so it cannot say whether someone else was running. This does: the machine's busy
    CPU time (``/proc/stat``) minus this process's own (``time.process_time``), over the wall time.
    None where ``/proc/stat`` is missing.
    """

    def start(self) -> None:
        self._busy, self._own, self._wall = _cpu_busy_seconds(), time.process_time(), time.perf_counter()

    def stop(self) -> float | None:
        busy = _cpu_busy_seconds()
        if busy is None or self._busy is None:
            return None
        wall = time.perf_counter() - self._wall
        others = (busy - self._busy) - (time.process_time() - self._own)
        return round(max(0.0, others) / wall, 2) if wall > 0 else None


class Setup:
    """One model with its optimizer and fixed inputs: ``train()`` and ``sample()`` run one step each.

    Inputs are drawn once (frames ``(b, c, t, h, w)``, timesteps, noise) so that every call does the
    same work; the AdamW step does change the weights, which does not change the work.
    """

    def __init__(self, preset: str, batch: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
        self.preset = preset
        self.cfg = cfg = get_config(preset)
        torch.manual_seed(seed)
        self.model = EVDMUNet(cfg)
        self.model.to(device=device, dtype=dtype)
        self.optimizer = build_optimizer(self.model, lr=1e-4)  # what the training loop steps with
        self.schedule = cfg.diffusion.noise_schedule()
        gen = torch.Generator().manual_seed(seed)
        size = cfg.image_size

        def frames(n: int) -> torch.Tensor | None:
            if n == 0:
                return None
            return torch.randn(batch, cfg.channels, n, size, size, generator=gen).to(device, dtype)

        self.x0 = frames(cfg.num_frames)  # b c t h w
        self.past, self.future = frames(cfg.num_past), frames(cfg.num_future)
        self.noise = frames(cfg.num_frames)  # b c t h w
        self.t = torch.randint(0, cfg.diffusion.num_train_steps, (batch,), generator=gen).to(device)  # b
        self.x_t = self.schedule.q_sample(self.x0, self.t, self.noise)  # b c t h w
        self.model_fn = functools.partial(self.model, past=self.past, future=self.future)

    def train(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = diffusion_loss(self.model_fn, self.x0, self.cfg.diffusion, t=self.t, noise=self.noise)
        loss.backward()
        self.optimizer.step()

    def sample(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model_fn(self.x_t, self.t)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def profile_step(fn: Callable[[], None], device: torch.device) -> dict[str, Any]:
    """Self time of one call of ``fn`` by op category (seconds), op calls and the heaviest ops."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    on_cuda = device.type == "cuda"
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
    fn()  # warm: allocator and kernel caches as in the timed runs
    sync = synchronizer(device)
    sync()
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - start
    by_category: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    by_op: collections.Counter[str] = collections.Counter()
    calls = 0
    for event in prof.key_averages():
        self_us = event.self_device_time_total if on_cuda else event.self_cpu_time_total
        by_category[op_category(event.key)] += self_us / 1e6
        by_op[event.key] += self_us / 1e6
        calls += event.count
    return dict(
        wall_s=wall,
        profiled_s=sum(by_category.values()),
        op_calls=calls,
        by_category=by_category,
        top_ops=[(name, s) for name, s in by_op.most_common(8)],
    )


def block_names(cfg) -> list[str]:
    """The res blocks ``--blocks`` times: the second (same-width) down block of every level, and the
    first up block of level 0 (full resolution, input widened by the skip concatenation)."""
    return [f"down.{n}.blocks.{min(1, cfg.num_res_blocks - 1)}" for n in range(cfg.num_levels)] + ["up.0.blocks.0"]


def time_blocks(
    setups: dict[str, Setup], batch: int, repeat: int, device: torch.device, dtype: torch.dtype, min_time: float = 0.05
) -> list[dict[str, Any]]:
    """Forward (no grad) and forward+backward time of single res blocks, with their MACs, interleaved.

    Each block gets a random input ``(b, c_in, h_n, w_n)`` at its level's size and a random
    embedding ``(b, e)``; MACs are counted on a fake copy of the model (``FakeTensorMode``) at the
    same batch.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from vdblocks.flops import count_flops

    rows, calls = [], {}
    for m, s in setups.items():
        cfg = s.cfg
        with FakeTensorMode():
            fake = EVDMUNet(cfg).eval()
            for name in block_names(cfg):
                blk = fake.get_submodule(name)
                level = int(name.split(".")[1])
                size = cfg.image_size // 2**level
                x = torch.zeros(batch, blk.in_channels, size, size)
                macs = count_flops(blk, x, torch.zeros(batch, cfg.emb_dim)).macs
                rows.append(
                    dict(
                        model=m,
                        label=LABELS[m],
                        block=name,
                        c_in=blk.in_channels,
                        c_out=blk.out_channels,
                        size=size,
                        macs=macs,
                        gmacs=macs / 1e9,
                    )
                )
        for row in rows[-len(block_names(cfg)) :]:
            blk = s.model.get_submodule(row["block"])
            x = torch.randn(batch, row["c_in"], row["size"], row["size"], device=device, dtype=dtype)
            emb = torch.randn(batch, cfg.emb_dim, device=device, dtype=dtype)

            def forward(blk=blk, x=x, emb=emb) -> None:
                with torch.no_grad():
                    blk(x, emb)

            def forward_backward(blk=blk, x=x, emb=emb) -> None:
                blk.zero_grad(set_to_none=True)
                blk(x, emb).sum().backward()

            calls[f"{m}/{row['block']}/fwd"] = forward
            calls[f"{m}/{row['block']}/fwd_bwd"] = forward_backward
    for s in setups.values():
        s.model.eval()  # dropout off in the blocks, as in sampling
    times = time_calls(calls, warmup=1, repeat=repeat, min_time=min_time, sync=synchronizer(device))
    base = {r["block"]: r for r in rows if r["model"] == "mcvd"}
    for r in rows:
        r["fwd_ms"] = 1e3 * times[f"{r['model']}/{r['block']}/fwd"]
        r["fwd_bwd_ms"] = 1e3 * times[f"{r['model']}/{r['block']}/fwd_bwd"]
        r["fwd_gmacs_per_s"] = r["macs"] / r["fwd_ms"] / 1e6
        b = base.get(r["block"])
        r["mac_cut"] = b["macs"] / r["macs"] if b else None
        r["fwd_speedup"] = b["fwd_ms"] / r["fwd_ms"] if b else None
        r["fwd_bwd_speedup"] = b["fwd_bwd_ms"] / r["fwd_bwd_ms"] if b else None
    return rows


def _fmt(spec: str) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else format(v, spec)


COLUMNS = [
    ("label", "model", str),
    ("params_m", "params (M)", _fmt(".2f")),
    ("gmacs_per_sample", "GMACs/sample", _fmt(".3f")),
    ("mac_cut", "MAC cut", _fmt(".2f")),
    ("train_s", "train step (s)", _fmt(".3f")),
    ("train_speedup", "train speedup", _fmt(".2f")),
    ("train_mac_share", "speedup/cut", _fmt(".2f")),
    ("sample_s", "sample step (s)", _fmt(".3f")),
    ("sample_speedup", "sample speedup", _fmt(".2f")),
    ("sample_mac_share", "speedup/cut", _fmt(".2f")),
    ("sample_gmacs_per_s", "sample GMAC/s", _fmt(".1f")),
]

BLOCK_COLUMNS = [
    ("label", "model", str),
    ("block", "block", str),
    ("c_in", "c_in", _fmt("d")),
    ("c_out", "c_out", _fmt("d")),
    ("size", "h=w", _fmt("d")),
    ("gmacs", "GMACs", _fmt(".4f")),
    ("mac_cut", "MAC cut", _fmt(".1f")),
    ("fwd_ms", "fwd (ms)", _fmt(".1f")),
    ("fwd_speedup", "fwd speedup", _fmt(".2f")),
    ("fwd_gmacs_per_s", "fwd GMAC/s", _fmt(".1f")),
    ("fwd_bwd_ms", "fwd+bwd (ms)", _fmt(".1f")),
    ("fwd_bwd_speedup", "fwd+bwd speedup", _fmt(".2f")),
]

PROFILE_COLUMNS = [
    ("label", "model", str),
    ("step", "step", str),
    ("wall_s", "wall (s)", _fmt(".3f")),
    ("op_calls", "op calls", _fmt("d")),
    ("mac_ops_s", "conv+matmul (s)", _fmt(".3f")),
    ("memory_ops_s", "rest (s)", _fmt(".3f")),
    *[(f"pct_{c}", f"{c} %", _fmt(".0f")) for c in CATEGORIES],
]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 8; --quick: 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--data", default=None, choices=sorted(DATASETS), help="preset data set (default kth; --quick: tiny)"
    )
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds (default 5; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each step first")
    parser.add_argument("--profile", action="store_true", help="add the per-op-category breakdown")
    parser.add_argument(
        "--blocks", action="store_true", help="also time single res blocks (one per level) with their MACs"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="extra Table 8 rows to time beside the three, comma-separated (e.g. evdm_so,evdm_split)",
    )
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    batch = args.batch or (2 if args.quick else 8)
    repeat = args.repeat or (2 if args.quick else 5)
    data = args.data or ("tiny" if args.quick else "kth")
    if batch < 1 or repeat < 1:
        parser.error("--batch and --repeat must be >= 1")
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)

    start = time.perf_counter()
    machine = machine_info(device)  # load average at the start is in here
    extra = [v for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(extra) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    models = [v for v in VARIANTS if v in MODELS or v in extra]  # Table 8's order
    presets = {m: f"{data}_{m}" for m in models}
    setups = {m: Setup(p, batch, device, dtype) for m, p in presets.items()}
    macs = {m: count_model_flops(s.cfg)[1].macs for m, s in setups.items()}

    calls = {f"{m}/{step}": getattr(s, step) for m, s in setups.items() for step in STEPS}
    foreign = ForeignLoad()
    foreign.start()
    times = time_calls(calls, warmup=args.warmup, repeat=repeat, min_time=0.0, sync=synchronizer(device))
    machine["other_processes_cores"] = foreign.stop()  # during the timed calls

    profiles: dict[str, dict[str, Any]] = {}
    if args.profile:
        for m, s in setups.items():
            profiles[m] = {step: profile_step(getattr(s, step), device) for step in STEPS}
    blocks: list[dict[str, Any]] = []
    if args.blocks:
        blocks = time_blocks(setups, batch, repeat, device, dtype, min_time=0.0 if args.quick else 0.05)
    machine["load_average_1min_end"] = load_average()

    base = "mcvd"
    rows = []
    for m, s in setups.items():
        row: dict[str, Any] = dict(
            model=m,
            label=LABELS[m],
            preset=presets[m],
            params=s.params,
            params_m=s.params / 1e6,
            macs_per_sample=macs[m],
            gmacs_per_sample=macs[m] / 1e9,
            mac_cut=macs[base] / macs[m],
        )
        for step in STEPS:
            seconds = times[f"{m}/{step}"]
            speedup = times[f"{base}/{step}"] / seconds
            row[f"{step}_s"] = seconds
            row[f"{step}_speedup"] = speedup
            row[f"{step}_mac_share"] = speedup / row["mac_cut"]
        row["sample_gmacs_per_s"] = macs[m] * batch / times[f"{m}/sample"] / 1e9
        rows.append(row)
    by_model = {r["model"]: r for r in rows}
    loads = [machine["load_average_1min"], machine["load_average_1min_end"]]
    others = machine["other_processes_cores"]
    # Quiet: nothing else queued at the start, and others used under a quarter core while we timed.
    quiet = loads[0] is not None and loads[0] < 1.0 and (others is None or others < 0.25)
    summary = dict(
        evdm_l_train_speedup=by_model["evdm_l"]["train_speedup"],
        evdm_l_sample_speedup=by_model["evdm_l"]["sample_speedup"],
        evdm_train_speedup=by_model["evdm"]["train_speedup"],
        evdm_sample_speedup=by_model["evdm"]["sample_speedup"],
        paper_evdm_l_speedup=PAPER_SPEEDUP,
        target_speedup=TARGET_SPEEDUP,
        evdm_l_meets_target={step: by_model["evdm_l"][f"{step}_speedup"] >= TARGET_SPEEDUP for step in STEPS},
        quiet=quiet,
    )

    cfg = setups[base].cfg
    head = (
        f"{data} ({cfg.image_size}x{cfg.image_size}, {cfg.channels} channel(s), {cfg.num_past} past + "
        f"{cfg.num_future} future -> {cfg.num_frames} frames), batch {batch}, {args.dtype}, {device}, "
        f"{torch.get_num_threads()} thread(s); medians of {repeat} interleaved rounds\n"
        f"load average (1 min): {loads[0]} at start, {loads[1]} at end (this run's threads included); "
        f"other processes kept {others} cores busy while timing"
        + ("" if quiet else "  [machine busy: timings are noisy]")
    )
    text = [head, format_table(rows, COLUMNS)]
    text.append(
        f"EVDM-L vs MCVD: training step {summary['evdm_l_train_speedup']:.2f}x, sampling step "
        f"{summary['evdm_l_sample_speedup']:.2f}x faster (paper, A40: {PAPER_SPEEDUP}x; target here: "
        f"{TARGET_SPEEDUP}x); MAC cut {by_model['evdm_l']['mac_cut']:.2f}x"
    )
    profile_rows = []
    for m, steps in profiles.items():
        for step, p in steps.items():
            total = p["profiled_s"] or 1.0
            profile_rows.append(
                dict(
                    label=LABELS[m],
                    step=step,
                    wall_s=p["wall_s"],
                    op_calls=p["op_calls"],
                    mac_ops_s=p["by_category"]["conv"] + p["by_category"]["matmul"],
                    memory_ops_s=total - p["by_category"]["conv"] - p["by_category"]["matmul"],
                    **{f"pct_{c}": 100 * p["by_category"][c] / total for c in CATEGORIES},
                )
            )
    if blocks:
        text.append(
            "Single res blocks, eval mode (dropout off), batch as above; speedups against MCVD's block "
            "at the same place\n" + format_table(blocks, BLOCK_COLUMNS)
        )
    if profile_rows:
        text.append(
            "Profile: op self time, one call each: in the ops that do the MACs (conv+matmul) and in the "
            "rest, then the share of each category\n" + format_table(profile_rows, PROFILE_COLUMNS)
        )
    payload = dict(
        benchmark="evdm_speed",
        machine=machine,
        config=dict(
            quick=args.quick,
            data=data,
            presets=presets,
            batch=batch,
            dtype=args.dtype,
            device=str(device),
            threads=torch.get_num_threads(),
            repeat=repeat,
            warmup=args.warmup,
            image_size=cfg.image_size,
            num_past=cfg.num_past,
            num_future=cfg.num_future,
            num_frames=cfg.num_frames,
            channels=cfg.channels,
            optimizer="build_optimizer(lr=1e-4): AdamW, fused where supported",
            timing="median of interleaved rounds, seconds per step",
            speedup="baseline seconds / model seconds",
            mac_share="speedup / MAC cut",
        ),
        results=rows,
        summary=summary,
        profile=profiles,
        blocks=blocks,
        seconds=round(time.perf_counter() - start, 2),
    )
    emit(payload, args.json, "\n\n".join(text))


if __name__ == "__main__":
    main()
