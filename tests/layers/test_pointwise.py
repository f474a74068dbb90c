import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from vdblocks.layers import PointwiseConv2d, pointwise_conv2d


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4]))
    c_in = groups * draw(st.integers(1, 5))
    c_out = groups * draw(st.integers(1, 5))
    extra = draw(st.integers(0, 3))  # channels around the input: x is a channel slice when > 0
    return dict(
        groups=groups,
        c_in=c_in,
        c_out=c_out,
        extra=extra,
        b=draw(st.integers(1, 3)),
        h=draw(st.integers(1, 6)),
        w=draw(st.integers(1, 6)),
        bias=draw(st.booleans()),
        offset=draw(st.integers(0, extra)),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=60, deadline=None)
@given(case=conv_case())
def test_equals_conv2d_in_value_and_gradient(case):
    gen = torch.Generator().manual_seed(case["seed"])
    b, c_in, c_out, g = case["b"], case["c_in"], case["c_out"], case["groups"]
    f64 = dict(generator=gen, dtype=torch.float64)  # only a real difference (not rounding) can fail
    full = torch.randn(b, c_in + case["extra"], case["h"], case["w"], **f64)
    weight = torch.randn(c_out, c_in // g, 1, 1, **f64, requires_grad=True)
    bias = torch.randn(c_out, **f64, requires_grad=True) if case["bias"] else None
    full.requires_grad_()
    x = full[:, case["offset"] : case["offset"] + c_in]  # a strided view when extra > 0
    ours = pointwise_conv2d(x, weight, bias, groups=g)
    ref = F.conv2d(x, weight, bias, groups=g)
    assert ours.shape == (b, c_out, case["h"], case["w"]) and ours.is_contiguous()
    torch.testing.assert_close(ours, ref)
    grad_out = torch.randn(ours.shape, **f64)
    leaves = [t for t in (full, weight, bias) if t is not None]
    got = torch.autograd.grad(ours, leaves, grad_out)
    want = torch.autograd.grad(ref, leaves, grad_out)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)


def test_no_grad_matches_and_channels_last_input_works():
    x = torch.randn(2, 8, 5, 3).contiguous(memory_format=torch.channels_last)
    conv = PointwiseConv2d(8, 6, groups=2)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, groups=2))


def test_module_is_a_conv2d_with_interchangeable_state_dict():
    torch.manual_seed(0)
    ours = PointwiseConv2d(12, 8, groups=4)
    plain = nn.Conv2d(12, 8, kernel_size=1, groups=4)
    assert isinstance(ours, nn.Conv2d)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(3, 12, 4, 4)
    torch.testing.assert_close(ours(x), plain(x))
    assert PointwiseConv2d(4, 4, bias=False).bias is None


def test_rejects_mismatched_shapes():
    w = torch.randn(6, 4, 1, 1)
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c = 8"):
        pointwise_conv2d(torch.randn(1, 6, 2, 2), w, groups=2)
    with pytest.raises(ValueError, match=r"\(c_out, c_in / groups, 1, 1\)"):
        pointwise_conv2d(torch.randn(1, 4, 2, 2), torch.randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(b, c, h, w\)"):
        pointwise_conv2d(torch.randn(4, 2, 2), w)
