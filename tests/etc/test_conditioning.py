import zlib

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from reference_models.etc.conditioning import (
    CallableTextEncoder,
    ETCConditioner,
    HashWordTokenizer,
    LabelEmbedding,
    WordTextEncoder,
)
from reference_models.etc.config import get_config

words = st.text(alphabet="abcxyzABCXYZ019", min_size=1, max_size=6)
captions = st.lists(words, max_size=12).map(" ".join)


# ---------------------------------------------------------------- HashWordTokenizer


@given(batch=st.lists(captions, min_size=1, max_size=4), vocab=st.integers(2, 50), max_len=st.integers(1, 8))
def test_tokenizer_shapes_padding_and_range(batch, vocab, max_len):
    ids, mask = HashWordTokenizer(vocab, max_len)(batch)
    assert ids.shape == mask.shape == (len(batch), max_len)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ((ids >= 0) & (ids < vocab)).all()
    torch.testing.assert_close(mask, ids != 0)
    for row, caption in zip(mask, batch):
        n = min(len(caption.split()), max_len)
        assert row[:n].all() and not row[n:].any()  # words first, then padding


def test_tokenizer_is_stable_case_insensitive_and_ignores_punctuation():
    tok = HashWordTokenizer(1000, 6)
    ids, _ = tok(["A Red circle, moving LEFT!", "a red CIRCLE moving left", ""])
    torch.testing.assert_close(ids[0], ids[1])
    expected = [1 + zlib.crc32(w.encode()) % 999 for w in ("a", "red", "circle", "moving", "left")]
    assert ids[0].tolist() == expected + [0]
    assert ids[2].tolist() == [0] * 6
    torch.testing.assert_close(HashWordTokenizer(1000, 6)(["red circle"])[0], tok(["red circle"])[0])


def test_tokenizer_truncates_and_rejects_bad_input():
    ids, mask = HashWordTokenizer(100, 3)(["one two three four five"])
    assert mask.all() and ids.shape == (1, 3)
    with pytest.raises(TypeError, match="list of str"):
        HashWordTokenizer(100, 3)("a bare string")
    with pytest.raises(TypeError, match="list of str"):
        HashWordTokenizer(100, 3)(["ok", 3])
    with pytest.raises(ValueError, match="vocab_size >= 2"):
        HashWordTokenizer(1, 3)


# ---------------------------------------------------------------- text encoders


def test_word_text_encoder_shapes_and_content():
    torch.manual_seed(0)
    enc = WordTextEncoder(64, 5, dim=16, layers=2, heads=4)
    out = enc(["a red circle", "a blue square", "", "A RED circle"])
    assert out.shape == (4, 5, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(out[0], out[3])
    out.sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


class _DummyText(nn.Module):
    """A stand-in for a CLIP text tower: per-word ids -> embeddings, padded to 7 tokens of width 12."""

    def __init__(self):
        super().__init__()
        self.tok = HashWordTokenizer(97, 7)
        self.embed = nn.Embedding(97, 12)
        self.calls = 0

    def forward(self, captions):
        self.calls += 1
        return self.embed(self.tok(captions)[0])


def test_callable_text_encoder_projects_and_freezes():
    fn = _DummyText()
    enc = CallableTextEncoder(fn, context_dim=20)
    assert enc.out_dim == 12 and isinstance(enc.proj, nn.Linear)
    assert not any(p.requires_grad for p in fn.parameters()) and not fn.training
    assert {id(p) for p in enc.parameters()} == {id(p) for p in enc.proj.parameters()}
    assert "fn." not in "".join(enc.state_dict())
    out = enc(["red circle", "blue square"])
    assert out.shape == (2, 7, 20)
    torch.testing.assert_close(out, enc.proj(fn(["red circle", "blue square"])))
    out.square().sum().backward()
    assert enc.proj.weight.grad.abs().sum() > 0
    assert fn.embed.weight.grad is None


def test_callable_text_encoder_without_projection_and_plain_functions():
    fn = _DummyText()
    enc = CallableTextEncoder(fn, 12, 12)
    assert isinstance(enc.proj, nn.Identity) and fn.calls == 0  # out_dim given: no probing call
    torch.testing.assert_close(enc(["a b"]), fn(["a b"]))
    plain = CallableTextEncoder(lambda caps: torch.ones(len(caps), 2, 3), context_dim=4)
    assert plain(["x", "y", "z"]).shape == (3, 2, 4)
    with pytest.raises(TypeError, match="context_dim"):
        CallableTextEncoder(fn)
    with pytest.raises(ValueError, match=r"\(b, n, d\) with d=5"):
        CallableTextEncoder(fn, 5, 8)(["a"])
    with pytest.raises(ValueError, match=r"\(b, n, d\)"):
        CallableTextEncoder(lambda caps: torch.ones(len(caps), 3), context_dim=4)


# ---------------------------------------------------------------- labels


def test_label_embedding_null_and_unlabelled():
    emb = LabelEmbedding(5, 8)
    out = emb(torch.tensor([0, 4, 5, -1]))
    assert out.shape == (4, 1, 8)
    torch.testing.assert_close(out[:, 0], emb.embed.weight[[0, 4, 5, 5]])
    assert emb.null_index == 5
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]"):
        emb(torch.tensor([6]))
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]"):
        emb(torch.tensor([-2]))
    with pytest.raises(TypeError, match="integer dtype"):
        emb(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\(b,\)"):
        emb(torch.tensor([[1]]))


# ---------------------------------------------------------------- ETCConditioner


def _conditioner(**overrides):
    torch.manual_seed(0)
    small = {"context_dim": 16, "text_max_len": 6, "text_vocab_size": 64}
    return ETCConditioner(get_config("tiny", **{**small, **overrides}))


def test_context_layout_label_token_then_caption_tokens():
    cond = _conditioner()
    labels, caps = torch.tensor([0, 3]), ["a red circle", "a cross"]
    both = cond(labels=labels, captions=caps)
    assert both.shape == (2, 1 + 6, 16)
    torch.testing.assert_close(both, torch.cat([cond.label_embed(labels), cond.text_encoder(caps)], dim=1))
    only_labels = cond(labels=labels)
    only_caps = cond(captions=caps)
    torch.testing.assert_close(only_labels, cond(labels=labels, captions=["", ""]))
    torch.testing.assert_close(only_caps, cond(labels=torch.tensor([-1, -1]), captions=caps))
    null = cond.null_context(3)
    assert null.shape == (3, 7, 16)
    torch.testing.assert_close(null, cond(labels=[5, 5, 5], captions=["", "", ""]))


def test_single_kind_conditioners():
    labels_only = _conditioner(text_vocab_size=None)
    assert labels_only(labels=torch.tensor([1, 2])).shape == (2, 1, 16)
    assert labels_only.null_context(2).shape == (2, 1, 16)
    with pytest.raises(ValueError, match="no text encoder"):
        labels_only(captions=["a"])
    text_only = _conditioner(num_classes=None)
    assert text_only(captions=["a", "b"]).shape == (2, 6, 16)
    with pytest.raises(ValueError, match="no label embedding"):
        text_only(labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="nothing to condition on"):
        _conditioner(num_classes=None, text_vocab_size=None)
    with pytest.raises(ValueError, match="labels .* and/or captions"):
        text_only()
    with pytest.raises(ValueError, match="share b"):
        _conditioner()(labels=torch.tensor([0, 1]), captions=["a"])


def test_external_text_encoder_is_used():
    cond = ETCConditioner(get_config("tiny", context_dim=16), CallableTextEncoder(_DummyText(), context_dim=16))
    assert cond(captions=["a red circle"]).shape == (1, 1 + 7, 16)
    assert cond.null_context(2).shape == (2, 8, 16)


def test_every_conditioner_parameter_gets_a_gradient():
    cond = _conditioner()
    ctx = cond(labels=torch.tensor([0, -1, 4]), captions=["a red circle", "", "blue square"])
    (ctx.square().sum() + cond.null_context(1).sum()).backward()
    for name, p in cond.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- condition dropout


@given(b=st.integers(1, 6), p=st.floats(0, 1), seed=st.integers(0, 2**31), broadcast=st.booleans())
def test_drop_replaces_exactly_the_drawn_rows(b, p, seed, broadcast):
    context = torch.randn(b, 3, 4) + 10  # away from null
    null = torch.randn(1 if broadcast else b, 3, 4)
    out = ETCConditioner.drop(context, null, p, torch.Generator().manual_seed(seed))
    expected_rows = torch.rand(b, generator=torch.Generator().manual_seed(seed)) < p
    assert out.shape == context.shape
    for i in range(b):
        want = null[0 if broadcast else i] if expected_rows[i] else context[i]
        torch.testing.assert_close(out[i], want)
    again = ETCConditioner.drop(context, null, p, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(out, again)


def test_drop_extremes_and_validation():
    cond = _conditioner()
    context = cond(labels=torch.tensor([0, 1, 2, 3]))
    null = cond.null_context(4)
    torch.testing.assert_close(cond.drop(context, null, 0.0), context)
    torch.testing.assert_close(cond.drop(context, null, 1.0), null)
    g = torch.Generator().manual_seed(0)
    half = cond.drop(context, null, 0.5, g)
    dropped = [torch.equal(half[i], null[i]) for i in range(4)]
    kept = [torch.equal(half[i], context[i]) for i in range(4)]
    assert all(d != k for d, k in zip(dropped, kept))
    with pytest.raises(ValueError, match=r"p in \[0, 1\]"):
        cond.drop(context, null, 1.5)
    with pytest.raises(ValueError, match=r"\(1, n, d\)"):
        cond.drop(context, null[:, :3], 0.5)
