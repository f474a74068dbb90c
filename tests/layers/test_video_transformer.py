import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.video_transformer import (
    DividedSpaceTimeBlock,
    VideoPatchEmbed,
    VideoPatchUnembed,
    VideoTransformer,
    video_positions,
)


@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    pt=st.integers(1, 2),
    ph=st.integers(1, 3),
    pw=st.integers(1, 3),
    t=st.integers(1, 3),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
)
def test_patch_embed_unembed_shapes(b, c, pt, ph, pw, t, h, w):
    embed = VideoPatchEmbed(c, 8, (pt, ph, pw))
    unembed = VideoPatchUnembed(8, c, (pt, ph, pw))
    x = torch.randn(b, c, t * pt, h * ph, w * pw)
    tokens = embed(x)
    assert tokens.shape == (b, t, h, w, 8)
    assert unembed(tokens).shape == x.shape


def test_unembed_places_each_token_in_its_own_patch():
    unembed = VideoPatchUnembed(4, 2, (1, 2, 3))
    tokens = torch.randn(1, 2, 3, 2, 4)
    out = unembed(tokens)
    poked = tokens.clone()
    poked[0, 1, 2, 0, 0] += 1.0  # one channel: LayerNorm would cancel a shift of the whole token
    diff = (unembed(poked) - out).abs().sum(dim=(0, 1))  # t h w
    changed = diff.nonzero()
    assert set(changed[:, 0].tolist()) == {1}
    assert set(changed[:, 1].tolist()) <= {4, 5}
    assert set(changed[:, 2].tolist()) <= {0, 1, 2}


@given(t=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 100))
def test_block_is_equivariant_to_frame_and_pixel_permutations(t, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    block = DividedSpaceTimeBlock(8, heads=2, dim_head=4).eval()
    x = torch.randn(2, t, h, w, 8, generator=g)
    perm_t = torch.randperm(t, generator=g)
    perm_hw = torch.randperm(h * w, generator=g)

    def permute(v):
        v = v[:, perm_t].flatten(2, 3)[:, :, perm_hw]
        return v.unflatten(2, (h, w))

    torch.testing.assert_close(block(permute(x)), permute(block(x)), atol=1e-5, rtol=1e-5)


def test_time_attention_mixes_only_along_time():
    block = DividedSpaceTimeBlock(8, heads=2, dim_head=4).eval()
    x = torch.randn(1, 3, 2, 2, 8, requires_grad=True)
    from einops import rearrange

    xt = rearrange(x, "b t h w c -> (b h w) t c")
    out = xt + block.attn_time(block.norm_time(xt))
    out = rearrange(out, "(b h w) t c -> b t h w c", b=1, h=2, w=2)
    out[0, :, 1, 0].sum().backward()
    touched = x.grad.abs().sum(dim=(0, 1, 4))  # h w
    assert touched[1, 0] > 0 and touched.sum() == touched[1, 0]


@given(t=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4))
def test_transformer_takes_any_size_and_grads_reach_every_parameter(t, h, w):
    net = VideoTransformer(8, depth=2, heads=2, dim_head=4)
    x = torch.randn(2, t, h, w, 8)
    out = net(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_positions_distinguish_every_token():
    pos = video_positions(16, 3, 4, 5).flatten(0, 2)
    dist = torch.cdist(pos, pos) + torch.eye(len(pos)) * 1e3
    assert dist.min() > 1e-3


def test_bad_inputs_name_the_layout():
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\).*h divisible"):
        VideoPatchEmbed(3, 8, (1, 4, 4))(torch.randn(1, 3, 2, 6, 8))
    with pytest.raises(ValueError, match=r"\(b, t, h, w, dim\)"):
        DividedSpaceTimeBlock(8, 2, 4)(torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        VideoTransformer(6, 1)
    with pytest.raises(ValueError, match="patch_size"):
        VideoPatchEmbed(3, 8, (1, 4))
