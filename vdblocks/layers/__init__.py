"""Layers: one concept per module; this file only re-exports."""

from .bottleneck import BottleneckResidualPathway
from .channel_split import ChannelSplit
from .content_frame import ContentFrameHead, MotionLatentHead
from .dit import DiTBlock, DiTFinalLayer, PatchEmbed2d, dit_positions, unpatchify
from .embeddings import (
    SinusoidalEmbedding,
    TimestepEmbedding,
    sincos_1d,
    sincos_2d,
    sinusoidal_embedding,
)
from .fps import FPSEmbedding
from .grid import SpatialTemporalMixedEmbedding, grid_for, grid_to_video, video_to_grid
from .modulation import ScaleShiftGroupNorm, modulate
from .norm import group_norm, num_groups_for
from .plane_attention import JointPlaneAttention, plane_positions
from .pointwise import PointwiseConv2d, pointwise_conv2d
from .resample import Resample2d
from .resblock import ResBlock2d
from .shuffle import ChannelShuffle, add_channel_shuffled, channel_shuffle, channel_shuffle_permutation
from .transformer import Attention, FeedForward, TransformerBlock
from .triplane import (
    AxisProjector,
    TriplaneProjector,
    triplane_expand,
    triplane_latent_size,
)
from .video_transformer import (
    DividedSpaceTimeBlock,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
    video_positions,
)

__all__ = [
    "Attention",
    "AxisProjector",
    "BottleneckResidualPathway",
    "ChannelShuffle",
    "ChannelSplit",
    "ContentFrameHead",
    "DiTBlock",
    "DiTFinalLayer",
    "DividedSpaceTimeBlock",
    "FPSEmbedding",
    "FeedForward",
    "JointPlaneAttention",
    "MotionLatentHead",
    "PatchEmbed2d",
    "PointwiseConv2d",
    "ResBlock2d",
    "Resample2d",
    "ScaleShiftGroupNorm",
    "SinusoidalEmbedding",
    "SpatialTemporalMixedEmbedding",
    "TimestepEmbedding",
    "TransformerBlock",
    "TriplaneProjector",
    "VideoPatchEmbed",
    "VideoPatchUnembed",
    "VideoTransformer",
    "add_channel_shuffled",
    "channel_shuffle",
    "channel_shuffle_permutation",
    "dit_positions",
    "grid_for",
    "grid_to_video",
    "group_norm",
    "modulate",
    "num_groups_for",
    "plane_positions",
    "pointwise_conv2d",
    "sincos_1d",
    "sincos_2d",
    "sinusoidal_embedding",
    "triplane_expand",
    "triplane_latent_size",
    "unpatchify",
    "video_positions",
    "video_to_grid",
]
