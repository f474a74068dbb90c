"""EVDM (ACM MM 2023) and its MCVD baseline: 2D U-Nets over frames stacked in channels, trained once
for prediction, interpolation and generation (eqs. 6-7)."""

from reference_models.common.metrics import best_of_k, frechet_distance, fvd, psnr, ssim

from .config import DATASETS, PAPER_BATCH, PRESETS, VARIANTS, EVDMConfig, get_config
from .data import EVDMClips, split_clip
from .model import EVDMUNet, count_model_flops
from .sampling import generate, interpolate, load_model, predict, predict_long

__all__ = [
    "DATASETS",
    "EVDMClips",
    "EVDMConfig",
    "EVDMUNet",
    "PAPER_BATCH",
    "PRESETS",
    "VARIANTS",
    "best_of_k",
    "count_model_flops",
    "frechet_distance",
    "fvd",
    "generate",
    "get_config",
    "interpolate",
    "load_model",
    "predict",
    "predict_long",
    "psnr",
    "split_clip",
    "ssim",
]
