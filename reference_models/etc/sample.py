"""Sampling ETC: DDIM with classifier-free guidance at a chosen frame rate, and the sampling CLI.

ETC's sampler (appendix E.1): DDIM with 50 steps and classifier-free guidance of strength 7.0,
at a predetermined FPS (section 4.2: "the FPS value for inference predetermined"; 30 in the
paper's tests). The conditional and unconditional predictions come from one batched U-Net call
(``vdblocks.diffusion.cfg_model_fn``): ``eps~ = eps(x, null) + s (eps(x, c) - eps(x, null))``, so
``s = 1`` is the conditional model; a velocity model is guided by the same formula on ``v``, which
is the same guidance since ``eps`` is affine in ``v`` with coefficients shared by both branches. The frame rate chooses what kind of clip comes out (eq. 6):
1-60 a video at that rate, 0 a group of different images of one label, 120 a still.

CLI (weights from a training checkpoint, EMA by default; the config from its JSON manifest)::

    python -m reference_models.etc.sample --checkpoint runs/etc --caption "a red circle moving left" \\
        --fps 8 --frames 8 --out samples/

writes ``<out>/fps<F>_00.mp4 ...`` (one video per caption and sample) and ``<out>/fps<F>_grid.png``
(one row of frames per video) for every ``--fps``. ``--checkpoint`` also takes a ``save_pretrained``
directory of an :class:`ETCSystem`; ``--export-pretrained DIR`` writes one (EMA weights) and exits::

    python -m reference_models.etc.sample --checkpoint runs/etc --export-pretrained pretrained/etc
    python -m reference_models.etc.sample --checkpoint pretrained/etc --caption "a red circle moving left"
"""

from __future__ import annotations

import argparse
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from reference_models.common.checkpoint import Checkpoint, load_model_from_checkpoint
from reference_models.common.cli import add_sampling_arguments, check_checkpoint_kind, fps_condition
from reference_models.common.distributed import resolve_device
from reference_models.common.pretrained import PretrainedMixin, export_pretrained
from reference_models.common.video_io import write_samples
from vdblocks.diffusion import DiffusionSpec, cfg_model_fn, check_spec, sample_ddim

from .conditioning import ETCConditioner
from .config import ETCConfig
from .model import ETCUNet

__all__ = [
    "ETCSystem",
    "guided_model_fn",
    "playback_fps",
    "sample",
    "load_system",
    "build_parser",
    "main",
]

# Videos at FPS 0 (unrelated images) or 120 (a still) have no real rate; files play them at this.
_DISPLAY_FPS = 4.0


class ETCSystem(nn.Module, PretrainedMixin):
    """The U-Net and its conditioner as one module: what the trainer optimises, averages (EMA)
    and checkpoints (parameters ``unet.*`` and ``conditioner.*``).

    ``forward(x (b, c, t, h, w), timesteps (b,), fps (b,), labels=None, captions=None,
    cond_dropout=0.0, generator=None) -> prediction (b, c, t, h, w)``: the context is built inside the
    forward, so under DDP the text encoder's gradients are synchronised with the U-Net's.
    ``cond_dropout`` replaces each item's context by the null context with that probability
    (classifier-free guidance training), drawing from ``generator``.

    ``save_pretrained`` / ``from_pretrained`` (kind ``"etc"``) save and load U-Net and conditioner
    together; a system built with an external ``text_encoder`` is loaded with
    ``ETCSystem.from_pretrained(path, text_encoder=...)`` (only its trainable projection is stored).
    """

    pretrained_kind = "etc"
    config_class = ETCConfig

    def __init__(self, cfg: ETCConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = ETCUNet(cfg)
        self.conditioner = ETCConditioner(cfg, text_encoder)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        fps: torch.Tensor,
        labels: torch.Tensor | None = None,
        captions: Sequence[str] | None = None,
        *,
        cond_dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        context = self.conditioner(labels=labels, captions=captions)  # b n d
        if cond_dropout > 0:
            null = self.conditioner.null_context(context.shape[0])  # b n d
            context = self.conditioner.drop(context, null, cond_dropout, generator)
        return self.unet(x, timesteps, fps, context)  # b c t h w


def guided_model_fn(
    model: Callable[..., torch.Tensor],
    context: torch.Tensor,
    null_context: torch.Tensor,
    fps: torch.Tensor,
    guidance_scale: float,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The samplers' ``model_fn(x_t (b, c, t, h, w), t (b,)) -> guided prediction``
    (noise or velocity, as the model predicts).

    ``model(x, timesteps, fps, context)`` is an ``ETCUNet`` (or anything with its forward, such as
    the diffusers adapter); ``context (b, n, d)``, ``null_context (b or 1, n, d)``, ``fps (b,)``.
    Each call runs the model once on ``2b`` clips: ``[x; x]`` with ``[context; null_context]`` and
    the same frame rates twice. At ``guidance_scale == 1`` the guided prediction is the conditional
    one (the null branch cancels), so each call runs the model on the ``b`` conditional clips only:
    half the work (the ``tiny`` preset samples at 1).
    """

    def conditional(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, fps: torch.Tensor) -> torch.Tensor:
        return model(x, t, fps, context)

    if guidance_scale == 1:
        return lambda x, t: model(x, t, fps, context)

    return cfg_model_fn(
        conditional, {"context": context, "fps": fps}, {"context": null_context, "fps": fps}, guidance_scale
    )


def playback_fps(fps: float) -> float:
    """The rate a sampled clip is written at: its own for 1-60, ``4`` for FPS 0 / 120 clips."""
    return float(fps) if 1 <= fps <= 60 else _DISPLAY_FPS


def _batch_size(captions: Sequence[str] | None, labels: Sequence[int] | torch.Tensor | None) -> int:
    if captions is None and labels is None:
        raise ValueError("expected captions (b strings) and/or labels (b,) to sample for")
    if isinstance(captions, str):
        raise TypeError("expected captions to be a list of str, got one str (wrap it in a list)")
    sizes = {len(v) for v in (captions, labels) if v is not None}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"expected captions and labels of one non-zero length b, got lengths {sorted(sizes)}")
    return sizes.pop()


def _fps_tensor(fps: float | Sequence[float] | torch.Tensor, b: int, max_fps: float) -> torch.Tensor:
    if isinstance(fps, numbers.Real) and not isinstance(fps, bool):
        fps = [float(fps)] * b
    fps = torch.as_tensor(fps, dtype=torch.float32).flatten()
    if fps.shape != (b,):
        raise ValueError(f"expected fps as one number or b={b} numbers, got {tuple(fps.shape)}")
    if not bool(((fps >= 0) & (fps <= max_fps)).all()):
        raise ValueError(f"expected fps in [0, {max_fps:g}] (0: label images, 120: a still), got {fps.tolist()}")
    return fps


@torch.no_grad()
def sample(
    model: nn.Module,
    conditioner: ETCConditioner,
    *,
    captions: Sequence[str] | None = None,
    labels: Sequence[int] | torch.Tensor | None = None,
    fps: float | Sequence[float] | torch.Tensor,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = 50,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    diffusion: DiffusionSpec | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample ``b`` clips ``(b, c, t, h, w)`` with DDIM and classifier-free guidance (appendix E.1).

    ``captions`` and/or ``labels`` (``b`` each; a label of ``-1`` or an empty caption is the null
    part) condition through ``conditioner``; ``fps`` is one rate for all or ``b`` rates
    (section 4.2: 1-60 videos, 0 label-image groups, 120 stills). ``frames``, ``height``, ``width``
    default to ``model.cfg``'s; any size ``model.check_input`` accepts works (the mixed embedding has
    no parameters). ``diffusion`` (the schedule, what the model outputs: the noise, the velocity or
    ``x_0``, and whether DDIM's ``x_0`` estimate is clipped to ``[-1, 1]``) defaults to
    ``model.cfg.diffusion``; ``guidance_scale`` to ``model.cfg.guidance_scale`` (the paper's 7.0; 1.0, no guidance, for ``tiny``), else 7.0. Noise
    comes from ``generator`` (on any device; the draws are moved). The model and conditioner run in
    eval mode and are put back as they were.
    """
    cfg = getattr(model, "cfg", None)
    b = _batch_size(captions, labels)
    frames = frames if frames is not None else getattr(cfg, "frames", None)
    height = height if height is not None else getattr(cfg, "height", None)
    width = width if width is not None else getattr(cfg, "width", None)
    channels = getattr(cfg, "in_channels", None)
    if None in (frames, height, width, channels):
        raise ValueError("expected frames, height and width, or a model with a .cfg that holds them")
    if diffusion is None:
        if cfg is None:
            raise ValueError("expected a diffusion spec, or a model with a .cfg holding one")
        diffusion = cfg.diffusion
    spec = check_spec(diffusion, "diffusion")
    shape = (b, channels, frames, height, width)
    if callable(getattr(model, "check_input", None)):
        model.check_input(shape)
    if guidance_scale is None:
        guidance_scale = float(getattr(cfg, "guidance_scale", 7.0))
    device = next(model.parameters()).device
    fps_t = _fps_tensor(fps, b, getattr(cfg, "max_fps", 120.0)).to(device)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long)

    modes = [(m, m.training) for m in (model, conditioner)]
    try:
        model.eval()
        conditioner.eval()
        context = conditioner(labels=labels, captions=None if captions is None else list(captions))  # b n d
        null = conditioner.null_context(b)  # b n d
        model_fn = guided_model_fn(model, context.to(device), null.to(device), fps_t, guidance_scale)
        return sample_ddim(
            model_fn, shape, spec, steps, eta, generator=generator, device=device, progress=progress
        )  # b c t h w
    finally:
        for module, mode in modes:
            module.train(mode)


def load_system(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[ETCSystem, Checkpoint]:
    """Rebuild the ``ETCSystem`` a training run saved and load its (EMA) weights.

    ``checkpoint`` is a manifest, a checkpoint directory or a training output directory (the
    config is the ``{"model": {"etc": ETCConfig.to_dict()}}`` entry ``train.py`` stores; only the
    model or EMA tensors are read), or a ``save_pretrained`` directory of an ``ETCSystem``.
    """
    return load_model_from_checkpoint(
        checkpoint,
        "etc",
        lambda d: ETCSystem(ETCConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=ETCSystem,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.etc.sample",
        description="Sample videos from an ETC checkpoint (DDIM + classifier-free guidance).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="manifest, checkpoint directory, training output directory or save_pretrained directory",
    )
    p.add_argument("--caption", action="append", default=[], help="a caption (repeat for several)")
    p.add_argument("--label", action="append", type=int, default=[], help="a class label (repeat for several)")
    p.add_argument(
        "--fps",
        action="append",
        type=fps_condition,
        default=[],
        help="frame rate (repeat for several): 1-60 video, 0 label-image group, 120 still (default 8)",
    )
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the training config's)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1, help="samples per caption/label")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (paper: 50)")
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model config's; paper: 7, tiny: 1)",
    )
    p.add_argument("--eta", type=float, default=0.0)
    add_sampling_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """The CLI: load, sample every caption/label at every ``--fps``, write .mp4 files and grids."""
    args = build_parser().parse_args(argv)
    try:
        check_checkpoint_kind(args.checkpoint, "etc", "an ETC")
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--checkpoint: {error}") from None
    if args.export_pretrained:
        path = export_pretrained(args.checkpoint, args.export_pretrained, load_system, use_ema=not args.no_ema)
        print(f"{args.checkpoint} -> {path}/ (config.json, model.safetensors)")
        return [path]
    device = resolve_device(args.device)
    system, ckpt = load_system(args.checkpoint, device=device, use_ema=not args.no_ema)
    max_fps = float(system.cfg.max_fps)
    beyond = [f for f in args.fps if f > max_fps]
    if beyond:
        raise SystemExit(
            f"--fps {beyond[0]:g}: this model takes rates in [0, {max_fps:g}] "
            "(0: label images, 1-60: video, 120: a still)"
        )
    captions, labels = list(args.caption), list(args.label)
    if not captions and not labels:
        stored = (ckpt.config or {}).get("model", {}).get("samples", {})
        captions = list(stored.get("captions", []))
        if not captions:
            raise SystemExit("give --caption or --label (the checkpoint stores no default captions)")
        print(f"no --caption/--label given; using the training run's sample captions: {captions}")
    prompts = [(c, -1) for c in captions] + [("", lab) for lab in labels]
    prompts = [p for p in prompts for _ in range(args.num_samples)]
    text = [c for c, _ in prompts]
    label_tensor = torch.tensor([lab for _, lab in prompts]) if labels else None
    use_text = system.conditioner.text_encoder is not None
    if captions and not use_text:
        raise SystemExit("this model has no text encoder; sample with --label")
    generator = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    written: list[Path] = []
    for fps in args.fps or [8.0]:
        videos = sample(
            system.unet,
            system.conditioner,
            captions=text if use_text else None,
            labels=label_tensor,
            fps=fps,
            frames=args.frames,
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance_scale=args.guidance_scale,
            eta=args.eta,
            generator=generator,
        )
        names = [c or f"label {lab}" for c, lab in prompts]
        written += write_samples(videos, out, stem=f"fps{fps:g}", fps=playback_fps(fps), captions=names)
    print(f"step {ckpt.step} of {ckpt.path}: wrote {len(written)} files to {out}/")
    for path in written:
        print(f"  {path}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
