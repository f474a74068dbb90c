"""Sampling CMD: a content frame, then motion conditioned on it, then the decoder (section 3.2, B.4).

``p(x_bar, z | c) = p(z | x_bar, c) p(x_bar | c)``: :func:`sample_videos` draws the content frame
with the content model (DDIM, 50 steps, classifier-free guidance ``w = 4`` on UCF-101), then the
motion latents with the motion model given that frame (DDIM, 100 steps), and decodes both with the
autoencoder (through the frozen image autoencoder when CMD runs on its latents). DDIM uses
``eta = 0`` for both (B.4).

Guidance scale. CMD follows DiT, whose ``cfg_scale`` is the ``s`` of
``eps = eps(null) + s (eps(c) - eps(null))``, which is also :func:`vdblocks.diffusion.cfg_model_fn`'s
``scale``; so the paper's ``w = 4.0`` is ``guidance=4.0`` here. The paper gives a scale for the
content model only; the motion model defaults to ``1.0`` (plain conditional) and takes its own.

The command line is ``python -m reference_models.cmd.sample`` (``sample.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from reference_models.common.checkpoint import (
    Checkpoint,
    load_model_from_checkpoint,
    read_checkpoint_config,
)
from reference_models.common.video_io import save_frame_grid, write_samples
from vdblocks.diffusion import cfg_model_fn, sample_ddim

from .autoencoder import CMDAutoencoder, ImageLatentCodec, unpack_motion
from .config import CMDConfig
from .content_model import ContentDiT, ContentUNet, build_native_content_model
from .motion_model import MotionDiT

__all__ = [
    "PAPER_CONTENT_STEPS",
    "PAPER_GUIDANCE",
    "PAPER_MOTION_STEPS",
    "CMDSample",
    "build_content_model",
    "check_compatible",
    "conditional_model_fn",
    "load_autoencoder",
    "load_content_model",
    "load_image_codec",
    "load_motion_model",
    "sample_content",
    "sample_motion",
    "sample_videos",
    "write_videos",
]

PAPER_CONTENT_STEPS = 50  # B.4
PAPER_MOTION_STEPS = 100  # B.4
PAPER_GUIDANCE = 4.0  # B.4, UCF-101 content model


def _conditions(b: int, labels: torch.Tensor | None, text: torch.Tensor | None, device: torch.device) -> dict:
    cond = {}
    if labels is not None:
        cond["labels"] = torch.as_tensor(labels, dtype=torch.long).to(device)
    if text is not None:
        cond["text"] = text.to(device)
    return cond


def conditional_model_fn(
    model: Callable[..., torch.Tensor],
    *,
    labels: torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    guidance: float = 1.0,
    extra: dict[str, torch.Tensor] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The samplers' ``model_fn(x_t, t) -> prediction`` (noise or velocity, as the model's
    ``cfg.diffusion`` says) for ``model(x, t, [content,] labels=, text=, drop=)``.

    ``guidance == 1`` (or no condition at all) calls the model once with the conditions;
    otherwise :func:`vdblocks.diffusion.cfg_model_fn` runs ``[cond; null]`` in one batch, the null half
    with ``drop = True``. ``extra`` holds tensors passed unchanged to both halves (the motion model's
    ``content``).
    """
    extra = dict(extra or {})

    def call(x: torch.Tensor, t: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        content = kw.pop("content", None)
        return model(x, t, **kw) if content is None else model(x, t, content, **kw)

    if (labels is None and text is None) or guidance == 1.0:

        def plain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            kw = {**_conditions(x.shape[0], labels, text, x.device), **extra}
            return call(x, t, **kw)

        return plain

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        cond = {**_conditions(b, labels, text, x.device), **extra}
        cond["drop"] = torch.zeros(b, dtype=torch.bool, device=x.device)
        null = {**cond, "drop": torch.ones(b, dtype=torch.bool, device=x.device)}
        return cfg_model_fn(call, cond, null, guidance)(x, t)

    return guided


def _clip_range(normalizer: nn.Module | None) -> float:
    """The range DDIM clips ``x_0`` to (when the spec clips): the fitted normaliser's bound, else 1."""
    if normalizer is not None and torch.isfinite(normalizer.bound):
        return float(normalizer.bound)
    return 1.0


def _batch(labels: torch.Tensor | None, text: torch.Tensor | None, batch: int | None) -> int:
    sizes = {len(v) for v in (labels, text) if v is not None} | ({batch} if batch is not None else set())
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"expected labels, text and batch of one non-zero size b, got sizes {sorted(sizes)}")
    return sizes.pop()


def _in_eval(*modules: nn.Module):
    class _Ctx:
        def __enter__(self):
            self.modes = [(m, m.training) for m in modules]
            for m in modules:
                m.eval()

        def __exit__(self, *exc):
            for m, mode in self.modes:
                m.train(mode)

    return _Ctx()


@torch.no_grad()
def sample_content(
    model: nn.Module,
    cfg: CMDConfig,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int = PAPER_CONTENT_STEPS,
    guidance: float = PAPER_GUIDANCE,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Content frames ``(b, C, H, W)`` from ``p(x_bar | c)`` (eq. 7) by guided DDIM under ``cfg.diffusion``.

    The chain runs in the model's normalised space (``model.normalizer``, when it has one) and the
    result is mapped back. When the spec clips (``cfg.diffusion.clip_sample``: the pixel presets),
    DDIM's ``x_0`` estimate is clipped to the normaliser's ``bound`` when it was fitted, else to
    [-1, 1].
    """
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    b = _batch(labels, text, batch)
    shape = (b, cfg.channels, height or cfg.height, width or cfg.width)
    device = next(model.parameters()).device
    normalizer = getattr(model, "normalizer", None)
    with _in_eval(model):
        fn = conditional_model_fn(model, labels=labels, text=text, guidance=guidance)
        x = sample_ddim(
            fn,
            shape,
            cfg.diffusion,
            steps,
            generator=generator,
            device=device,
            clip_range=_clip_range(normalizer),
            progress=progress,
        )
    return x if normalizer is None else normalizer.denormalize(x)  # b C H W


@torch.no_grad()
def sample_motion(
    model: MotionDiT,
    content: torch.Tensor,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    frames: int | None = None,
    steps: int = PAPER_MOTION_STEPS,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Packed motion latents ``z (b, D, L, H' + W')`` from ``p(z | x_bar, c)`` (eq. 8), unscaled.

    ``content (b, C, H, W)``: the content frames to move (generated or encoded). The DDIM chain runs
    under ``model.cfg.diffusion`` on ``model.normalizer.normalize(z)``, with its ``x_0`` estimate
    always clipped (whatever the spec's ``clip_sample``, which is the content model's) to the
    normaliser's ``bound`` (the largest value seen in training, when fitted; else 1); the result is
    mapped back.
    """
    cfg = model.cfg
    b, _, height, width = content.shape
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
    _batch(labels, text, b)
    frames = frames or cfg.frames
    cfg.check_size(frames, height, width)
    shape = (b, cfg.motion_channels, frames, height // cfg.ae_patch + width // cfg.ae_patch)
    device = next(model.parameters()).device
    spec = cfg.diffusion.replace(clip_sample=True)  # normalised motion latents are bounded
    with _in_eval(model):
        fn = conditional_model_fn(
            model, labels=labels, text=text, guidance=guidance, extra={"content": content.to(device)}
        )
        z = sample_ddim(
            fn,
            shape,
            spec,
            steps,
            generator=generator,
            device=device,
            clip_range=_clip_range(model.normalizer),
            progress=progress,
        )
    return model.normalizer.denormalize(z)  # b D L (h + w)


class CMDSample(NamedTuple):
    """What :func:`sample_videos` drew: ``video (b, c, L, H_px, W_px)`` (pixels), ``content
    (b, C, H, W)`` and packed motion latents ``z (b, D, L, H' + W')``."""

    video: torch.Tensor
    content: torch.Tensor
    z: torch.Tensor


@torch.no_grad()
def sample_videos(
    autoencoder: CMDAutoencoder,
    content_model: nn.Module,
    motion_model: MotionDiT,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    text: torch.Tensor | None = None,
    batch: int | None = None,
    frames: int | None = None,
    content_steps: int = PAPER_CONTENT_STEPS,
    motion_steps: int = PAPER_MOTION_STEPS,
    guidance: float = PAPER_GUIDANCE,
    motion_guidance: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> CMDSample:
    """The full CMD sampler: content frame, then motion given it, then decode (section 3.2)."""
    cfg = motion_model.cfg
    check_compatible(autoencoder.cfg, cfg, "autoencoder", "motion model")
    content = sample_content(
        content_model,
        cfg,
        labels=labels,
        text=text,
        batch=batch,
        steps=content_steps,
        guidance=guidance,
        generator=generator,
        progress=progress,
    )  # b C H W
    z = sample_motion(
        motion_model,
        content,
        labels=labels,
        text=text,
        frames=frames,
        steps=motion_steps,
        guidance=motion_guidance,
        generator=generator,
        progress=progress,
    )  # b D L (h + w)
    with _in_eval(autoencoder):
        ae_device = next(autoencoder.parameters()).device
        z_x, z_y = unpack_motion(z.to(ae_device), cfg.height // cfg.ae_patch)
        video = autoencoder.decode_video(content.to(ae_device), z_x, z_y)  # b c L H W
    return CMDSample(video, content, z)


# --------------------------------------------------------------------------- checkpoints


def check_compatible(a: CMDConfig, b: CMDConfig, a_name: str, b_name: str) -> None:
    """Raise ``ValueError`` unless two parts agree on the shapes they exchange."""
    fields = ("channels", "frames", "height", "width", "ae_patch", "motion_channels")
    diff = {f: (getattr(a, f), getattr(b, f)) for f in fields if getattr(a, f) != getattr(b, f)}
    if diff:
        raise ValueError(f"the {a_name} and the {b_name} were trained for different shapes: {diff}")


def load_image_codec(path: str | None, device: str | torch.device = "cpu") -> ImageLatentCodec | None:
    """A frozen diffusers ``AutoencoderKL`` from a local directory (``subfolder="vae"`` tried too), or None."""
    if not path:
        return None
    from diffusers import AutoencoderKL

    root = Path(path)
    kwargs = {"subfolder": "vae"} if (root / "vae").is_dir() else {}
    return ImageLatentCodec(AutoencoderKL.from_pretrained(str(root), **kwargs)).to(device)


def load_autoencoder(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True, with_codec: bool = True
) -> tuple[CMDAutoencoder, Checkpoint]:
    """The autoencoder a ``--stage ae`` run saved (with its image codec when it used one).

    ``checkpoint``: the run (only the model or EMA tensors are read) or a ``save_pretrained``
    directory of a :class:`CMDAutoencoder` (whose exported run record names the codec, if any).
    """
    model, ckpt = load_model_from_checkpoint(
        checkpoint,
        "cmd_ae",
        lambda d: CMDAutoencoder(CMDConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=CMDAutoencoder,
    )
    if with_codec:
        model.set_image_codec(load_image_codec((ckpt.config.get("model") or {}).get("image_autoencoder"), device))
    return model, ckpt


def build_content_model(cfg: CMDConfig, record: dict | None) -> nn.Module:
    """The :class:`ContentDiT` / :class:`ContentUNet` ``cfg`` names or, for a record of the diffusers adapter,
    the rebuilt adapter."""
    if record and record.get("kind") == "diffusers":
        from .diffusers_adapter import build_from_record

        return build_from_record(record)
    return build_native_content_model(cfg)


def load_content_model(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[nn.Module, Checkpoint, CMDConfig]:
    """The content model a ``--stage content`` run saved, and the config it was trained with.

    ``checkpoint``: the run (only the model or EMA tensors are read) or a ``save_pretrained``
    directory of a :class:`ContentDiT` or :class:`ContentUNet` (the diffusers adapter has none).
    """
    _, config = read_checkpoint_config(checkpoint)
    record = (config.get("model") or {}).get("content_model")
    model, ckpt = load_model_from_checkpoint(
        checkpoint,
        "cmd_content",
        lambda d: build_content_model(CMDConfig.from_dict(d), record),
        device=device,
        use_ema=use_ema,
        pretrained=(ContentDiT, ContentUNet),
    )
    return model, ckpt, CMDConfig.from_dict(ckpt.config["model"]["cmd_content"])


def load_motion_model(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[MotionDiT, Checkpoint]:
    """The motion model a ``--stage motion`` run saved (its fitted normaliser included); ``checkpoint``
    may also be a ``save_pretrained`` directory of a :class:`MotionDiT`."""
    return load_model_from_checkpoint(
        checkpoint,
        "cmd_motion",
        lambda d: MotionDiT(CMDConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=MotionDiT,
    )


# --------------------------------------------------------------------------- CLI


def write_videos(
    result: CMDSample, out: str | Path, *, labels: torch.Tensor | None = None, fps: float = 8.0
) -> list[Path]:
    """Write :func:`sample_videos`' output: ``<out>/cmd_00.mp4 ...``, ``<out>/cmd_grid.png`` (one row per
    video), ``<out>/cmd_captions.txt`` (``label <y>`` per video, or ``sample <i>`` without ``labels``)
    and, for 1- or 3-channel content frames, ``<out>/cmd_content_grid.png``. Returns the files written."""
    out = Path(out)
    b = result.video.shape[0]
    names = [f"label {int(y)}" for y in labels] if labels is not None else [f"sample {i}" for i in range(b)]
    paths = write_samples(result.video.float().cpu(), out, stem="cmd", fps=fps, captions=names)
    if result.content.shape[1] in (1, 3):
        frames = rearrange(result.content.float().cpu(), "b c h w -> c b h w")  # one row of content frames
        paths.append(save_frame_grid(out / "cmd_content_grid.png", frames))
    return paths
