"""vdblocks: efficient video-diffusion building blocks."""

from .attention import MixedSelfAttention, attention, attention_backend

__all__ = ["MixedSelfAttention", "attention", "attention_backend"]
__version__ = "0.1.0"
