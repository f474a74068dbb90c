"""Train ETC: one readable ``main`` from flags to checkpoints and sample videos (section 4.2).

With no flags it trains the ``tiny`` preset on built-in moving shapes with triple-data batches
(caption-videos at 1-60 FPS, label-image groups at FPS 0, caption-images at FPS 120; eq. 6) on
the CPU in a few minutes, then writes a checkpoint and sample videos::

    python examples/train_etc.py                                   # moving shapes, tiny, CPU
    python examples/train_etc.py --data-videos clips/ --data-images photos/ --preset small
    torchrun --nproc_per_node=4 examples/train_etc.py --preset small --device cuda --precision bf16

Pieces: ``ETCSystem`` (the ``ETCUNet`` and its ``ETCConditioner``, ``model.py``; sampling in ``sampling.py``), the denoising
loss under the config's :class:`~vdblocks.diffusion.DiffusionSpec` (``cfg.diffusion``: its schedule
and prediction type, DDPM eq. 14's noise or the velocity; through
``vdblocks.diffusion.diffusion_loss``, min-SNR weighted when
``cfg.snr_gamma`` is set) with classifier-free condition dropout
(``cfg.cond_dropout``), a ``TripleDataset`` (``data.py``), and ``reference_models.common.train``
(AdamW, warm-up, clipping, EMA, autocast, DDP, exact resume). Samples are written every
``--sample-every`` steps and at the end: a few captions at 8 and 30 FPS and as stills (120 FPS),
and label groups (FPS 0) when the model has labels, with DDIM (``--sample-steps``, paper 50) and
the config's guidance scale (appendix E.1: 7; ``tiny``: 1, see ``docs/systems/etc.md``). At the
end, the run scores ``--probe-clips`` held-out captions with the shapes probe (``probe.json``).

Built-in data: moving shapes, one per clip, of the ``--kinds``, ``--colors`` and ``--directions``
given (by default squares and circles, all eight colours, the four axis directions).

User data: ``--data-videos DIR`` (videos under DIR, captions in ``DIR/captions.csv`` with columns
``file, caption`` or ``DIR/captions.json``, or ``--video-captions``) and/or ``--data-images DIR``
(``DIR/<label>/...`` class folders for label-image groups, captions as for videos for
caption-image pairs). Frames are resized and centre-cropped to the config's size.

Which condition each kind trains: caption-videos and caption-images their caption (and the null
label); label-image groups their label (and the empty caption) when the model has a label
embedding (``cfg.num_classes``), otherwise their class name as the caption. So sampling with a
caption alone or a label alone asks for exactly what was trained.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    positive_fps,
    run_summary,
    train_config_from_args,
)
from reference_models.common.data.moving_shapes import DIRECTIONS, PALETTE, SHAPE_KINDS
from reference_models.common.ema import unwrap_model
from reference_models.common.trainer import TrainState, train
from vdblocks.diffusion import diffusion_loss

from .config import PRESETS, ETCConfig, get_config
from .data import (
    CAPTION_IMAGE_FPS,
    DEFAULT_RATIOS,
    FPS_CHOICES,
    TripleDataset,
    collate_etc,
    folder_triple,
    moving_shapes_triple,
)
from .model import ETCSystem
from .sampling import PROBE_FPS, SAMPLE_FPS, _class_names, _label_source, make_sample_fn, run_probe, sample_prompts

__all__ = [
    "TRAINING_DEFAULTS",
    "build_parser",
    "build_config",
    "build_dataset",
    "condition_inputs",
    "etc_loss",
    "main",
]

# Built-in data: one shape per clip, large enough to read at 16x16, so the tiny run learns it fast.
# The tiny run learns two kinds and four axis directions (all eight colours); see docs/systems/etc.md.
_SHAPES = {
    "max_shapes": 1,
    "size_range": (0.15, 0.3),
    "kinds": ("square", "circle"),
    "directions": ("left", "right", "up", "down"),
    "colors": tuple(PALETTE),
}
# The training flags' defaults (add_training_arguments): the tiny preset learns the built-in shapes'
# captions on the CPU in a few minutes (docs/systems/etc.md). The paper's run (section 5.1,
# "Training Details": 15K iterations of batch 48 at 1e-4 on 8 GPUs) is named in --help.
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 600, "batch_size": 32, "lr": 2e-3, "log_every": 25, "out": "runs/etc"}
_PAPER = {"steps": "15k", "batch_size": "48", "lr": "1e-4"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="examples/train_etc.py",
        description="Train ETC (spatial-only text-to-video diffusion) with triple-data batches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an ETCConfig field, e.g. --set frames=16 --set channel_mult=[1,2,2] (JSON values)",
    )
    g = p.add_argument_group("data (default: built-in moving shapes)")
    g.add_argument("--data-videos", default=None, help="directory of videos (captions.csv/json sidecar)")
    g.add_argument("--data-images", default=None, help="directory of images (<label>/ folders and/or captions)")
    g.add_argument("--video-captions", default=None, help="caption file for --data-videos")
    g.add_argument("--image-captions", default=None, help="caption file for --data-images")
    g.add_argument(
        "--ratios",
        type=float,
        nargs=3,
        default=list(DEFAULT_RATIOS),
        metavar=("VIDEO", "LABEL_IMAGES", "CAPTION_IMAGE"),
        help="mixing ratios of the three kinds",
    )
    g.add_argument(
        "--fps-choices",
        type=positive_fps,
        nargs="+",
        default=list(FPS_CHOICES),
        metavar="FPS",
        help="the video frame rates caption-videos are drawn at (paper: 1 2 4 8 15 30 60)",
    )
    g.add_argument("--num-videos", type=int, default=4096, help="moving shapes: number of video scenes")
    g.add_argument("--num-images", type=int, default=4096, help="moving shapes: number of still scenes")
    g.add_argument("--max-shapes", type=int, default=_SHAPES["max_shapes"], help="moving shapes per clip")
    g.add_argument(
        "--kinds",
        nargs="+",
        default=list(_SHAPES["kinds"]),
        choices=SHAPE_KINDS,
        help="moving shapes: the shape kinds scenes draw from",
    )
    g.add_argument(
        "--colors",
        nargs="+",
        default=list(_SHAPES["colors"]),
        choices=list(PALETTE),
        help="moving shapes: the colours scenes draw from",
    )
    g.add_argument(
        "--directions",
        nargs="+",
        default=list(_SHAPES["directions"]),
        choices=list(DIRECTIONS),
        help="moving shapes: the directions shapes start moving in",
    )
    g = add_training_arguments(p, **TRAINING_DEFAULTS, optional=("grad_checkpointing",), paper=_PAPER).samples
    g.add_argument("--sample-steps", type=int, default=50, help="DDIM steps (paper: 50)")
    g.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance (default: the config's guidance_scale; paper: 7, tiny: 1)",
    )
    g.add_argument("--num-prompts", type=int, default=3, help="captions (and labels) to sample")
    g = p.add_argument_group("quality probe (built-in moving shapes only)")
    g.add_argument(
        "--probe-clips",
        type=int,
        default=64,
        help="clips sampled from held-out captions and scored by the shapes probe at the end (0: skip)",
    )
    g.add_argument("--probe-steps", type=int, default=25, help="DDIM steps for the probe's clips")
    return p


def build_config(args: argparse.Namespace) -> ETCConfig:
    """The preset with the ``--set`` overrides."""
    return get_config(args.preset, **dict(parse_override(o) for o in args.overrides))


def build_dataset(args: argparse.Namespace, cfg: ETCConfig) -> TripleDataset:
    """Moving shapes at the config's size, or the user folders; either way triple-data items."""
    if cfg.in_channels not in (1, 3):
        raise ValueError(
            f"preset {args.preset!r} models {cfg.in_channels}-channel latents; this trainer feeds pixel "
            "videos (1 or 3 channels): pick a pixel preset or --set in_channels=3"
        )
    size = dict(frames=cfg.frames, height=cfg.height, width=cfg.width, channels=cfg.in_channels)
    if args.data_videos is None and args.data_images is None:
        return moving_shapes_triple(
            **size,
            num_videos=args.num_videos,
            num_images=args.num_images,
            ratios=args.ratios,
            fps_choices=args.fps_choices,
            seed=args.seed,
            max_shapes=args.max_shapes,
            size_range=_SHAPES["size_range"],
            kinds=tuple(args.kinds),
            colors=tuple(args.colors),
            directions=tuple(args.directions),
        )
    return folder_triple(
        args.data_videos,
        args.data_images,
        **size,
        video_captions=args.video_captions,
        image_captions=args.image_captions,
        ratios=args.ratios,
        fps_choices=args.fps_choices,
        seed=args.seed,
    )


def _fit_labels(cfg: ETCConfig, dataset: TripleDataset) -> ETCConfig:
    """Give the label embedding as many classes as the label-image data has."""
    source = _label_source(dataset)
    if source is None or cfg.num_classes is None or cfg.num_classes == source.num_classes:
        return cfg
    return dataclasses.replace(cfg, num_classes=source.num_classes)


def condition_inputs(batch: dict, cfg: ETCConfig) -> tuple[torch.Tensor | None, list[str] | None]:
    """``(labels (b,) or None, captions or None)`` for ``ETCConditioner`` from a collated batch.

    Label-image groups are conditioned on their label (empty caption) when the model has labels,
    else on their class name; the caption kinds on their caption (label -1: the null label).
    """
    labels = batch["label"] if cfg.num_classes is not None else None
    has_text = cfg.text_vocab_size is not None
    captions = None
    if has_text:
        captions = [
            "" if kind == "label_images" and labels is not None else caption
            for caption, kind in zip(batch["caption"], batch["kind"])
        ]
    return labels, captions


def etc_loss(
    model: nn.Module,
    batch: dict,
    generator: torch.Generator | None = None,
    *,
    cfg: ETCConfig,
) -> torch.Tensor:
    """The denoising loss on a triple-data batch (schedule and target as ``cfg.diffusion`` says:
    DDPM's eps loss, eq. 14, or the velocity), with classifier-free condition dropout.

    ``t`` uniform and the noise are drawn first (``diffusion_loss``), the dropout mask after, all
    from ``generator``; ``model`` is the (possibly DDP-wrapped) ``ETCSystem``.
    """
    labels, captions = condition_inputs(batch, cfg)
    fps = batch["fps"]

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, fps, labels, captions, cond_dropout=cfg.cond_dropout, generator=generator)

    return diffusion_loss(model_fn, batch["video"], cfg.diffusion, generator=generator, snr_gamma=cfg.snr_gamma)


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> TrainState:
    """Train ETC as the flags say (``--help``); returns the final ``TrainState``.

    Runs unchanged under ``torchrun`` (one process per device; only rank 0 prints, samples and
    writes checkpoints).
    """
    args = parse_cli_args(build_parser, argv)
    with distributed_cli(args.device) as (info, say):
        start = time.perf_counter()
        tcfg = train_config_from_args(args)
        cfg = build_config(args)
        dataset = build_dataset(args, cfg)
        cfg = _fit_labels(cfg, dataset)
        torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        system = ETCSystem(cfg)
        params = sum(p.numel() for p in system.parameters())
        counts = {k: dataset.kinds.count(k) for k in ("video", "label_images", "caption_image")}
        say(
            f"ETC preset {args.preset!r}: {params / 1e6:.2f} M parameters, clips of {cfg.frames} frames "
            f"{cfg.height}x{cfg.width}; {len(dataset)} triple-data items {counts}; device {info.device}, "
            f"{info.world_size} process(es)"
        )

        prompts = sample_prompts(dataset, cfg, args.num_prompts)
        guidance = cfg.guidance_scale if args.guidance_scale is None else args.guidance_scale
        sample_fn = make_sample_fn(cfg, prompts, steps=args.sample_steps, guidance_scale=guidance, seed=args.seed)
        captions = list(dict.fromkeys(p.caption for p in prompts if p.caption and 0 < p.fps < CAPTION_IMAGE_FPS))
        config_dict = {
            "etc": cfg.to_dict(),
            "preset": args.preset,
            "data": {
                "videos": args.data_videos,
                "images": args.data_images,
                "ratios": list(dataset.ratios),
                "fps_choices": list(dataset.fps_choices),
                "num_items": len(dataset),
            },
            "samples": {
                "captions": captions,
                "prompts": [p._asdict() for p in prompts],
                "class_names": _class_names(_label_source(dataset)),
                "fps": list(SAMPLE_FPS),
                "steps": args.sample_steps,
                "guidance_scale": guidance,
            },
        }

        def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
            return etc_loss(model, batch, generator, cfg=cfg)

        def preflight(model: nn.Module, item: dict) -> None:
            unwrap_model(model).unet.check_input(item["video"].shape)

        state = train(
            tcfg,
            system,
            loss_fn,
            dataset,
            sample_fn=sample_fn,
            collate_fn=collate_etc,
            config_dict=config_dict,
            resume=args.resume,
            dist_info=info,
            preflight=preflight,
        )

        out = Path(args.out)
        for line in run_summary(state, time.perf_counter() - start):
            say(line)
        say(f"metrics:    {out / 'metrics.csv'}")
        grids = sorted((out / "samples").glob(f"step{state.step:06d}_fps*_grid.png")) if info.is_main else []
        if grids:
            say(
                f"samples:    {out / 'samples'}/step{state.step:06d}_fps<F>_<i>.mp4 (prompts in *_captions.txt), "
                "frame grids:"
            )
            for grid in grids:
                say(f"            {grid}")
        builtin = args.data_videos is None and args.data_images is None
        if info.is_main and builtin and args.probe_clips > 0 and cfg.text_vocab_size is not None:
            probe_start = time.perf_counter()
            result, probe_caps = run_probe(
                state.ema.module,
                dataset,
                cfg,
                clips=args.probe_clips,
                steps=args.probe_steps,
                guidance_scale=guidance,
                seed=args.seed + 1,
                exclude=captions,
                grid=out / "probe_grid.png",
            )
            report = {
                "probe": result.to_dict(),
                "captions": probe_caps,
                "fps": PROBE_FPS,
                "sampler": {"ddim_steps": args.probe_steps, "guidance_scale": guidance},
                "run": {
                    "steps": state.step,
                    "batch_size": args.batch_size,
                    "preset": args.preset,
                    "seconds_to_here": round(time.perf_counter() - start, 1),
                    "probe_seconds": round(time.perf_counter() - probe_start, 1),
                },
            }
            (out / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
            say(result.format())
            say(
                f"probe:      {out / 'probe.json'} ({len(probe_caps)} held-out captions at {PROBE_FPS:g} fps, "
                f"{report['run']['probe_seconds']:.0f} s); first 16 clips: {out / 'probe_grid.png'}"
            )
        example = json.dumps(captions[0] if captions else "a red circle moving left")
        say(
            f"sample more: python -m reference_models.etc.sample --checkpoint {out} --caption {example} "
            f"--fps 8 --out {out / 'cli_samples'}"
        )
        return state


if __name__ == "__main__":
    main(sys.argv[1:])
