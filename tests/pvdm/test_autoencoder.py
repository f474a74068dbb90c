"""PVDM's autoencoder: latent sizes, encode/decode shapes for any patch-divisible video, tanh-bounded
planes, plane packing, input validation, configs, and a short run that lowers the reconstruction loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from reference_models.pvdm.autoencoder import PVDMAutoencoder
from reference_models.pvdm.config import AutoencoderConfig, get_autoencoder_config
from reference_models.pvdm.planes import pack_planes, plane_shapes, unpack_planes
from vdblocks.layers.triplane import triplane_latent_size

# A very small autoencoder: width 16, one block everywhere; patch 1 x 2 x 2.
SMALL = dict(
    channels=3,
    frames=4,
    height=8,
    width=8,
    patch_size=(1, 2, 2),
    dim=16,
    encoder_depth=1,
    decoder_depth=1,
    heads=2,
    dim_head=8,
    mlp_ratio=2.0,
    proj_depth=1,
    proj_heads=2,
    proj_mlp_dim=16,
    latent_channels=4,
    use_gan=False,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PVDMAutoencoder(get_autoencoder_config("tiny", **SMALL)).eval()


@given(t=st.integers(1, 20), h=st.integers(1, 40), w=st.integers(1, 40), c=st.integers(1, 8))
def test_latent_size_is_hw_plus_tw_plus_th_times_c(t, h, w, c):
    numbers = triplane_latent_size(t, h, w, c)
    assert numbers == (h * w + t * w + t * h) * c
    z = [torch.zeros(1, c, *s) for s in plane_shapes((t, h, w))]
    assert pack_planes(*z).numel() == numbers


def test_paper_preset_encodes_16x256x256_rgb_into_8192_numbers():
    cfg = get_autoencoder_config("paper")
    assert (cfg.frames, cfg.height, cfg.width, cfg.channels) == (16, 256, 256, 3)
    grid = cfg.latent_grid()
    assert grid == (16, 32, 32)
    assert triplane_latent_size(*grid, cfg.latent_channels) == 8192
    # The real model agrees, on shapes only (the 16k-token transformer is not run).
    with FakeTensorMode():
        ae = PVDMAutoencoder(cfg)
        z = ae.encode_packed(torch.zeros(1, 3, 16, 256, 256))
    assert tuple(z.shape) == (1, 4, 2048) and z[0].numel() == 8192


@given(t=st.integers(1, 5), hp=st.integers(1, 4), wp=st.integers(1, 4), b=st.integers(1, 2))
def test_encode_decode_shapes_for_non_square_frames_and_odd_frame_counts(model, t, hp, wp, b):
    x = torch.rand(b, 3, t, 2 * hp, 2 * wp) * 2 - 1
    z_s, z_h, z_w = model.encode(x)
    assert z_s.shape == (b, 4, hp, wp) and z_h.shape == (b, 4, t, wp) and z_w.shape == (b, 4, t, hp)
    assert model.decode(z_s, z_h, z_w).shape == x.shape
    grid = model.latent_grid(t, 2 * hp, 2 * wp)
    z = model.encode_packed(x)
    assert z.shape == (b, 4, hp * wp + t * wp + t * hp)
    assert model.decode_packed(z, grid).shape == x.shape


@given(scale=st.floats(0.1, 100.0), seed=st.integers(0, 100))
def test_planes_lie_in_minus_one_one_even_for_extreme_inputs(model, scale, seed):
    x = torch.randn(2, 3, 3, 6, 4, generator=torch.Generator().manual_seed(seed)) * scale
    for z in model.encode(x):
        assert z.abs().max() <= 1.0
        assert torch.isfinite(z).all()


@given(t=st.integers(1, 4), h=st.integers(1, 5), w=st.integers(1, 5))
def test_pack_unpack_round_trip(t, h, w):
    planes = [torch.randn(2, 3, *s) for s in plane_shapes((t, h, w))]
    back = unpack_planes(pack_planes(*planes), (t, h, w))
    assert all(torch.equal(a, b) for a, b in zip(planes, back))


def test_decoder_volume_carries_each_plane_along_its_missing_axis(model):
    """g_psi sees v_shw = [z_s[h, w], z_h[t, w], z_w[t, h]]: changing z_h at (t, w) only changes
    frame t (the decoder's time attention mixes frames, so check with the time-local path: the
    from_latent projection of the volume)."""
    z = [torch.zeros(1, 4, *s) for s in plane_shapes((3, 4, 2))]
    z[1][0, :, 1, 0] = 1.0  # z_h at t=1, w=0
    from vdblocks.layers.triplane import triplane_expand

    v = triplane_expand(*z)  # 1 3C t h w
    changed = v.abs().sum(1)[0] > 0  # t h w
    assert changed[1, :, 0].all() and changed.sum() == 4  # every h at (t=1, w=0), nothing else


def test_malformed_input_is_rejected_with_the_expected_layout(model):
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\) with c=3"):
        model.encode(torch.zeros(1, 1, 2, 4, 4))
    with pytest.raises(ValueError, match="height to be a positive multiple of the patch size 2"):
        model.encode(torch.zeros(1, 3, 2, 5, 4))
    with pytest.raises(ValueError, match="rank 5"):
        model.encode(torch.zeros(3, 2, 4, 4))
    with pytest.raises(ValueError, match=r"n = h w \+ t w \+ t h = 12"):
        unpack_planes(torch.zeros(1, 4, 15), (2, 2, 2))
    with pytest.raises(TypeError, match="AutoencoderConfig"):
        PVDMAutoencoder({"dim": 16})


def test_config_validation_and_round_trip():
    cfg = get_autoencoder_config("tiny")
    assert AutoencoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="frames to be a positive multiple of the patch size 2"):
        get_autoencoder_config("tiny", patch_size=(2, 4, 4), frames=7)
    with pytest.raises(ValueError, match="patch_size"):
        get_autoencoder_config("tiny", patch_size=(1, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        get_autoencoder_config("tiny", dim=18)
    with pytest.raises(TypeError, match="unknown AutoencoderConfig fields"):
        get_autoencoder_config("tiny", depth=3)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(1)
    ae = PVDMAutoencoder(get_autoencoder_config("tiny", **SMALL))
    x = torch.rand(2, 3, 3, 4, 6) * 2 - 1
    (ae(x) - x).abs().mean().backward()
    for name, p in ae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_a_short_run_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    ae = PVDMAutoencoder(get_autoencoder_config("tiny", **SMALL))
    x = torch.rand(4, 3, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)

    def l1() -> torch.Tensor:
        return (ae(x) - x).abs().mean()

    with torch.no_grad():
        before = l1().item()
    for _ in range(30):
        loss = l1()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = l1().item()
    assert after < 0.9 * before
