"""ETC's conditioning: captions and class labels as cross-attention context, and condition dropout.

ETC trains on three kinds of data (section 4.2, eq. 6): caption-video pairs, label-image groups
and caption-image pairs, and samples with classifier-free guidance (appendix E.1, scale 7.0). The
U-Net's cross-attention takes one context ``(b, n, context_dim)``; this module builds it.

* :class:`HashWordTokenizer`: lower-cased words hashed into a fixed vocabulary; nothing to
  download or fit, stable across processes and runs;
* :class:`WordTextEncoder`: a small transformer over those ids, the built-in text encoder;
* :class:`CallableTextEncoder`: adapter for any ``list[str] -> (b, n, d)`` callable, e.g. the
  OpenCLIP ViT-H text tower SD 2.1 and ETC use (the paper: "ETC employs CLIP as the text feature
  extractor"), frozen, with a trainable projection when ``d != context_dim``;
* :class:`LabelEmbedding`: one learned token per class plus a learned null token;
* :class:`ETCConditioner`: labels and/or captions -> context, the null context, and condition
  dropout for classifier-free guidance.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from vdblocks.layers.embeddings import sincos_1d
from vdblocks.layers.transformer import TransformerBlock
from vdblocks.validation import check_positive_int, check_tensor

from .config import ETCConfig

__all__ = [
    "HashWordTokenizer",
    "WordTextEncoder",
    "CallableTextEncoder",
    "LabelEmbedding",
    "ETCConditioner",
]

_WORD = re.compile(r"\w+")


def _check_captions(captions: object) -> list[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"expected captions to be a list of str (one per batch item), got {type(captions).__name__}")
    if not captions:
        raise ValueError("expected at least one caption, got an empty list")
    bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
    if bad:
        raise TypeError(f"expected captions to be a list of str, got items of type {sorted(set(bad))}")
    return list(captions)


class HashWordTokenizer:
    """Words to ids by hashing: ``list[str] (b) -> (ids (b, n) long, mask (b, n) bool)``, ``n = max_len``.

    A caption is lower-cased and split into words (``\\w+``: letters, digits, underscore, so
    punctuation separates words and is dropped); word ``w`` gets id
    ``1 + crc32(w) % (vocab_size - 1)``. Id 0 is padding (``mask`` False); captions longer than
    ``max_len`` words are cut. ``crc32`` is fixed by the zlib format, so ids agree across
    processes, machines and Python versions (unlike ``hash``). Distinct words may share an id;
    with a vocabulary much larger than the caption vocabulary that is rare and harmless.
    """

    def __init__(self, vocab_size: int, max_len: int) -> None:
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        if vocab_size < 2:
            raise ValueError(f"expected vocab_size >= 2 (id 0 is padding), got {vocab_size}")
        self.max_len = check_positive_int(max_len, "max_len")

    def word_id(self, word: str) -> int:
        """The id of one (already lower-cased) word, in ``[1, vocab_size)``."""
        return 1 + zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 1)

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        captions = _check_captions(captions)
        ids = torch.zeros(len(captions), self.max_len, dtype=torch.long)
        for i, caption in enumerate(captions):
            words = _WORD.findall(caption.lower())[: self.max_len]
            if words:
                ids[i, : len(words)] = torch.tensor([self.word_id(w) for w in words])
        return ids, ids != 0  # b n, b n

    def __repr__(self) -> str:
        return f"HashWordTokenizer(vocab_size={self.vocab_size}, max_len={self.max_len})"


class WordTextEncoder(nn.Module):
    """The built-in caption encoder: ``list[str] (b) -> (b, max_len, dim)``.

    :class:`HashWordTokenizer` ids -> ``nn.Embedding`` + fixed sin-cos positions
    (:func:`vdblocks.sincos_1d`) -> ``layers`` pre-norm :class:`vdblocks.TransformerBlock` s ->
    ``LayerNorm``. Padding positions are kept (their embedding is learned, like CLIP's pad tokens
    that SD cross-attends to), so every caption gives ``max_len`` tokens and an empty caption is a
    learned "null caption". The attention kernel has no mask, so words also attend to the padding
    positions; they carry no caption content, only their position. ``dim`` must be even and
    divisible by ``heads``.
    """

    def __init__(self, vocab_size: int, max_len: int, dim: int, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tokenizer = HashWordTokenizer(vocab_size, max_len)
        self.dim = check_positive_int(dim, "dim")
        heads = check_positive_int(heads, "heads")
        if dim % 2 or dim % heads:
            raise ValueError(f"expected dim even and divisible by heads={heads}, got dim={dim}")
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
            raise ValueError(f"expected layers to be an int >= 0, got {layers!r}")
        self.embed = nn.Embedding(vocab_size, dim)
        self.register_buffer("positions", sincos_1d(dim, torch.arange(max_len)), persistent=False)  # n dim
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, dim // heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def max_len(self) -> int:
        return self.tokenizer.max_len

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        ids, _ = self.tokenizer(captions)
        x = self.embed(ids.to(self.embed.weight.device)) + self.positions.to(self.embed.weight.dtype)  # b n dim
        for block in self.blocks:
            x = block(x)  # b n dim
        return self.norm(x)


class CallableTextEncoder(nn.Module):
    """Any frozen ``fn(list[str]) -> (b, n, d)`` as a text encoder: ``list[str] -> (b, n, context_dim)``.

    For an OpenCLIP / ``transformers`` CLIP text model the user has locally (ETC, like SD 2.1, uses
    CLIP's text features). ``fn`` is called under ``torch.no_grad`` and never trained: when it is an
    ``nn.Module`` its parameters are frozen and it is put in eval mode; it is deliberately not
    registered as a submodule, so checkpoints and ``parameters()`` hold only the projection (move
    ``fn`` to its device yourself; its output is moved to the projection's device). When
    ``d != context_dim`` a trainable ``Linear(d, context_dim)`` follows; otherwise the output passes
    unchanged. ``out_dim`` is ``d``; left None it is read from one call ``fn([""])``.
    ``fn`` should pad to a fixed token count (CLIP's 77) so that null and conditional contexts
    stack. ``context_dim`` is required.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], torch.Tensor],
        out_dim: int | None = None,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"expected fn to be a callable list[str] -> (b, n, d), got {type(fn).__name__}")
        if context_dim is None:
            raise TypeError("CallableTextEncoder needs context_dim (the U-Net's cross-attention width)")
        self.context_dim = check_positive_int(context_dim, "context_dim")
        if isinstance(fn, nn.Module):
            fn.requires_grad_(False).eval()
        # Stored outside nn.Module's registry on purpose: frozen weights stay out of checkpoints.
        self.__dict__["fn"] = fn
        if out_dim is None:
            out_dim = self._call([""]).shape[-1]
        self.out_dim = check_positive_int(out_dim, "out_dim")
        self.proj = nn.Linear(self.out_dim, self.context_dim) if self.out_dim != self.context_dim else nn.Identity()

    def _call(self, captions: list[str]) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(captions)
        check_tensor(out, "fn(captions)", "(b, n, d)")
        if out.shape[0] != len(captions):
            raise ValueError(f"expected fn(captions) of shape (b, n, d) with b={len(captions)}, got {tuple(out.shape)}")
        return out.detach()

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        captions = _check_captions(captions)
        out = self._call(captions)  # b n d
        if out.shape[-1] != self.out_dim:
            raise ValueError(f"expected fn(captions) of shape (b, n, d) with d={self.out_dim}, got {tuple(out.shape)}")
        params = list(self.proj.parameters())
        if params:
            out = out.to(device=params[0].device, dtype=params[0].dtype)
        return self.proj(out)  # b n context_dim

    def extra_repr(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"fn={name}, out_dim={self.out_dim}, context_dim={self.context_dim}"


class LabelEmbedding(nn.Module):
    """Class labels as one context token: ``labels (b,) long -> (b, 1, context_dim)``.

    Rows ``0 .. num_classes - 1`` are the classes; index ``num_classes`` is the learned null label
    (classifier-free guidance, as DiT's ``LabelEmbedder``). ``-1``, the "unlabelled" value of the
    common datasets (``ImageFolder``, ``VideoFolder``), also maps to the null label.
    """

    def __init__(self, num_classes: int, context_dim: int) -> None:
        super().__init__()
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.context_dim = check_positive_int(context_dim, "context_dim")
        self.embed = nn.Embedding(num_classes + 1, context_dim)

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels)
        check_tensor(labels, "labels", "(b,)", floating=False)
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise TypeError(f"expected labels of shape (b,) with an integer dtype, got {labels.dtype}")
        bad = (labels < -1) | (labels > self.num_classes)
        if bad.any():
            raise ValueError(
                f"expected labels in [0, {self.num_classes}] ({self.num_classes}: null; -1: unlabelled), "
                f"got {labels[bad].tolist()}"
            )
        labels = torch.where(labels < 0, self.null_index, labels).to(self.embed.weight.device)
        return self.embed(labels)[:, None]  # b 1 context_dim


class ETCConditioner(nn.Module):
    """Labels and/or captions -> the U-Net's cross-attention context ``(b, n, context_dim)``.

    The context has one fixed layout per conditioner: ``[label token]`` when ``cfg.num_classes``
    is set, followed by ``[caption tokens]`` when there is a text encoder (``text_encoder``, or the
    built-in :class:`WordTextEncoder` when ``cfg.text_vocab_size`` is set). A part the caller leaves
    out (``labels=None`` or ``captions=None``), an unlabelled item (label ``-1``) or an empty caption
    takes the null label / empty-caption tokens, so ``forward`` and :meth:`null_context` always give
    the same ``n`` and the three kinds of training data (section 4.2) stack in one batch, and the
    conditional and null contexts stack in one guided call.
    """

    def __init__(self, cfg: ETCConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        if not isinstance(cfg, ETCConfig):
            raise TypeError(f"expected an ETCConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.context_dim = cfg.context_dim
        self.label_embed = None
        if cfg.num_classes is not None:
            self.label_embed = LabelEmbedding(cfg.num_classes, cfg.context_dim)
        if text_encoder is None and cfg.text_vocab_size is not None:
            text_encoder = WordTextEncoder(
                cfg.text_vocab_size, cfg.text_max_len, cfg.context_dim, cfg.text_layers, cfg.text_heads
            )
        self.text_encoder = text_encoder
        if self.label_embed is None and self.text_encoder is None:
            raise ValueError(
                "ETCConditioner needs num_classes, text_vocab_size or a text_encoder: nothing to condition on"
            )

    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        out = self.text_encoder(captions)
        check_tensor(out, "text_encoder(captions)", "(b, n, context_dim)", sizes={"context_dim": self.context_dim})
        return out

    def forward(
        self,
        labels: torch.Tensor | Sequence[int] | None = None,
        captions: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``labels (b,)`` and/or ``captions`` (``b`` strings) -> ``(b, n, context_dim)``."""
        if labels is None and captions is None:
            raise ValueError("expected labels (b,) and/or captions (b strings); use null_context(b) for neither")
        if labels is not None and self.label_embed is None:
            raise ValueError("this conditioner has no label embedding (cfg.num_classes is None); pass captions")
        if captions is not None:
            captions = _check_captions(captions)
            if self.text_encoder is None:
                raise ValueError("this conditioner has no text encoder (cfg.text_vocab_size is None); pass labels")
        if labels is not None:
            labels = check_tensor(torch.as_tensor(labels), "labels", "(b,)", floating=False)
            if captions is not None and labels.shape[0] != len(captions):
                raise ValueError(
                    f"expected labels (b,) and captions (b strings) to share b, "
                    f"got {labels.shape[0]} and {len(captions)}"
                )
        b = len(captions) if captions is not None else labels.shape[0]
        parts = []
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((b,), self.label_embed.null_index, dtype=torch.long)
            parts.append(self.label_embed(labels))  # b 1 d
        if self.text_encoder is not None:
            parts.append(self._encode_text(captions if captions is not None else [""] * b))  # b n d
        return torch.cat(parts, dim=1)  # b n d

    def null_context(self, batch_size: int) -> torch.Tensor:
        """The unconditional context (null label, empty caption): ``-> (batch_size, n, context_dim)``."""
        check_positive_int(batch_size, "batch_size")
        parts = []
        if self.label_embed is not None:
            parts.append(self.label_embed(torch.tensor([self.label_embed.null_index])))  # 1 1 d
        if self.text_encoder is not None:
            parts.append(self._encode_text([""]))  # 1 n d
        return torch.cat(parts, dim=1).expand(batch_size, -1, -1)  # b n d

    @staticmethod
    def drop(
        context: torch.Tensor,
        null: torch.Tensor,
        p: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Classifier-free condition dropout: each row of ``context`` becomes ``null`` with probability ``p``.

        Shapes: ``context (b, n, d)``, ``null (b, n, d)`` or ``(1, n, d)`` -> ``(b, n, d)``. Row ``i``
        is dropped iff ``u_i < p`` with ``u = torch.rand(b, generator=generator)`` (drawn on the
        generator's device), so ``p = 0`` keeps every row, ``p = 1`` drops every row, and a seeded
        generator gives the same rows every time.
        """
        check_tensor(context, "context", "(b, n, d)")
        check_tensor(null, "null", "(b, n, d)")
        b, n, d = context.shape
        if null.shape[1:] != (n, d) or null.shape[0] not in (1, b):
            raise ValueError(
                f"expected null of shape (b, n, d) or (1, n, d) like context {tuple(context.shape)}, "
                f"got {tuple(null.shape)}"
            )
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"expected p in [0, 1], got {p!r}")
        device = generator.device if generator is not None else context.device
        dropped = torch.rand(b, generator=generator, device=device) < p  # b
        return torch.where(dropped.to(context.device)[:, None, None], null.to(context.dtype), context)
