"""Train EVDM: one readable ``main`` from flags to checkpoints and sample videos (sections 3.1, 4).

With no flags it trains the ``tiny_evdm`` preset (every EVDM block at CPU size: 32x32 grayscale,
2 past, 2 current and 1 future frame) on built-in moving shapes on the CPU in a few minutes, then
writes a checkpoint and predicted, interpolated and generated sample videos::

    python examples/train_evdm.py                                        # moving shapes, tiny, CPU
    python examples/train_evdm.py --preset kth_evdm --data kth/ --device cuda --batch-size 64
    torchrun --nproc_per_node=4 examples/train_evdm.py --preset bair_evdm_l --data bair/ --device cuda

The objective is eq. 7's unified loss,
``E ||eps - eps_theta(x_t | t, m_p p, m_f f)||^2``: every sample of a batch keeps its past frames
``p`` with probability ``1 - cfg.prob_mask_past`` and its future frames ``f`` with probability
``1 - cfg.prob_mask_future``, independently (:func:`draw_condition_masks`; 0.5 and 0.5 in the
paper, and in the ``tiny`` and ``bair`` presets), so one model learns prediction (``m_f = 0``),
interpolation (both kept) and unconditional generation (both dropped). Schedule and target come
from the config's :class:`~vdblocks.diffusion.DiffusionSpec` (``cfg.diffusion``: MCVD's 1000 linear
steps, 1e-4 to 0.02, and DDPM's eps loss of eq. 6; the velocity for the ``tiny`` presets), through
:func:`vdblocks.diffusion.diffusion_loss` on the current frames only. ``reference_models.common.train``
runs AdamW, warm-up, clipping, EMA, autocast, DDP and exact resume.

Samples (every ``--sample-every`` steps and at the end, from the EMA weights, on held-out clips,
with the paper's DDPM sampler over 100 strided steps by default):
``samples/step<N>_predict_*`` (the past, then ``--sample-frames`` frames predicted
autoregressively), ``..._interpolate_*`` (past, interpolated, future; models with future frames),
``..._generate_*`` (no conditions), each next to the real clips (``*_real_*``) and with the PSNR /
SSIM of the sampled frames in ``*_metrics.json``. A few CPU minutes give blobs where the shapes
are, with drifting background brightness: an eps-predicting U-Net needs far more steps to get the
global brightness at high noise levels right (``x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``
magnifies eps errors by ``1 / sqrt(abar)``, about 60 at ``t = 900``); raise ``--steps`` for
cleaner samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reference_models.common.cli import (
    add_training_arguments,
    distributed_cli,
    parse_cli_args,
    parse_override,
    run_summary,
    train_config_from_args,
)
from reference_models.common.ema import unwrap_model
from reference_models.common.trainer import TrainState, train
from vdblocks.diffusion import diffusion_loss

from .config import PRESETS, EVDMConfig, get_config
from .data import (
    SHAPES_DEFAULTS,
    build_clips,
    check_clip,
    data_record,
    stack_videos,
    videos_from_record,
)
from .model import EVDMUNet
from .sampling import SAMPLERS, run_task, task_frames, write_task

__all__ = [
    "TRAINING_DEFAULTS",
    "build_parser",
    "build_config",
    "draw_condition_masks",
    "evdm_loss",
    "sample_tasks",
    "make_sample_fn",
    "baseline_report",
    "main",
]

# The training flags' defaults (add_training_arguments): the tiny_evdm preset on built-in moving
# shapes, on the CPU in a few minutes. The paper gives no optimizer schedule.
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 800, "batch_size": 8, "lr": 2e-3, "out": "runs/evdm"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="examples/train_evdm.py",
        description="Train EVDM (efficiency-optimized video diffusion) with eq. 7's unified masks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset",
        default="tiny_evdm",
        choices=sorted(PRESETS),
        help="'{dataset}_{variant}', e.g. kth_evdm, bair_evdm_l, ucf_mcvd (the baseline)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an EVDMConfig field, e.g. --set prob_mask_past=0.5 --set channel_mult=[1,2,2] (JSON)",
    )
    g = p.add_argument_group("data (default: built-in moving shapes)")
    g.add_argument("--data", default=None, help="directory of videos (cut into clips of P + T + F frames)")
    g.add_argument(
        "--fps", type=float, default=None, help="--data: resample the videos to this rate (default: consecutive frames)"
    )
    g.add_argument("--num-videos", type=int, default=4096, help="moving shapes: number of scenes")
    g.add_argument("--max-shapes", type=int, default=SHAPES_DEFAULTS["max_shapes"], help="moving shapes per clip")
    g = add_training_arguments(p, **TRAINING_DEFAULTS, optional=("cosine",)).samples
    g.add_argument("--sampler", default="ddpm", choices=SAMPLERS)
    g.add_argument("--sample-steps", type=int, default=100, help="sampling steps (paper: DDPM 100 or 1000)")
    g.add_argument("--num-samples", type=int, default=16, help="held-out clips per task")
    g.add_argument("--sample-frames", type=int, default=None, help="frames to predict autoregressively (default 3 T)")
    return p


def build_config(args: argparse.Namespace) -> EVDMConfig:
    """The preset with the ``--set`` overrides."""
    return get_config(args.preset, **dict(parse_override(o) for o in args.overrides))


def draw_condition_masks(
    batch: int, cfg: EVDMConfig, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Eq. 7's masks ``(m_p, m_f)``: bool ``(b,)`` each, True keeps the sample's frames.

    ``m_p`` keeps the past with probability ``1 - cfg.prob_mask_past``, ``m_f`` the future with
    probability ``1 - cfg.prob_mask_future``, independently for every sample and of each other
    (MCVD's ``rand > p_mask``; ``prob_mask_sync`` is not used by EVDM). Uniforms are drawn past
    first, then future, from ``generator`` on its own device; a condition the model does not have
    (``P = 0`` or ``F = 0``) gets ``None`` and draws nothing.
    """

    def draw(probability: float, count: int) -> torch.Tensor | None:
        if count == 0:
            return None
        u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else device)
        return (u >= probability).to(device)  # b

    return draw(cfg.prob_mask_past, cfg.num_past), draw(cfg.prob_mask_future, cfg.num_future)


def evdm_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    cfg: EVDMConfig,
) -> torch.Tensor:
    """Eq. 7's unified loss on a batch of :class:`~reference_models.evdm.data.EVDMClips` items.

    ``batch``: ``past (b, c, P, h, w)``, ``current (b, c, T, h, w)``, ``future (b, c, F, h, w)``.
    The masks are drawn first (:func:`draw_condition_masks`), then ``t`` and the noise
    (``diffusion_loss`` under ``cfg.diffusion``), all from ``generator``; only the current frames
    are noised and enter the loss, the conditions reach the (possibly DDP-wrapped) model clean and
    masked.
    """
    x0 = batch["current"]
    past_mask, future_mask = draw_condition_masks(x0.shape[0], cfg, generator=generator, device=x0.device)
    conditions = {
        "past": batch["past"] if cfg.num_past else None,
        "future": batch["future"] if cfg.num_future else None,
        "past_mask": past_mask,
        "future_mask": future_mask,
    }

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, **conditions)  # b c T h w: noise, velocity or x_0 as cfg.diffusion says

    return diffusion_loss(model_fn, x0, cfg.diffusion, generator=generator)


def sample_tasks(cfg: EVDMConfig) -> list[str]:
    """The tasks a model can show: prediction with past frames, interpolation with past and future
    frames, and generation always."""
    tasks = ["predict"] if cfg.num_past else []
    if cfg.num_past and cfg.num_future:
        tasks.append("interpolate")
    return tasks + ["generate"]


def _generate_frames(cfg: EVDMConfig, sample_frames: int) -> int:
    """Generated videos as long as the predicted ones (past + predicted) when the first chunk can
    serve as a past (``0 < P <= T``), else one chunk of ``T``."""
    return cfg.num_past + sample_frames if 0 < cfg.num_past <= cfg.num_frames else cfg.num_frames


def make_sample_fn(
    cfg: EVDMConfig, clips: torch.Tensor, *, sample_frames: int, sampler: str, steps: int, seed: int, fps: float
):
    """``sample_fn(ema_model, step, out_dir)`` for the trainer: every task of :func:`sample_tasks` on
    the held-out ``clips (n, c, t, h, w)``, noise from ``seed``, files ``step<N>_<task>_*``."""

    def sample_fn(model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        model = unwrap_model(model)
        generator = torch.Generator().manual_seed(seed)
        kwargs = dict(sampler=sampler, steps=steps, generator=generator)
        paths: list[Path] = []
        for task in sample_tasks(cfg):
            frames = _generate_frames(cfg, sample_frames) if task == "generate" else sample_frames
            result = run_task(model, task, clips=clips, batch=clips.shape[0], num_frames=frames, **kwargs)
            paths += write_task(
                result,
                out_dir,
                f"step{step:06d}_{task}",
                fps=fps,
                extra={"step": step, "sampler": sampler, "steps": steps},
            )
        return paths

    return sample_fn


def baseline_report(samples: Path, step: int, tasks: Sequence[str]) -> list[str]:
    """Lines comparing each task's held-out PSNR / SSIM (``step<N>_<task>_metrics.json``) with the
    trivial guesses of :func:`~reference_models.evdm.sampling.baseline_predictions` (copy the last
    frame, the mean frame, and for interpolation the cross-fade); empty when nothing was scored."""
    lines = []
    for task in tasks:
        path = samples / f"step{step:06d}_{task}_metrics.json"
        if not path.is_file():
            continue
        values = json.loads(path.read_text(encoding="utf-8"))
        for metric in ("psnr", "ssim"):
            if metric not in values:
                continue
            others = [
                (name, values[f"{name}_{metric}"])
                for name in ("copy_last", "mean_frame", "blend")
                if f"{name}_{metric}" in values
            ]
            beats = all(values[metric] > v for _, v in others)
            lines.append(
                f"{task:<12}{metric} {values[metric]:.3f}  vs "
                + ", ".join(f"{n.replace('_', '-')} {v:.3f}" for n, v in others)
                + ("  (beats every baseline)" if beats else "  (does NOT beat every baseline)")
            )
    if lines:
        lines.insert(0, f"held-out clips, model vs trivial baselines ({samples}/step{step:06d}_<task>_metrics.json):")
    return lines


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> TrainState:
    """Train EVDM as the flags say (``--help``); returns the final ``TrainState``.

    Runs unchanged under ``torchrun`` (one process per device; only rank 0 prints, samples and
    writes checkpoints).
    """
    args = parse_cli_args(build_parser, argv)
    with distributed_cli(args.device) as (info, say):
        start = time.perf_counter()
        tcfg = train_config_from_args(args)
        cfg = build_config(args)
        if args.data is not None:
            record = data_record(args.data, fps=args.fps)
        else:
            record = data_record(num_samples=args.num_videos, seed=args.seed, max_shapes=args.max_shapes)
        dataset = build_clips(record, cfg)
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        model = EVDMUNet(cfg)  # initialises itself (identity branches)
        params = sum(p.numel() for p in model.parameters())
        say(
            f"EVDM preset {args.preset!r} ({cfg.variant}): {params / 1e6:.2f} M parameters; clips of "
            f"{cfg.num_past} past + {cfg.num_frames} current + {cfg.num_future} future frames, {cfg.channels} "
            f"channel(s), {cfg.image_size}x{cfg.image_size}; p_mask past {cfg.prob_mask_past}, future "
            f"{cfg.prob_mask_future}; {len(dataset)} clips ({record['source']}); device {info.device}, "
            f"{info.world_size} process(es)"
        )

        sample_frames = args.sample_frames or 3 * cfg.num_frames
        fps = float(record.get("fps") or 8.0)
        need = max([task_frames(cfg, t, sample_frames) for t in sample_tasks(cfg)] + [1])
        held_out = videos_from_record(record, cfg, need, held_out=True)
        clips = stack_videos(held_out, range(min(args.num_samples, len(held_out))))
        sample_fn = make_sample_fn(
            cfg,
            clips,
            sample_frames=sample_frames,
            sampler=args.sampler,
            steps=args.sample_steps,
            seed=args.seed,
            fps=fps,
        )
        config_dict = {
            "evdm": cfg.to_dict(),
            "preset": args.preset,
            "data": record,
            "samples": {
                "tasks": sample_tasks(cfg),
                "sample_frames": sample_frames,
                "sampler": args.sampler,
                "steps": args.sample_steps,
            },
        }

        def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
            return evdm_loss(model, batch, generator, cfg=cfg)

        def preflight(model: nn.Module, item: dict) -> None:
            check_clip(cfg, item)

        state = train(
            tcfg,
            model,
            loss_fn,
            dataset,
            sample_fn=sample_fn,
            config_dict=config_dict,
            resume=args.resume,
            dist_info=info,
            preflight=preflight,
        )

        out = Path(args.out)
        for line in run_summary(state, time.perf_counter() - start):
            say(line)
        say(f"metrics:    {out / 'metrics.csv'}")
        samples = out / "samples"
        if info.is_main and (samples / f"step{state.step:06d}_generate_grid.png").is_file():
            say(f"samples:    {samples}/step{state.step:06d}_<task>_<i>.mp4 (real clips: *_real_*), frame grids:")
            for task in sample_tasks(cfg):
                grid = samples / f"step{state.step:06d}_{task}_grid.png"
                say(f"            {grid}")
            for line in baseline_report(samples, state.step, sample_tasks(cfg)):
                say(line)
        say(
            f"sample more: python -m reference_models.evdm.sample --checkpoint {out} --task predict "
            f"--frames {sample_frames} --out {out / 'cli_samples'}"
        )
        return state


if __name__ == "__main__":
    main(sys.argv[1:])
