"""Train CMD's three parts, one at a time (section 3.2, B.3): ``--stage ae``, ``content``, ``motion``.

1. ``ae``: the autoencoder with an l2 reconstruction loss ("a simple reconstruction objective (e.g.,
   l2 loss)"), on pixels or, with ``--image-ae DIR``, on the latents of a frozen diffusers
   ``AutoencoderKL`` (SD's, 4 channels at 1/8 resolution).
2. ``content``: the content-frame model on content frames of the frozen autoencoder (eq. 7), the
   :class:`~reference_models.cmd.content_model.ContentDiT` or
   :class:`~reference_models.cmd.content_model.ContentUNet` that ``content_model`` names or, with
   ``--diffusers-content DIR``, a pretrained diffusers model fine-tuned in its place.
3. ``motion``: the motion DiT on the frozen autoencoder's motion latents, given the content frame and
   the class (eq. 8).

Both diffusion stages use DDPM's loss under the config's :class:`~vdblocks.diffusion.DiffusionSpec`
(``cfg.diffusion``: on eps or the velocity, as its prediction type says;
:func:`vdblocks.diffusion.diffusion_loss`) with condition dropout ``cfg.cond_dropout`` for
classifier-free guidance. Every stage runs on :func:`reference_models.common.train` (AdamW, warm-up, clipping, EMA, autocast, DDP, exact resume)::

    python -m reference_models.cmd.train --stage ae --preset tiny --out runs/cmd/ae
    python -m reference_models.cmd.train --stage content --ae runs/cmd/ae --out runs/cmd/content
    python -m reference_models.cmd.train --stage motion --ae runs/cmd/ae --out runs/cmd/motion
    torchrun --nproc_per_node=4 -m reference_models.cmd.train --stage motion --ae runs/ae --device cuda ...

The content and motion stages take the config stored with the autoencoder (``--set`` still applies;
``--motion-dit``/``--content-dit`` pick DiT-S/B/L/XL widths, ``--content-patch`` the content-frame
patch of the motion model). By default they encode the whole dataset once with the frozen
autoencoder and train on the cached latents (``--no-cache``: encode every batch instead, for data that
does not fit in memory or random clip starts).

Data: built-in moving shapes with 5 shape classes (default), or ``--data DIR`` (videos, classes from
sub-folders).

From Python, :func:`run` trains one stage from configs (every system's ``train.py`` has the same
``run(cfg, train_cfg, *, ..., resume=False, info=None)``; ``main`` only turns flags into these)::

    from reference_models.cmd.config import get_config
    from reference_models.cmd.train import run
    from reference_models.common.trainer import TrainConfig

    run(get_config("tiny"), TrainConfig(steps=500, batch_size=16, lr=1e-3, out_dir="runs/cmd/ae"), stage="ae")
    run(None, TrainConfig(steps=500, out_dir="runs/cmd/content"), stage="content", ae="runs/cmd/ae")
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
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, Dataset

from reference_models.common.checkpoint import read_checkpoint_config
from reference_models.common.cli import (
    add_training_arguments,
    distributed_cli,
    in_process_group,
    parse_cli_args,
    parse_override,
    run_summary,
    train_config_from_args,
)
from reference_models.common.data import MovingShapes, VideoFolder
from reference_models.common.distributed import DistInfo
from reference_models.common.ema import unwrap_model
from reference_models.common.trainer import TrainConfig, TrainState, train
from reference_models.common.video_io import save_frame_grid, write_samples
from vdblocks.diffusion import diffusion_loss

from .autoencoder import CMDAutoencoder, ImageLatentCodec, pack_motion
from .config import PRESETS, CMDConfig, get_config, with_dit
from .content_model import build_native_content_model, draw_drop
from .motion_model import MotionDiT
from .sampling import (
    check_compatible,
    load_autoencoder,
    load_image_codec,
    sample_content,
    sample_motion,
)

__all__ = [
    "STAGES",
    "TRAINING_DEFAULTS",
    "LatentClips",
    "ae_loss",
    "build_config",
    "build_dataset",
    "build_parser",
    "codec_factor",
    "content_loss",
    "encode_clips",
    "main",
    "make_dataset",
    "motion_loss",
    "run",
]

STAGES = ("ae", "content", "motion")
# Built-in data: one shape per clip, large enough to read at 24x32 (as ETC's example).
SHAPES = {"max_shapes": 1, "size_range": (0.18, 0.3)}
# The training flags' defaults (add_training_arguments): the tiny preset's three stages on built-in
# moving shapes, on the CPU in minutes; --out defaults to runs/cmd/ae, runs/cmd/content, runs/cmd/motion.
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 500, "batch_size": 16, "lr": 1e-3, "out": "runs/cmd/<stage>"}
# The paper's settings (appendix B.3), named in --help.
_PAPER = {"batch_size": "24 ae, 256 content and motion", "lr": "1e-5 ae, 1e-4 content and motion"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.cmd.train",
        description="Train one part of CMD (content-motion latent diffusion): ae, content or motion.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--stage", required=True, choices=STAGES)
    g = p.add_argument_group("model")
    g.add_argument(
        "--preset", default="tiny", choices=sorted(PRESETS), help="stage ae (the others take the AE's config)"
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a CMDConfig field (JSON value), e.g. --set motion_depth=6",
    )
    g.add_argument("--motion-dit", default=None, choices=["S", "B", "L", "XL"], help="DiT size of the motion model")
    g.add_argument("--content-dit", default=None, choices=["S", "B", "L", "XL"], help="DiT size of the content model")
    g.add_argument("--content-patch", type=int, default=None, help="content-frame patch of the motion model (Table 4c)")
    g.add_argument("--ae", default=None, help="stages content/motion: the trained autoencoder (run dir or checkpoint)")
    g.add_argument(
        "--image-ae",
        default=None,
        help="stage ae: directory of a diffusers AutoencoderKL (e.g. SD's vae/) to work on its latents",
    )
    g.add_argument(
        "--diffusers-content",
        default=None,
        help="stage content: directory of a pretrained diffusers UNet2DModel / UNet2DConditionModel / "
        "DiTTransformer2DModel to fine-tune as the content model",
    )
    g = p.add_argument_group("data (default: built-in moving shapes)")
    g.add_argument("--data", default=None, help="directory of videos (class = sub-folder)")
    g.add_argument("--num-videos", type=int, default=2048, help="moving shapes: number of clips")
    g.add_argument("--max-shapes", type=int, default=SHAPES["max_shapes"])
    g.add_argument("--no-cache", action="store_true", help="content/motion: encode each batch, no latent cache")
    g = add_training_arguments(p, **TRAINING_DEFAULTS, optional=("cosine",), paper=_PAPER).samples
    g.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (paper: 50 content, 100 motion)")
    g.add_argument("--guidance", type=float, default=4.0, help="content model guidance (paper: 4.0)")
    g.add_argument("--num-samples", type=int, default=4)
    return p


def build_config(args: argparse.Namespace, base: CMDConfig | None = None) -> CMDConfig:
    """``base`` (the autoencoder's config) or the preset, with ``--set`` and the DiT-size flags."""
    overrides = dict(parse_override(o) for o in args.overrides)
    cfg = base.replace(**overrides) if base is not None else get_config(args.preset, **overrides)
    return with_dit(cfg, motion=args.motion_dit, content=args.content_dit, content_patch=args.content_patch)


def codec_factor(codec: ImageLatentCodec | None, channels: int) -> int:
    """How much the image codec shrinks frames (1 without one); checks its latent channels."""
    if codec is None:
        return 1
    device = next(codec.vae.parameters()).device
    probe = codec.encode(torch.zeros(1, 3, 1, 64, 64, device=device))
    if probe.shape[1] != channels:
        raise ValueError(
            f"the image autoencoder gives {probe.shape[1]}-channel latents, the config has channels={channels}"
        )
    return 64 // probe.shape[-1]


def build_dataset(args: argparse.Namespace, cfg: CMDConfig, factor: int = 1) -> Dataset:
    """The dataset the data flags describe (:func:`make_dataset`)."""
    return make_dataset(
        cfg, factor, data=args.data, num_videos=args.num_videos, max_shapes=args.max_shapes, seed=args.seed
    )


def make_dataset(
    cfg: CMDConfig,
    factor: int = 1,
    *,
    data: str | Path | None = None,
    num_videos: int = 2048,
    max_shapes: int = SHAPES["max_shapes"],
    seed: int = 0,
) -> Dataset:
    """Moving shapes (5 shape classes) or the video folder ``data``, at the pixel size the autoencoder
    needs (``factor``: how much its image codec shrinks frames)."""
    pixel_channels = 3 if factor > 1 else cfg.channels
    if pixel_channels not in (1, 3):
        raise ValueError(f"config channels={cfg.channels} is a latent space: pass --image-ae to train on pixels")
    size = dict(frames=cfg.frames, height=cfg.height * factor, width=cfg.width * factor, channels=pixel_channels)
    if data is None:
        return MovingShapes(num_videos, **size, seed=seed, max_shapes=max_shapes, size_range=SHAPES["size_range"])
    return VideoFolder(data, **size, seed=seed)


def _num_classes(dataset: Dataset) -> int | None:
    n = getattr(dataset, "num_classes", None)
    if n is None and getattr(dataset, "classes", None):
        n = len(dataset.classes)
    return int(n) if n else None


class LatentClips(Dataset):
    """Cached autoencoder outputs: items ``{"content" (C, H, W), "z_x" (D, L, H'), "z_y" (D, L, W'), "label"}``."""

    def __init__(self, content: torch.Tensor, z_x: torch.Tensor, z_y: torch.Tensor, labels: torch.Tensor) -> None:
        self.content, self.z_x, self.z_y, self.labels = content, z_x, z_y, labels

    def __len__(self) -> int:
        return self.content.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"content": self.content[i], "z_x": self.z_x[i], "z_y": self.z_y[i], "label": self.labels[i]}


@torch.no_grad()
def encode_clips(
    autoencoder: CMDAutoencoder, dataset: Dataset, batch_size: int = 32, device: torch.device | str = "cpu"
) -> LatentClips:
    """Encode every clip of ``dataset`` once with the frozen autoencoder (through its image codec)."""
    autoencoder.eval()
    parts: dict[str, list[torch.Tensor]] = {"content": [], "z_x": [], "z_y": [], "label": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        latents = autoencoder.encode_video(batch["video"].to(device))
        for key, value in (("content", latents.content), ("z_x", latents.z_x), ("z_y", latents.z_y)):
            parts[key].append(value.cpu())
        parts["label"].append(torch.as_tensor(batch["label"]).long())
    return LatentClips(*(torch.cat(parts[k]) for k in ("content", "z_x", "z_y", "label")))


def _latents(batch: dict, autoencoder: CMDAutoencoder | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(content, z_x, z_y)`` from a cached batch, or by encoding its videos with the frozen autoencoder."""
    if "content" in batch:
        return batch["content"], batch["z_x"], batch["z_y"]
    if autoencoder is None:
        raise ValueError("this batch holds videos, not latents: pass the frozen autoencoder")
    with torch.no_grad():
        latents = autoencoder.eval().encode_video(batch["video"])
    return latents.content, latents.z_x, latents.z_y


def _labels(batch: dict, cfg: CMDConfig) -> torch.Tensor | None:
    if cfg.num_classes is None:
        return None
    labels = torch.as_tensor(batch["label"]).long()
    # Unlabelled clips (label -1) train the null class.
    return torch.where(labels < 0, torch.full_like(labels, cfg.num_classes), labels)


def ae_loss(model: nn.Module, batch: dict, *, codec: ImageLatentCodec | None = None) -> torch.Tensor:
    """The l2 reconstruction loss of section 3.2, in the space the autoencoder works in."""
    x = batch["video"] if codec is None else codec.encode(batch["video"])  # b C L H W
    reconstruction, _ = model(x)
    return (reconstruction - x).pow(2).mean()


def content_loss(
    model: nn.Module,
    batch: dict,
    generator: torch.Generator | None = None,
    *,
    cfg: CMDConfig,
    autoencoder: CMDAutoencoder | None = None,
) -> torch.Tensor:
    """Eq. 7: ``||eps - eps_theta_I(x_bar_t, c, t)||^2`` on (normalised) content frames, with condition
    dropout; the target is the one ``cfg.diffusion`` names (the noise as in eq. 7, or the velocity)."""
    content, _, _ = _latents(batch, autoencoder)
    labels = _labels(batch, cfg)
    drop = draw_drop(content.shape[0], cfg.cond_dropout, generator, content.device)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, labels=labels, drop=drop)

    x0 = unwrap_model(model).normalizer.normalize(content)  # b C H W, centred and scaled
    return diffusion_loss(model_fn, x0, cfg.diffusion, generator=generator)


def motion_loss(
    model: nn.Module,
    batch: dict,
    generator: torch.Generator | None = None,
    *,
    cfg: CMDConfig,
    autoencoder: CMDAutoencoder | None = None,
) -> torch.Tensor:
    """Eq. 8: ``||eps - eps_theta_M(z_t, c, x_bar, t)||^2`` on normalised packed motion latents; the
    target is the one ``cfg.diffusion`` names (the noise as in eq. 8, or the velocity)."""
    content, z_x, z_y = _latents(batch, autoencoder)
    z0 = unwrap_model(model).normalizer.normalize(pack_motion(z_x, z_y))  # b D L (h + w)
    labels = _labels(batch, cfg)
    drop = draw_drop(content.shape[0], cfg.cond_dropout, generator, content.device)

    def model_fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(z_t, t, content, labels=labels, drop=drop)

    return diffusion_loss(model_fn, z0, cfg.diffusion, generator=generator)


# --------------------------------------------------------------------------- samples during training


def _held_out(dataset: Dataset, k: int) -> torch.Tensor:
    return torch.stack([dataset[len(dataset) - 1 - i]["video"] for i in range(k)])  # k c L H W


def _class_labels(cfg: CMDConfig, k: int) -> torch.Tensor | None:
    """Every class when there are at most 10, else the first ``k``."""
    if cfg.num_classes is None:
        return None
    return torch.arange(cfg.num_classes if cfg.num_classes <= 10 else k)


def make_sample_fn(
    stage: str,
    cfg: CMDConfig,
    dataset: Dataset,
    *,
    codec: ImageLatentCodec | None,
    autoencoder: CMDAutoencoder | None,
    num_samples: int = 4,
    sample_steps: int | None = None,
    guidance: float = 4.0,
    seed: int = 0,
):
    """``sample_fn(ema_model, step, out_dir)`` writing what the stage has learned:
    ``ae``: held-out clips over their reconstructions; ``content``: content frames per class
    (guided DDIM); ``motion``: held-out clips over the videos decoded from motion sampled for
    their encoded content frames and labels (Table 4a's "motion prediction")."""
    clips = _held_out(dataset, num_samples)

    def sample_fn(model: nn.Module, step: int, out_dir: Path) -> list[Path]:
        model = unwrap_model(model)
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        if stage == "ae":
            x = clips.to(device) if codec is None else codec.encode(clips.to(device))
            recon = model(x)[0]
            pixels = recon if codec is None else codec.decode(recon)
            both = torch.cat([clips, pixels.cpu()])
            return write_samples(
                both.clamp(-1, 1),
                out_dir,
                stem=f"step{step:06d}_ae",
                fps=8.0,
                captions=["real"] * len(clips) + ["reconstruction"] * len(clips),
            )
        labels = _class_labels(cfg, num_samples)
        if stage == "content":
            frames = sample_content(
                model,
                cfg,
                labels=labels,
                batch=None if labels is not None else num_samples,
                steps=sample_steps or 50,
                guidance=guidance,
                generator=generator,
            )
            pixels = frames if codec is None else codec.decode(frames[:, :, None])[:, :, 0]
            grid = rearrange(pixels.cpu().clamp(-1, 1), "b c h w -> c b h w")
            return [save_frame_grid(out_dir / f"step{step:06d}_content_grid.png", grid)]
        latents = autoencoder.encode_video(clips.to(device))
        clip_labels = torch.tensor([dataset[len(dataset) - 1 - i]["label"] for i in range(len(clips))])
        labels = None if cfg.num_classes is None else clip_labels.clamp_min(0)
        z = sample_motion(model, latents.content, labels=labels, steps=sample_steps or 100, generator=generator)
        video = autoencoder.decode_motion(latents.content, z.to(device))
        pixels = autoencoder.to_pixels(video).cpu().clamp(-1, 1)
        both = torch.cat([clips, pixels])
        return write_samples(
            both,
            out_dir,
            stem=f"step{step:06d}_motion",
            fps=8.0,
            captions=["real"] * len(clips) + ["motion sampled for the real content frame"] * len(clips),
        )

    return sample_fn


# --------------------------------------------------------------------------- main


def _content_model(diffusers_content: str | Path | None, cfg: CMDConfig) -> tuple[nn.Module, dict]:
    if not diffusers_content:
        return build_native_content_model(cfg), {"kind": cfg.content_model}
    import diffusers

    from .diffusers_adapter import from_diffusers

    root = Path(diffusers_content)
    for sub in ("", "transformer", "unet"):
        if (root / sub / "config.json").is_file():
            folder = root / sub
            break
    else:
        raise FileNotFoundError(f"no config.json in {root} (or its transformer/ or unet/ sub-folder)")
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    model = from_diffusers(getattr(diffusers, name).from_pretrained(str(folder)), num_classes=cfg.num_classes)
    if model.in_channels != cfg.channels:
        raise ValueError(f"the diffusers model takes {model.in_channels} channels, the config has {cfg.channels}")
    return model, model.config_record()


@in_process_group
def run(
    cfg: CMDConfig | None,
    train_cfg: TrainConfig,
    *,
    stage: str,
    ae: str | Path | None = None,
    image_ae: str | Path | None = None,
    diffusers_content: str | Path | None = None,
    data: str | Path | None = None,
    num_videos: int = 2048,
    max_shapes: int = SHAPES["max_shapes"],
    no_cache: bool = False,
    num_samples: int = 4,
    sample_steps: int | None = None,
    guidance: float = 4.0,
    preset: str | None = None,
    resume: bool | str | Path = False,
    info: DistInfo | None = None,
) -> TrainState:
    """Train one CMD stage: config -> data -> model -> :func:`~reference_models.common.trainer.train`.

    ``cfg``: the model config; stages ``content`` and ``motion`` take ``None`` for the config of the
    autoencoder ``ae`` (a run directory, checkpoint or ``save_pretrained`` directory), or one that agrees
    with it. ``train_cfg``: steps, batch, learning rate, output directory, seed, device.
    ``image_ae`` (stage ``ae``): a diffusers ``AutoencoderKL`` directory to work on its latents;
    ``diffusers_content`` (stage ``content``): a pretrained diffusers model to fine-tune. Data: moving
    shapes (``num_videos``, ``max_shapes``) or the video folder ``data``; ``no_cache`` encodes every
    batch instead of caching latents. ``num_samples``/``sample_steps``/``guidance``: the samples
    written during training. ``preset`` is only recorded in the checkpoint. ``resume``: as
    :func:`~reference_models.common.trainer.train`. ``info``: the process group (``None``: this call
    sets one up). Prints what it builds and a summary; returns the final ``TrainState``.
    """
    assert info is not None  # in_process_group
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    say = print if info.is_main else (lambda *a, **k: None)
    start = time.perf_counter()
    seed = train_cfg.seed
    autoencoder: CMDAutoencoder | None = None
    if stage == "ae":
        if cfg is None:
            raise ValueError("stage 'ae' needs a CMDConfig")
        codec = load_image_codec(image_ae, info.device)
    else:
        if not ae:
            raise ValueError(f"--stage {stage} needs --ae: the trained autoencoder (run directory or checkpoint)")
        autoencoder, _ = load_autoencoder(ae, device=info.device)
        autoencoder.requires_grad_(False)
        codec = autoencoder.image_codec
        cfg = autoencoder.cfg if cfg is None else cfg
        check_compatible(autoencoder.cfg, cfg, "autoencoder", f"{stage} config")
    factor = codec_factor(codec, cfg.channels)
    dataset = make_dataset(cfg, factor, data=data, num_videos=num_videos, max_shapes=max_shapes, seed=seed)
    classes = _num_classes(dataset)
    if cfg.num_classes is not None and classes and classes != cfg.num_classes:
        cfg = dataclasses.replace(cfg, num_classes=classes)  # as many classes as the data has
    torch.manual_seed(seed)  # the same initial weights on every rank (DDP also broadcasts them)
    record: dict[str, Any] = {}
    if stage == "ae":
        model: nn.Module = CMDAutoencoder(cfg)

        def loss_fn(m: nn.Module, batch: dict) -> torch.Tensor:
            return ae_loss(m, batch, codec=codec)
    else:
        train_data = dataset if no_cache else encode_clips(autoencoder, dataset, device=info.device)
        # The first clips (the same on every rank) fit the target's normaliser; a resume reloads it.
        first = (
            train_data
            if not no_cache
            else encode_clips(
                autoencoder, torch.utils.data.Subset(dataset, range(min(512, len(dataset)))), device=info.device
            )
        )
        if stage == "content":
            model, record = _content_model(diffusers_content, cfg)
            target = first.content[:512]
            stage_loss = content_loss
        else:
            model = MotionDiT(cfg)
            target = pack_motion(first.z_x[:512], first.z_y[:512])
            stage_loss = motion_loss
        norm = model.normalizer.fit(target.to(next(model.parameters()).device))
        say(
            f"{stage} target normalised: shift {[round(v, 3) for v in norm.shift.tolist()]}, "
            f"scale {float(norm.scale):.3f}, bound {float(norm.bound):.2f}"
        )

        def loss_fn(m: nn.Module, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
            return stage_loss(m, batch, generator, cfg=cfg, autoencoder=autoencoder)

    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(
        f"CMD stage {stage!r}: {type(model).__name__} {params / 1e6:.2f} M trainable parameters; clips of "
        f"{cfg.frames} frames {cfg.channels}x{cfg.height}x{cfg.width}"
        f"{f' (image latents, 1/{factor})' if factor > 1 else ''}; {len(dataset)} clips; device {info.device}, "
        f"{info.world_size} process(es)"
    )
    sample_fn = make_sample_fn(
        stage,
        cfg,
        dataset,
        codec=codec,
        autoencoder=autoencoder,
        num_samples=num_samples,
        sample_steps=sample_steps,
        guidance=guidance,
        seed=seed,
    )
    config_dict = {
        f"cmd_{stage}": cfg.to_dict(),
        "stage": stage,
        "preset": preset if stage == "ae" else None,
        "image_autoencoder": image_ae if stage == "ae" else None,
        "ae_checkpoint": None if stage == "ae" else str(ae),
        "data": {"dir": data, "num_clips": len(dataset)},
    }
    if stage == "content":
        config_dict["content_model"] = record
    if stage != "ae" and autoencoder is not None:
        # The codec of the autoencoder run, so a sampler can find it from any of the three checkpoints.
        config_dict["image_autoencoder"] = (read_checkpoint_config(ae)[1].get("model") or {}).get("image_autoencoder")
    train_data = dataset if stage == "ae" else train_data

    def preflight(m: nn.Module, item: dict) -> None:
        if "video" in item:
            unwrap_model(autoencoder or m).check_input(
                (codec.encode(item["video"][None].to(info.device)) if codec is not None else item["video"]).shape
            )

    state = train(
        train_cfg,
        model,
        loss_fn,
        train_data,
        sample_fn=sample_fn,
        config_dict=config_dict,
        resume=resume,
        dist_info=info,
        preflight=preflight,
    )
    for line in run_summary(state, time.perf_counter() - start):
        say(line)
    return state


def main(argv: Sequence[str] | argparse.Namespace | None = None) -> TrainState:
    """Train the stage the flags name (``--help``); returns the final ``TrainState``. Runs under ``torchrun``."""
    args = parse_cli_args(build_parser, argv)
    with distributed_cli(args.device) as (info, _):
        stage = args.stage
        train_cfg = train_config_from_args(args, out_dir=args.out or f"runs/cmd/{stage}")
        if stage == "ae":
            cfg: CMDConfig | None = build_config(args)
        elif args.ae:
            # The autoencoder's config (read from its JSON, no tensors), with --set and the DiT flags.
            cfg = build_config(args, CMDConfig.from_dict(read_checkpoint_config(args.ae)[1]["model"]["cmd_ae"]))
        else:
            cfg = None  # run() names the missing --ae
        return run(
            cfg,
            train_cfg,
            stage=stage,
            ae=args.ae,
            image_ae=args.image_ae,
            diffusers_content=args.diffusers_content,
            data=args.data,
            num_videos=args.num_videos,
            max_shapes=args.max_shapes,
            no_cache=args.no_cache,
            num_samples=args.num_samples,
            sample_steps=args.sample_steps,
            guidance=args.guidance,
            preset=args.preset,
            resume=args.resume,
            info=info,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
