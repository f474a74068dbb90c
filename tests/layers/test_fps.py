import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.embeddings import SinusoidalEmbedding, TimestepEmbedding
from vdblocks.layers.fps import FPSEmbedding


@given(
    b=st.integers(1, 4),
    dim=st.integers(1, 12),
    frequency_dim=st.integers(1, 12),
    fps=st.lists(st.floats(0, 120), min_size=4, max_size=4),
    integer=st.booleans(),
)
def test_shapes_and_shared_sinusoid(b, dim, frequency_dim, fps, integer):
    te = TimestepEmbedding(16, frequency_dim=frequency_dim)
    emb = FPSEmbedding(dim, te)
    values = torch.tensor(fps[:b])
    if integer:
        values = values.round().long()
    out = emb(values)
    assert out.shape == (b, dim) and out.dtype == torch.float32
    assert emb.sinusoid is te.sinusoid
    torch.testing.assert_close(out, emb.mlp(te.sinusoid(values)))


def test_mlp_is_three_linears_widening_fourfold():
    te = TimestepEmbedding(32, frequency_dim=24)
    emb = FPSEmbedding(8, te)
    linears = [m for m in emb.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(24, 32), (32, 32), (32, 8)]


def test_timestep_mlp_not_duplicated():
    te = TimestepEmbedding(16)
    emb = FPSEmbedding(16, te)
    own = {id(p) for p in emb.parameters()}
    assert own.isdisjoint(id(p) for p in te.parameters())
    assert own == {id(p) for p in emb.mlp.parameters()}
    model = nn.ModuleDict({"t": te, "fps": emb})
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in te.parameters()) + sum(
        p.numel() for p in emb.mlp.parameters()
    )


def test_accepts_bare_sinusoid():
    sin = SinusoidalEmbedding(10)
    emb = FPSEmbedding(6, sin)
    assert emb.sinusoid is sin
    fps = torch.tensor([0.0, 30.0, 120.0])
    torch.testing.assert_close(emb(fps), emb.mlp(sin(fps)))


def test_fps_changes_output_and_int_equals_float():
    emb = FPSEmbedding(8, TimestepEmbedding(8))
    out = emb(torch.tensor([1, 8, 24, 30, 60, 120]))
    dist = torch.cdist(out, out) + torch.eye(6) * 1e9
    assert dist.min() > 0
    torch.testing.assert_close(emb(torch.tensor([8, 60])), emb(torch.tensor([8.0, 60.0])))


def test_every_parameter_gets_a_gradient():
    emb = FPSEmbedding(8, TimestepEmbedding(8))
    emb(torch.tensor([3.0, 24.0, 119.5])).square().sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("bad", [[-1.0], [120.5], [10.0, math.nan], [0.0, math.inf]])
def test_out_of_range_fps_rejected(bad):
    emb = FPSEmbedding(4, TimestepEmbedding(4))
    with pytest.raises(ValueError, match=r"\[0, 120\]"):
        emb(torch.tensor(bad))


def test_malformed_fps_rejected_naming_shape():
    emb = FPSEmbedding(4, TimestepEmbedding(4))
    with pytest.raises(ValueError, match=r"\(b,\)"):
        emb(torch.tensor([[8.0]]))
    with pytest.raises(ValueError, match=r"\(b,\)"):
        emb(torch.tensor(8.0))
    with pytest.raises(TypeError, match=r"\(b,\)"):
        emb(8.0)
    with pytest.raises(TypeError, match="dtype"):
        emb(torch.tensor([True]))
    with pytest.raises(TypeError, match="TimestepEmbedding"):
        FPSEmbedding(4, nn.Linear(4, 4))
    with pytest.raises(ValueError, match="max_fps"):
        FPSEmbedding(4, TimestepEmbedding(4), max_fps=0)


@pytest.mark.parametrize("bad", [[math.nan], [math.inf], [-math.inf], [-0.5], [121.0]])
def test_non_finite_and_out_of_range_fps_name_the_layout(bad):
    emb = FPSEmbedding(4, TimestepEmbedding(4))
    with pytest.raises(ValueError, match=r"expected fps of shape \(b,\) with finite fps values in \[0, 120\]"):
        emb(torch.tensor(bad, dtype=torch.float64))


def test_fps_on_the_wrong_device_is_a_value_error():
    emb = FPSEmbedding(4, TimestepEmbedding(4))
    with pytest.raises(ValueError, match=r"expected fps of shape \(b,\) on cpu .*got torch.float32 on meta"):
        emb(torch.tensor([24.0], device="meta"))
    with pytest.raises(TypeError, match=r"fps of shape \(b,\) to have an integer or real"):
        emb(torch.tensor([24.0 + 0j]))


def test_runs_on_the_meta_device():
    """No value check where there are no values: the block traces shapes on meta (cost counting)."""
    with torch.device("meta"):
        emb = FPSEmbedding(8, TimestepEmbedding(8))
        out = emb(torch.tensor([24.0, 60.0]))
    assert out.shape == (2, 8) and out.device.type == "meta"


@pytest.mark.parametrize("strict", [False, True])
def test_exports_with_torch_export(strict):
    torch.manual_seed(0)
    emb = FPSEmbedding(8, TimestepEmbedding(8)).eval()
    fps = torch.tensor([24.0, 60.0])
    program = torch.export.export(emb, (fps,), strict=strict)
    other = torch.tensor([8.0, 119.5])
    torch.testing.assert_close(program.module()(other), emb(other))
