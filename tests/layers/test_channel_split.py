import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.channel_split import ChannelSplit


def _randomize(module: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@st.composite
def split_sizes(draw):
    ratio = draw(st.sampled_from([1, 2, 4]))
    c_out = draw(st.integers(ratio, 13))
    c_in = draw(st.integers(1, 13))
    return c_in, c_out, ratio


def _reference(m: ChannelSplit, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
    """Section 3.4 written out with functional ops and an explicit shuffle index formula."""
    c_in, c_out, d = m.in_channels, m.out_channels, m.direct_channels
    if c_in < c_out:
        direct, x_b = x, x
    else:
        direct, x_b = x[:, :d], x[:, d:]
    p = m.paths
    y = F.conv2d(x_b, p.bottleneck.weight, p.bottleneck.bias)
    if emb is None:
        y = F.group_norm(y, p.norm.num_groups, p.norm.weight, p.norm.bias, p.norm.eps)
    else:
        gn = p.norm.norm
        scale, shift = F.linear(F.silu(emb), p.norm.proj.weight, p.norm.proj.bias).chunk(2, dim=1)
        y = F.group_norm(y, gn.num_groups, gn.weight, gn.bias, gn.eps) * (1 + scale[..., None, None])
        y = y + shift[..., None, None]
    paths = [F.conv2d(y, p.conv3x3.weight, p.conv3x3.bias, padding=1)]
    if p.conv1x1 is not None:
        paths.append(F.conv2d(y, p.conv1x1.weight, p.conv1x1.bias))
    cat = torch.cat([direct, *paths], dim=1)
    g = m.shuffle_groups
    per = c_out // g
    out = torch.empty_like(cat)
    for i in range(g):  # channel i * (C / g) + j goes to j * g + i
        for j in range(per):
            out[:, j * g + i] = cat[:, i * per + j]
    return out


@given(
    sizes=split_sizes(),
    b=st.integers(1, 3),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    emb_dim=st.one_of(st.none(), st.integers(1, 6)),
)
def test_shape_widths_and_reference(sizes, b, h, w, emb_dim):
    c_in, c_out, ratio = sizes
    m = ChannelSplit(c_in, c_out, emb_dim=emb_dim, bottleneck_ratio=ratio)
    _randomize(m, seed=c_in * 100 + c_out)
    # float64: a GroupNorm over one value per sample (h = w = 1) multiplies rounding by 1/sqrt(eps)
    m.double()
    x = torch.randn(b, c_in, h, w, dtype=torch.float64)
    emb = None if emb_dim is None else torch.randn(b, emb_dim, dtype=torch.float64)
    if b * h * w == 1 and any(
        isinstance(g, torch.nn.GroupNorm) and g.num_channels == g.num_groups for g in m.modules()
    ):
        # a GroupNorm with one channel per group would normalize single values
        with pytest.raises(ValueError, match=r"\(b, c, h, w\) with b\*h\*w > 1"):
            m(x, emb)
        return
    y = m(x, emb)
    assert y.shape == (b, c_out, h, w)
    # the two cases of section 3.4
    if c_in < c_out:
        assert (m.direct_channels, m.bottleneck_in_channels) == (c_in, c_in)
    else:
        assert (m.direct_channels, m.bottleneck_in_channels) == (c_out // 2, c_in - c_out // 2)
    assert m.direct_channels + m.conv_channels == c_out
    assert m.bottleneck_channels == c_out // ratio == m.paths.bottleneck.out_channels
    torch.testing.assert_close(y, _reference(m, x, emb), atol=1e-5, rtol=1e-5)


@given(
    sizes=split_sizes(),
    groups=st.sampled_from([None, 1, 2, 3]),
    emb_dim=st.one_of(st.none(), st.just(3)),
    seed=st.integers(0, 2**16),
)
def test_gradients_and_no_grad_path_match_the_reference(sizes, groups, emb_dim, seed):
    """The split writes its parts straight to their shuffled channels; that must change nothing."""
    c_in, c_out, ratio = sizes
    if groups is not None and c_out % groups:
        groups = 1
    m = ChannelSplit(c_in, c_out, emb_dim=emb_dim, bottleneck_ratio=ratio, shuffle_groups=groups)
    _randomize(m, seed)
    m.double()  # float64, so that only a real difference (not summation order) can fail the test
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, c_in, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    emb = None if emb_dim is None else torch.randn(2, emb_dim, generator=gen, dtype=torch.float64)
    y, ref = m(x, emb), _reference(m, x, emb)
    torch.testing.assert_close(y, ref)
    with torch.no_grad():
        torch.testing.assert_close(m(x, emb), ref)
    leaves = [x, *m.parameters()]
    grad_out = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(y, leaves, grad_out, allow_unused=True)
    want = torch.autograd.grad(ref, leaves, grad_out, allow_unused=True)
    for a, e in zip(got, want):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e)


@given(sizes=split_sizes(), groups=st.sampled_from([None, 1, 2, 3]), seed=st.integers(0, 2**16))
def test_direct_link_is_an_exact_copy(sizes, groups, seed):
    c_in, c_out, ratio = sizes
    if groups is not None and c_out % groups:
        groups = 1
    m = ChannelSplit(c_in, c_out, emb_dim=3, bottleneck_ratio=ratio, shuffle_groups=groups)
    _randomize(m, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, c_in, 3, 4, generator=gen) * 5
    y = m(x, torch.randn(2, 3, generator=gen))
    mapping = m.direct_link_map()
    assert len(mapping) == m.direct_channels
    outs = [o for o, _ in mapping]
    assert len(set(outs)) == len(outs) and all(0 <= o < c_out for o in outs)
    assert sorted(i for _, i in mapping) == list(range(m.direct_channels))
    for o, i in mapping:
        assert torch.equal(y[:, o], x[:, i])


def test_shuffle_moves_the_direct_link_off_a_fixed_prefix():
    m = ChannelSplit(8, 8, bottleneck_ratio=2, shuffle_groups=2)
    assert m.direct_link_map() != [(j, j) for j in range(m.direct_channels)]
    plain = ChannelSplit(8, 8, bottleneck_ratio=2, shuffle_groups=1)
    assert plain.direct_link_map() == [(j, j) for j in range(plain.direct_channels)]


@pytest.mark.parametrize("c_in, c_out, emb_dim", [(3, 8, None), (5, 8, 4), (12, 7, 4), (8, 8, None), (9, 4, 2)])
def test_every_parameter_gets_a_finite_gradient(c_in, c_out, emb_dim):
    torch.manual_seed(0)
    m = ChannelSplit(c_in, c_out, emb_dim=emb_dim, bottleneck_ratio=2)
    x = torch.randn(2, c_in, 4, 4, requires_grad=True)
    emb = None if emb_dim is None else torch.randn(2, emb_dim)
    y = m(x, emb)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(x.grad).all()


def test_emb_changes_only_the_conv_channels():
    torch.manual_seed(0)
    m = ChannelSplit(6, 10, emb_dim=4, bottleneck_ratio=2)
    _randomize(m, 3)
    x = torch.randn(2, 6, 3, 3)
    y1, y2 = m(x, torch.randn(2, 4)), m(x, torch.randn(2, 4))
    direct = {o for o, _ in m.direct_link_map()}
    conv = [o for o in range(10) if o not in direct]
    assert not torch.allclose(y1[:, conv], y2[:, conv])
    assert torch.equal(y1[:, sorted(direct)], y2[:, sorted(direct)])


def test_rejects_malformed_input():
    m = ChannelSplit(6, 8, emb_dim=4)
    x, emb = torch.randn(2, 6, 4, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=6"):
        m(torch.randn(6, 4, 4), emb)  # wrong rank
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=6"):
        m(torch.randn(2, 5, 4, 4), emb)  # wrong channels
    with pytest.raises(TypeError, match=r"\(b, c, h, w\)"):
        m(torch.zeros(2, 6, 4, 4, dtype=torch.int64), emb)
    with pytest.raises(TypeError, match=r"\(b, c, h, w\).*float32"):
        m(x.double(), emb.double())
    with pytest.raises(ValueError, match=r"batch size b"):
        m(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(b, e\) with e=4"):
        m(x, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(b, e\) with e=4"):
        m(x)
    with pytest.raises(ValueError, match=r"emb_dim=None"):
        ChannelSplit(6, 8)(x, emb)


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="out_channels >= bottleneck_ratio"):
        ChannelSplit(8, 3, bottleneck_ratio=4)
    with pytest.raises(ValueError, match="shuffle_groups to divide out_channels"):
        ChannelSplit(8, 9, shuffle_groups=2)
    with pytest.raises(TypeError):
        ChannelSplit(8, 8, bottleneck_ratio=2.0)


def test_runs_on_meta_device():
    with torch.device("meta"):
        block = ChannelSplit(8, 16, emb_dim=4)
        out = block(torch.empty(2, 8, 4, 4), torch.empty(2, 4))
    assert out.shape == (2, 16, 4, 4) and out.device.type == "meta"
