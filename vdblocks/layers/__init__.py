"""Layers: one concept per module; this file only re-exports."""

from .embeddings import SinusoidalEmbedding, TimestepEmbedding, sincos_1d, sincos_2d, sinusoidal_embedding
from .modulation import ScaleShiftGroupNorm, modulate
from .norm import group_norm, num_groups_for
from .shuffle import ChannelShuffle, channel_shuffle, channel_shuffle_permutation
from .transformer import Attention, FeedForward, TransformerBlock

__all__ = [
    "Attention",
    "ChannelShuffle",
    "FeedForward",
    "ScaleShiftGroupNorm",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "TransformerBlock",
    "channel_shuffle",
    "channel_shuffle_permutation",
    "group_norm",
    "modulate",
    "num_groups_for",
    "sincos_1d",
    "sincos_2d",
    "sinusoidal_embedding",
]
