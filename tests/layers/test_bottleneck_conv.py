"""EVDM's bottleneck convolution (eqs. 9-10): shapes, the two paths, conditioning and gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.bottleneck_conv import BottleneckConv
from vdblocks.layers.modulation import ScaleShiftGroupNorm


@given(
    b=st.integers(1, 2),
    c_in=st.integers(1, 12),
    width=st.integers(1, 6),
    c_out=st.integers(1, 12),
    hw=st.integers(1, 6),
    emb=st.sampled_from([None, 5]),
)
def test_shapes_and_the_two_paths_concatenated(b, c_in, width, c_out, hw, emb):
    torch.manual_seed(0)
    conv = BottleneckConv(c_in, width, c_out, emb)
    x = torch.randn(b, c_in, hw, hw + 1)
    e = None if emb is None else torch.randn(b, emb)
    out = conv(x, e)
    assert out.shape == (b, c_out, hw, hw + 1)
    paths = conv.branches(x, e)
    assert [p.shape[1] for p in paths] == ([c_out - c_out // 2, c_out // 2] if c_out > 1 else [1])
    torch.testing.assert_close(out, torch.cat(paths, dim=1))
    assert isinstance(conv.norm, ScaleShiftGroupNorm) == (emb is not None)


def test_the_embedding_reaches_the_output_and_every_parameter_learns():
    torch.manual_seed(0)
    conv = BottleneckConv(6, 4, 8, emb_dim=3)
    with torch.no_grad():  # ScaleShiftGroupNorm starts as plain GroupNorm (zero projection)
        conv.norm.proj.weight.normal_()
    x, e = torch.randn(2, 6, 5, 5), torch.randn(2, 3)
    assert not torch.allclose(conv(x, e), conv(x, e + 1))
    conv(x, e).square().mean().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("c_out", [1, 2, 7])
def test_a_one_channel_output_has_no_pointwise_path(c_out):
    conv = BottleneckConv(3, 2, c_out, None)
    assert (conv.conv1x1 is None) == (c_out == 1)
