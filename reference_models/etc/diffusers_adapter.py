"""ETC on a pretrained diffusers U-Net: a Stable Diffusion image model fine-tuned into a video model.

ETC (sections 4.1-4.2) needs no new layers inside the image U-Net, only three things around it:

1. the temporal-to-spatial transfer of eq. 1 (:func:`~vdblocks.layers.grid.video_to_grid` in,
   :func:`~vdblocks.layers.grid.grid_to_video` out), so the unet denoises one frame-grid image;
2. the spatial-temporal mixed embedding (ME, eqs. 2-4), added to the noisy grid image before any
   layer ("the ME must be added to the noise before any attention or convolutional modules");
3. the FPS embedding (section 4.2): the frame rate goes through the *same* sinusoid as the
   timestep, then through its own three-layer MLP, and the result joins the timestep embedding.

:func:`from_diffusers` wraps a ``diffusers.UNet2DConditionModel`` (e.g. loaded from local Stable
Diffusion weights with ``UNet2DConditionModel.from_pretrained(local_dir, subfolder="unet")``) into an
:class:`ETCDiffusersVideoModel` whose ``forward(x, timesteps, fps, context)`` is exactly that of
``reference_models.etc.model.ETCUNet``, so the ETC trainer and sampler drive either.

Where the FPS embedding enters. The paper says the FPS and timestep embeddings "are then directly
added to the noise input of the U-Net"; we read "noise input" as the conditioning path that carries
the timestep (a vector per sample cannot be added to a ``(c, h, w)`` image without a projection the
paper does not describe), as ``ETCUNet`` does: the FPS embedding is added to the output of
``unet.time_embedding``, the unet's own timestep MLP, so every ResNet block sees ``act(t_emb +
fps_emb)``. We reach that point with a forward hook on ``unet.time_embedding`` (the module's own
extension point) rather than the unet's ``class_embedding`` or ``timestep_cond`` inputs: the class
embedding slot would have to be assigned into the pretrained unet (its config would then no longer
describe its weights, and models that already use class labels, like the x4 upscaler, would lose
them), and ``timestep_cond`` is added *before* the timestep MLP through a ``cond_proj`` that SD
checkpoints do not have. The hook leaves the unet object untouched outside a forward call.

Which sinusoid. "The same embedding module" is the unet's own parameter-free ``time_proj``
(diffusers ``Timesteps``), so the FPS values get exactly the frequencies, sin/cos order and shift
the pretrained timestep MLP was trained with. :class:`DiffusersTimestepSinusoid` presents it to
:class:`~vdblocks.layers.fps.FPSEmbedding` as a vdblocks ``SinusoidalEmbedding``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn as nn

from vdblocks.layers.embeddings import SinusoidalEmbedding
from vdblocks.layers.fps import FPSEmbedding
from vdblocks.layers.grid import SpatialTemporalMixedEmbedding, grid_for, grid_to_video, video_to_grid
from vdblocks.validation import check_positive_int, check_same_batch, check_tensor

__all__ = ["DiffusersTimestepSinusoid", "ETCDiffusersVideoModel", "from_diffusers"]

_INSTALL_HINT = "pip install 'vdblocks[diffusers]'"


def _diffusers_classes() -> tuple[type, type]:
    """``(UNet2DConditionModel, Timesteps)``, imported lazily: diffusers is an optional extra."""
    try:
        from diffusers import UNet2DConditionModel
        from diffusers.models.embeddings import Timesteps
    except ImportError as error:
        raise ImportError(
            "reference_models.etc.diffusers_adapter needs the optional dependency diffusers; "
            f"install it with: {_INSTALL_HINT}"
        ) from error
    return UNet2DConditionModel, Timesteps


class DiffusersTimestepSinusoid(SinusoidalEmbedding):
    """A diffusers ``Timesteps`` module presented as a vdblocks :class:`SinusoidalEmbedding`.

    Shapes: ``values (b,)`` -> ``(b, dim)`` float32 with ``dim = time_proj.num_channels``.
    ``forward`` calls the very ``time_proj`` object it was given (held, not copied), so the FPS
    embedding and the unet's timestep embedding share one sinusoid (ETC section 4.2). ``Timesteps``
    has no parameters or buffers, so holding it here adds nothing to ``state_dict``.
    """

    def __init__(self, time_proj: nn.Module) -> None:
        _, timesteps_cls = _diffusers_classes()
        if not isinstance(time_proj, timesteps_cls):
            raise TypeError(
                "expected time_proj to be a diffusers Timesteps (a positional timestep embedding), "
                f"got {type(time_proj).__name__}"
            )
        # max_period: Timesteps calls get_timestep_embedding with its default of 10000.
        super().__init__(time_proj.num_channels, max_period=10000.0)
        self.time_proj = time_proj

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.time_proj(values).float()  # b dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, shares={type(self.time_proj).__name__}"


def _check_grid_arg(grid: object) -> tuple[int, int] | None:
    if grid is None:
        return None
    if isinstance(grid, (str, torch.Tensor)) or not isinstance(grid, Sequence) or len(grid) != 2:
        raise TypeError(f"expected grid to be None or a pair (rows, cols) of positive ints, got {grid!r}")
    return check_positive_int(grid[0], "grid rows"), check_positive_int(grid[1], "grid cols")


class ETCDiffusersVideoModel(nn.Module):
    """ETC video denoiser around a diffusers ``UNet2DConditionModel`` (ETC sections 4.1-4.2).

    ``forward(x, timesteps, fps, context, **unet_kwargs) -> prediction`` with

    * ``x (b, c, t, h, w)``: noisy video (latents for SD), ``c = unet.config.in_channels``;
    * ``timesteps (b,)``: int or float diffusion timesteps;
    * ``fps (b,)``: frame rates in ``[0, max_fps]`` (0: label-image groups, ``max_fps``: repeated
      caption images, section 4.2 / eq. 6);
    * ``context (b, n, d)``: cross-attention tokens, ``d`` the unet's ``cross_attention_dim`` (or
      ``encoder_hid_dim`` when it has one);
    * ``unet_kwargs``: passed to the unet as they are (e.g. ``added_cond_kwargs`` for SDXL-style
      unets, ``class_labels`` for class-conditioned ones);
    * returns ``(b, c_out, t, h, w)`` with ``c_out = unet.config.out_channels``: whatever the unet
      predicts (its scheduler's ``prediction_type``; the ETC config's ``diffusion`` must name the same).

    Steps: ``grid = self.grid or grid_for(t)``; ``video_to_grid`` (eq. 1) -> ``(b, c, rows*h,
    cols*w)``; + ME (eqs. 2-4); the unet with ``fps_embed(fps)`` added to the output of
    ``unet.time_embedding`` (see the module docstring for why there); ``grid_to_video``.

    Start as the pretrained model. ``fps_embed.mlp[-1]`` is zero-initialised, so at construction the
    output equals the plain unet's on the ME-embedded grid image (DESIGN convention 6); the ME itself
    is new input the model learns to use during fine-tuning (the paper warms up for this).

    Thread-safety. The FPS hook is registered on ``unet.time_embedding`` at the start of each
    ``forward`` and removed in a ``finally`` at its end; it holds that call's embedding in a closure
    and acts only for calls in the registering thread on that exact module, so concurrent forwards
    on one wrapper from several threads (or ``nn.DataParallel`` replicas, which share hook
    dictionaries) do not see each other's FPS. Calling ``unet`` directly outside ``forward`` gives
    the plain pretrained unet. ``torch.compile`` of the wrapper graph-breaks at the hook
    registration; compile ``unet`` itself instead if that matters.

    A unet with ``center_input_sample=True`` (none of the SD checkpoints) maps its input to
    ``2 x - 1`` before ``conv_in``, ME included; ME still marks every position uniquely.

    Attributes: ``unet``, ``fps_embed`` (:class:`FPSEmbedding` on the unet's own ``time_proj``),
    ``mixed_embed`` (:class:`SpatialTemporalMixedEmbedding`), ``grid`` (``None``: per call),
    ``time_embed_dim``.
    """

    def __init__(
        self,
        unet: nn.Module,
        *,
        max_fps: float = 120.0,
        grid: tuple[int, int] | None = None,
        theta: float = 10000.0,
    ) -> None:
        super().__init__()
        unet_cls, _ = _diffusers_classes()
        if not isinstance(unet, unet_cls):
            raise TypeError(f"expected unet to be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        self.grid = _check_grid_arg(grid)
        self.unet = unet
        cfg = unet.config
        self.in_channels = int(cfg.in_channels)
        self.out_channels = int(cfg.out_channels)
        # The width the unet's cross-attention inputs must have; None when it varies per block.
        if cfg.encoder_hid_dim is not None:
            self.context_dim = int(cfg.encoder_hid_dim)
        elif isinstance(cfg.cross_attention_dim, int):
            self.context_dim = int(cfg.cross_attention_dim)
        else:
            self.context_dim = None
        self.time_embed_dim = unet.time_embedding.linear_2.out_features
        self.mixed_embed = SpatialTemporalMixedEmbedding(self.in_channels, theta)
        self.fps_embed = FPSEmbedding(self.time_embed_dim, DiffusersTimestepSinusoid(unet.time_proj), max_fps=max_fps)
        # Identity at start: the pretrained timestep path is untouched until fine-tuning moves it.
        nn.init.zeros_(self.fps_embed.mlp[-1].weight)
        nn.init.zeros_(self.fps_embed.mlp[-1].bias)
        reference = next(unet.parameters())
        self.fps_embed.to(device=reference.device, dtype=reference.dtype)

    @property
    def max_fps(self) -> float:
        return self.fps_embed.max_fps

    @property
    def downsample_factor(self) -> int:
        """How much the unet shrinks its input: frame sizes must be multiples of this."""
        return 2 ** int(self.unet.num_upsamplers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch the unet's own gradient checkpointing on or off."""
        if not isinstance(enable, bool):
            raise TypeError(f"expected enable to be a bool, got {enable!r}")
        if enable:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()

    def check_input(self, x_shape: Sequence[int] | torch.Size | torch.Tensor) -> tuple[int, int]:
        """Raise ``ValueError`` if a video of this shape cannot go through; return its ``(rows, cols)``.

        ``x_shape`` is ``(b, c, t, h, w)`` or one unbatched clip ``(c, t, h, w)`` (a tensor stands for
        its shape), as for ``ETCUNet.check_input``, the trainer's preflight. Needs ``c =
        in_channels``, ``t`` frames fitting the grid, and frame ``h, w`` divisible by
        :attr:`downsample_factor`: then each feature pixel at every resolution of the unet lies
        inside one frame, so no downsampled cell mixes two frames across a grid boundary.
        """
        shape = tuple(x_shape.shape if isinstance(x_shape, torch.Tensor) else x_shape)
        expected = f"(b, c, t, h, w) with c={self.in_channels}"
        if len(shape) not in (4, 5) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"expected x of shape {expected} of positive sizes, got {shape}")
        c, t, h, w = shape[-4:]
        if c != self.in_channels:
            raise ValueError(f"expected x of shape {expected}, got {shape}")
        rows, cols = self.grid or grid_for(t)
        if t > rows * cols:
            raise ValueError(
                f"expected x of shape {expected} and t <= rows*cols = {rows * cols} for the fixed grid "
                f"({rows}, {cols}), got {shape}"
            )
        factor = self.downsample_factor
        if h % factor or w % factor:
            raise ValueError(
                f"expected x of shape {expected} with frame h and w divisible by {factor} (the unet "
                f"downsamples {self.unet.num_upsamplers} times), got {shape}"
            )
        return rows, cols

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        fps: torch.Tensor,
        context: torch.Tensor,
        **unet_kwargs,
    ) -> torch.Tensor:
        check_tensor(x, "x", "(b, c, t, h, w)", sizes={"c": self.in_channels})
        grid = self.check_input(x.shape)
        check_tensor(timesteps, "timesteps", "(b,)", floating=False)
        sizes = {"d": self.context_dim} if self.context_dim is not None else None
        check_tensor(context, "context", "(b, n, d)", sizes=sizes)
        check_same_batch(x, "x", timesteps, "timesteps")
        check_same_batch(x, "x", context, "context")
        check_tensor(fps, "fps", "(b,)", floating=False)
        check_same_batch(x, "x", fps, "fps")
        if "return_dict" in unet_kwargs:
            raise TypeError("return_dict is set by ETCDiffusersVideoModel; do not pass it")

        t = x.shape[2]
        image = video_to_grid(x, grid)  # b c (rows h) (cols w), eq. 1
        image = self.mixed_embed(image, grid)  # before any layer, section 4.1.2
        fps_emb = self.fps_embed(fps.to(x.device))  # b time_embed_dim

        target = self.unet.time_embedding
        thread = threading.get_ident()

        def add_fps(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if module is not target or threading.get_ident() != thread:
                return None  # another call's (or replica's) time embedding: leave it alone
            return output + fps_emb.to(output.dtype)  # b time_embed_dim

        handle = target.register_forward_hook(add_fps)
        try:
            out = self.unet(
                image, timesteps.to(x.device), encoder_hidden_states=context, return_dict=False, **unet_kwargs
            )[0]  # b c_out (rows h) (cols w)
        finally:
            handle.remove()
        return grid_to_video(out, grid, t)  # b c_out t h w

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"time_embed_dim={self.time_embed_dim}, grid={self.grid}, max_fps={self.max_fps:g}"
        )


def from_diffusers(
    unet: nn.Module,
    *,
    max_fps: float = 120.0,
    grid: tuple[int, int] | None = None,
) -> ETCDiffusersVideoModel:
    """Wrap a ``diffusers.UNet2DConditionModel`` into an ETC video model (sections 4.1-4.2).

    ``grid``: a fixed ``(rows, cols)`` for every call, or ``None`` for ``grid_for(t)`` per call.
    The unet is held, not copied: fine-tuning the wrapper fine-tunes it. Raises ``ImportError``
    naming ``pip install 'vdblocks[diffusers]'`` when diffusers is missing, ``TypeError`` for
    anything but a ``UNet2DConditionModel`` with a positional (``Timesteps``) time embedding.

    Example (weights already on disk)::

        from diffusers import UNet2DConditionModel
        unet = UNet2DConditionModel.from_pretrained("/models/sd21", subfolder="unet")
        model = from_diffusers(unet)
        pred = model(latents, timesteps, fps, text_tokens)  # latents (b, 4, t, h, w); SD 2.1-base: eps
    """
    return ETCDiffusersVideoModel(unet, max_fps=max_fps, grid=grid)
