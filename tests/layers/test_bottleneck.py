import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers import ScaleShiftGroupNorm, channel_shuffle
from vdblocks.layers.bottleneck import BottleneckResidualPathway
from vdblocks.layers.channel_split import ChannelSplit


def _randomize(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _n_params(module: nn.Module, kind: type | None = None) -> int:
    mods = [module] if kind is None else [m for m in module.modules() if isinstance(m, kind)]
    return sum(p.numel() for m in mods for p in m.parameters(recurse=kind is None))


class _BigGANBlock(nn.Module):
    """MCVD's baseline res block: two 3x3 convs, scale-shift GroupNorm before each, 1x1 shortcut."""

    def __init__(self, c_in, c_out, emb_dim):
        super().__init__()
        self.norm0, self.norm1 = ScaleShiftGroupNorm(c_in, emb_dim), ScaleShiftGroupNorm(c_out, emb_dim)
        self.conv0 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.conv1 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()


def _has_single_channel_group(m: nn.Module) -> bool:
    return any(isinstance(g, nn.GroupNorm) and g.num_channels == g.num_groups for g in m.modules())


@st.composite
def brp_config(draw):
    ratio = draw(st.sampled_from([1, 2, 4]))
    shortcut = draw(st.sampled_from(["conv", "group_shuffle"]))
    groups = draw(st.sampled_from([1, 2, 3])) if shortcut == "group_shuffle" else 4
    step = groups if shortcut == "group_shuffle" else 1
    c_in = step * draw(st.integers(1, 12 // step))
    c_out = step * draw(st.integers(max(1, -(-ratio // step)), 12 // step))
    kwargs = dict(
        bottleneck_ratio=ratio,
        shortcut=shortcut,
        shortcut_groups=groups,
        channel_split=draw(st.booleans()),
        temporal_enhancement=draw(st.booleans()),
        project_shortcut=draw(st.sampled_from([None, True])),
    )
    return c_in, c_out, kwargs


@given(cfg=brp_config(), b=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), e=st.integers(1, 6))
def test_shapes_over_generated_sizes(cfg, b, h, w, e):
    c_in, c_out, kwargs = cfg
    m = BottleneckResidualPathway(c_in, c_out, e, **kwargs)
    x, emb = torch.randn(b, c_in, h, w), torch.randn(b, e)
    if b * h * w == 1 and _has_single_channel_group(m):
        with pytest.raises(ValueError, match=r"\(b, c, h, w\) with b\*h\*w > 1"):
            m(x, emb)
        return
    y = m(x, emb)
    assert y.shape == (b, c_out, h, w)
    assert torch.isfinite(y).all()
    assert m.bottleneck_channels == c_out // kwargs["bottleneck_ratio"]
    for stage in (m.stage1, m.stage2):
        body = stage.body.paths if kwargs["channel_split"] else stage.body
        assert body.bottleneck.out_channels == m.bottleneck_channels
        assert isinstance(stage.body, ChannelSplit) == kwargs["channel_split"]
    if c_in == c_out and kwargs["project_shortcut"] is None:
        assert isinstance(m.shortcut, nn.Identity)


def _ss_norm(norm, y, emb):
    """Eq. 8's scale-shift GroupNorm with functional ops on the module's own weights."""
    gn = norm.norm
    scale, shift = F.linear(F.silu(emb), norm.proj.weight, norm.proj.bias).chunk(2, dim=1)
    y = F.group_norm(y, gn.num_groups, gn.weight, gn.bias, gn.eps)
    return y * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


def _reference(m: BottleneckResidualPathway, x, emb):
    """Eqs. 8-10 twice plus the skip, with functional ops on the block's own weights."""

    def ss_norm(norm, y):
        return _ss_norm(norm, y, emb)

    h = x
    for stage in (m.stage1, m.stage2):
        body = stage.body
        y = F.relu(ss_norm(stage.norm, h))  # eq. 8
        y = ss_norm(body.norm, F.conv2d(y, body.bottleneck.weight, body.bottleneck.bias))  # eq. 9
        h = torch.cat(  # eq. 10
            [
                F.conv2d(y, body.conv3x3.weight, body.conv3x3.bias, padding=1),
                F.conv2d(y, body.conv1x1.weight, body.conv1x1.bias),
            ],
            dim=1,
        )
    skip = F.conv2d(x, m.shortcut.weight, m.shortcut.bias)
    return (skip + h) / math.sqrt(2)


@given(c_in=st.integers(2, 10), c_out=st.integers(4, 10), seed=st.integers(0, 2**16))
def test_matches_functional_reference(c_in, c_out, seed):
    m = BottleneckResidualPathway(c_in, c_out, 5, bottleneck_ratio=2, project_shortcut=True)
    _randomize(m, seed)
    gen = torch.Generator().manual_seed(seed)
    x, emb = torch.randn(2, c_in, 4, 3, generator=gen), torch.randn(2, 5, generator=gen)
    torch.testing.assert_close(m(x, emb), _reference(m, x, emb), atol=1e-4, rtol=1e-4)


def _general_reference(m: BottleneckResidualPathway, x, emb):
    """Any BRP variant (channel split, group shortcut) as a plain composition of functional ops."""

    def ss_norm(norm, y):
        return _ss_norm(norm, y, emb)

    def paths(p, y):
        y = ss_norm(p.norm, F.conv2d(y, p.bottleneck.weight, p.bottleneck.bias))
        return [F.conv2d(y, p.conv3x3.weight, p.conv3x3.bias, padding=1), F.conv2d(y, p.conv1x1.weight, p.conv1x1.bias)]

    h = x
    for stage in (m.stage1, m.stage2):
        y = F.relu(ss_norm(stage.norm, h))
        body = stage.body
        if isinstance(body, ChannelSplit):
            d = body.direct_channels
            direct, x_b = (y[:, :d], y[:, d:]) if body.splits_input else (y, y)
            h = channel_shuffle(torch.cat([direct, *paths(body.paths, x_b)], dim=1), body.shuffle_groups)
        else:
            h = torch.cat(paths(body, y), dim=1)
    if m.shortcut_kind == "identity":
        skip = x
    elif m.shortcut_kind == "conv":
        skip = F.conv2d(x, m.shortcut.weight, m.shortcut.bias)
    else:
        conv = m.shortcut[0]
        skip = channel_shuffle(F.conv2d(x, conv.weight, conv.bias, groups=conv.groups), m.shortcut[1].groups)
    return (skip + h) / math.sqrt(2)


@given(
    kwargs=st.sampled_from(
        [
            {},
            {"shortcut": "group_shuffle", "shortcut_groups": 2},
            {"channel_split": True},
            {"channel_split": True, "shortcut": "group_shuffle", "shortcut_groups": 2},
        ]
    ),
    sizes=st.sampled_from([(4, 8), (8, 4), (8, 8), (6, 10)]),
    seed=st.integers(0, 2**16),
)
def test_every_variant_matches_the_reference_in_value_and_gradient(kwargs, sizes, seed):
    """The block's fused eager code (shuffle read as a view, in-place ops) is the paper's composition."""
    c_in, c_out = sizes
    m = BottleneckResidualPathway(c_in, c_out, 5, bottleneck_ratio=2, project_shortcut=True, **kwargs)
    _randomize(m, seed)
    m.double()  # float64, so that only a real difference (not summation order) can fail the test
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(2, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y, ref = m(x, emb), _general_reference(m, x, emb)
    torch.testing.assert_close(y, ref)
    with torch.no_grad():
        torch.testing.assert_close(m(x, emb), ref)
    leaves = [x, emb, *m.parameters()]
    grad_out = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(y, leaves, grad_out), torch.autograd.grad(ref, leaves, grad_out)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"shortcut": "group_shuffle", "shortcut_groups": 2},
        {"channel_split": True},
        {"channel_split": True, "shortcut": "group_shuffle", "bottleneck_ratio": 8, "dropout": 0.1},
        {"temporal_enhancement": False},
    ],
)
@pytest.mark.parametrize("c_in, c_out", [(8, 16), (24, 8), (16, 16)])
def test_every_parameter_gets_a_finite_gradient(kwargs, c_in, c_out):
    torch.manual_seed(0)
    m = BottleneckResidualPathway(c_in, c_out, 12, **kwargs)
    x = torch.randn(2, c_in, 5, 4, requires_grad=True)
    y = m(x, torch.randn(2, 12))
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("channel_split", [False, True])
def test_temporal_enhancement_controls_dependence_on_emb(channel_split):
    x = torch.randn(2, 8, 4, 4)
    e1, e2 = torch.randn(2, 6), torch.randn(2, 6)

    def build(**kw):
        m = BottleneckResidualPathway(8, 16, 6, channel_split=channel_split, **kw)
        _randomize(m, 1)
        return m

    # eq. 9 alone (no eq. 8 scale-shift) still makes the block depend on emb
    only_eh = build(temporal_enhancement=True, scale_shift_input=False)
    assert not torch.allclose(only_eh(x, e1), only_eh(x, e2))
    # with every scale-shift off the embedding is ignored
    plain = build(temporal_enhancement=False, scale_shift_input=False)
    assert torch.equal(plain(x, e1), plain(x, e2))
    assert torch.equal(plain(x, e1), plain(x))
    assert not any(isinstance(mod, ScaleShiftGroupNorm) for mod in plain.modules())
    # Table 8's "+BRP" row keeps eq. 8; turning on BRP-eh adds only the bottleneck scale-shift linears
    no_eh, eh = build(temporal_enhancement=False), build()
    assert not torch.allclose(no_eh(x, e1), no_eh(x, e2))
    extra = _n_params(eh) - _n_params(no_eh)
    bottleneck_linears = sum(
        _n_params(stage.body.norm.proj if not channel_split else stage.body.paths.norm.proj)
        for stage in (eh.stage1, eh.stage2)
    )
    assert extra == bottleneck_linears


@given(
    c_in=st.integers(1, 40),
    c_out=st.integers(8, 40),
    ratio=st.sampled_from([2, 4, 8]),
    channel_split=st.booleans(),
)
def test_convolutions_cheaper_than_biggan_block(c_in, c_out, ratio, channel_split):
    m = BottleneckResidualPathway(c_in, c_out, 4, bottleneck_ratio=ratio, channel_split=channel_split)
    base = _BigGANBlock(c_in, c_out, 4)
    assert _n_params(m, nn.Conv2d) < _n_params(base, nn.Conv2d)


@given(
    c_in=st.sampled_from([32, 48, 96]),
    c_out=st.sampled_from([32, 64, 96]),
    ratio=st.sampled_from([4, 8]),
    emb_dim=st.sampled_from([16, 64, 256]),
)
def test_whole_block_smaller_than_biggan_block(c_in, c_out, ratio, emb_dim):
    m = BottleneckResidualPathway(c_in, c_out, emb_dim, bottleneck_ratio=ratio)
    assert _n_params(m) < _n_params(_BigGANBlock(c_in, c_out, emb_dim))


@given(g=st.sampled_from([2, 4]), a=st.integers(1, 6), b=st.integers(1, 6), split=st.booleans())
def test_group_shuffle_shortcut_and_split_save_parameters(g, a, b, split):
    c_in, c_out = 4 * g * a, 4 * g * b
    kw = dict(shortcut_groups=g, channel_split=split, project_shortcut=True)
    conv = BottleneckResidualPathway(c_in, c_out, 8, shortcut="conv", **kw)
    grouped = BottleneckResidualPathway(c_in, c_out, 8, shortcut="group_shuffle", **kw)
    assert _n_params(grouped) < _n_params(conv)
    if not split:
        with_split = BottleneckResidualPathway(
            c_in, c_out, 8, shortcut="conv", channel_split=True, project_shortcut=True
        )
        assert _n_params(with_split) < _n_params(conv)


def test_dropout_only_acts_in_training():
    torch.manual_seed(0)
    ref = BottleneckResidualPathway(8, 8, 4)
    drop = BottleneckResidualPathway(8, 8, 4, dropout=0.5)
    drop.load_state_dict(ref.state_dict())
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 4)
    ref.eval(), drop.eval()
    torch.testing.assert_close(drop(x, emb), ref(x, emb))
    drop.train()
    assert not torch.allclose(drop(x, emb), ref(x, emb))


def test_rejects_malformed_input():
    m = BottleneckResidualPathway(8, 16, 6)
    x, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 6)
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=8"):
        m(torch.randn(2, 8, 4), emb)
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=8"):
        m(torch.randn(2, 4, 4, 4), emb)
    with pytest.raises(TypeError, match=r"\(b, c, h, w\)"):
        m(torch.zeros(2, 8, 4, 4, dtype=torch.int64), emb)
    with pytest.raises(TypeError, match=r"\(b, c, h, w\).*float32"):
        m(x.double(), emb.double())
    with pytest.raises(ValueError, match=r"batch size b"):
        m(x, torch.randn(3, 6))
    with pytest.raises(ValueError, match=r"\(b, e\) with e=6"):
        m(x, torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"\(b, e\) with e=6"):
        m(x)
    with pytest.raises(TypeError, match=r"\(b, e\)"):
        m(x, torch.zeros(2, 6, dtype=torch.int64))


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="out_channels >= bottleneck_ratio"):
        BottleneckResidualPathway(8, 3, 4, bottleneck_ratio=4)
    with pytest.raises(ValueError, match="shortcut_groups to divide in_channels and out_channels"):
        BottleneckResidualPathway(6, 8, 4, shortcut="group_shuffle", shortcut_groups=4)
    with pytest.raises(ValueError, match="shortcut to be one of"):
        BottleneckResidualPathway(8, 16, 4, shortcut="grouped")
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        BottleneckResidualPathway(8, 16, 4, project_shortcut=False)
    with pytest.raises(ValueError, match="emb_dim"):
        BottleneckResidualPathway(8, 16, None)
    with pytest.raises(ValueError, match="shuffle_groups to divide out_channels"):
        BottleneckResidualPathway(8, 9, 4, bottleneck_ratio=2, channel_split=True, split_shuffle_groups=2)
    # no scale-shift at all: emb_dim may be omitted and emb is optional
    m = BottleneckResidualPathway(8, 16, None, temporal_enhancement=False, scale_shift_input=False)
    assert m(torch.randn(1, 8, 2, 2)).shape == (1, 16, 2, 2)
