"""A pretrained diffusers image model as CMD's content-frame model (eq. 7: "we directly fine-tune the
pretrained image diffusion model without adding additional parameters").

:class:`DiffusersContentModel` puts a ``diffusers`` ``UNet2DModel``, ``UNet2DConditionModel`` or
``DiTTransformer2DModel`` behind the call of :class:`~reference_models.cmd.content_model.ContentDiT`:

    ``model(x (b, C, H, W), t (b,), labels=None, text=None, drop=None) -> prediction (b, C, H, W)``

so CMD's trainer and sampler drive either. The prediction is whatever the pretrained model predicts
(its scheduler's ``prediction_type``: eps for Stable Diffusion 1.5 and 2.1-base, the velocity for
2.1 at 768 px); the CMD config's ``diffusion`` spec must name the same. Conditions map onto what each model has:

* ``labels``: the model's own class embedding (``UNet2D*Model(num_class_embeds=...)``, the
  ``class_labels`` of a DiT). The null class for guidance is ``num_classes``, so the embedding needs
  ``num_classes + 1`` rows (a diffusers DiT has that row already when built with its default label
  dropout; its in-model random label dropout is switched off here because the CMD trainer drops
  conditions itself, through ``drop``);
* ``text``: ``encoder_hidden_states`` of a ``UNet2DConditionModel``: ``(b, n, d)`` tokens, or a pooled
  ``(b, d)`` vector used as one token. The null text is ``null_text`` (e.g. the text encoder's output
  for the empty prompt, as Stable Diffusion is trained) or, when not given, one learned token
  initialised at zero;
* ``drop (b,)`` bool: those samples get the null class and the null text.

Outputs with more channels than ``C`` (a DiT that also predicts its variance, ``learn_sigma``) are cut
to the first ``C``: the prediction. The model is held, not copied; fine-tuning the adapter fine-tunes it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vdblocks.validation import check_positive_int, check_tensor

from .content_model import DataNormalizer, check_condition_inputs

__all__ = ["SUPPORTED_CLASSES", "DiffusersContentModel", "build_from_record", "from_diffusers"]

SUPPORTED_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")
_INSTALL_HINT = "pip install 'vdblocks[diffusers]'"


def _diffusers() -> Any:
    try:
        import diffusers
    except ImportError as error:
        raise ImportError(
            f"reference_models.cmd.diffusers_adapter needs the optional dependency diffusers: {_INSTALL_HINT}"
        ) from error
    return diffusers


def _class_rows(model: nn.Module, kind: str) -> int | None:
    """Rows of the model's class-label table, or None without one."""
    if kind == "DiTTransformer2DModel":
        from diffusers.models.embeddings import LabelEmbedding

        tables = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
        return tables[0].embedding_table.num_embeddings if tables else None
    table = getattr(model, "class_embedding", None)
    return table.num_embeddings if isinstance(table, nn.Embedding) else None


class DiffusersContentModel(nn.Module):
    """A diffusers image denoiser as CMD's content model; see the module docstring.

    ``num_classes``: classes of the data (the null class is index ``num_classes``); None means the
    model gets no labels. ``null_text``: ``(n, d)`` or ``(1, n, d)`` fixed null tokens for a
    ``UNet2DConditionModel``; None learns one zero-initialised token.
    """

    def __init__(self, model: nn.Module, num_classes: int | None = None, null_text: torch.Tensor | None = None) -> None:
        super().__init__()
        _diffusers()
        kind = type(model).__name__
        if kind not in SUPPORTED_CLASSES:
            raise TypeError(f"expected a diffusers model of class {SUPPORTED_CLASSES}, got {kind}")
        self.model, self.kind = model, kind
        cfg = model.config
        self.in_channels = int(cfg.in_channels)
        # Identity unless fitted (see DataNormalizer): pretrained SD latents are already normalised.
        self.normalizer = DataNormalizer(self.in_channels)
        self.num_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")
        rows = _class_rows(model, kind)
        if self.num_classes is not None and (rows is None or rows < self.num_classes + 1):
            raise ValueError(
                f"num_classes={num_classes} needs a class embedding with num_classes + 1 = {self.num_classes + 1} "
                f"rows (the last is the null class); the {kind} has {rows or 'no class embedding'}"
            )
        if kind == "DiTTransformer2DModel" and self.num_classes is None:
            raise ValueError("a DiTTransformer2DModel always takes class labels: pass num_classes")
        if kind == "DiTTransformer2DModel":
            from diffusers.models.embeddings import LabelEmbedding

            for table in model.modules():
                if isinstance(table, LabelEmbedding):
                    table.dropout_prob = 0.0  # CMD drops conditions itself; the null row stays
        self.context_dim = None
        if kind == "UNet2DConditionModel":
            self.context_dim = int(cfg.encoder_hid_dim or cfg.cross_attention_dim)
            if null_text is None:
                self.null_text = nn.Parameter(torch.zeros(1, 1, self.context_dim))
            else:
                null_text = null_text if null_text.ndim == 3 else null_text[None]
                check_tensor(null_text, "null_text", "(1, n, d)", sizes={"d": self.context_dim})
                self.register_buffer("null_text", null_text.detach().clone())
        elif null_text is not None:
            raise ValueError(f"a {kind} takes no text; null_text applies to UNet2DConditionModel only")

    @property
    def text_dim(self) -> int | None:
        return self.context_dim

    def config_record(self) -> dict:
        """What :func:`build_from_record` needs to rebuild this adapter (stored in checkpoints)."""
        return {
            "kind": "diffusers",
            "class": self.kind,
            "config": dict(self.model.config),
            "num_classes": self.num_classes,
            "fixed_null_text": list(self.null_text.shape) if "null_text" in dict(self.named_buffers()) else None,
        }

    def _text(self, text: torch.Tensor | None, drop: torch.Tensor | None, b: int) -> torch.Tensor:
        null = self.null_text
        if text is None:
            return null.expand(b, -1, -1)
        tokens = text[:, None] if text.ndim == 2 else text  # b n d
        if drop is None:
            return tokens
        if null.shape[1] not in (1, tokens.shape[1]):
            raise ValueError(
                f"expected text of shape (b, n, d) with n={null.shape[1]} like null_text to drop conditions, "
                f"got {tuple(tokens.shape)}"
            )
        return torch.where(drop[:, None, None], null.to(tokens.dtype).expand_as(tokens), tokens)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        check_tensor(x, "x", "(b, C, H, W)", sizes={"C": self.in_channels})
        b = x.shape[0]
        check_tensor(t, "t", "(b,)", sizes={"b": b}, floating=False)
        if text is not None:
            if self.context_dim is None:
                raise ValueError(f"this {self.kind} takes no text; pass text=None")
            if text.ndim == 2:
                check_tensor(text, "text", "(b, d)", sizes={"b": b, "d": self.context_dim})
            else:
                check_tensor(text, "text", "(b, n, d)", sizes={"b": b, "d": self.context_dim})
        check_condition_inputs(b, labels, None, drop, self.num_classes, None)
        kwargs: dict[str, Any] = {}
        if self.num_classes is not None:
            null = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            y = null if labels is None else labels.to(x.device).long()
            kwargs["class_labels"] = y if drop is None else torch.where(drop.to(x.device), null, y)
        if self.kind == "UNet2DConditionModel":
            kwargs["encoder_hidden_states"] = self._text(text, None if drop is None else drop.to(x.device), b)
        out = self.model(x, t.to(x.device), return_dict=False, **kwargs)[0]  # b C_out H W
        return out[:, : self.in_channels]  # b C H W: the prediction (a learned variance is dropped)


def from_diffusers(
    model: nn.Module, num_classes: int | None = None, null_text: torch.Tensor | None = None
) -> DiffusersContentModel:
    """Wrap a diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` / ``DiTTransformer2DModel``.

    Example (weights on disk)::

        from diffusers import DiTTransformer2DModel
        dit = DiTTransformer2DModel.from_pretrained("/models/DiT-XL-2-256", subfolder="transformer")
        content_model = from_diffusers(dit, num_classes=1000)
    """
    return DiffusersContentModel(model, num_classes=num_classes, null_text=null_text)


def build_from_record(record: dict) -> DiffusersContentModel:
    """Rebuild (randomly initialised) the adapter a :meth:`DiffusersContentModel.config_record` describes;
    load the checkpoint's weights into it afterwards."""
    diffusers = _diffusers()
    cls = getattr(diffusers, record["class"])
    model = cls.from_config(record["config"])
    null_text = None
    if record.get("fixed_null_text"):
        null_text = torch.zeros(record["fixed_null_text"])  # placeholder: the checkpoint's buffer replaces it
    return DiffusersContentModel(model, num_classes=record.get("num_classes"), null_text=null_text)
