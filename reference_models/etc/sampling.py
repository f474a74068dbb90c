"""Sampling ETC: DDIM with classifier-free guidance at a chosen frame rate, loading a trained
system, and the sample prompts and shapes probe a training run uses.

ETC's sampler (appendix E.1): DDIM with 50 steps and classifier-free guidance of strength 7.0,
at a predetermined FPS (section 4.2: "the FPS value for inference predetermined"; 30 in the
paper's tests). The conditional and unconditional predictions come from one batched U-Net call
(``vdblocks.diffusion.cfg_model_fn``): ``eps~ = eps(x, null) + s (eps(x, c) - eps(x, null))``, so
``s = 1`` is the conditional model; a velocity model is guided by the same formula on ``v``, which
is the same guidance since ``eps`` is affine in ``v`` with coefficients shared by both branches. The frame rate chooses what kind of clip comes out (eq. 6):
1-60 a video at that rate, 0 a group of different images of one label, 120 a still.

The command line is ``python -m reference_models.etc.sample`` (``sample.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import einops
import torch
from torch import nn

from reference_models.common.checkpoint import Checkpoint, load_model_from_checkpoint
from reference_models.common.data import MovingShapes
from reference_models.common.ema import unwrap_model
from reference_models.common.video_io import save_frame_grid, write_samples
from vdblocks.diffusion import DiffusionSpec, cfg_model_fn, check_spec, sample_ddim

from .conditioning import ETCConditioner
from .config import ETCConfig
from .data import CAPTION_IMAGE_FPS, LABEL_IMAGE_FPS, TripleDataset
from .model import ETCSystem

__all__ = [
    "guided_model_fn",
    "playback_fps",
    "sample",
    "load_system",
    "SAMPLE_FPS",
    "SamplePrompt",
    "sample_prompts",
    "make_sample_fn",
    "PROBE_FPS",
    "probe_captions",
    "run_probe",
]

# Videos at FPS 0 (unrelated images) or 120 (a still) have no real rate; files play them at this.
_DISPLAY_FPS = 4.0


# What the sample videos show: two video rates and a still (section 4.2, eq. 6).
SAMPLE_FPS: tuple[float, ...] = (8.0, 30.0, CAPTION_IMAGE_FPS)


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


def _label_source(dataset: TripleDataset) -> Any:
    return dataset.sources[1] if dataset.ratios[1] > 0 else None


class SamplePrompt(NamedTuple):
    """One sample clip: its ``caption`` (may be empty), ``label`` (-1: none), ``fps`` and the
    ``name`` written beside the video."""

    caption: str
    label: int
    fps: float
    name: str


def _captions(dataset: TripleDataset, k: int) -> list[tuple[str, str]]:
    """The first ``k`` distinct captions of the video data (or of the caption images), each with
    the caption its still should get: the same text, without motion words for moving shapes."""
    videos, _, images = dataset.sources
    if isinstance(videos, MovingShapes) and dataset.ratios[0] > 0:
        color = videos.channels == 3
        pairs = (
            (
                " and ".join(s.phrase(color=color, motion=True) for s in videos.shapes(j)),
                " and ".join(s.phrase(color=color, motion=False) for s in videos.shapes(j)),
            )
            for j in range(len(videos))
        )
    elif dataset.ratios[0] > 0 and isinstance(getattr(videos, "captions", None), list):
        pairs = ((c, c) for c in videos.captions)
    elif dataset.ratios[2] > 0:
        pairs = ((str(images[j]["caption"]),) * 2 for j in range(len(images)))
    else:
        pairs = iter(())
    found: dict[str, str] = {}
    for caption, still in pairs:
        if caption.strip() and caption not in found:
            found[caption] = still
        if len(found) == k:
            break
    return list(found.items())


def _class_names(source: Any) -> list[str]:
    names = getattr(source, "class_names", None) or getattr(source, "classes", None) or []
    return [str(n) for n in names]


def sample_prompts(dataset: TripleDataset, cfg: ETCConfig, k: int) -> list[SamplePrompt]:
    """What the training run samples (section 4.2, eq. 6): ``k`` captions of the data as videos at
    8 and 30 FPS and as stills at 120 FPS, and ``k`` labels as label-image groups at FPS 0 (by label
    when the model has a label embedding, by class name when it only reads text)."""
    prompts: list[SamplePrompt] = []
    if cfg.text_vocab_size is not None:
        pairs = _captions(dataset, k)
        prompts += [SamplePrompt(c, -1, f, c) for f in SAMPLE_FPS if f != CAPTION_IMAGE_FPS for c, _ in pairs]
        if CAPTION_IMAGE_FPS in SAMPLE_FPS:
            prompts += [SamplePrompt(still, -1, CAPTION_IMAGE_FPS, still) for _, still in pairs]
    source = _label_source(dataset)
    if source is not None:
        names = _class_names(source)
        for lab in range(min(k, source.num_classes)):
            name = names[lab] if lab < len(names) else str(lab)
            if cfg.num_classes is not None:
                prompts.append(SamplePrompt("", lab, LABEL_IMAGE_FPS, f"label {lab} ({name})"))
            elif cfg.text_vocab_size is not None:
                prompts.append(SamplePrompt(name, -1, LABEL_IMAGE_FPS, name))
    return prompts


def make_sample_fn(cfg: ETCConfig, prompts: Sequence[SamplePrompt], *, steps: int, guidance_scale: float, seed: int):
    """``sample_fn(ema_system, step, out_dir)`` for the trainer: all ``prompts`` in one guided DDIM
    batch (``steps`` steps, ``guidance_scale``, noise from ``seed``), then one ``write_samples``
    call per frame rate: ``step<N>_fps<F>_<i>.mp4``, ``..._grid.png`` and ``..._captions.txt``."""
    prompts = list(prompts)

    def sample_fn(system: nn.Module, step: int, out_dir: Path) -> list[Path]:
        if not prompts:
            return []
        system = unwrap_model(system)
        text = [p.caption for p in prompts] if cfg.text_vocab_size is not None else None
        labels = torch.tensor([p.label for p in prompts]) if cfg.num_classes is not None else None
        fps = [p.fps for p in prompts]
        generator = torch.Generator().manual_seed(seed)
        videos = sample(
            system.unet,
            system.conditioner,
            captions=text,
            labels=labels,
            fps=fps,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
        )  # b c t h w
        paths: list[Path] = []
        for rate in dict.fromkeys(fps):
            rows = [i for i, f in enumerate(fps) if f == rate]
            paths += write_samples(
                videos[rows],
                out_dir,
                stem=f"step{step:06d}_fps{rate:g}",
                fps=playback_fps(rate),
                captions=[prompts[i].name for i in rows],
            )
        return paths

    return sample_fn


PROBE_FPS = SAMPLE_FPS[0]  # the probe scores clips at the first sample rate (8 fps)
_PROBE_SEED = 7_919  # held-out scenes: not the training scenes (seed --seed), not the sample grid


def probe_captions(dataset: TripleDataset, k: int, *, exclude: Sequence[str] = ()) -> list[str]:
    """``k`` one-object captions of the built-in data's distribution that the run did not pick for
    its sample grid (``exclude``): the captions of scenes drawn with a seed of their own, in order,
    without repeats. Raises ``ValueError`` when the video data is not the built-in moving shapes."""
    videos = dataset.sources[0]
    if not isinstance(videos, MovingShapes):
        raise ValueError("the shapes probe scores the built-in moving shapes only (no --data-videos)")
    held_out = MovingShapes(
        max(4 * k, 64),
        frames=videos.frames,
        height=videos.height,
        width=videos.width,
        channels=videos.channels,
        max_shapes=1,
        seed=_PROBE_SEED,
        kinds=videos.kinds,
        colors=videos.colors,
        directions=videos.directions,
        size_range=videos.size_range,
        speed_range=videos.speed_range,
    )
    skip, found = set(exclude), []
    for j in range(len(held_out)):
        caption = held_out.caption_of(j)
        if caption not in skip:
            skip.add(caption)
            found.append(caption)
        if len(found) == k:
            break
    return found


def run_probe(
    system: nn.Module,
    dataset: TripleDataset,
    cfg: ETCConfig,
    *,
    clips: int,
    steps: int,
    guidance_scale: float,
    seed: int,
    exclude: Sequence[str] = (),
    grid: str | Path | None = None,
) -> tuple[Any, list[str]]:
    """Sample ``clips`` held-out captions (:func:`probe_captions`) at ``PROBE_FPS`` with guided DDIM
    and score them with the :class:`~reference_models.common.probe.ShapesProbe` of the data's
    geometry: ``(ProbeResult, captions)``. ``grid``: also save the first 16 clips there as a PNG
    frame grid (4x nearest upscaling, one clip per row; captions beside it in ``.txt``)."""
    from reference_models.common.probe import ShapesProbe

    videos = dataset.sources[0]
    captions = probe_captions(dataset, clips, exclude=exclude)
    probe = ShapesProbe.for_dataset(videos, fps=PROBE_FPS)
    system = unwrap_model(system)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clips_out = sample(
            system.unet,
            system.conditioner,
            captions=captions,
            fps=PROBE_FPS,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
        )  # b c t h w
    clips_out = clips_out.float()
    if grid is not None:
        shown = einops.repeat(clips_out[:16], "b c t h w -> b c t (h u) (w v)", u=4, v=4)
        save_frame_grid(grid, shown)
        Path(grid).with_suffix(".txt").write_text("\n".join(captions[:16]) + "\n")
    return probe.evaluate(clips_out, captions, fps=PROBE_FPS), captions
