"""CMD: content-motion latent diffusion (Yu et al., ICLR 2024). A video autoencoder to one content
frame and two motion latents (eqs. 3-6), an image DiT or U-Net for content frames (eq. 7, or a
diffusers model fine-tuned in its place) and a motion DiT conditioned on the content frame and the class (eq. 8)."""

from .autoencoder import (
    CMDAutoencoder,
    CMDLatents,
    ImageLatentCodec,
    pack_motion,
    unpack_motion,
)
from .config import DIT_SIZES, PRESETS, CMDConfig, get_config, with_dit
from .content_model import ConditionEmbedding, ContentDiT, ContentUNet, DataNormalizer, build_native_content_model
from .diffusers_adapter import DiffusersContentModel, from_diffusers
from .motion_model import MotionDiT, motion_sequence_length
from .sampling import (
    CMDSample,
    load_autoencoder,
    load_content_model,
    load_motion_model,
    sample_content,
    sample_motion,
    sample_videos,
)

__all__ = [
    "DIT_SIZES",
    "PRESETS",
    "CMDAutoencoder",
    "CMDConfig",
    "CMDLatents",
    "CMDSample",
    "ConditionEmbedding",
    "ContentDiT",
    "ContentUNet",
    "DataNormalizer",
    "DiffusersContentModel",
    "ImageLatentCodec",
    "MotionDiT",
    "build_native_content_model",
    "from_diffusers",
    "get_config",
    "load_autoencoder",
    "load_content_model",
    "load_motion_model",
    "motion_sequence_length",
    "pack_motion",
    "sample_content",
    "sample_motion",
    "sample_videos",
    "unpack_motion",
    "with_dit",
]
