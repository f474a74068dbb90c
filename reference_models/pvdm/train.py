"""Train PVDM in its two stages: the triplane autoencoder, then latent diffusion on frozen latents.

    python -m reference_models.pvdm.train --stage ae --preset tiny --out runs/pvdm/ae
    python -m reference_models.pvdm.train --stage diffusion --preset tiny --autoencoder runs/pvdm/ae \\
        --out runs/pvdm/diffusion
    torchrun --nproc_per_node=4 -m reference_models.pvdm.train --stage ae --preset paper --data ucf/ \\
        --device cuda --batch-size 6 --lr 1e-4

Stage ``ae`` (section 3.2, appendix A): :class:`~reference_models.pvdm.losses.AutoencoderObjective`
(autoencoder + optional 3D discriminator) on clips of ``T`` frames, loss ``L1 + lambda_1 LPIPS +
lambda_2 GAN``; ``--perceptual model.pt`` loads a TorchScript feature network for the LPIPS term
(``torch.jit.load``; nothing is downloaded). Samples: reconstructions of held-out clips (rows: the
real clips, then their reconstructions) with their PSNR.

Stage ``diffusion`` (section 3.3): the autoencoder of ``--autoencoder`` (EMA weights) encodes every
pair of consecutive clips of the data once into a latent cache (``{out}/latents.safetensors``;
reused when it was made from the same checkpoint and data, e.g. on ``--resume``), then the
:class:`~reference_models.pvdm.unet.TriplaneUNet` trains on the cache with the joint conditional /
null objective (:func:`~reference_models.pvdm.diffusion.pvdm_loss`). The diffusion config's latent
width and plane grid are taken from the autoencoder. Samples: long videos by Algorithm 1.

Both stages use :func:`reference_models.common.trainer.train` (AdamW, warm-up, clipping, EMA,
autocast, DDP under ``torchrun``, exact resume with ``--resume``). Under ``torchrun`` rank 0 writes
the latent cache while the others wait, then every rank reads it.

From Python, :func:`run` trains one stage from configs (every system's ``train.py`` has the same
``run(cfg, train_cfg, *, ..., resume=False, info=None)``; ``main`` only turns flags into these)::

    from reference_models.common.trainer import TrainConfig
    from reference_models.pvdm.config import get_autoencoder_config, get_diffusion_config
    from reference_models.pvdm.train import run

    run(get_autoencoder_config("tiny"), TrainConfig(steps=1000, lr=1e-3, out_dir="runs/pvdm/ae"), stage="ae")
    run(get_diffusion_config("tiny"), TrainConfig(steps=1000, lr=1e-3, out_dir="runs/pvdm/diffusion"),
        stage="diffusion", autoencoder="runs/pvdm/ae")
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

from reference_models.common.checkpoint import (
    read_checkpoint_config,
    resolve_checkpoint,
)
from reference_models.common.cli import (
    add_training_arguments,
    distributed_cli,
    in_process_group,
    parse_cli_args,
    parse_override,
    run_summary,
    train_config_from_args,
)
from reference_models.common.distributed import DistInfo, barrier
from reference_models.common.ema import unwrap_model
from reference_models.common.metrics import video_psnr
from reference_models.common.trainer import TrainConfig, TrainState, train

from .autoencoder import PVDMAutoencoder
from .config import (
    AUTOENCODER_PRESETS,
    DIFFUSION_PRESETS,
    AutoencoderConfig,
    DiffusionConfig,
    get_autoencoder_config,
    get_diffusion_config,
)
from .data import (
    SHAPES_DEFAULTS,
    ClipPairs,
    LatentPairs,
    VideoClips,
    cache_latents,
    data_record,
    latent_cache_matches,
    videos_from_record,
)
from .diffusion import pvdm_loss
from .losses import AutoencoderObjective, PerceptualLoss
from .sampling import (
    AUTOENCODER_KEY,
    DIFFUSION_KEY,
    SAMPLERS,
    generate_long_video,
    load_autoencoder,
)
from .unet import TriplaneUNet

__all__ = [
    "TRAINING_DEFAULTS",
    "build_parser",
    "main",
    "make_ae_sample_fn",
    "make_long_sample_fn",
    "run",
]

# The training flags' defaults (add_training_arguments): the tiny presets of both stages on built-in
# moving shapes, on the CPU in minutes; --out defaults to runs/pvdm/ae or runs/pvdm/diffusion.
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 1000, "batch_size": 8, "lr": 1e-3, "out": "runs/pvdm/<stage>"}
# The paper's settings, named in --help (appendix D).
_PAPER = {"batch_size": "24 ae, 64 diffusion", "lr": "1e-4 for both stages"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.pvdm.train",
        description="Train PVDM: --stage ae (triplane autoencoder), then --stage diffusion (latent U-Net).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--stage", required=True, choices=("ae", "diffusion"))
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset", default="tiny", help=f"ae: {sorted(AUTOENCODER_PRESETS)}; diffusion: {sorted(DIFFUSION_PRESETS)}"
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set frames=16 --set channel_mult=[1,2,4] (JSON)",
    )
    g.add_argument(
        "--perceptual",
        default=None,
        metavar="MODEL.pt",
        help="ae: TorchScript network mapping frames (n, c, h, w) to features, for the LPIPS term",
    )
    g.add_argument("--autoencoder", default=None, help="diffusion: the autoencoder run (output dir or checkpoint)")
    g = p.add_argument_group("data (default: built-in moving shapes; diffusion: the autoencoder's data)")
    g.add_argument("--data", default=None, help="directory of videos")
    g.add_argument("--fps", type=float, default=None, help="--data: resample the videos to this rate")
    g.add_argument("--num-videos", type=int, default=None, help="moving shapes: number of scenes (default 2048)")
    g.add_argument(
        "--max-shapes", type=int, default=None, help=f"moving shapes per clip (default {SHAPES_DEFAULTS['max_shapes']})"
    )
    g.add_argument("--cache", default=None, help="diffusion: latent cache file (default {out}/latents.safetensors)")
    g.add_argument("--encode-batch-size", type=int, default=16, help="diffusion: batch for encoding the cache")
    g = add_training_arguments(p, **TRAINING_DEFAULTS, optional=("cosine", "grad_clip"), paper=_PAPER).samples
    g.add_argument("--num-samples", type=int, default=4, help="held-out clips (ae) or long videos (diffusion)")
    g.add_argument("--clips", type=int, default=4, help="diffusion: clips per long sample")
    g.add_argument("--first-steps", type=int, default=100, help="diffusion: DDIM steps of the first clip")
    g.add_argument("--next-steps", type=int, default=20, help="diffusion: DDIM steps of every later clip")
    g.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_override(o) for o in args.overrides)


# ----------------------------------------------------------------------------- stage 1


def make_ae_sample_fn(clips: torch.Tensor, *, fps: float):
    """``sample_fn(ema_objective, step, out_dir)``: reconstruct the held-out ``clips (n, c, T, H, W)``
    and write ``step<N>_recon_*`` (rows: real clips, then reconstructions) and their PSNR."""
    from reference_models.common.video_io import write_samples

    def sample_fn(model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        ae = unwrap_model(model).autoencoder
        was_training = ae.training
        ae.eval()
        try:
            with torch.no_grad():
                rec = ae(clips.to(next(ae.parameters()).device)).cpu()
        finally:
            ae.train(was_training)
        paths = write_samples(torch.cat([clips, rec]), out_dir, stem=f"step{step:06d}_recon", fps=fps)
        metrics = out_dir / f"step{step:06d}_recon_metrics.json"
        metrics.write_text(
            json.dumps({"psnr": float(video_psnr(rec.clamp(-1, 1), clips).mean()), "step": step}) + "\n",
            encoding="utf-8",
        )
        return [*paths, metrics]

    return sample_fn


def _train_autoencoder(cfg: AutoencoderConfig, tcfg: TrainConfig, info: DistInfo, say, o: dict[str, Any]) -> TrainState:
    """Stage 1: the autoencoder (and discriminator) on clips of ``T`` frames."""
    if o["data"] is not None:
        record = data_record(o["data"], fps=o["fps"])
    else:
        record = data_record(num_samples=o["num_videos"], seed=tcfg.seed, max_shapes=o["max_shapes"])
    dataset = VideoClips(videos_from_record(record, cfg, cfg.frames), cfg.frames)
    perceptual = PerceptualLoss(torch.jit.load(o["perceptual"], map_location="cpu")) if o["perceptual"] else None
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
    model = AutoencoderObjective(cfg, perceptual=perceptual)
    params = sum(p.numel() for p in model.autoencoder.parameters())
    t, h, w = cfg.latent_grid()
    say(
        f"PVDM autoencoder preset {o['preset']!r}: {params / 1e6:.2f} M parameters; clips of {cfg.frames} x "
        f"{cfg.height}x{cfg.width} x {cfg.channels} -> planes {h}x{w}, {t}x{w}, {t}x{h} of C={cfg.latent_channels} "
        f"({(h * w + t * w + t * h) * cfg.latent_channels} numbers); GAN {'on from step ' + str(cfg.gan_start) if cfg.use_gan else 'off'}, "
        f"perceptual {'on' if perceptual else 'off'}; {len(dataset)} clips ({record['source']}); device {info.device}"
    )
    held_out = videos_from_record(record, cfg, cfg.frames, held_out=True)
    clips = torch.stack([held_out[i]["video"][:, : cfg.frames] for i in range(min(o["num_samples"], len(held_out)))])
    sample_fn = make_ae_sample_fn(clips, fps=float(record.get("fps") or 8.0))
    config_dict = {AUTOENCODER_KEY: cfg.to_dict(), "preset": o["preset"], "data": record}

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["video"])["loss"]

    def preflight(model: nn.Module, item: dict) -> None:
        video = item["video"]
        if video.ndim != 4 or video.shape[0] != cfg.channels:
            raise ValueError(f"expected clips of shape (c, t, h, w) with c={cfg.channels}, got {tuple(video.shape)}")
        cfg.check_video_size(*video.shape[1:])

    return train(
        tcfg,
        model,
        loss_fn,
        dataset,
        sample_fn=sample_fn,
        config_dict=config_dict,
        resume=o["resume"],
        dist_info=info,
        preflight=preflight,
    )


# ----------------------------------------------------------------------------- stage 2


def make_long_sample_fn(
    autoencoder: PVDMAutoencoder,
    *,
    batch: int,
    clips: int,
    first_steps: int,
    next_steps: int,
    sampler: str,
    seed: int,
    fps: float,
):
    """``sample_fn(ema_unet, step, out_dir)``: ``batch`` long videos of ``clips`` clips by Algorithm 1,
    written as ``step<N>_long_*``."""
    from reference_models.common.video_io import write_samples

    def sample_fn(model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        model = unwrap_model(model)
        autoencoder.to(next(model.parameters()).device)
        generator = torch.Generator().manual_seed(seed)
        video = generate_long_video(
            model,
            autoencoder,
            batch,
            clips,
            first_steps=first_steps,
            next_steps=next_steps,
            sampler=sampler,
            generator=generator,
        )
        return write_samples(video.cpu(), out_dir, stem=f"step{step:06d}_long", fps=fps)

    return sample_fn


def _train_diffusion(cfg: DiffusionConfig, tcfg: TrainConfig, info: DistInfo, say, o: dict[str, Any]) -> TrainState:
    """Stage 2: cache the latents of consecutive clip pairs, then train the triplane U-Net on them."""
    if o["autoencoder"] is None:
        raise ValueError("stage 'diffusion' needs autoencoder= (the output directory of stage 'ae')")
    ae_manifest = resolve_checkpoint(o["autoencoder"])
    autoencoder, ae_ckpt = load_autoencoder(ae_manifest, device=info.device)
    for p in autoencoder.parameters():
        p.requires_grad_(False)
    ae_cfg = autoencoder.cfg
    cfg = cfg.replace(**_tied_fields(ae_cfg))
    out = Path(tcfg.out_dir)

    if o["data"] is not None:
        record = data_record(o["data"], fps=o["fps"])
    else:
        _, ae_config = read_checkpoint_config(ae_manifest)
        record = dict((ae_config.get("model") or {}).get("data") or data_record())
        if o["num_videos"] is not None:
            record["num_samples"] = o["num_videos"]
    cache = Path(o["cache"] or out / "latents.safetensors")
    description = {
        "autoencoder": str(ae_manifest.resolve()),
        "step": ae_ckpt.step,
        "data": record,
        "frames": ae_cfg.frames,
    }
    if info.is_main and not latent_cache_matches(cache, description):
        start = time.perf_counter()
        pairs = ClipPairs(videos_from_record(record, ae_cfg, 2 * ae_cfg.frames), ae_cfg.frames)
        say(f"encoding {len(pairs)} clip pairs with the autoencoder at step {ae_ckpt.step} -> {cache}")
        cache_latents(
            autoencoder,
            pairs,
            cache,
            description=description,
            batch_size=o["encode_batch_size"],
            device=info.device,
            progress=not (not tcfg.progress),
        )
        say(f"latent cache written in {time.perf_counter() - start:.0f} s")
    barrier(info)
    dataset = LatentPairs(cache)

    torch.manual_seed(tcfg.seed)
    model = TriplaneUNet(cfg)
    params = sum(p.numel() for p in model.parameters())
    z = dataset.z1
    say(
        f"PVDM diffusion preset {o['preset']!r}: {params / 1e6:.2f} M parameters; latents {cfg.latent_size} numbers "
        f"(grid t,h,w = {cfg.latent_grid}, C={cfg.latent_channels}; cached mean {z.mean():.3f}, std {z.std():.3f}); "
        f"lambda = {cfg.cond_prob}; {len(dataset)} pairs; device {info.device}"
    )
    sample_fn = make_long_sample_fn(
        autoencoder,
        batch=o["num_samples"],
        clips=o["clips"],
        first_steps=o["first_steps"],
        next_steps=o["next_steps"],
        sampler=o["sampler"],
        seed=tcfg.seed,
        fps=float(record.get("fps") or 8.0),
    )
    config_dict = {
        DIFFUSION_KEY: cfg.to_dict(),
        "preset": o["preset"],
        "data": record,
        "autoencoder": {"checkpoint": str(ae_manifest.resolve()), "step": ae_ckpt.step, "config": ae_cfg.to_dict()},
    }

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return pvdm_loss(model, batch, generator, grid=dataset.grid, cond_prob=cfg.cond_prob)

    def preflight(model: nn.Module, item: dict) -> None:
        if tuple(dataset.grid) != cfg.latent_grid or item["z1"].shape[0] != cfg.latent_channels:
            raise ValueError(
                f"the latent cache {cache} holds grid {dataset.grid} with {item['z1'].shape[0]} channels; "
                f"this model expects {cfg.latent_grid} with {cfg.latent_channels}"
            )

    return train(
        tcfg,
        model,
        loss_fn,
        dataset,
        sample_fn=sample_fn,
        config_dict=config_dict,
        resume=o["resume"],
        dist_info=info,
        preflight=preflight,
    )


def _tied_fields(ae_cfg: AutoencoderConfig) -> dict[str, int]:
    """The diffusion config's fields the autoencoder fixes: its latent width and plane grid."""
    grid = ae_cfg.latent_grid()
    return dict(
        latent_channels=ae_cfg.latent_channels, latent_frames=grid[0], latent_height=grid[1], latent_width=grid[2]
    )


@in_process_group
def run(
    cfg: AutoencoderConfig | DiffusionConfig,
    train_cfg: TrainConfig,
    *,
    stage: str,
    autoencoder: str | Path | None = None,
    perceptual: str | Path | None = None,
    data: str | Path | None = None,
    fps: float | None = None,
    num_videos: int | None = None,
    max_shapes: int | None = None,
    cache: str | Path | None = None,
    encode_batch_size: int = 16,
    num_samples: int = 4,
    clips: int = 4,
    first_steps: int = 100,
    next_steps: int = 20,
    sampler: str = "ddim",
    preset: str | None = None,
    resume: bool | str | Path = False,
    info: DistInfo | None = None,
) -> TrainState:
    """Train one PVDM stage: config -> data -> model -> :func:`~reference_models.common.trainer.train`.

    ``stage="ae"``: ``cfg`` is a ``AutoencoderConfig``; ``perceptual`` a TorchScript feature network
    for the LPIPS term. ``stage="diffusion"``: ``cfg`` is a ``DiffusionConfig`` whose latent width
    and grid are replaced by those of the autoencoder run ``autoencoder``; its latents are cached in
    ``cache`` (default ``{out}/latents.safetensors``). Data: moving shapes (``num_videos``,
    ``max_shapes``) or the video folder ``data`` (at ``fps``); the diffusion stage defaults to the
    autoencoder's data. ``num_samples``/``clips``/``first_steps``/``next_steps``/``sampler``: the samples
    written during training. ``preset`` is only recorded in the checkpoint. ``info``: the process group
    (``None``: this call sets one up). Prints what it builds and a summary; returns the ``TrainState``.
    """
    assert info is not None  # in_process_group
    if stage not in ("ae", "diffusion"):
        raise ValueError(f"stage must be 'ae' or 'diffusion', got {stage!r}")
    say = print if info.is_main else (lambda *a, **k: None)
    start = time.perf_counter()
    options = dict(
        autoencoder=autoencoder,
        perceptual=perceptual,
        data=data,
        fps=fps,
        num_videos=num_videos,
        max_shapes=max_shapes,
        cache=cache,
        encode_batch_size=encode_batch_size,
        num_samples=num_samples,
        clips=clips,
        first_steps=first_steps,
        next_steps=next_steps,
        sampler=sampler,
        preset=preset,
        resume=resume,
    )
    state = (_train_autoencoder if stage == "ae" else _train_diffusion)(cfg, train_cfg, info, say, options)
    for line in run_summary(state, time.perf_counter() - start, prefix=f"{stage}: "):
        say(line)
    return state


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> TrainState:
    """Train the stage ``--stage`` names (``--help``); returns the final ``TrainState``.

    Runs unchanged under ``torchrun`` (only rank 0 prints, samples and writes checkpoints).
    """
    args = parse_cli_args(build_parser, argv)
    with distributed_cli(args.device) as (info, _):
        user = _overrides(args)
        if args.stage == "ae":
            if args.preset not in AUTOENCODER_PRESETS:
                raise SystemExit(
                    f"--stage ae takes an autoencoder preset {sorted(AUTOENCODER_PRESETS)}, got {args.preset!r}"
                )
            cfg: AutoencoderConfig | DiffusionConfig = get_autoencoder_config(args.preset, **user)
        else:
            if args.preset not in DIFFUSION_PRESETS:
                raise SystemExit(
                    f"--stage diffusion takes a diffusion preset {sorted(DIFFUSION_PRESETS)}, got {args.preset!r}"
                )
            if args.autoencoder is None:
                raise SystemExit("--stage diffusion needs --autoencoder (the output directory of --stage ae)")
            cfg = get_diffusion_config(args.preset, **user)
            ae_config = read_checkpoint_config(resolve_checkpoint(args.autoencoder))[1]["model"][AUTOENCODER_KEY]
            tied = _tied_fields(AutoencoderConfig.from_dict(ae_config))
            clash = {k: (user[k], v) for k, v in tied.items() if k in user and user[k] != v}
            if clash:
                raise SystemExit(f"--set {clash} contradicts the autoencoder (the latent width and grid come from it)")
        # Refuses an --out of another run before any data is read or the latent cache is written.
        train_cfg = train_config_from_args(args, out_dir=args.out or f"runs/pvdm/{args.stage}")
        return run(
            cfg,
            train_cfg,
            stage=args.stage,
            autoencoder=args.autoencoder,
            perceptual=args.perceptual,
            data=args.data,
            fps=args.fps,
            num_videos=args.num_videos,
            max_shapes=args.max_shapes,
            cache=args.cache,
            encode_batch_size=args.encode_batch_size,
            num_samples=args.num_samples,
            clips=args.clips,
            first_steps=args.first_steps,
            next_steps=args.next_steps,
            sampler=args.sampler,
            preset=args.preset,
            resume=args.resume,
            info=info,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
