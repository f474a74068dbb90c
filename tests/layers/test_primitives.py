import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers import (
    Attention,
    ChannelShuffle,
    ScaleShiftGroupNorm,
    SinusoidalEmbedding,
    TimestepEmbedding,
    TransformerBlock,
    add_channel_shuffled,
    channel_shuffle,
    channel_shuffle_permutation,
    group_norm,
    modulate,
    num_groups_for,
    sincos_1d,
    sincos_2d,
    sinusoidal_embedding,
)


@given(values=st.lists(st.floats(0, 1000), min_size=1, max_size=6), dim=st.integers(1, 64))
def test_sinusoidal_embedding_layout(values, dim):
    # float64: with t up to 1000, float32 arguments t * f carry errors of ~1e-4 rad, and the vector
    # sin/cos kernels differ in their last bits between CPUs (AVX2, AVX512).
    t = torch.tensor(values, dtype=torch.float64)
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (len(values), dim) and emb.dtype == torch.float64
    half = dim // 2
    freqs = torch.tensor([10000.0 ** (-i / max(half, 1)) for i in range(half)], dtype=torch.float64)
    expected = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb[:, : 2 * half], expected, atol=1e-9, rtol=0)
    if dim % 2:
        assert torch.all(emb[:, -1] == 0)


def test_sinusoidal_embedding_matches_diffusers():
    diffusers_embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.tensor([0, 1, 17, 999])
    ours = sinusoidal_embedding(t, 64)
    theirs = diffusers_embeddings.get_timestep_embedding(t, 64, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@given(b=st.integers(1, 5), dim=st.integers(1, 48), freq=st.one_of(st.none(), st.integers(1, 48)))
def test_timestep_embedding_shape_and_grad(b, dim, freq):
    m = TimestepEmbedding(dim, frequency_dim=freq)
    out = m(torch.randint(0, 1000, (b,)))
    assert out.shape == (b, dim)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert isinstance(m.sinusoid, SinusoidalEmbedding) and m.sinusoid.dim == (freq or dim)


def test_timestep_embedding_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(b,\)"):
        TimestepEmbedding(8)(torch.zeros(2, 1))


@pytest.mark.parametrize(
    "t, error, message",
    [
        (
            torch.tensor([3.0, float("nan")]),
            ValueError,
            r"expected t of shape \(b,\) with finite t values >= 0, got \[nan\]",
        ),
        (torch.tensor([float("inf")]), ValueError, r"finite t values >= 0, got \[inf\]"),
        (torch.tensor([5, -1]), ValueError, r"finite t values >= 0, got \[-1\]"),
        (torch.zeros(0), ValueError, r"expected t of shape \(b,\) with no empty axis"),
        (torch.tensor([1 + 2j]), TypeError, r"expected t of shape \(b,\) to have an integer or real"),
        (torch.tensor([True]), TypeError, r"expected t of shape \(b,\) to have an integer or real"),
        (torch.tensor([3.0], device="meta"), ValueError, r"expected t of shape \(b,\) on cpu"),
        (3, TypeError, r"expected t to be a torch.Tensor of shape \(b,\)"),
    ],
)
def test_timesteps_nan_negative_empty_complex_rejected(t, error, message):
    with pytest.raises(error, match=message):
        TimestepEmbedding(8)(t)
    if isinstance(t, torch.Tensor) and t.device.type != "meta":
        with pytest.raises(
            error, match=message.replace("t of", "values of").replace(" t values", " values").replace(r"on cpu", "")
        ):
            sinusoidal_embedding(t, 8)
        with pytest.raises(error):
            SinusoidalEmbedding(8)(t)


def test_sinusoids_keep_float64():
    values = torch.tensor([0.0, 1.5, 999.0], dtype=torch.float64)
    emb = sinusoidal_embedding(values, 9)
    assert emb.dtype == torch.float64
    torch.testing.assert_close(
        emb[:, :4], torch.cos(values[:, None] * 10000.0 ** (-torch.arange(4.0, dtype=torch.float64) / 4))
    )
    assert (
        sinusoidal_embedding(values.float(), 9).dtype == sinusoidal_embedding(values.long(), 9).dtype == torch.float32
    )
    assert sincos_1d(4, values).dtype == torch.float64 and sincos_1d(4, torch.arange(3)).dtype == torch.float32
    assert sincos_2d(8, 2, 3, dtype=torch.float64).dtype == torch.float64
    torch.testing.assert_close(sincos_2d(8, 2, 3, dtype=torch.float64).float(), sincos_2d(8, 2, 3))


@given(dim=st.sampled_from([2, 4, 8, 32]), n=st.integers(1, 40))
def test_sincos_1d_distinct_and_bounded(dim, n):
    emb = sincos_1d(dim, torch.arange(n))
    assert emb.shape == (n, dim)
    assert emb.abs().max() <= 1
    # sin^2 + cos^2 = 1 per frequency
    torch.testing.assert_close(emb[:, : dim // 2] ** 2 + emb[:, dim // 2 :] ** 2, torch.ones(n, dim // 2))


@given(dim=st.sampled_from([4, 8, 16, 64]), h=st.integers(1, 12), w=st.integers(1, 12))
def test_sincos_2d_rows_and_columns(dim, h, w):
    emb = sincos_2d(dim, h, w).reshape(h, w, dim)
    # the first half depends only on the row, the second only on the column
    assert torch.equal(emb[:, :1, : dim // 2].expand(h, w, dim // 2), emb[..., : dim // 2])
    assert torch.equal(emb[:1, :, dim // 2 :].expand(h, w, dim // 2), emb[..., dim // 2 :])
    flat = emb.reshape(h * w, dim)
    if h * w > 1:
        assert torch.cdist(flat, flat).add(torch.eye(h * w) * 10).min() > 1e-3


def test_sincos_rejects_bad_dims():
    with pytest.raises(ValueError, match="even"):
        sincos_1d(3, torch.arange(4))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(6, 2, 2)


@given(b=st.integers(1, 3), groups=st.integers(1, 4), per=st.integers(1, 5), hw=st.integers(1, 4))
def test_channel_shuffle_is_the_shufflenet_permutation(b, groups, per, hw):
    c = groups * per
    x = torch.randn(b, c, hw, hw)
    y = channel_shuffle(x, groups)
    perm = channel_shuffle_permutation(c, groups)
    assert torch.equal(y, x[:, perm])
    assert sorted(perm.tolist()) == list(range(c))
    for i in range(groups):
        for j in range(per):
            assert torch.equal(y[:, j * groups + i], x[:, i * per + j])
    assert torch.equal(ChannelShuffle(groups)(x), y)


def test_channel_shuffle_rejects_indivisible():
    with pytest.raises(ValueError, match="divisible by groups=3"):
        channel_shuffle(torch.randn(1, 4, 2, 2), 3)


@given(c=st.integers(1, 200))
def test_num_groups_divides(c):
    g = num_groups_for(c)
    assert c % g == 0 and 1 <= g <= 32
    assert group_norm(c).num_groups == g


def test_modulate_formula():
    x = torch.randn(2, 3, 4, 5)
    shift, scale = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[..., None, None]) + shift[..., None, None])


@given(
    b=st.integers(1, 3),
    c=st.sampled_from([4, 8, 12]),
    e=st.integers(1, 16),
    spatial=st.lists(st.integers(2, 5), min_size=1, max_size=3),
)
def test_scale_shift_group_norm(b, c, e, spatial):
    m = ScaleShiftGroupNorm(c, e)
    x = torch.randn(b, c, *spatial)
    emb = torch.randn(b, e)
    y = m(x, emb)
    assert y.shape == x.shape
    scale, shift = m.proj(torch.nn.functional.silu(emb)).chunk(2, dim=1)
    torch.testing.assert_close(y, modulate(m.norm(x), shift, scale))


@given(
    b=st.integers(1, 3),
    c=st.sampled_from([4, 6, 8]),
    spatial=st.lists(st.integers(2, 4), min_size=1, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_scale_shift_group_norm_folded_affine_matches_the_composition(b, c, spatial, seed):
    """The block folds GroupNorm's affine into the scale-shift; values and gradients must not change."""
    gen = torch.Generator().manual_seed(seed)
    m = ScaleShiftGroupNorm(c, 5, max_groups=2).double()  # float64: only a real difference can fail
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(b, c, *spatial, generator=gen, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(b, 5, generator=gen, dtype=torch.float64, requires_grad=True)

    def reference():
        scale, shift = m.proj(torch.nn.functional.silu(emb)).chunk(2, dim=1)
        return modulate(m.norm(x), shift, scale)

    y, ref = m(x, emb), reference()
    torch.testing.assert_close(y, ref)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(m(x, emb), ref)
    leaves = [x, emb, *m.parameters()]
    grad_out = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, leaves, grad_out), torch.autograd.grad(ref, leaves, grad_out)):
        torch.testing.assert_close(got, want)


@given(
    b=st.integers(1, 3),
    groups=st.integers(1, 4),
    per=st.integers(1, 4),
    hw=st.integers(1, 3),
    scale=st.sampled_from([None, 0.5]),
)
def test_add_channel_shuffled_equals_add_of_the_shuffle(b, groups, per, hw, scale):
    c = groups * per
    x = torch.randn(b, c, hw, hw, requires_grad=True)
    y = torch.randn(b, c, hw, hw, requires_grad=True)
    out = add_channel_shuffled(x, y, groups, scale)
    ref = (x + channel_shuffle(y, groups)) * (1.0 if scale is None else scale)
    assert out.shape == (b, c, hw, hw)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn(out.shape)
    for got, want in zip(torch.autograd.grad(out, (x, y), grad_out), torch.autograd.grad(ref, (x, y), grad_out)):
        torch.testing.assert_close(got, want)


def test_add_channel_shuffled_rejects():
    with pytest.raises(ValueError, match="same shape"):
        add_channel_shuffled(torch.randn(1, 4, 2, 2), torch.randn(1, 6, 2, 2), 2)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        add_channel_shuffled(torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), 3)


def test_scale_shift_group_norm_rejects():
    m = ScaleShiftGroupNorm(8, 4)
    with pytest.raises(ValueError, match="c=8"):
        m(torch.randn(2, 6, 3, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(b, e\) with e=4"):
        m(torch.randn(2, 8, 3, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match="batch"):
        m(torch.randn(2, 8, 3, 3), torch.randn(3, 4))


@given(b=st.integers(1, 3), n=st.integers(1, 20), m=st.integers(1, 20))
def test_attention_and_transformer_block_shapes(b, n, m):
    torch.manual_seed(0)
    x = torch.randn(b, n, 16)
    ctx = torch.randn(b, m, 12)
    assert Attention(16, heads=2, dim_head=8)(x).shape == (b, n, 16)
    assert Attention(16, heads=2, dim_head=8, context_dim=12)(x, ctx).shape == (b, n, 16)
    block = TransformerBlock(16, heads=2, dim_head=8, context_dim=12)
    out = block(x, ctx)
    assert out.shape == (b, n, 16)
    out.sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    attn = Attention(16, heads=2, dim_head=8)
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)
    torch.testing.assert_close(attn(x)[:, perm], attn(x[:, perm]), atol=1e-6, rtol=1e-5)


def test_transformer_block_requires_context_when_built_with_it():
    with pytest.raises(ValueError, match="context"):
        TransformerBlock(8, heads=1, dim_head=8, context_dim=4)(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match=r"\(b, n, dim\) with dim=8"):
        Attention(8, heads=1, dim_head=8)(torch.randn(1, 3, 9))
