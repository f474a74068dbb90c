import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vdblocks.layers.grid import SpatialTemporalMixedEmbedding, grid_for, grid_to_video, video_to_grid

ORDERS = ("column", "row")


def frame_index(r, q, rows, cols, order):
    """Eq. 1: cell (row r, column q) holds frame r + q * rows (literal, column-major)."""
    return r + q * rows if order == "column" else r * cols + q


@st.composite
def videos(draw):
    t = draw(st.integers(1, 10))
    if draw(st.booleans()):
        rows, cols = grid_for(t)
    else:
        rows = draw(st.integers(1, 4))
        cols = draw(st.integers(-(-t // rows), -(-t // rows) + 2))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), t, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    return shape, (rows, cols)


# ---------------------------------------------------------------- grid_for


@given(t=st.integers(1, 400))
def test_grid_for_is_near_square_and_fits(t):
    rows, cols = grid_for(t)
    assert rows * cols >= t
    assert rows <= cols <= rows + 1
    assert (cols - 1) ** 2 < t <= cols**2  # cols = ceil(sqrt(t))
    assert rows * cols - t < cols  # no empty row of cells
    root = math.isqrt(t)
    if root * root == t:
        assert (rows, cols) == (root, root)


@pytest.mark.parametrize("bad", [0, -3, 2.0, True])
def test_grid_for_rejects_non_positive_ints(bad):
    with pytest.raises((ValueError, TypeError), match="num_frames"):
        grid_for(bad)


# ---------------------------------------------------------------- video_to_grid / grid_to_video


@given(spec=videos(), order=st.sampled_from(ORDERS))
def test_round_trip_and_shapes(spec, order):
    (b, c, t, h, w), (rows, cols) = spec
    video = torch.randn(b, c, t, h, w)
    image = video_to_grid(video, (rows, cols), order=order, pad_value=7.0)
    assert image.shape == (b, c, rows * h, cols * w)
    back = grid_to_video(image, (rows, cols), t, order=order)
    assert back.shape == (b, c, t, h, w)
    assert torch.equal(back, video)
    cells = grid_to_video(image, (rows, cols), order=order)
    assert cells.shape == (b, c, rows * cols, h, w)
    assert torch.equal(cells[:, :, t:], torch.full_like(cells[:, :, t:], 7.0))


@given(spec=videos())
def test_integer_videos_round_trip(spec):
    (b, c, t, h, w), grid = spec
    video = torch.randint(0, 256, (b, c, t, h, w), dtype=torch.uint8)
    image = video_to_grid(video, grid)
    assert image.dtype == torch.uint8
    assert torch.equal(grid_to_video(image, grid, t), video)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("t,grid,h,w", [(4, (2, 2), 3, 2), (6, (2, 3), 2, 3), (5, (2, 3), 2, 2), (1, (1, 1), 2, 3)])
def test_placement_matches_eq1_loop(order, t, grid, h, w):
    rows, cols = grid
    video = torch.randn(2, 3, t, h, w)
    image = video_to_grid(video, grid, order=order, pad_value=-5.0)
    for x in range(rows * h):
        for y in range(cols * w):
            frame = frame_index(x // h, y // w, rows, cols, order)
            expected = video[:, :, frame, x % h, y % w] if frame < t else torch.full((2, 3), -5.0)
            assert torch.equal(image[:, :, x, y], expected), (x, y)


def test_column_order_is_eq1_literal():
    # frames 0, 1 fill the first column, 2, 3 the second: V^{floor(x/h) + floor(y/w) * sqrt(T)}
    video = torch.arange(4.0).reshape(1, 1, 4, 1, 1)
    assert video_to_grid(video, (2, 2))[0, 0].tolist() == [[0.0, 2.0], [1.0, 3.0]]
    assert video_to_grid(video, (2, 2), order="row")[0, 0].tolist() == [[0.0, 1.0], [2.0, 3.0]]


def test_transfer_errors_name_expected_shape():
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\).*rows\*cols = 4"):
        video_to_grid(torch.randn(1, 1, 5, 2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        video_to_grid(torch.randn(1, 5, 2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"\(b, c, rows\*h, cols\*w\)"):
        grid_to_video(torch.randn(1, 1, 5, 4), (2, 2), 4)
    with pytest.raises(ValueError, match=r"num_frames <= rows\*cols"):
        grid_to_video(torch.randn(1, 1, 4, 4), (2, 2), 5)
    with pytest.raises(ValueError, match="order"):
        video_to_grid(torch.randn(1, 1, 4, 2, 2), (2, 2), order="diagonal")


@pytest.mark.parametrize("grid", [(2,), (2, 2, 2), (0, 2), (2, -1), (2.0, 2), "22", 4, torch.tensor([2, 2])])
def test_malformed_grid_rejected(grid):
    with pytest.raises((ValueError, TypeError), match=r"grid"):
        video_to_grid(torch.randn(1, 1, 2, 2, 2), grid)


# ---------------------------------------------------------------- SpatialTemporalMixedEmbedding


def reference_embedding(channels, rows, cols, h, w, theta, order):
    """Algorithm 1 of ETC, written as an explicit loop over (x, y, c) with eq. 1's frame index."""
    s = channels // 2
    out = torch.empty(channels, rows * h, cols * w, dtype=torch.float64)
    for x in range(rows * h):
        for y in range(cols * w):
            t = frame_index(x // h, y // w, rows, cols, order)
            for c in range(channels):
                if c < s:
                    d = theta ** (c / channels)
                    out[c, x, y] = math.sin((x % h) / d) + math.cos((y % w) / d)
                else:
                    d = theta ** ((c - s) / channels)
                    out[c, x, y] = math.sin(t / d) + math.cos(t / d)
    return out


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    "channels,grid,h,w", [(4, (2, 2), 3, 3), (5, (2, 3), 2, 3), (1, (3, 1), 2, 2), (6, (1, 1), 4, 2)]
)
def test_embedding_matches_algorithm1_loop(order, channels, grid, h, w):
    rows, cols = grid
    me = SpatialTemporalMixedEmbedding(channels, theta=100.0, order=order)
    emb = me.embedding(rows * h, cols * w, grid, dtype=torch.float64)
    torch.testing.assert_close(emb, reference_embedding(channels, rows, cols, h, w, 100.0, order))


@st.composite
def grid_images(draw):
    b, c = draw(st.integers(1, 2)), draw(st.integers(1, 9))
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    return b, c, rows, cols, h, w


@given(spec=grid_images(), order=st.sampled_from(ORDERS))
def test_forward_adds_embedding_and_halves_behave(spec, order):
    b, c, rows, cols, h, w = spec
    me = SpatialTemporalMixedEmbedding(c, order=order)
    x = torch.randn(b, c, rows * h, cols * w)
    emb = me.embedding(rows * h, cols * w, (rows, cols))
    assert emb.shape == (c, rows * h, cols * w)
    out = me(x, (rows, cols))
    assert out.shape == x.shape
    assert torch.equal(out, x + emb)

    s = c // 2
    frames = grid_to_video(emb[None], (rows, cols), order=order)[0]  # c cells h w
    spatial, temporal = frames[:s], frames[s:]
    # eq. 2: the same spatial code in every frame
    assert torch.equal(spatial, spatial[:, :1].expand_as(spatial))
    # eq. 3: one temporal code per frame, constant inside it, different between frames
    assert torch.equal(temporal, temporal[:, :, :1, :1].expand_as(temporal))
    codes = temporal[:, :, 0, 0].T  # cells c
    if rows * cols > 1:
        assert torch.cdist(codes.double(), codes.double()).add(torch.eye(rows * cols) * 1e9).min() > 0


@pytest.mark.parametrize("channels", [4, 8, 320])
@pytest.mark.parametrize("grid", [(2, 2), (4, 4), (2, 3)])
@pytest.mark.parametrize("frame", [8, 16])
def test_no_two_grid_positions_share_an_embedding(channels, grid, frame):
    rows, cols = grid
    emb = SpatialTemporalMixedEmbedding(channels).embedding(rows * frame, cols * frame, grid)
    vectors = emb.reshape(channels, -1).T.double()  # (rows h cols w) c
    dist = torch.cdist(vectors, vectors)
    dist.fill_diagonal_(math.inf)
    # far above float32 rounding of values in [-2, 2] (~1e-7): the positions are told apart
    assert dist.min() > 1e-3


def test_collision_check_catches_the_summed_embedding_of_eq22():
    # Appendix C.3: adding spatial and temporal codes on the same channels lets frame q at in-frame
    # position (p, p) and frame p at (q, q) share a vector; the split of eq. 4 is what avoids it.
    channels, rows, h = 8, 2, 4
    freq = 1e4 ** (-torch.arange(channels, dtype=torch.float64) / channels)
    x = torch.arange(rows * h, dtype=torch.float64)
    xi, yi = (x % h)[:, None], (x % h)[None, :]
    t = (x // h)[:, None] + (x // h)[None, :] * rows
    f = freq[:, None, None]
    summed = torch.sin(f * xi) + torch.cos(f * yi) + torch.sin(f * t) + torch.cos(f * t)
    vectors = summed.reshape(channels, -1).T
    dist = torch.cdist(vectors, vectors)
    dist.fill_diagonal_(math.inf)
    assert dist.min() < 1e-6


def test_embedding_dtype_device_cache_and_autograd():
    me = SpatialTemporalMixedEmbedding(6)
    a = me.embedding(8, 12, (2, 3))
    assert a is me.embedding(8, 12, (2, 3))  # cached constant
    assert not a.requires_grad
    half = me.embedding(8, 12, (2, 3), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), a, atol=2e-2, rtol=0)
    x = torch.randn(2, 6, 8, 12, requires_grad=True)
    me(x, (2, 3)).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.inference_mode():
        y = me(torch.randn(1, 6, 8, 12), (2, 3))
    assert y.shape == (1, 6, 8, 12)
    assert list(me.parameters()) == [] and dict(me.state_dict()) == {}


def test_same_module_serves_any_frame_count_and_resolution():
    me = SpatialTemporalMixedEmbedding(4)
    for t, size in [(1, 8), (5, 4), (16, 6)]:
        grid = grid_for(t)
        image = video_to_grid(torch.randn(1, 4, t, size, size), grid)
        assert me(image, grid).shape == image.shape


def test_embedding_errors_name_expected_shape():
    me = SpatialTemporalMixedEmbedding(4)
    with pytest.raises(ValueError, match=r"\(b, c, rows\*h, cols\*w\) with c=4"):
        me(torch.randn(1, 3, 4, 4), (2, 2))
    with pytest.raises(ValueError, match=r"\(b, c, rows\*h, cols\*w\)"):
        me(torch.randn(4, 4, 4), (2, 2))
    with pytest.raises(ValueError, match=r"\(b, c, rows\*h, cols\*w\) with rows=3"):
        me(torch.randn(1, 4, 4, 4), (3, 2))
    with pytest.raises((ValueError, TypeError), match="grid"):
        me(torch.randn(1, 4, 4, 4), (2, 0))
    with pytest.raises(TypeError, match="floating-point"):
        me(torch.ones(1, 4, 4, 4, dtype=torch.long), (2, 2))
    with pytest.raises(ValueError, match=r"rows\*h, cols\*w"):
        me.embedding(5, 4, (2, 2))
    with pytest.raises(ValueError, match="theta"):
        SpatialTemporalMixedEmbedding(4, theta=0.5)


def test_a_fake_tensor_run_leaves_no_fake_table_in_the_cache():
    """Counting MACs under FakeTensorMode, then running for real at the same size, works."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    me = SpatialTemporalMixedEmbedding(3)
    with FakeTensorMode():
        assert me(torch.zeros(1, 3, 12, 20), (3, 5)).shape == (1, 3, 12, 20)
    x = torch.zeros(1, 3, 12, 20)
    torch.testing.assert_close(me(x, (3, 5)), me.embedding(12, 20, (3, 5)).expand_as(x))
