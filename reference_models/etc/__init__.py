"""ETC: a spatial-only image diffusion U-Net turned video model by the frame grid (eq. 1), the
spatial-temporal mixed embedding (eqs. 2-4), FPS conditioning and triple-data training (section 4.2)."""

from .conditioning import CallableTextEncoder, ETCConditioner, HashWordTokenizer, LabelEmbedding, WordTextEncoder
from .config import PRESETS, ETCConfig, get_config
from .data import FPS_CHOICES, MultiRateVideoFolder, TripleDataset, collate_etc
from .diffusers_adapter import ETCDiffusersVideoModel, from_diffusers
from .filter import PAPER_EPSILON, VideoFilter, clip_score, keep_top
from .model import ETCSystem, ETCUNet
from .sampling import load_system

__all__ = [
    "CallableTextEncoder",
    "ETCConditioner",
    "ETCConfig",
    "ETCDiffusersVideoModel",
    "ETCSystem",
    "ETCUNet",
    "FPS_CHOICES",
    "HashWordTokenizer",
    "LabelEmbedding",
    "MultiRateVideoFolder",
    "PAPER_EPSILON",
    "PRESETS",
    "TripleDataset",
    "VideoFilter",
    "WordTextEncoder",
    "clip_score",
    "collate_etc",
    "from_diffusers",
    "get_config",
    "keep_top",
    "load_system",
]
