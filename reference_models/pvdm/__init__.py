"""PVDM (CVPR 2023): a triplane video autoencoder and a shared-weight 2D U-Net diffusing its three
latent planes, trained jointly for p(x) and p(x^2 | x^1) to generate long videos clip by clip."""

from .autoencoder import PVDMAutoencoder
from .config import (
    AUTOENCODER_PRESETS,
    DIFFUSION_PRESETS,
    AutoencoderConfig,
    DiffusionConfig,
    get_autoencoder_config,
    get_diffusion_config,
)
from .data import ClipPairs, LatentPairs, VideoClips, cache_latents
from .diffusion import draw_cond_mask, pvdm_loss
from .discriminator import PatchDiscriminator3D
from .losses import AutoencoderObjective, PerceptualLoss, hinge_d_loss, hinge_g_loss
from .planes import pack_planes, unpack_planes
from .sampling import (
    decode_latents,
    generate_long_video,
    load_autoencoder,
    load_diffusion,
    sample_latents,
    sample_long_latents,
)
from .unet import TriplaneUNet

__all__ = [
    "AUTOENCODER_PRESETS",
    "DIFFUSION_PRESETS",
    "AutoencoderConfig",
    "AutoencoderObjective",
    "ClipPairs",
    "DiffusionConfig",
    "LatentPairs",
    "PVDMAutoencoder",
    "PatchDiscriminator3D",
    "PerceptualLoss",
    "TriplaneUNet",
    "VideoClips",
    "cache_latents",
    "decode_latents",
    "draw_cond_mask",
    "generate_long_video",
    "get_autoencoder_config",
    "get_diffusion_config",
    "hinge_d_loss",
    "hinge_g_loss",
    "load_autoencoder",
    "load_diffusion",
    "pack_planes",
    "pvdm_loss",
    "sample_latents",
    "sample_long_latents",
    "unpack_planes",
]
