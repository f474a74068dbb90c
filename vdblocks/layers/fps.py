"""ETC's FPS embedding: frame rates through the timestep sinusoid, then their own MLP."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..validation import check_positive_int, check_tensor, check_values
from .embeddings import SinusoidalEmbedding, TimestepEmbedding

__all__ = ["FPSEmbedding"]


class FPSEmbedding(nn.Module):
    """Frame-rate conditioning of ETC (section 4.2, "FPS Embedding").

    Shapes: ``fps (b,)`` (int or float, finite, in ``[0, max_fps]``, on the module's device) ->
    ``(b, dim)``. Out-of-range, NaN or infinite values raise ``ValueError`` where values exist; on
    the meta device, under fake tensors and while ``torch.compile``/``torch.export`` trace the
    value check is skipped, so the block traces and exports.

    The paper: the FPS value and the timestep "are processed through the same embedding module,
    after which they pass through distinct learnable linear modules"; "the linear module consists
    of three linear layers, where the channel dimension is first increased fourfold and then reduced
    back to the original dimension"; the FPS range is 0 to 120.

    Readings. "The same embedding module" is the parameter-free sinusoid of the timestep embedding
    (the max timestep, 1000, covers every frame rate, which is why sharing it is sound): we keep the
    very object ``timestep_embedding.sinusoid`` (not a copy), so both conditionings always use the
    same frequencies, while the timestep MLP is not held here and so is not counted twice in
    ``parameters()``. "Original dimension" is the output width ``dim``; the MLP is
    ``Linear(frequency_dim -> 4 dim), SiLU, Linear(4 dim -> 4 dim), SiLU, Linear(4 dim -> dim)``
    (SiLU between layers as in the timestep MLP; the paper names no activation). ``timestep_embedding``
    may also be a bare :class:`SinusoidalEmbedding`, shared the same way.

    Weights keep PyTorch's default init; a model that wants the FPS branch to start as identity
    zeroes ``mlp[-1]`` in its own ``init_weights``.
    """

    def __init__(
        self,
        dim: int,
        timestep_embedding: TimestepEmbedding | SinusoidalEmbedding,
        *,
        max_fps: float = 120.0,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        hidden = self.dim * check_positive_int(expansion, "expansion")
        if isinstance(timestep_embedding, TimestepEmbedding):
            sinusoid = timestep_embedding.sinusoid
        elif isinstance(timestep_embedding, SinusoidalEmbedding):
            sinusoid = timestep_embedding
        else:
            raise TypeError(
                "expected timestep_embedding to be a TimestepEmbedding or a SinusoidalEmbedding, "
                f"got {type(timestep_embedding).__name__}"
            )
        if isinstance(max_fps, bool) or not isinstance(max_fps, (int, float)) or not 0 < max_fps < float("inf"):
            raise ValueError(f"expected max_fps to be a positive finite number, got {max_fps!r}")
        self.max_fps = float(max_fps)
        # Parameter-free, so registering the shared object adds nothing to parameters()/state_dict.
        self.sinusoid = sinusoid
        self.frequency_dim = sinusoid.dim
        self.mlp = nn.Sequential(
            nn.Linear(self.frequency_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, self.dim),
        )

    def _check_fps(self, fps: object) -> torch.Tensor:
        # Device only: frame rates may be ints or floats whatever the module's dtype. The value
        # check reads values, so it is skipped on meta/fake tensors and while compiling/exporting.
        check_tensor(fps, "fps", "(b,)", floating=False, numeric=True, like=self, match_dtype=False)
        return check_values(fps, "fps", "(b,)", low=0.0, high=self.max_fps)

    def forward(self, fps: torch.Tensor) -> torch.Tensor:
        fps = self._check_fps(fps)
        emb = self.sinusoid(fps)  # b frequency_dim
        return self.mlp(emb.to(self.mlp[0].weight.dtype))  # b dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_fps={self.max_fps:g}"
