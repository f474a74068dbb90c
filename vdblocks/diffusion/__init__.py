"""Model-independent diffusion math: the diffusion spec, noise schedules, q_sample and losses, DDPM / DDIM, guidance."""

from .forward import DiffusionLossOutput, ModelFn, diffusion_loss, masked_mse, q_sample, sample_timesteps
from .guidance import Condition, cfg_model_fn, guided_eps
from .samplers import (
    SamplerStep,
    ddim_step,
    ddpm_step,
    make_timesteps,
    sample_ddim,
    sample_ddpm,
    split_prediction,
)
from .schedules import (
    PREDICTION_TYPES,
    SCHEDULE_NAMES,
    NoiseSchedule,
    PredictionType,
    check_prediction_type,
    cosine_betas,
    linear_betas,
    scaled_linear_betas,
)
from .spec import DiffusionSpec, check_spec

__all__ = [
    "Condition",
    "DiffusionLossOutput",
    "DiffusionSpec",
    "ModelFn",
    "NoiseSchedule",
    "PREDICTION_TYPES",
    "PredictionType",
    "SCHEDULE_NAMES",
    "SamplerStep",
    "cfg_model_fn",
    "check_prediction_type",
    "check_spec",
    "cosine_betas",
    "ddim_step",
    "ddpm_step",
    "diffusion_loss",
    "guided_eps",
    "linear_betas",
    "make_timesteps",
    "masked_mse",
    "q_sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_timesteps",
    "scaled_linear_betas",
    "split_prediction",
]
