"""CMD autoencoder: latent shapes for non-square inputs and several L, the static-video content frame,
eq. 6's broadcast sum, the image-latent codec, gradients and boundary checks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference_models.cmd.autoencoder import (
    CMDAutoencoder,
    ImageLatentCodec,
    pack_motion,
    unpack_motion,
)
from reference_models.cmd.config import get_config

SMALL = dict(
    ae_dim=16,
    ae_depth=1,
    ae_heads=2,
    ae_dim_head=8,
    motion_channels=3,
    content_dit_dim=16,
    content_dit_heads=2,
    content_dit_depth=1,
    motion_dim=16,
    motion_heads=2,
    motion_depth=1,
    content_dit_patch=2,
    content_patch=2,
    motion_patch=1,
)


def small_cfg(**kw):
    return get_config("tiny", **{**SMALL, "ae_patch": 2, "frames": 2, "height": 4, "width": 6, **kw})


def randomize_content_logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.content_head.to_logits.weight
        w.copy_(torch.randn(w.shape, generator=g))


@given(
    frames=st.integers(1, 4), gh=st.integers(1, 3), gw=st.integers(1, 3), p=st.sampled_from([1, 2]), pixel=st.booleans()
)
def test_latent_and_reconstruction_shapes_for_any_size(frames, gh, gw, p, pixel):
    cfg = small_cfg(ae_patch=p, ae_pixel_weights=pixel)
    model = CMDAutoencoder(cfg).eval()
    x = torch.randn(2, 3, frames, gh * p, gw * p)
    recon, latents = model(x)
    assert latents.content.shape == (2, 3, gh * p, gw * p)
    assert latents.z_x.shape == (2, 3, frames, gh)  # (D, L, H')
    assert latents.z_y.shape == (2, 3, frames, gw)  # (D, L, W')
    assert latents.weights.shape == x.shape
    assert latents.motion.shape == (2, 3, frames, gh + gw)
    assert recon.shape == x.shape


@given(frames=st.integers(1, 4), seed=st.integers(0, 100))
def test_content_frame_of_a_static_video_is_the_frame(frames, seed):
    model = CMDAutoencoder(small_cfg())
    randomize_content_logits(model, seed)
    frame = torch.randn(2, 3, 1, 4, 6, generator=torch.Generator().manual_seed(seed))
    content = model.encode(frame.expand(-1, -1, frames, -1, -1)).content
    torch.testing.assert_close(content, frame[:, :, 0])


@given(seed=st.integers(0, 100))
def test_content_frame_lies_between_the_frames_per_pixel(seed):
    model = CMDAutoencoder(small_cfg(frames=3))
    randomize_content_logits(model, seed)
    x = torch.randn(1, 3, 3, 4, 6, generator=torch.Generator().manual_seed(seed))
    latents = model.encode(x)
    assert (latents.content <= x.amax(dim=2) + 1e-5).all() and (latents.content >= x.amin(dim=2) - 1e-5).all()
    torch.testing.assert_close(latents.weights.sum(dim=2), torch.ones(1, 3, 4, 6))


def test_decoder_input_is_the_eq6_broadcast_sum():
    model = CMDAutoencoder(small_cfg(frames=3)).eval()
    seen = {}
    handle = model.decoder.register_forward_pre_hook(lambda m, args: seen.setdefault("v", args[0]))
    content, z_x, z_y = torch.randn(1, 3, 4, 6), torch.randn(1, 3, 3, 2), torch.randn(1, 3, 3, 3)
    out = model.decode(content, z_x, z_y)
    handle.remove()
    assert out.shape == (1, 3, 3, 4, 6)
    v_t = model.content_embed(content)[0]  # C' h w
    v_x, v_y = model.motion_embed(z_x)[0], model.motion_embed(z_y)[0]  # C' L h, C' L w
    v = seen["v"][0]  # L h w C'
    for f, h, w in [(0, 0, 0), (2, 1, 2), (1, 0, 1)]:
        torch.testing.assert_close(v[f, h, w], v_t[:, h, w] + v_x[:, f, h] + v_y[:, f, w])


def test_pack_unpack_round_trip_and_decode_motion():
    z_x, z_y = torch.randn(2, 3, 4, 2), torch.randn(2, 3, 4, 5)
    z = pack_motion(z_x, z_y)
    assert z.shape == (2, 3, 4, 7)
    a, b = unpack_motion(z, 2)
    assert torch.equal(a, z_x) and torch.equal(b, z_y)
    with pytest.raises(ValueError, match=r"\(b, D, L, h \+ w\)"):
        unpack_motion(z, 7)


def test_every_parameter_gets_a_gradient():
    model = CMDAutoencoder(small_cfg(frames=2))
    randomize_content_logits(model)
    x = torch.randn(2, 3, 2, 4, 6)
    recon, _ = model(x)
    (recon - x).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_malformed_inputs_are_rejected_with_the_layout():
    model = CMDAutoencoder(small_cfg())
    with pytest.raises(ValueError, match=r"\(b, C, L, H, W\) with C=3"):
        model.encode(torch.randn(1, 4, 2, 4, 6))
    with pytest.raises(ValueError, match="divisible by ae_patch=2"):
        model.encode(torch.randn(1, 3, 2, 5, 6))
    with pytest.raises(ValueError, match=r"\(b, D, L, h\)"):
        model.decode(torch.randn(1, 3, 4, 6), torch.randn(1, 3, 2, 3), torch.randn(1, 3, 2, 3))


def tiny_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )


def test_image_codec_runs_cmd_on_scaled_frame_latents_and_stays_out_of_the_state_dict():
    vae = tiny_vae()
    codec = ImageLatentCodec(vae)
    assert codec.scaling_factor == vae.config.scaling_factor
    video = torch.rand(2, 3, 3, 8, 12) * 2 - 1  # pixels, non-square
    latents = codec.encode(video)
    assert latents.shape == (2, 4, 3, 4, 6)
    frame = video[:, :, 1]
    expected = vae.encode(frame).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(latents[:, :, 1], expected)
    torch.testing.assert_close(codec.decode(latents)[:, :, 1], vae.decode(expected / vae.config.scaling_factor).sample)

    model = CMDAutoencoder(small_cfg(channels=4, frames=3), image_codec=vae)
    assert not any(k.startswith("_image_codec") or "vae" in k for k in model.state_dict())
    assert all(not p.requires_grad for p in vae.parameters())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in CMDAutoencoder(small_cfg(channels=4, frames=3)).parameters())
    cmd = model.encode_video(video)
    assert cmd.content.shape == (2, 4, 4, 6) and cmd.z_x.shape == (2, 3, 3, 2) and cmd.z_y.shape == (2, 3, 3, 3)
    assert model.decode_video(*cmd).shape == video.shape
    model.double()
    assert next(model.image_codec.vae.parameters()).dtype == torch.float64  # moves with the model
