"""PVDM's triplane U-Net: any plane grid (odd, non-square, tiny), shared weights per plane, joint
attention that couples the planes, the condition / null paths, gradients and input validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_models.common.unet_blocks import adm_res_block
from reference_models.pvdm.config import DiffusionConfig, get_diffusion_config
from reference_models.pvdm.planes import pack_planes, unpack_planes
from reference_models.pvdm.unet import TriplaneUNet, _per_plane
from vdblocks import JointPlaneAttention

SMALL = dict(
    latent_channels=2,
    base_channels=8,
    channel_mult=(1, 2),
    attn_resolutions=(1, 2),
    num_res_blocks=1,
    heads=2,
    latent_frames=3,
    latent_height=4,
    latent_width=5,
)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised branches would hide most inputs from the output; nudge every weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturbed(TriplaneUNet(get_diffusion_config("tiny", **SMALL)))


def latent(grid, b=2, c=2, seed=0):
    t, h, w = grid
    return torch.randn(b, c, h * w + t * w + t * h, generator=torch.Generator().manual_seed(seed))


@given(t=st.integers(1, 9), h=st.integers(1, 9), w=st.integers(1, 9), b=st.integers(1, 2))
def test_any_plane_grid_comes_back_in_the_same_shape(model, t, h, w, b):
    z = latent((t, h, w), b)
    t_ = torch.randint(0, 1000, (b,))
    with torch.no_grad():
        eps = model(z, t_, cond=latent((t, h, w), b, seed=1), grid=(t, h, w))
    assert eps.shape == z.shape and torch.isfinite(eps).all()


def test_table6_presets():
    for name, width in (("pvdm_s", 128), ("pvdm_l", 256)):
        cfg = get_diffusion_config(name)
        assert (cfg.base_channels, cfg.channel_mult, cfg.attn_resolutions, cfg.num_res_blocks, cfg.heads) == (
            width,
            (1, 2, 4),
            (4, 2, 1),
            2,
            8,
        )
        spec = cfg.diffusion
        assert (spec.schedule, spec.beta_start, spec.beta_end, spec.num_train_steps) == (
            "scaled_linear",
            0.0015,
            0.0195,
            1000,
        )
        assert (spec.prediction_type, spec.clip_sample) == ("epsilon", True)
        assert cfg.latent_size == 8192
        assert DiffusionConfig.from_dict(cfg.to_dict()) == cfg


def test_planes_of_one_shape_are_batched_without_mixing():
    torch.manual_seed(0)
    block = perturbed(adm_res_block(3, 4, 6))
    xs = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 4, 4)]
    embs = [torch.randn(2, 6) for _ in range(3)]
    together = _per_plane(block, xs, embs)
    for x, e, y in zip(xs, embs, together):
        torch.testing.assert_close(block(x, e), y)


def test_joint_attention_couples_the_planes(model):
    """Changing z_s changes the noise predicted for z_h and z_w (they meet only in the joint
    attention), and each plane's prediction depends on its own plane."""
    grid = (3, 4, 5)
    z = latent(grid, 1)
    t = torch.tensor([500])
    with torch.no_grad():
        base = unpack_planes(model(z, t, grid=grid), grid)
        planes = list(unpack_planes(z, grid))
        planes[0] = planes[0] + 1.0
        moved = unpack_planes(model(pack_planes(*planes), t, grid=grid), grid)
    for k in range(3):
        assert not torch.allclose(base[k], moved[k], atol=1e-5), k


def test_without_joint_attention_the_planes_are_independent():
    torch.manual_seed(0)
    net = perturbed(TriplaneUNet(get_diffusion_config("tiny", **{**SMALL, "attn_resolutions": ()})))
    # the middle block always attends; take its attention out to see the planes run apart
    net.mid_attn.forward = lambda xs: xs
    grid = (3, 4, 5)
    z = latent(grid, 1)
    with torch.no_grad():
        base = unpack_planes(net(z, torch.tensor([10]), grid=grid), grid)
        planes = list(unpack_planes(z, grid))
        planes[0] = planes[0] + 1.0
        moved = unpack_planes(net(pack_planes(*planes), torch.tensor([10]), grid=grid), grid)
    assert not torch.allclose(base[0], moved[0])
    torch.testing.assert_close(base[1], moved[1])
    torch.testing.assert_close(base[2], moved[2])


def test_null_condition_hides_the_condition_and_conditional_path_sees_it(model):
    grid = (3, 4, 5)
    z, t = latent(grid), torch.tensor([100, 700])
    c1, c2 = latent(grid, seed=5), latent(grid, seed=6)
    off = torch.tensor([False, False])
    with torch.no_grad():
        null = model(z, t, grid=grid)
        torch.testing.assert_close(model(z, t, cond=c1, cond_mask=off, grid=grid), null)
        torch.testing.assert_close(model(z, t, cond=c2, cond_mask=off, grid=grid), null)
        a = model(z, t, cond=c1, grid=grid)
        b = model(z, t, cond=c2, grid=grid)
        mixed = model(z, t, cond=c1, cond_mask=torch.tensor([True, False]), grid=grid)
    assert not torch.allclose(a, b) and not torch.allclose(a, null)
    torch.testing.assert_close(mixed[0], a[0])
    torch.testing.assert_close(mixed[1], null[1])
    # a zero condition is not the null condition: the flag channel tells them apart
    with torch.no_grad():
        zero = model(z, t, cond=torch.zeros_like(z), grid=grid)
    assert not torch.allclose(zero, null)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(2)
    net = perturbed(TriplaneUNet(get_diffusion_config("tiny", **SMALL))).train()
    grid = (3, 4, 5)
    eps = net(
        latent(grid), torch.tensor([3, 900]), cond=latent(grid, seed=1), cond_mask=torch.tensor([1, 0]), grid=grid
    )
    eps.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_zero_init_starts_from_zero_output():
    net = TriplaneUNet(get_diffusion_config("tiny", **SMALL))
    assert not net(latent((3, 4, 5)), torch.tensor([1, 2]), grid=(3, 4, 5)).any()


def test_joint_attention_is_the_library_block_with_triplane_positions(model):
    """PVDM's readings of the joint attention: sin-cos positions of the video axes each token lies
    on, and GroupNorm with at least two channels per group (a 1 x 1 plane still normalises)."""
    blocks = [m for m in model.modules() if isinstance(m, JointPlaneAttention)]
    assert len(blocks) == 1 + 2 * 1 + 2 * 2  # mid, attn_resolutions (1, 2) down (1 each) and up (2 each)
    for block in blocks:
        assert block.positions == "triplane" and block.attention == "softmax"
        assert block.norm.num_channels // block.norm.num_groups >= 2


def test_malformed_inputs_are_rejected(model):
    grid = (3, 4, 5)
    z, t = latent(grid), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"\(b, c, n\) with c=2"):
        model(latent(grid, c=3), t, grid=grid)
    with pytest.raises(ValueError, match="n = h w \\+ t w \\+ t h = 47"):
        model(z[..., :-1], t, grid=grid)
    with pytest.raises(ValueError, match=r"t of shape \(b,\) with b=2"):
        model(z, torch.tensor([1]), grid=grid)
    with pytest.raises(ValueError, match=r"cond of shape \(b, c, n\)"):
        model(z, t, cond=z[:1], grid=grid)
    with pytest.raises(ValueError, match=r"cond_mask of shape \(b,\)"):
        model(z, t, cond=z, cond_mask=torch.ones(3), grid=grid)
    with pytest.raises(ValueError, match="no cond"):
        model(z, t, cond_mask=torch.ones(2), grid=grid)
    with pytest.raises(ValueError, match="three positive ints"):
        model(z, t, grid=(3, 4))
    with pytest.raises(ValueError, match="attn_resolutions"):
        get_diffusion_config("tiny", attn_resolutions=(8,))
    with pytest.raises(ValueError, match="divisible by heads"):
        get_diffusion_config("tiny", heads=3)
