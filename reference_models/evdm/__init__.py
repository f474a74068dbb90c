"""EVDM (ACM MM 2023) and its MCVD baseline: 2D U-Nets over frames stacked in channels."""

from .config import DATASETS, PAPER_BATCH, PRESETS, VARIANTS, EVDMConfig, get_config
from .unet import EVDMUNet, count_model_flops

__all__ = ["DATASETS", "EVDMConfig", "EVDMUNet", "PAPER_BATCH", "PRESETS", "VARIANTS", "count_model_flops", "get_config"]
