"""vdblocks: efficient video-diffusion building blocks.

The seven blocks from the papers:

* EVDM: :class:`BottleneckResidualPathway`, :class:`ChannelSplit`, :class:`MixedSelfAttention`
* PVDM: :class:`TriplaneProjector` (and :class:`JointPlaneAttention` across its planes)
* CMD: :class:`ContentFrameHead` (and :class:`MotionLatentHead`)
* ETC: :class:`SpatialTemporalMixedEmbedding` (with :func:`video_to_grid` / :func:`grid_to_video`),
  :class:`FPSEmbedding`

plus the primitives they need. Attention kernels and their dispatch live in
:mod:`vdblocks.attention` (``vdblocks.attention.attention`` is the kernel function), FLOP accounting in :mod:`vdblocks.flops`,
schedules, losses and samplers in :mod:`vdblocks.diffusion` (:class:`DiffusionSpec` names the diffusion a model uses).
"""

from .attention import (
    AttentionBackendError,
    MixedSelfAttention,
    attention_backend,
    list_backends,
    select_backend,
)
from .diffusion import DiffusionSpec
from .flops import FlopCounter, FlopReport, count_flops
from .layers import (
    Attention,
    AxisProjector,
    BottleneckResidualPathway,
    ChannelShuffle,
    ChannelSplit,
    ContentFrameHead,
    DiTBlock,
    DiTFinalLayer,
    DividedSpaceTimeBlock,
    FeedForward,
    FPSEmbedding,
    JointPlaneAttention,
    MotionLatentHead,
    PatchEmbed2d,
    PointwiseConv2d,
    Resample2d,
    ResBlock2d,
    ScaleShiftGroupNorm,
    SinusoidalEmbedding,
    SpatialTemporalMixedEmbedding,
    TimestepEmbedding,
    TransformerBlock,
    TriplaneProjector,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
    add_channel_shuffled,
    channel_shuffle,
    grid_for,
    grid_to_video,
    group_norm,
    modulate,
    pointwise_conv2d,
    sincos_1d,
    sincos_2d,
    sinusoidal_embedding,
    triplane_expand,
    video_to_grid,
)

__all__ = [
    "Attention",
    "AttentionBackendError",
    "AxisProjector",
    "BottleneckResidualPathway",
    "ChannelShuffle",
    "ChannelSplit",
    "ContentFrameHead",
    "DiTBlock",
    "DiffusionSpec",
    "DiTFinalLayer",
    "DividedSpaceTimeBlock",
    "FPSEmbedding",
    "FeedForward",
    "FlopCounter",
    "FlopReport",
    "JointPlaneAttention",
    "MixedSelfAttention",
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
    "attention_backend",
    "add_channel_shuffled",
    "channel_shuffle",
    "count_flops",
    "grid_for",
    "grid_to_video",
    "group_norm",
    "list_backends",
    "modulate",
    "pointwise_conv2d",
    "select_backend",
    "sincos_1d",
    "sincos_2d",
    "sinusoidal_embedding",
    "triplane_expand",
    "video_to_grid",
]
__version__ = "0.1.0"
