"""PVDM's triplane projector: shapes, axis locality, layout of the decoder volume, dispatch."""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.attention import MathBackend, attention_backend
from vdblocks.layers.embeddings import sincos_1d
from vdblocks.layers.triplane import AxisProjector, TriplaneProjector, triplane_expand, triplane_latent_size

sizes = st.integers(1, 4)


def _projector(dim=8, latent_channels=3, pool="token", **kwargs):
    torch.manual_seed(0)
    return TriplaneProjector(dim, latent_channels, depth=1, heads=2, pool=pool, **kwargs)


@given(
    b=st.integers(1, 2),
    dim=st.sampled_from([4, 5, 8]),
    c=st.integers(1, 4),
    t=sizes,
    h=sizes,
    w=sizes,
    pool=st.sampled_from(["token", "mean"]),
)
def test_shapes_and_range(b, dim, c, t, h, w, pool):
    model = _projector(dim, c, pool)
    u = torch.randn(b, dim, t, h, w) * 3
    z_s, z_h, z_w = model(u)
    assert z_s.shape == (b, c, h, w)
    assert z_h.shape == (b, c, t, w)
    assert z_w.shape == (b, c, t, h)
    for z in (z_s, z_h, z_w):
        assert torch.isfinite(z).all()
        assert z.abs().max() <= 1.0
    assert model.expand(z_s, z_h, z_w).shape == (b, 3 * c, t, h, w)


def test_one_module_takes_any_sequence_length():
    model = _projector()
    for t, h, w in [(1, 1, 1), (5, 3, 7), (2, 6, 1)]:
        z_s, z_h, z_w = model(torch.randn(1, 8, t, h, w))
        assert (z_s.shape[-2:], z_h.shape[-2:], z_w.shape[-2:]) == ((h, w), (t, w), (t, h))


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_each_code_sees_only_its_own_line(pool):
    # z_s at (h, w) reads the time line through (h, w), z_h at (t, w) the height line, z_w at
    # (t, h) the width line: changing one voxel changes exactly the codes whose line holds it.
    model = _projector(pool=pool)
    b, t, h, w = 2, 3, 4, 5
    u = torch.randn(b, 8, t, h, w)
    t0, h0, w0 = 1, 2, 3
    v = u.clone()
    # A random direction: a constant shift over channels would vanish in the LayerNorms.
    v[1, :, t0, h0, w0] += 3.0 * torch.randn(8)
    with torch.no_grad():
        before, after = model(u), model(v)
    masks = [
        torch.zeros(b, h, w, dtype=torch.bool),
        torch.zeros(b, t, w, dtype=torch.bool),
        torch.zeros(b, t, h, dtype=torch.bool),
    ]
    masks[0][1, h0, w0] = masks[1][1, t0, w0] = masks[2][1, t0, h0] = True
    for z0, z1, mask in zip(before, after, masks):
        diff = (z1 - z0).abs().amax(dim=1)  # largest change over the latent channels
        assert (diff[mask] > 1e-5).all()
        assert (diff[~mask] <= 1e-6).all()


def test_matches_each_projector_run_on_one_sequence():
    model = _projector()
    u = torch.randn(2, 8, 3, 4, 5)
    with torch.no_grad():
        z_s, z_h, z_w = model(u)
        for bi, ti, hi, wi in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 1, 0, 2)]:
            # Each sequence indexed directly, laid out as (1, l, dim), through its own projector.
            s_seq = u[bi, :, :, hi, wi].T[None]
            h_seq = u[bi, :, ti, :, wi].T[None]
            w_seq = u[bi, :, ti, hi, :].T[None]
            torch.testing.assert_close(z_s[bi, :, hi, wi], model.phi_s(s_seq)[0])
            torch.testing.assert_close(z_h[bi, :, ti, wi], model.phi_h(h_seq)[0])
            torch.testing.assert_close(z_w[bi, :, ti, hi], model.phi_w(w_seq)[0])


def test_positions_make_the_projection_order_aware():
    model = _projector(pool="mean")
    u = torch.randn(1, 8, 4, 2, 2)
    with torch.no_grad():
        z_s = model(u)[0]
        z_s_reversed = model(u.flip(2))[0]
    assert not torch.allclose(z_s, z_s_reversed, atol=1e-4)


@given(b=st.integers(1, 2), c=st.integers(1, 3), t=sizes, h=sizes, w=sizes)
def test_expand_places_each_plane(b, c, t, h, w):
    z_s, z_h, z_w = torch.randn(b, c, h, w), torch.randn(b, c, t, w), torch.randn(b, c, t, h)
    v = triplane_expand(z_s, z_h, z_w)
    expected = torch.empty(b, 3 * c, t, h, w)
    for ti in range(t):
        for hi in range(h):
            for wi in range(w):
                expected[:, :, ti, hi, wi] = torch.cat([z_s[:, :, hi, wi], z_h[:, :, ti, wi], z_w[:, :, ti, hi]], dim=1)
    assert torch.equal(v, expected)


def test_expand_method_matches_function_and_checks_latent_width():
    model = _projector(latent_channels=2)
    z = model(torch.randn(1, 8, 2, 3, 4))
    assert torch.equal(model.expand(*z), triplane_expand(*z))
    with pytest.raises(ValueError, match=r"\(b, c, h, w\) with c=2"):
        model.expand(torch.randn(1, 3, 3, 4), torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 3))


@given(b=st.integers(1, 2), c=st.integers(1, 3), t=sizes, h=sizes, w=sizes)
def test_expand_sum_adds_the_broadcast_planes(b, c, t, h, w):
    # CMD eq. 6: v_thw = z_s[h, w] + z_h[t, w] + z_w[t, h], i.e. the concatenated volume's three
    # channel groups added up.
    z_s, z_h, z_w = torch.randn(b, c, h, w), torch.randn(b, c, t, w), torch.randn(b, c, t, h)
    v = triplane_expand(z_s, z_h, z_w, combine="sum")
    assert v.shape == (b, c, t, h, w)
    torch.testing.assert_close(v, sum(triplane_expand(z_s, z_h, z_w).chunk(3, dim=1)))
    ti, hi, wi = t - 1, h // 2, w - 1
    torch.testing.assert_close(v[:, :, ti, hi, wi], z_s[:, :, hi, wi] + z_h[:, :, ti, wi] + z_w[:, :, ti, hi])


def test_expand_rejects_unknown_combine():
    z = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 3)
    with pytest.raises(ValueError, match="combine"):
        triplane_expand(*z, combine="mean")


@pytest.mark.parametrize(
    "shapes, layout",
    [
        (((1, 2, 3, 4), (1, 2, 5, 3), (1, 2, 5, 3)), r"z_h of shape \(b, c, t, w\)"),  # z_h w != z_s w
        (((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 6, 3)), r"z_w of shape \(b, c, t, h\)"),  # t differs
        (((1, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 4)), r"z_w of shape \(b, c, t, h\)"),  # z_w h != z_s h
        (((1, 2, 3, 4), (1, 3, 5, 4), (1, 2, 5, 3)), r"z_h of shape \(b, c, t, w\)"),  # channels
        (((2, 2, 3, 4), (1, 2, 5, 4), (1, 2, 5, 3)), r"z_h of shape \(b, c, t, w\)"),  # batch
        (((1, 2, 3), (1, 2, 5, 4), (1, 2, 5, 3)), r"z_s of shape \(b, c, h, w\)"),  # rank
    ],
)
def test_expand_rejects_inconsistent_planes(shapes, layout):
    with pytest.raises(ValueError, match=layout):
        triplane_expand(*(torch.randn(s) for s in shapes))


def test_expand_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match=r"z_h of shape \(b, c, t, w\) with dtype torch.float32"):
        triplane_expand(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4).double(), torch.randn(1, 2, 5, 3))


@given(c=st.integers(1, 4), t=sizes, h=sizes, w=sizes)
def test_latent_size_counts_the_planes(c, t, h, w):
    model = _projector(latent_channels=c)
    z = model(torch.randn(2, 8, t, h, w))
    per_video = sum(p[0].numel() for p in z)
    assert model.latent_size(t, h, w) == triplane_latent_size(t, h, w, c) == per_video
    assert per_video == (h * w + t * w + t * h) * c


def test_latent_size_of_pvdm_setting():
    # PVDM appendix D: 16 frames of 256x256 with patch 8 at C=4 give an 8,192-dim latent.
    patch = 8
    assert triplane_latent_size(16, 256 // patch, 256 // patch, 4) == 8192
    with pytest.raises(ValueError, match="positive int"):
        triplane_latent_size(0, 4, 4, 4)


@pytest.mark.parametrize("pool", ["token", "mean"])
def test_every_parameter_gets_a_finite_gradient(pool):
    model = _projector(pool=pool)
    u = torch.randn(2, 8, 3, 2, 5, requires_grad=True)
    z = model(u)
    triplane_expand(*z).pow(2).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(u.grad).all()
    assert (model.phi_s.token is not None) == (pool == "token")


def test_transformers_use_the_attention_dispatch():
    calls = []

    @dataclass(frozen=True)
    class Recording(MathBackend):
        name: str = "recording"

        def __call__(self, q, k, v, *, scale, projection_matrix=None):
            calls.append(tuple(q.shape))
            return super().__call__(q, k, v, scale=scale, projection_matrix=projection_matrix)

    b, t, h, w = 2, 3, 4, 5
    u = torch.randn(b, 8, t, h, w)
    model = TriplaneProjector(8, 3, depth=2, heads=2, dim_head=4)
    with attention_backend(Recording()):
        model(u)
    # (sequences, heads, tokens incl. the summary token, head dim) for phi_s, phi_h, phi_w, 2 blocks each.
    expected = [(b * h * w, 2, t + 1, 4)] * 2 + [(b * t * w, 2, h + 1, 4)] * 2 + [(b * t * h, 2, w + 1, 4)] * 2
    assert calls == expected
    calls.clear()
    TriplaneProjector(8, 3, depth=1, heads=2, backend=Recording())(u)
    assert len(calls) == 3


@pytest.mark.parametrize(
    "u, error, message",
    [
        (torch.randn(2, 8, 3, 4), ValueError, r"u of shape \(b, dim, t, h, w\) with dim=8"),
        (torch.randn(2, 6, 3, 4, 4), ValueError, r"u of shape \(b, dim, t, h, w\) with dim=8"),
        (torch.ones(2, 8, 3, 4, 4, dtype=torch.long), TypeError, r"u of shape \(b, dim, t, h, w\)"),
        ([[1.0]], TypeError, r"\(b, dim, t, h, w\)"),
    ],
)
def test_rejects_malformed_input(u, error, message):
    with pytest.raises(error, match=message):
        _projector()(u)


def test_rejects_bad_construction():
    with pytest.raises(ValueError, match="pool"):
        TriplaneProjector(8, 3, pool="max")
    with pytest.raises(ValueError, match="latent_channels"):
        TriplaneProjector(8, 0)
    with pytest.raises(ValueError, match=r"seq of shape \(n, l, dim\) with dim=8"):
        AxisProjector(8, 3, depth=1)(torch.randn(2, 3, 4))


def test_token_pooling_reads_the_summary_token():
    # Reference written out: [token, seq + positions] -> blocks -> output 0 -> norm -> linear -> tanh.
    torch.manual_seed(0)
    phi = AxisProjector(8, 3, depth=2, heads=2, pool="token")
    seq = torch.randn(4, 5, 8)
    with torch.no_grad():
        x = torch.cat([phi.token.expand(4, -1, -1), seq + sincos_1d(8, torch.arange(5))], dim=1)
        for block in phi.blocks:
            x = block(x)
        expected = torch.tanh(phi.to_latent(phi.norm(x[:, 0])))
        torch.testing.assert_close(phi(seq), expected)


@given(b=st.integers(1, 2), t=sizes, h=sizes, w=sizes, axis=st.sampled_from(["t", "h", "w"]))
def test_axis_projector_projects_a_volume_along_one_axis(b, t, h, w, axis):
    # Independent reference: every line along ``axis`` run through the projector one at a time.
    torch.manual_seed(1)
    phi = AxisProjector(8, 3, depth=1, heads=2)
    u = torch.randn(b, 8, t, h, w)
    with torch.no_grad():
        plane = phi.project(u, axis)
    kept = [n for n in "thw" if n != axis]
    sizes_ = dict(zip("thw", (t, h, w)))
    assert plane.shape == (b, 3, *(sizes_[n] for n in kept))
    for bi in range(b):
        for i in range(sizes_[kept[0]]):
            for j in range(sizes_[kept[1]]):
                index = {kept[0]: i, kept[1]: j, axis: slice(None)}
                line = u[bi, :, index["t"], index["h"], index["w"]]  # dim l
                with torch.no_grad():
                    expected = phi(line.T[None])[0]
                torch.testing.assert_close(plane[bi, :, i, j], expected, atol=1e-5, rtol=1e-4)


def test_triplane_projector_is_three_axis_projections():
    model = _projector()
    u = torch.randn(2, 8, 3, 4, 5)
    with torch.no_grad():
        planes = model(u)
        for plane, phi, axis in zip(planes, (model.phi_s, model.phi_h, model.phi_w), "thw"):
            assert torch.equal(plane, phi.project(u, axis))


def test_axis_projector_project_rejects_bad_axis_and_volume():
    phi = AxisProjector(8, 3, depth=1, heads=2)
    with pytest.raises(ValueError, match="axis"):
        phi.project(torch.randn(1, 8, 2, 2, 2), "s")
    with pytest.raises(ValueError, match=r"u of shape \(b, dim, t, h, w\) with dim=8"):
        phi.project(torch.randn(1, 4, 2, 2, 2), "h")
