"""ETC: a spatial-only image diffusion U-Net turned video model by the frame grid (eq. 1), the
spatial-temporal mixed embedding (eqs. 2-4), FPS conditioning and triple-data training (section 4.2)."""

from .conditioning import CallableTextEncoder, ETCConditioner, HashWordTokenizer, LabelEmbedding, WordTextEncoder
from .config import PRESETS, ETCConfig, get_config
from .diffusers_adapter import ETCDiffusersVideoModel, from_diffusers
from .filter import PAPER_EPSILON, VideoFilter, clip_score, keep_top
from .model import ETCUNet

__all__ = [
    "CallableTextEncoder",
    "ETCConditioner",
    "ETCConfig",
    "ETCDiffusersVideoModel",
    "ETCUNet",
    "HashWordTokenizer",
    "LabelEmbedding",
    "PAPER_EPSILON",
    "PRESETS",
    "VideoFilter",
    "WordTextEncoder",
    "clip_score",
    "from_diffusers",
    "get_config",
    "keep_top",
]
