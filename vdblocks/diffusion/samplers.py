"""Reverse-process samplers: DDPM ancestral sampling and DDIM, as one-step functions and full loops.

Both samplers take a denoiser ``model_fn(x_t (b, ...), t (b,) int64) -> (b, ...)`` whose output is
the noise (``prediction_type="epsilon"``, DDPM), the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t)
x_0`` (``"v_prediction"``, Salimans & Ho 2022) or ``x_0`` itself (``"sample"``), and walk a
decreasing sequence of integer timesteps ``tau_S > ... > tau_1`` (the full chain ``T-1 .. 0`` or a
strided sub-sequence, see :func:`make_timesteps`). The loops :func:`sample_ddpm` and
:func:`sample_ddim` read the schedule, the prediction type and the clipping from a
:class:`~vdblocks.diffusion.DiffusionSpec`; the one-step functions take the
:class:`~vdblocks.diffusion.NoiseSchedule` and those settings as arguments. They agree with diffusers'
``DDPMScheduler`` / ``DDIMScheduler`` (same ``prediction_type``, no thresholding) given the same
noise, with two documented differences: ``clip_sample`` defaults to False here (clipping ``x_0`` to
``[-1, 1]`` is wrong for latent diffusion, which PVDM and CMD are; pixel models may turn it on), and
DDIM steps to the *next timestep of the sequence* where diffusers always steps ``T // S`` back. The
two coincide for ``"leading"`` spacing (diffusers' default); for ``"trailing"``/``"linspace"`` with
``T`` not a multiple of ``S`` ours is the DDIM paper's sub-sequence ``tau`` (DDIM section 4.2).

Coefficients are computed in float64 from the schedule's tables and only the products with the
sample round to the sample's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

import torch

from .forward import ModelFn, _randn
from .schedules import NoiseSchedule, PredictionType, check_prediction_type
from .spec import DiffusionSpec, check_spec

__all__ = [
    "SamplerStep",
    "split_prediction",
    "make_timesteps",
    "ddpm_step",
    "ddim_step",
    "sample_ddpm",
    "sample_ddim",
]

Spacing = Literal["leading", "trailing", "linspace"]
Variance = Literal["fixed_small", "fixed_large"]
# callback(step_index, t, x_prev, pred_x0), called after each step
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class SamplerStep(NamedTuple):
    """One reverse step's result: the sample at the previous timestep and the ``x_0`` estimate."""

    x_prev: torch.Tensor
    pred_x0: torch.Tensor


def _check_int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` must be an int in ``[lo, hi]``."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {name} to be an int in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"expected {name} to be an int in [{lo}, {hi}], got {value}")
    return value


def make_timesteps(
    num_train_steps: int, steps: int, spacing: Spacing = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """The ``steps`` sampling timesteps, decreasing, as int64 ``(steps,)``; diffusers' ``set_timesteps``.

    ``"leading"``: ``[0, r, 2r, ...] + steps_offset`` with ``r = T // steps``;
    ``"trailing"``: ``round(T - i * T / steps) - 1``, so the first step is at ``T - 1`` (diffusers
    sometimes appends an extra, invalid step at ``-1``; we always return exactly ``steps``);
    ``"linspace"``: ``round(linspace(0, T - 1, steps))``. (Table 2 of Lin et al. 2024, "Common
    Diffusion Noise Schedules and Sample Steps are Flawed", compares them.)
    """
    num_train_steps = _check_int(num_train_steps, "num_train_steps", 1, 2**62)
    steps = _check_int(steps, "steps", 1, num_train_steps)
    steps_offset = _check_int(steps_offset, "steps_offset", 0, num_train_steps - 1)
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset applies to spacing='leading' only, got spacing={spacing!r}")
    if spacing == "leading":
        ratio = num_train_steps // steps
        values = [i * ratio + steps_offset for i in range(steps)]
    elif spacing == "trailing":
        # numpy's arange arithmetic (start + i * delta) so rounding agrees with diffusers; numpy's
        # length rule sometimes adds a step at timestep -1 there (e.g. T=1000, 61 steps), we never do
        delta = (num_train_steps - num_train_steps / steps) - num_train_steps
        values = [round(num_train_steps + i * delta) - 1 for i in range(steps)]
    elif spacing == "linspace":
        # numpy's linspace arithmetic (i * step, exact end point) so rounding ties agree with diffusers
        step = (num_train_steps - 1) / (steps - 1) if steps > 1 else 0.0
        values = [round(i * step) for i in range(steps)]
        if steps > 1:
            values[-1] = num_train_steps - 1
    else:
        raise ValueError(f"expected spacing in ('leading', 'trailing', 'linspace'), got {spacing!r}")
    values = sorted(values, reverse=True)
    if values[0] >= num_train_steps:
        raise ValueError(
            f"steps_offset={steps_offset} puts the first timestep at {values[0]}, beyond T-1={num_train_steps - 1}"
        )
    return torch.tensor(values, dtype=torch.int64)


def _check_step_inputs(schedule: NoiseSchedule, eps: torch.Tensor, x_t: torch.Tensor, t: object, t_prev: object):
    for value, name in ((x_t, "x_t"), (eps, "model output")):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"expected {name} to be a torch.Tensor of shape (b, ...), got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"expected {name} of shape (b, ...) to have a floating-point dtype, got {value.dtype}")
    if eps.shape != x_t.shape:
        raise ValueError(
            f"expected the model output of shape {tuple(x_t.shape)} like x_t (b, ...), got {tuple(eps.shape)}"
        )
    t = _check_int(t, "t", 0, schedule.num_steps - 1)
    t_prev = _check_int(t_prev, "t_prev", -1, t - 1)
    return t, t_prev


def _step_noise(x_t: torch.Tensor, noise: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    if noise is not None and generator is not None:
        raise ValueError("pass either noise or generator, not both")
    if noise is None:
        return _randn(tuple(x_t.shape), generator, x_t.device, x_t.dtype)
    if not isinstance(noise, torch.Tensor) or noise.shape != x_t.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"expected noise of shape {tuple(x_t.shape)} like x_t (b, ...), got {got}")
    return noise


def split_prediction(
    output: torch.Tensor, x_t: torch.Tensor, abar_t: float, prediction_type: PredictionType = "epsilon"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_0, eps)`` implied by a denoiser's ``output`` at noise level ``abar_t`` (a float).

    ``"epsilon"``: ``x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``; ``"v_prediction"``:
    ``x_0 = sqrt(abar) x_t - sqrt(1 - abar) v``, ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``;
    ``"sample"``: ``eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)``. An error of ``delta`` in
    ``eps`` costs ``delta sqrt((1 - abar) / abar)`` in ``x_0`` (156x at the last step of DDPM's
    linear schedule); in ``v`` it costs ``delta sqrt(1 - abar)``, which is why v-prediction behaves
    at low SNR where a small epsilon model does not.
    """
    check_prediction_type(prediction_type)
    s0, s1 = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    if prediction_type == "epsilon":
        return (x_t - s1 * output) / s0, output
    if prediction_type == "v_prediction":
        return s0 * x_t - s1 * output, s1 * x_t + s0 * output
    return output, (x_t - s0 * output) / s1


def _pred_x0_eps(
    x_t: torch.Tensor,
    output: torch.Tensor,
    abar_t: float,
    prediction_type: PredictionType,
    clip_sample: bool,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    pred_x0, eps = split_prediction(output, x_t, abar_t, prediction_type)  # b ...
    if clip_sample:
        pred_x0 = pred_x0.clamp(-clip_range, clip_range)
    return pred_x0, eps


def ddpm_step(
    schedule: NoiseSchedule,
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    *,
    t_prev: int | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    variance: Variance = "fixed_small",
    clip_sample: bool = False,
    clip_range: float = 1.0,
    prediction_type: PredictionType = "epsilon",
) -> SamplerStep:
    """One ancestral step ``x_t -> x_{t_prev}`` from the posterior ``q(x_{t_prev} | x_t, x_0)`` (DDPM eq. 6-7).

    ``x_0`` is estimated from the model output ``eps`` (noise, velocity or ``x_0`` as
    ``prediction_type`` says, :func:`split_prediction`; optionally clipped to ``[-clip_range, clip_range]``); with
    ``abar' = abar_{t_prev}`` (1 when ``t_prev = -1``), ``alpha = abar_t / abar'`` and ``beta = 1 - alpha``:
    ``mean = sqrt(abar') beta / (1 - abar_t) x_0 + sqrt(alpha) (1 - abar') / (1 - abar_t) x_t`` and
    variance ``(1 - abar') / (1 - abar_t) beta`` (``"fixed_small"``, the posterior's, diffusers'
    default) or ``beta`` (``"fixed_large"``). ``t_prev`` defaults to ``t - 1``; a larger stride
    is the strided DDPM that diffusers runs after ``set_timesteps``.

    Noise is added only when ``t_prev >= 0``: ``noise`` as given, else drawn from ``generator``.
    Shapes: ``eps, x_t (b, ...)``, ``t`` an int shared by the batch -> ``SamplerStep`` of ``(b, ...)``.
    """
    t, t_prev = _check_step_inputs(schedule, eps, x_t, t, t - 1 if t_prev is None else t_prev)
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"expected variance in ('fixed_small', 'fixed_large'), got {variance!r}")
    abar_t = schedule.alphas_cumprod[t].item()
    abar_prev = schedule.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
    alpha = abar_t / abar_prev
    beta = 1.0 - alpha
    pred_x0, _ = _pred_x0_eps(x_t, eps, abar_t, prediction_type, clip_sample, clip_range)
    coef_x0 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)
    coef_xt = math.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar_t)
    x_prev = coef_x0 * pred_x0 + coef_xt * x_t  # b ...
    if t_prev >= 0:
        # diffusers clamps the posterior variance away from 0 before the square root; so do we
        var = max((1.0 - abar_prev) / (1.0 - abar_t) * beta, 1e-20) if variance == "fixed_small" else beta
        x_prev = x_prev + math.sqrt(var) * _step_noise(x_t, noise, generator)
    elif noise is not None and generator is not None:
        raise ValueError("pass either noise or generator, not both")
    return SamplerStep(x_prev, pred_x0)


def ddim_step(
    schedule: NoiseSchedule,
    eps: torch.Tensor,
    t: int,
    t_prev: int,
    x_t: torch.Tensor,
    eta: float = 0.0,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_sample: bool = False,
    clip_range: float = 1.0,
    set_alpha_to_one: bool = True,
    prediction_type: PredictionType = "epsilon",
) -> SamplerStep:
    """One DDIM step ``x_t -> x_{t_prev}`` (DDIM eq. 12 with sigma of eq. 16).

    ``x_prev = sqrt(abar') x_0 + sqrt(1 - abar' - sigma^2) eps + sigma z`` with
    ``sigma = eta sqrt((1 - abar') / (1 - abar_t)) sqrt(1 - abar_t / abar')``: ``eta = 0`` is the
    deterministic DDIM, ``eta = 1`` the DDPM posterior. ``t_prev = -1`` marks the last step, where
    ``abar' = 1`` (``set_alpha_to_one``, diffusers' default) or ``abar_0``. ``z`` is ``noise`` or
    drawn from ``generator``, and only when ``eta > 0``. The model output ``eps`` is read as
    ``prediction_type`` says (:func:`split_prediction`); as in diffusers, clipping changes ``x_0``
    only, not the noise estimate of the direction term.

    Shapes: ``eps, x_t (b, ...)``, ``t > t_prev`` ints shared by the batch -> ``SamplerStep``.
    """
    t, t_prev = _check_step_inputs(schedule, eps, x_t, t, t_prev)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        # above 1 the direction term's square root goes negative
        raise ValueError(f"expected eta in [0, 1], got {eta!r}")
    abar_t = schedule.alphas_cumprod[t].item()
    if t_prev >= 0:
        abar_prev = schedule.alphas_cumprod[t_prev].item()
    else:
        abar_prev = 1.0 if set_alpha_to_one else schedule.alphas_cumprod[0].item()
    pred_x0, eps = _pred_x0_eps(x_t, eps, abar_t, prediction_type, clip_sample, clip_range)
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
    # 1 - abar' - sigma^2 >= 0 for eta <= 1 in exact arithmetic; max() absorbs rounding at eta = 1
    direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
    x_prev = math.sqrt(abar_prev) * pred_x0 + direction * eps  # b ...
    if eta > 0:
        x_prev = x_prev + sigma * _step_noise(x_t, noise, generator)
    elif noise is not None and generator is not None:
        raise ValueError("pass either noise or generator, not both")
    return SamplerStep(x_prev, pred_x0)


def _wrap_progress(iterable: Iterable, progress: bool | Callable[[Iterable], Iterable], total: int) -> Iterable:
    if progress is False or progress is None:
        return iterable
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError as error:
            raise ImportError("progress=True needs tqdm (pip install tqdm); or pass a callable") from error
        return tqdm(iterable, total=total)
    if callable(progress):
        return progress(iterable)
    raise TypeError(f"expected progress to be a bool or a callable wrapping an iterable, got {progress!r}")


@torch.no_grad()
def _sample_loop(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    step: Callable[[torch.Tensor, int, int, torch.Tensor], SamplerStep],
    *,
    generator: torch.Generator | None,
    x_T: torch.Tensor | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
    known: torch.Tensor | None,
    known_mask: torch.Tensor | None,
    progress: bool | Callable[[Iterable], Iterable],
    callback: Callback | None,
) -> torch.Tensor:
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in shape):
        raise ValueError(f"expected shape to be a tuple (b, ...) of positive ints, got {shape}")
    if x_T is None:
        x = _randn(shape, generator, device, dtype)
    else:
        if not isinstance(x_T, torch.Tensor) or tuple(x_T.shape) != shape:
            got = tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__
            raise ValueError(f"expected x_T of shape {shape}, got {got}")
        x = x_T
    if (known is None) != (known_mask is None):
        raise ValueError("pass known and known_mask together (or neither)")
    if known is not None:
        try:
            known = torch.broadcast_to(known, shape).to(device=x.device, dtype=x.dtype)
            known_mask = torch.broadcast_to(known_mask, shape).to(device=x.device, dtype=x.dtype)
        except RuntimeError:
            raise ValueError(
                f"expected known and known_mask broadcastable to {shape}, "
                f"got {tuple(known.shape)} and {tuple(known_mask.shape)}"
            ) from None

    b = shape[0]
    ts = [int(t) for t in timesteps]
    for i in _wrap_progress(range(len(ts)), progress, len(ts)):
        t = ts[i]
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        if known is not None:
            # replacement conditioning: the known entries are re-noised to the current level
            noised = schedule.q_sample(known, t, _randn(shape, generator, x.device, x.dtype))
            x = known_mask * noised + (1.0 - known_mask) * x  # b ...
        out = model_fn(x, torch.full((b,), t, dtype=torch.long, device=x.device))  # b ...
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"expected model_fn(x_t, t) to return a prediction of shape {shape} like x_t, got {got}")
        x, pred_x0 = step(out, t, t_prev, x)
        if callback is not None:
            callback(i, t, x, pred_x0)
    if known is not None:
        x = known_mask * known + (1.0 - known_mask) * x
    return x


_LOOP_DOC = """

    ``spec``: the :class:`~vdblocks.diffusion.DiffusionSpec` the model was trained with: its
    schedule, its ``prediction_type`` (how ``model_fn``'s output is read) and ``clip_sample``
    (clip the ``x_0`` estimate to ``[-clip_range, clip_range]``).
    ``model_fn(x_t (b, ...), t (b,) int64) -> (b, ...)``; wrap a conditional model with
    :func:`vdblocks.diffusion.guidance.cfg_model_fn` for classifier-free guidance.
    ``x_T`` (default: standard normal of ``shape``, ``dtype`` on ``device``, drawn from ``generator``
    first; the step noises follow from the same generator) starts the chain. Runs under
    ``torch.no_grad()``; call the step function in your own loop to differentiate through sampling.

    In-painting hook for conditioning frames: with ``known`` (the clean values) and ``known_mask``
    (1 = known, 0 = generate; both broadcastable to ``shape``, e.g. a mask ``(b, 1, t, 1, 1)`` over
    the frames of ``(b, c, t, h, w)``), before each model call the known entries of ``x_t`` are
    replaced by ``q_sample(known, t, fresh noise)`` and the result's known entries are ``known``
    exactly ("replacement" conditioning, Ho et al. 2022 "Video Diffusion Models" section 3.1: it
    keeps the known part on the forward-process marginal, so an unconditional model can be used;
    the paper finds its reconstruction guidance more coherent, replacement is the simple baseline).
    Masks are meant to be 0/1; fractional values blend linearly.

    ``progress``: True shows a tqdm bar (tqdm needed), a callable wraps the step iterable (e.g.
    ``functools.partial(tqdm, leave=False)``). ``callback(i, t, x_prev, pred_x0)`` runs after each step.
    Returns the sample ``(b, ...)``.
"""


def sample_ddpm(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    spec: DiffusionSpec,
    *,
    steps: int | None = None,
    spacing: Spacing = "leading",
    steps_offset: int = 0,
    variance: Variance = "fixed_small",
    clip_range: float = 1.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    progress: bool | Callable[[Iterable], Iterable] = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDPM ancestral sampling (DDPM Algorithm 2) with :func:`ddpm_step`; ``steps=None`` runs all ``T``.

    A ``steps < T`` strides the chain over :func:`make_timesteps` (diffusers' DDPM ``set_timesteps``).
    """
    schedule = check_spec(spec).noise_schedule()
    timesteps = make_timesteps(
        schedule.num_steps, schedule.num_steps if steps is None else steps, spacing, steps_offset
    )

    def step(eps, t, t_prev, x):
        return ddpm_step(
            schedule,
            eps,
            t,
            x,
            t_prev=t_prev,
            generator=generator,
            variance=variance,
            clip_sample=spec.clip_sample,
            clip_range=clip_range,
            prediction_type=spec.prediction_type,
        )

    return _sample_loop(
        model_fn,
        shape,
        schedule,
        timesteps,
        step,
        generator=generator,
        x_T=x_T,
        device=device,
        dtype=dtype,
        known=known,
        known_mask=known_mask,
        progress=progress,
        callback=callback,
    )


def sample_ddim(
    model_fn: ModelFn,
    shape: tuple[int, ...],
    spec: DiffusionSpec,
    steps: int = 50,
    eta: float = 0.0,
    *,
    spacing: Spacing = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    clip_range: float = 1.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
    progress: bool | Callable[[Iterable], Iterable] = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM sampling (DDIM section 4) over ``steps`` timesteps from :func:`make_timesteps` with :func:`ddim_step`."""
    schedule = check_spec(spec).noise_schedule()
    timesteps = make_timesteps(schedule.num_steps, steps, spacing, steps_offset)

    def step(eps, t, t_prev, x):
        return ddim_step(
            schedule,
            eps,
            t,
            t_prev,
            x,
            eta,
            generator=generator,
            clip_sample=spec.clip_sample,
            clip_range=clip_range,
            set_alpha_to_one=set_alpha_to_one,
            prediction_type=spec.prediction_type,
        )

    return _sample_loop(
        model_fn,
        shape,
        schedule,
        timesteps,
        step,
        generator=generator,
        x_T=x_T,
        device=device,
        dtype=dtype,
        known=known,
        known_mask=known_mask,
        progress=progress,
        callback=callback,
    )


for _fn in (sample_ddpm, sample_ddim):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ += _LOOP_DOC
del _fn
