"""CMD's content-frame and motion-latent heads: eq. 3 and eq. 4 properties."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.content_frame import ContentFrameHead, MotionLatentHead

DIM = 6


def _head(channels=3, patch_size=None):
    torch.manual_seed(0)
    head = ContentFrameHead(DIM, channels, patch_size=patch_size)
    with torch.no_grad():  # logits of order 1-10, so the weights are far from uniform
        head.to_logits.weight.mul_(10)
    return head


@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    t=st.integers(1, 4),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    p=st.sampled_from([1, 2, 4]),
    explicit=st.booleans(),
)
def test_content_frame_is_a_convex_combination_of_frames(b, c, t, h, w, p, explicit):
    head = _head(c, p if explicit else None)
    x = torch.randn(b, c, t, h * p, w * p)
    u = torch.randn(b, DIM, t, h, w)
    content, weights = head(x, u)
    assert content.shape == (b, c, h * p, w * p)
    assert weights.shape == (b, c, t, h * p, w * p)
    assert (weights > 0).all()
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(b, c, h * p, w * p))
    eps = 1e-5
    assert (content >= x.amin(dim=2) - eps).all()
    assert (content <= x.amax(dim=2) + eps).all()


@pytest.mark.parametrize("patch_size", [None, 1, 2, 4])
def test_static_video_gives_its_frame_back(patch_size):
    head = _head(patch_size=patch_size)
    p = patch_size or 2
    frame = torch.randn(2, 3, 1, 3 * p, 5 * p)
    content, _ = head(frame.expand(-1, -1, 4, -1, -1), torch.randn(2, DIM, 4, 3, 5))
    torch.testing.assert_close(content, frame[:, :, 0])


@pytest.mark.parametrize("p", [1, 2, 4])
def test_explicit_patch_unpatchifies_per_pixel_logits(p):
    # Independent reference: the logit of pixel (h p + i, w p + j), channel c is entry
    # c p p + i p + j of the linear applied to token (t, h, w), then a softmax over t.
    head = _head(2, p)
    b, t, h, w = 1, 3, 2, 3
    x, u = torch.randn(b, 2, t, h * p, w * p), torch.randn(b, DIM, t, h, w)
    with torch.no_grad():
        content, weights = head(x, u)
        logits = torch.empty(b, 2, t, h * p, w * p)
        for ti in range(t):
            for hi in range(h):
                for wi in range(w):
                    out = head.to_logits(u[0, :, ti, hi, wi])
                    for c in range(2):
                        for i in range(p):
                            for j in range(p):
                                logits[0, c, ti, hi * p + i, wi * p + j] = out[c * p * p + i * p + j]
    expected_weights = logits.softmax(dim=2)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(content, (x * expected_weights).sum(dim=2))


@pytest.mark.parametrize("p", [1, 2, 4])
def test_inferred_patch_shares_weights_within_a_patch(p):
    head = _head(2)
    x, u = torch.randn(1, 2, 3, 2 * p, 3 * p), torch.randn(1, DIM, 3, 2, 3)
    with torch.no_grad():
        _, weights = head(x, u)
        per_token = head.to_logits(u[0].permute(1, 2, 3, 0)).permute(3, 0, 1, 2).softmax(dim=1)  # c t h w
    for i in range(p):
        for j in range(p):
            torch.testing.assert_close(weights[0, :, :, i::p, j::p], per_token)


def test_single_frame_is_returned_exactly():
    x = torch.randn(2, 3, 1, 4, 4)
    content, weights = _head()(x, torch.randn(2, DIM, 1, 2, 2))
    assert torch.equal(weights, torch.ones_like(weights))
    assert torch.equal(content, x[:, :, 0])


@pytest.mark.parametrize("patch_size", [None, 2])
def test_content_head_gradients(patch_size):
    head = _head(patch_size=patch_size)
    x = torch.randn(2, 3, 3, 4, 6, requires_grad=True)
    u = torch.randn(2, DIM, 3, 2, 3, requires_grad=True)
    content, weights = head(x, u)
    (content.pow(2).sum() + weights.pow(2).sum()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert torch.isfinite(x.grad).all() and torch.isfinite(u.grad).all()
    assert u.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "x_shape, u_shape, patch_size, error, message",
    [
        ((2, 3, 4, 8), (2, DIM, 4, 4, 4), None, ValueError, r"x of shape \(b, c, t, H, W\) with c=3"),
        ((2, 4, 4, 8, 8), (2, DIM, 4, 4, 4), None, ValueError, r"x of shape \(b, c, t, H, W\) with c=3"),
        ((2, 3, 4, 8, 8), (2, DIM, 4, 4), None, ValueError, r"u of shape \(b, dim, t, h, w\)"),
        ((2, 3, 4, 8, 8), (2, DIM + 1, 4, 4, 4), None, ValueError, rf"u of shape \(b, dim, t, h, w\) with dim={DIM}"),
        ((2, 3, 4, 8, 8), (2, DIM, 3, 4, 4), None, ValueError, r"u of shape \(b, dim, t, h, w\) with .*t=4"),
        ((2, 3, 4, 8, 8), (1, DIM, 4, 4, 4), None, ValueError, "batch size b"),
        ((2, 3, 4, 9, 8), (2, DIM, 4, 4, 4), None, ValueError, r"H = h \* p"),
        ((2, 3, 4, 8, 12), (2, DIM, 4, 4, 4), None, ValueError, r"H = h \* p and W = w \* p"),
        ((2, 3, 4, 8, 8), (2, DIM, 4, 4, 4), 4, ValueError, r"H = h \* patch_size = 16"),
    ],
)
def test_content_head_rejects_malformed_input(x_shape, u_shape, patch_size, error, message):
    with pytest.raises(error, match=message):
        _head(3, patch_size)(torch.randn(x_shape), torch.randn(u_shape))


def test_content_head_rejects_wrong_dtypes():
    head = _head()
    with pytest.raises(TypeError, match=r"x of shape \(b, c, t, H, W\)"):
        head(torch.ones(1, 3, 2, 4, 4, dtype=torch.uint8), torch.randn(1, DIM, 2, 2, 2))
    with pytest.raises(TypeError, match=r"u of shape \(b, dim, t, h, w\)"):
        head(torch.randn(1, 3, 2, 4, 4), torch.ones(1, DIM, 2, 2, 2, dtype=torch.long))


@given(
    b=st.integers(1, 2),
    d=st.integers(1, 4),
    t=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    shared=st.booleans(),
)
def test_motion_latents_match_axis_means_through_a_1x1_conv(b, d, t, h, w, shared):
    torch.manual_seed(0)
    head = MotionLatentHead(DIM, d, shared=shared)
    u = torch.randn(b, DIM, t, h, w)
    z_x, z_y = head(u)
    assert z_x.shape == (b, d, t, h)
    assert z_y.shape == (b, d, t, w)
    f_y = head.f_x if shared else head.f_y
    for z, conv, mean in ((z_x, head.f_x, u.mean(dim=4)), (z_y, f_y, u.mean(dim=3))):
        expected = torch.einsum("oc,bcij->boij", conv.weight[:, :, 0, 0], mean) + conv.bias[None, :, None, None]
        torch.testing.assert_close(z, expected)
    assert len(list(head.parameters())) == (2 if shared else 4)


def test_motion_latents_see_only_their_axis_average():
    torch.manual_seed(0)
    head = MotionLatentHead(DIM, 4)
    u = torch.randn(2, DIM, 3, 4, 5)
    along_w = torch.randn(2, DIM, 3, 4, 5)
    along_w = along_w - along_w.mean(dim=4, keepdim=True)  # zero mean across width (x)
    along_h = torch.randn(2, DIM, 3, 4, 5)
    along_h = along_h - along_h.mean(dim=3, keepdim=True)  # zero mean across height (y)
    with torch.no_grad():
        z_x, z_y = head(u)
        z_x_w, z_y_w = head(u + along_w)
        z_x_h, z_y_h = head(u + along_h)
    torch.testing.assert_close(z_x_w, z_x)
    torch.testing.assert_close(z_y_h, z_y)
    assert not torch.allclose(z_y_w, z_y, atol=1e-3)
    assert not torch.allclose(z_x_h, z_x, atol=1e-3)


@pytest.mark.parametrize("shared", [True, False])
def test_motion_head_gradients(shared):
    head = MotionLatentHead(DIM, 3, shared=shared)
    u = torch.randn(2, DIM, 3, 4, 5, requires_grad=True)
    z_x, z_y = head(u)
    (z_x.pow(2).sum() + z_y.pow(2).sum()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert torch.isfinite(u.grad).all()


@pytest.mark.parametrize(
    "u, error",
    [
        (torch.randn(2, DIM, 3, 4), ValueError),
        (torch.randn(2, DIM + 2, 3, 4, 5), ValueError),
        (torch.ones(2, DIM, 3, 4, 5, dtype=torch.int32), TypeError),
    ],
)
def test_motion_head_rejects_malformed_input(u, error):
    with pytest.raises(error, match=r"u of shape \(b, dim, t, h, w\)"):
        MotionLatentHead(DIM, 3)(u)
