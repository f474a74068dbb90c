"""Joint attention across planes of any sizes (PVDM section 3.2): shapes, agreement with plain SDPA
over the concatenated tokens in float64, plane-order equivariance, coupling, positions, gradients
and the boundary checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from vdblocks import JointPlaneAttention, attention_backend
from vdblocks.layers.plane_attention import plane_positions
from vdblocks.layers.transformer import Attention

# Every test is small; the ini's limit (240 s) is the fallback, this one says what is expected.
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.timeout(60)]


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    return module


def _planes(b: int, c: int, sizes, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h, w, generator=gen, dtype=dtype) for h, w in sizes]


def _block(channels=8, heads=2, **kw) -> JointPlaneAttention:
    torch.manual_seed(0)
    kw.setdefault("max_groups", max(1, channels // 2))  # two channels per group: 1 x 1 planes still normalise
    return _randomize(JointPlaneAttention(channels, heads, **kw)).double()


def reference(block: JointPlaneAttention, planes: list[torch.Tensor]) -> list[torch.Tensor]:
    """The block written out: functional GroupNorm per plane, ``torch.cat`` of the tokens, one
    ``F.scaled_dot_product_attention`` over all of them, split back, residual."""
    norm, attn = block.norm, block.attn
    tokens = torch.cat(
        [F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps).flatten(2).transpose(1, 2) for x in planes],
        dim=1,
    )  # b n c
    if block.positions == "triplane":
        tokens = tokens + plane_positions(block.channels, [tuple(x.shape[2:]) for x in planes], like=tokens)
    if isinstance(attn, Attention):
        q = F.linear(tokens, attn.to_q.weight, attn.to_q.bias)
        k, v = F.linear(tokens, attn.to_kv.weight, attn.to_kv.bias).chunk(2, dim=-1)
    else:
        q, k, v = F.linear(tokens, attn.to_qkv.weight, attn.to_qkv.bias).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (attn.heads, attn.dim_head)).transpose(1, 2)  # b k n d

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).flatten(2)  # b n (k d)
    out = F.linear(out, attn.to_out.weight, attn.to_out.bias)  # b n c
    parts = out.split([x.shape[2] * x.shape[3] for x in planes], dim=1)
    return [x + o.transpose(1, 2).reshape(x.shape) for x, o in zip(planes, parts)]


sizes = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4)


@given(
    b=st.integers(1, 2),
    heads=st.integers(1, 3),
    dim_head=st.integers(1, 6),
    channels=st.integers(2, 12),
    shapes=sizes,
    attention=st.sampled_from(["softmax", "mixed"]),
    triplane=st.booleans(),
)
def test_every_plane_comes_back_in_its_shape(b, heads, dim_head, channels, shapes, attention, triplane):
    if triplane:
        shapes = (shapes * 3)[:3]
    torch.manual_seed(0)
    block = JointPlaneAttention(
        channels,
        heads,
        dim_head,
        attention=attention,
        max_groups=channels // 2,
        positions="triplane" if triplane else None,
    )
    planes = _planes(b, channels, shapes)
    with torch.no_grad():
        out = block(planes)
    assert isinstance(out, list) and [o.shape for o in out] == [x.shape for x in planes]
    assert all(torch.isfinite(o).all() for o in out)


@given(
    b=st.integers(1, 2),
    shapes=sizes,
    attention=st.sampled_from(["softmax", "mixed"]),
    triplane=st.booleans(),
    dim_head=st.sampled_from([None, 3]),
)
def test_equals_sdpa_over_the_concatenated_tokens_in_float64(b, shapes, attention, triplane, dim_head):
    if triplane:
        shapes = (shapes * 3)[:3]
    # threshold 1e6: the mixed kernel takes its exact (softmax) path, which is what SDPA computes
    block = _block(attention=attention, threshold=1e6, dim_head=dim_head, positions="triplane" if triplane else None)
    planes = [x.requires_grad_() for x in _planes(b, 8, shapes, torch.float64)]
    out, expected = block(planes), reference(block, planes)
    assert all(o.dtype == torch.float64 for o in out)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, e, atol=1e-10, rtol=1e-10)
    # and the gradients: of the planes and of every parameter
    weights = [torch.randn_like(o) for o in out]
    params = [*planes, *block.parameters()]
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), params)
    want = torch.autograd.grad(sum((e * w).sum() for e, w in zip(expected, weights)), params)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, atol=1e-10, rtol=1e-10)


@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=2, max_size=4),
    attention=st.sampled_from(["softmax", "mixed"]),
    data=st.data(),
)
def test_without_positions_the_order_of_the_planes_does_not_matter(shapes, attention, data):
    """Attention is permutation-equivariant over tokens, and each plane is normalised on its own:
    permuting the planes permutes the results and changes nothing else."""
    block = _block(attention=attention, threshold=1e6)
    planes = _planes(2, 8, shapes, torch.float64)
    order = data.draw(st.permutations(range(len(planes))), label="order")
    with torch.no_grad():
        out = block(planes)
        permuted = block([planes[i] for i in order])
    for j, i in enumerate(order):
        torch.testing.assert_close(permuted[j], out[i], atol=1e-12, rtol=1e-12)


def test_every_plane_sees_every_other_and_a_zero_output_projection_is_the_identity():
    block = _block(positions="triplane")
    planes = _planes(1, 8, [(3, 4), (2, 4), (2, 3)], torch.float64)
    with torch.no_grad():
        base = block(planes)
        for k in range(3):
            # a random change (a constant one would vanish in the plane's GroupNorm)
            moved = block([x + torch.randn_like(x) if i == k else x for i, x in enumerate(planes)])
            for i in range(3):
                if i != k:  # plane i's result depends on plane k only through the joint attention
                    assert not torch.allclose(base[i], moved[i]), (k, i)
        block.attn.to_out.weight.zero_()
        block.attn.to_out.bias.zero_()
        for x, o in zip(planes, block(planes)):
            assert torch.equal(x, o)


def test_triplane_positions_tell_places_apart():
    """Without positions, two planes holding the same values at permuted places get the permuted
    result; with PVDM's positions they do not."""
    plain, placed = _block(), _block(positions="triplane")
    z = _planes(1, 8, [(3, 3)], torch.float64)[0]
    planes = [z, z.flip(-1), z.flip(-2)]
    with torch.no_grad():
        out_plain, out_placed = plain(planes), placed(planes)
    torch.testing.assert_close(out_plain[1], out_plain[0].flip(-1))
    assert not torch.allclose(out_placed[1], out_placed[0].flip(-1))


@given(t=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), dim=st.integers(1, 24))
def test_plane_positions_share_features_along_shared_axes(t, h, w, dim):
    pos = plane_positions(dim, [(h, w), (t, w), (t, h)])
    assert pos.shape == (h * w + t * w + t * h, dim)
    p_s = pos[: h * w].reshape(h, w, dim)
    p_h = pos[h * w : h * w + t * w].reshape(t, w, dim)
    p_w = pos[h * w + t * w :].reshape(t, h, dim)
    a = 2 * (dim // 6)
    # the w part of z_s at column j equals the w part of z_h at column j, likewise h and t
    torch.testing.assert_close(p_s[0, :, 2 * a : 3 * a], p_h[0, :, 2 * a : 3 * a])
    torch.testing.assert_close(p_s[:, 0, a : 2 * a], p_w[0, :, a : 2 * a])
    torch.testing.assert_close(p_h[:, 0, :a], p_w[:, 0, :a])
    # and the axis a plane lacks is zero, as are the channels past 3a
    assert not p_s[..., :a].any() and not p_h[..., a : 2 * a].any() and not p_w[..., 2 * a : 3 * a].any()
    assert not pos[:, 3 * a :].any()


@pytest.mark.parametrize("attention", ["softmax", "mixed"])
def test_every_parameter_receives_a_gradient(attention):
    torch.manual_seed(0)
    block = JointPlaneAttention(8, 2, attention=attention, max_groups=4, positions="triplane")
    planes = _planes(2, 8, [(3, 4), (2, 4), (2, 3)])
    sum(o.square().mean() for o in block(planes)).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_the_kernel_goes_through_the_backend_dispatch():
    block = _block()
    planes = _planes(2, 8, [(3, 4), (2, 5)], torch.float64)
    with torch.no_grad():
        default = block(planes)
        with attention_backend("math"):
            math = block(planes)
    for d, m in zip(default, math):
        torch.testing.assert_close(d, m, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown"):
        JointPlaneAttention(8, 2, backend="no-such-backend")([torch.randn(2, 8, 2, 2)])


def test_malformed_planes_raise_errors_naming_the_layout():
    block = JointPlaneAttention(8, 2)
    ok = torch.randn(2, 8, 3, 4)
    layout = r"\(b, c, h_i, w_i\)"
    with pytest.raises(TypeError, match=f"expected planes to be a list of tensors of shape {layout} with c=8"):
        block(ok)
    with pytest.raises(ValueError, match=f"non-empty list of tensors of shape {layout}"):
        block([])
    with pytest.raises(ValueError, match=f"expected planes\\[1\\] of shape {layout}.*rank 4"):
        block([ok, torch.randn(2, 8, 12)])
    with pytest.raises(ValueError, match=f"expected planes\\[0\\] of shape {layout} with c=8, got \\(2, 6, 3, 4\\)"):
        block([torch.randn(2, 6, 3, 4), ok])
    with pytest.raises(
        ValueError, match=f"expected planes\\[2\\] of shape {layout} with b=2, c=8, got \\(3, 8, 1, 1\\)"
    ):
        block([ok, ok, torch.randn(3, 8, 1, 1)])
    with pytest.raises(TypeError, match="torch.float32"):
        block([ok, ok.double()])
    with pytest.raises(ValueError, match="three planes"):
        JointPlaneAttention(8, 2, positions="triplane")([ok, ok])
    with pytest.raises(ValueError, match=r"b\*h\*w > 1"):  # one channel per group would normalise single values
        JointPlaneAttention(8, 2)([ok[:1], torch.randn(1, 8, 1, 1)])


def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match="divisible by heads"):
        JointPlaneAttention(8, 3)
    assert JointPlaneAttention(8, 3, dim_head=4).attn.heads == 3  # an explicit dim_head needs no divisor
    with pytest.raises(ValueError, match="attention"):
        JointPlaneAttention(8, 2, attention="linear")
    with pytest.raises(ValueError, match="positions"):
        JointPlaneAttention(8, 2, positions="sincos")
    with pytest.raises(ValueError, match="three planes"):
        plane_positions(8, [(2, 2)])
