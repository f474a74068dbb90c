"""Sampling EVDM: prediction, interpolation and generation with one model.

A model trained with eq. 7's masks does three tasks, chosen at sampling time by which conditions it
is given (section 3.1):

* :func:`predict`: past frames only, ``eps_theta(x_t | t, p, 0)``;
* :func:`interpolate`: past and future frames, ``eps_theta(x_t | t, p, f)``;
* :func:`generate`: neither, ``eps_theta(x_t | t, 0, 0)``;

(the paper's noise model; a model whose ``cfg.diffusion`` predicts the velocity is conditioned alike)

all three through :func:`sample_frames`, which also takes per-sample masks so that one batch can
mix tasks. Long videos are made autoregressively (MCVD's protocol, EVDM Table 4: KTH "predicting 30
frames based on 10"): :func:`predict_long` samples ``T`` frames at a time and feeds the last ``P``
known or generated frames back as the next past. The reverse process is DDPM ancestral sampling
(the paper's "100 steps" / "1000 steps" rows; ``steps < 1000`` strides the chain) or DDIM, both
from :mod:`vdblocks.diffusion`, under the config's :class:`~vdblocks.diffusion.DiffusionSpec`
(``cfg.diffusion``: MCVD's schedule, the prediction type, the ``x_0`` estimate clipped to
``[-1, 1]`` in pixel space).

The command line is ``python -m reference_models.evdm.sample`` (``sample.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from reference_models.common.checkpoint import Checkpoint, load_model_from_checkpoint
from reference_models.common.ema import unwrap_model
from reference_models.common.metrics import trajectory_metrics
from reference_models.common.video_io import write_samples
from vdblocks.diffusion import DiffusionSpec, check_spec, sample_ddim, sample_ddpm
from vdblocks.validation import check_positive_int, check_tensor

from .config import EVDMConfig
from .model import EVDMUNet

__all__ = [
    "SAMPLERS",
    "TASKS",
    "sample_frames",
    "predict",
    "interpolate",
    "generate",
    "predict_long",
    "task_frames",
    "TaskResult",
    "run_task",
    "write_task",
    "baseline_predictions",
    "load_model",
]

SAMPLERS = ("ddpm", "ddim")
TASKS = ("predict", "interpolate", "generate")
Sampler = Literal["ddpm", "ddim"]
Task = Literal["predict", "interpolate", "generate"]


def _config(model: nn.Module) -> EVDMConfig:
    cfg = getattr(unwrap_model(model), "cfg", None)
    if cfg is None:
        raise TypeError(f"expected an EVDMUNet (a model with a .cfg EVDMConfig), got {type(model).__name__}")
    return cfg


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        return p.dtype
    return torch.float32


def _check_condition(x: torch.Tensor | None, name: str, cfg: EVDMConfig, count: int) -> None:
    if x is None:
        return
    if count == 0:
        raise ValueError(f"this model was built with num_{name}=0 and takes no {name} frames")
    check_tensor(x, name, "(b, c, t, h, w)", sizes={"c": cfg.channels, "t": count})


@torch.no_grad()
def sample_frames(
    model: nn.Module,
    batch: int | None = None,
    *,
    past: torch.Tensor | None = None,
    future: torch.Tensor | None = None,
    past_mask: torch.Tensor | None = None,
    future_mask: torch.Tensor | None = None,
    height: int | None = None,
    width: int | None = None,
    sampler: Sampler = "ddpm",
    steps: int = 100,
    eta: float = 0.0,
    diffusion: DiffusionSpec | None = None,
    generator: torch.Generator | None = None,
    progress: bool | Callable[[Iterable], Iterable] = False,
) -> torch.Tensor:
    """Sample the ``T`` current frames ``(b, c, T, h, w)`` given whatever conditions are passed.

    ``past (b, c, P, h, w)`` / ``future (b, c, F, h, w)``: conditioning frames, ``None`` for none
    (the model sees zeros, the masked input of eq. 7). ``past_mask`` / ``future_mask`` ``(b,)``
    (1 keeps, 0 drops) choose the task per sample, so one batch can mix prediction, interpolation
    and generation. ``batch`` is needed only when no frames are given; ``height``/``width`` then
    default to ``cfg.image_size``. ``sampler``: ``"ddpm"`` (ancestral, ``steps`` strided over the
    spec's ``num_train_steps`` chain) or ``"ddim"`` (``eta``). ``diffusion``: the spec to sample
    with (schedule, what the model predicts, whether the ``x_0`` estimate is clipped to ``[-1, 1]``);
    default the model's ``cfg.diffusion``. Noise comes from ``generator`` (on any device). The model
    runs in eval mode and is put back as it was.
    """
    cfg = _config(model)
    _check_condition(past, "past", cfg, cfg.num_past)
    _check_condition(future, "future", cfg, cfg.num_future)
    given = [x for x in (past, future) if x is not None]
    if given:
        b, h, w = given[0].shape[0], given[0].shape[-2], given[0].shape[-1]
        if batch is not None and batch != b:
            raise ValueError(f"expected batch={batch} to match the conditioning frames' b={b}")
    else:
        if batch is None:
            raise ValueError("expected batch (the number of videos) when no past or future frames are given")
        b = check_positive_int(batch, "batch")
        h, w = height or cfg.image_size, width or cfg.image_size
    if sampler not in SAMPLERS:
        raise ValueError(f"expected sampler in {SAMPLERS}, got {sampler!r}")
    spec = cfg.diffusion if diffusion is None else check_spec(diffusion, "diffusion")
    device, dtype = _device(model), _dtype(model)
    conditions = {
        "past": None if past is None else past.to(device, dtype),
        "future": None if future is None else future.to(device, dtype),
        "past_mask": None if past_mask is None else past_mask.to(device),
        "future_mask": None if future_mask is None else future_mask.to(device),
    }

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x_t, t, **conditions)  # b c T h w: the spec's prediction given (t, m_p p, m_f f)

    shape = (b, cfg.channels, cfg.num_frames, h, w)
    was_training = model.training
    model.eval()
    try:
        if sampler == "ddpm":
            return sample_ddpm(
                model_fn, shape, spec, steps=steps, generator=generator, device=device, dtype=dtype, progress=progress
            )
        return sample_ddim(
            model_fn, shape, spec, steps, eta, generator=generator, device=device, dtype=dtype, progress=progress
        )
    finally:
        model.train(was_training)


def predict(model: nn.Module, past: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Video prediction: the ``T`` frames after ``past (b, c, P, h, w)`` -> ``(b, c, T, h, w)``.

    ``kwargs`` go to :func:`sample_frames` (sampler, steps, generator ...).
    """
    check_tensor(past, "past", "(b, c, t, h, w)")
    return sample_frames(model, past=past, **kwargs)


def interpolate(model: nn.Module, past: torch.Tensor, future: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Video interpolation: the ``T`` frames between ``past (b, c, P, h, w)`` and
    ``future (b, c, F, h, w)`` -> ``(b, c, T, h, w)``; ``kwargs`` as for :func:`sample_frames`."""
    check_tensor(past, "past", "(b, c, t, h, w)")
    check_tensor(future, "future", "(b, c, t, h, w)")
    if past.shape[0] != future.shape[0] or past.shape[-2:] != future.shape[-2:]:
        raise ValueError(
            f"expected past (b, c, P, h, w) and future (b, c, F, h, w) with the same b, h, w, got "
            f"{tuple(past.shape)} and {tuple(future.shape)}"
        )
    return sample_frames(model, past=past, future=future, **kwargs)


def predict_long(model: nn.Module, past: torch.Tensor, total_frames: int, **kwargs: Any) -> torch.Tensor:
    """Autoregressive prediction of ``total_frames`` frames after ``past`` -> ``(b, c, total_frames, h, w)``.

    ``past (b, c, t, h, w)`` with ``t >= P`` known frames. Chunks of ``T`` frames are sampled one
    after the other, each conditioned on the last ``P`` frames of everything known so far (given
    and generated), as MCVD does for KTH's 10 -> 30 frames; the last chunk is cut to length. The
    frames returned are the predicted ones only (prepend ``past`` for the whole video). Chunks draw
    their noise one after the other from ``kwargs["generator"]``.
    """
    cfg = _config(model)
    check_positive_int(total_frames, "total_frames")
    if cfg.num_past == 0:
        raise ValueError("predict_long needs a model with past frames (num_past > 0)")
    check_tensor(past, "past", "(b, c, t, h, w)", sizes={"c": cfg.channels})
    if past.shape[2] < cfg.num_past:
        raise ValueError(f"expected past of shape (b, c, t, h, w) with t >= P={cfg.num_past}, got {tuple(past.shape)}")
    known = past[:, :, -cfg.num_past :]
    chunks: list[torch.Tensor] = []
    for _ in range(math.ceil(total_frames / cfg.num_frames)):
        new = predict(model, known, **kwargs).to(past.dtype)  # b c T h w
        chunks.append(new)
        known = torch.cat([known, new.to(known.device)], dim=2)[:, :, -cfg.num_past :]  # b c P h w
    return torch.cat(chunks, dim=2)[:, :, :total_frames]


def generate(model: nn.Module, batch: int, *, num_frames: int | None = None, **kwargs: Any) -> torch.Tensor:
    """Unconditional generation of ``batch`` videos ``(b, c, num_frames, h, w)`` (default ``T`` frames).

    More than ``T`` frames: the first ``T`` are generated without conditions, the rest predicted
    from them with :func:`predict_long` (MCVD's unconditional long videos), which needs
    ``T >= P`` so that the first chunk can serve as a past. ``kwargs`` as for :func:`sample_frames`.
    """
    cfg = _config(model)
    num_frames = cfg.num_frames if num_frames is None else check_positive_int(num_frames, "num_frames")
    first = sample_frames(model, batch, **kwargs)  # b c T h w
    if num_frames <= cfg.num_frames:
        return first[:, :, :num_frames]
    if cfg.num_past == 0 or cfg.num_frames < cfg.num_past:
        raise ValueError(
            f"generating {num_frames} > T={cfg.num_frames} frames continues from the first T as the past, "
            f"which needs 0 < P <= T; this model has P={cfg.num_past}"
        )
    return torch.cat([first, predict_long(model, first, num_frames - cfg.num_frames, **kwargs)], dim=2)


# ----------------------------------------------------------------------------- tasks with real clips


def task_frames(cfg: EVDMConfig, task: Task, num_frames: int | None = None) -> int:
    """Real frames a task reads from a clip: ``P + L`` to predict ``L`` frames (default ``T``),
    ``P + T + F`` to interpolate, 0 to generate."""
    if task == "predict":
        return cfg.num_past + (num_frames or cfg.num_frames)
    if task == "interpolate":
        return cfg.num_past + cfg.num_frames + cfg.num_future
    if task == "generate":
        return 0
    raise ValueError(f"expected task in {TASKS}, got {task!r}")


@dataclass
class TaskResult:
    """One task's output: ``videos (b, c, t, h, w)`` (conditions and sampled frames of the first
    trajectory, in time order), the matching ``real`` clips (None when generating), and
    ``metrics``: best-of-k means over the videos of the sampled frames (``mse``, ``psnr``,
    ``ssim``; empty when generating)."""

    videos: torch.Tensor
    real: torch.Tensor | None
    metrics: dict[str, float]


def run_task(
    model: nn.Module,
    task: Task,
    *,
    clips: torch.Tensor | None = None,
    batch: int | None = None,
    num_frames: int | None = None,
    trajectories: int = 1,
    **kwargs: Any,
) -> TaskResult:
    """Run ``task`` on real ``clips (b, c, t, h, w)`` (``t >= task_frames(...)``) or, to generate,
    on ``batch`` videos; ``trajectories`` samples per clip for best-of-k metrics (the paper's
    protocol: 10 or 100). ``num_frames``: frames to predict or generate (autoregressive past ``T``).
    ``kwargs`` go to :func:`sample_frames`.
    """
    cfg = _config(model)
    check_positive_int(trajectories, "trajectories")
    if task == "generate":
        b = batch if batch is not None else (clips.shape[0] if clips is not None else None)
        if b is None:
            raise ValueError("expected batch (or clips) to generate")
        videos = generate(model, b, num_frames=num_frames, **kwargs)
        return TaskResult(videos=videos.cpu(), real=None, metrics={})
    if clips is None:
        raise ValueError(f"task {task!r} needs real clips (b, c, t, h, w) to condition on")
    need = task_frames(cfg, task, num_frames)
    check_tensor(clips, "clips", "(b, c, t, h, w)", sizes={"c": cfg.channels})
    if clips.shape[2] < need:
        raise ValueError(
            f"expected clips of shape (b, c, t, h, w) with t >= {need} for {task!r}, got {tuple(clips.shape)}"
        )
    real = clips[:, :, :need].cpu()
    P, T = cfg.num_past, cfg.num_frames
    past = real[:, :, :P]
    samples = []
    for _ in range(trajectories):
        if task == "predict":
            samples.append(predict_long(model, past, need - P, **kwargs).cpu())
        elif task == "interpolate":
            samples.append(interpolate(model, past, real[:, :, P + T :], **kwargs).cpu())
        else:
            raise ValueError(f"expected task in {TASKS}, got {task!r}")
    target = real[:, :, P : P + samples[0].shape[2]]
    scores = trajectory_metrics(torch.stack(samples), target)
    metrics = {name: float(value.mean()) for name, value in scores.items()}
    future = real[:, :, P + T :] if task == "interpolate" else None
    for name, guess in baseline_predictions(past, target.shape[2], future=future).items():
        for metric, value in trajectory_metrics(guess[None], target).items():
            metrics[f"{name}_{metric}"] = float(value.mean())
    videos = torch.cat([past, samples[0], real[:, :, P + samples[0].shape[2] :]], dim=2)
    return TaskResult(videos=videos, real=real, metrics=metrics)


def baseline_predictions(
    past: torch.Tensor, frames: int, *, future: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Trivial guesses of ``frames`` unknown frames that a model must beat, each ``(b, c, frames, h, w)``:

    * ``copy_last``: the last known past frame, repeated;
    * ``mean_frame``: the mean of the known frames (past, and future when given), repeated;
    * ``blend`` (interpolation only, with ``future``): the linear cross-fade from the last past
      frame to the first future frame.

    ``past (b, c, p, h, w)`` and ``future (b, c, f, h, w)`` are the conditioning frames."""
    check_tensor(past, "past", "(b, c, t, h, w)")
    check_positive_int(frames, "frames")
    known = past if future is None else torch.cat([past, future], dim=2)
    shape = (-1, -1, frames, -1, -1)
    guesses = {
        "copy_last": past[:, :, -1:].expand(*shape),
        "mean_frame": known.mean(dim=2, keepdim=True).expand(*shape),
    }
    if future is not None:
        check_tensor(future, "future", "(b, c, t, h, w)")
        w = torch.arange(1, frames + 1, dtype=past.dtype, device=past.device) / (frames + 1)  # t
        w = w[None, None, :, None, None]
        guesses["blend"] = (1 - w) * past[:, :, -1:] + w * future[:, :, :1]
    return guesses


def write_task(
    result: TaskResult, out_dir: str | Path, stem: str, *, fps: float, extra: Mapping[str, Any] | None = None
) -> list[Path]:
    """Write ``{stem}_XX.mp4`` + ``{stem}_grid.png`` (samples), ``{stem}_real_*`` (real clips) and
    ``{stem}_metrics.json`` (metrics, ``num_clips`` and ``extra``) when there is something to compare with."""
    paths = write_samples(result.videos, out_dir, stem=stem, fps=fps)
    if result.real is not None:
        paths += write_samples(result.real, out_dir, stem=f"{stem}_real", fps=fps)
        path = Path(out_dir) / f"{stem}_metrics.json"
        record = {**result.metrics, "num_clips": int(result.videos.shape[0]), **dict(extra or {})}
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- checkpoints and CLI


def load_model(
    checkpoint: str | Path, *, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[EVDMUNet, Checkpoint]:
    """Rebuild the :class:`EVDMUNet` a training run saved and load its EMA (or trained) weights.

    ``checkpoint``: a manifest, a checkpoint directory or a training output directory (the config
    is the ``{"model": {"evdm": EVDMConfig.to_dict()}}`` entry ``train.py`` stores; only the model
    or EMA tensors are read), or a ``save_pretrained`` directory of an :class:`EVDMUNet`.
    """
    return load_model_from_checkpoint(
        checkpoint,
        "evdm",
        lambda d: EVDMUNet(EVDMConfig.from_dict(d)),
        device=device,
        use_ema=use_ema,
        pretrained=EVDMUNet,
    )
