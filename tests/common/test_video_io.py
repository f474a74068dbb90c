import os
import stat

import av
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from reference_models.common.video_io import read_video, save_frame_grid, write_video


def _smooth_video(c, t, h, w):
    """Slowly varying gradients: what a lossy codec must keep close."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frames = []
    for i in range(t):
        phase = torch.tensor(i / max(t, 2))
        frames.append(torch.stack([0.8 * xx * torch.cos(phase), 0.7 * yy, 0.5 * (xx + yy) * torch.sin(phase)]))
    video = torch.stack(frames, 1)  # (3, t, h, w)
    return video[:c]


def _expected_uint8(video):
    """Independent reference for the [-1, 1] -> uint8 mapping, as (t, h, w, 3)."""
    ref = ((video.clamp(-1, 1) + 1) * 127.5).round()
    if ref.shape[0] == 1:
        ref = ref.expand(3, -1, -1, -1)
    return ref.permute(1, 2, 3, 0)


@given(
    c=st.sampled_from([1, 3]),
    t=st.integers(1, 5),
    h=st.integers(8, 19),
    w=st.integers(8, 19),
    suffix=st.sampled_from([".mp4", ".gif"]),
)
def test_round_trip_keeps_frame_count_and_size(tmp_path_factory, c, t, h, w, suffix):
    video = torch.rand(c, t, h, w) * 2 - 1
    path = write_video(tmp_path_factory.mktemp("v") / f"clip{suffix}", video, 30)
    frames, timestamps, fps = read_video(path)
    assert frames.dtype == torch.uint8
    assert tuple(frames.shape) == (t, h, w, 3)
    assert timestamps.dtype == torch.float64 and timestamps.shape == (t,)
    assert torch.all(timestamps[1:] > timestamps[:-1])
    assert fps > 0


@pytest.mark.parametrize("suffix, tolerance", [(".mp4", 1.0 / 255), (".gif", 5.0 / 1000)])
def test_timestamps_follow_the_frame_rate(tmp_path, suffix, tolerance):
    # GIF stores whole centiseconds: each frame lies within 5 ms of its nominal time.
    video = _smooth_video(3, 12, 16, 16)
    _, timestamps, fps = read_video(write_video(tmp_path / f"a{suffix}", video, 30))
    nominal = torch.arange(12, dtype=torch.float64) / 30
    assert torch.allclose(timestamps - timestamps[0], nominal, atol=tolerance)
    assert fps == pytest.approx(30, rel=0.05)


@pytest.mark.parametrize(
    "suffix, size, max_error",
    # A smooth clip survives within 3% (mp4) / 5% (gif, 256-colour palette) of the range on average.
    [(".mp4", (16, 24), 0.03 * 255), (".mp4", (17, 23), 0.03 * 255), (".gif", (17, 23), 0.05 * 255)],
)
def test_content_is_approximately_preserved(tmp_path, suffix, size, max_error):
    video = _smooth_video(3, 8, *size)
    frames, _, _ = read_video(write_video(tmp_path / f"a{suffix}", video, 24))
    error = (frames.float() - _expected_uint8(video)).abs().mean()
    assert error < max_error


def test_odd_sized_mp4_keeps_exact_size_and_gray_stays_gray(tmp_path):
    video = _smooth_video(1, 6, 15, 21)
    frames, _, _ = read_video(write_video(tmp_path / "odd.mp4", video, 8))
    assert tuple(frames.shape) == (6, 15, 21, 3)
    spread = frames.float().amax(-1) - frames.float().amin(-1)  # gray: R = G = B up to codec noise
    assert spread.mean() < 2
    assert (frames.float()[..., 0] - _expected_uint8(video)[..., 0]).abs().mean() < 0.03 * 255


def test_value_range_maps_like_the_default_and_clamps(tmp_path):
    video = _smooth_video(3, 4, 16, 16)
    a, _, _ = read_video(write_video(tmp_path / "a.gif", video, 10))
    b, _, _ = read_video(write_video(tmp_path / "b.gif", (video + 1) / 2, 10, value_range=(0.0, 1.0)))
    assert torch.equal(a, b)
    over, _, _ = read_video(write_video(tmp_path / "c.gif", torch.full((1, 2, 8, 8), 5.0), 10))
    assert torch.all(over == 255)


def test_write_creates_parents_overwrites_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "deep" / "er" / "clip.mp4"
    assert write_video(target, _smooth_video(3, 3, 8, 8), 10) == target
    write_video(target, _smooth_video(3, 5, 8, 8), 10)
    assert read_video(target)[0].shape[0] == 5
    assert sorted(os.listdir(target.parent)) == ["clip.mp4"]


@given(
    b=st.integers(1, 3),
    c=st.sampled_from([1, 3]),
    t=st.integers(1, 4),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    pad=st.integers(0, 3),
    batched=st.booleans(),
)
def test_frame_grid_size_and_pixels(tmp_path_factory, b, c, t, h, w, pad, batched):
    videos = torch.rand(b, c, t, h, w) * 2 - 1
    video = videos if batched else videos[0]
    rows = b if batched else 1
    path = save_frame_grid(tmp_path_factory.mktemp("g") / "grid.png", video, pad=pad)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (rows * h + (rows + 1) * pad, t * w + (t + 1) * pad, 3)
    # PNG is lossless: every cell holds exactly the mapped frame.
    for i in range(rows):
        for j in range(t):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            cell = torch.from_numpy(grid[top : top + h, left : left + w].copy()).float()
            assert torch.equal(cell, _expected_uint8(videos[i][:, j : j + 1])[0])


def test_malformed_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"\(c, t, h, w\)"):
        write_video(tmp_path / "a.mp4", torch.zeros(2, 3, 8, 8), 10)
    with pytest.raises(ValueError, match=r"\(c, t, h, w\)"):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 8, 8), 10)
    with pytest.raises(TypeError):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 2, 8, 8, dtype=torch.uint8), 10)
    with pytest.raises(ValueError, match="finite"):
        write_video(tmp_path / "a.mp4", torch.full((3, 2, 8, 8), float("nan")), 10)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 2, 8, 8), 0)
    with pytest.raises(ValueError, match=".mp4"):
        write_video(tmp_path / "a.avi", torch.zeros(3, 2, 8, 8), 10)
    with pytest.raises(ValueError, match="value_range"):
        write_video(tmp_path / "a.mp4", torch.zeros(3, 2, 8, 8), 10, value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        save_frame_grid(tmp_path / "g.png", torch.zeros(2, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="pad"):
        save_frame_grid(tmp_path / "g.png", torch.zeros(3, 2, 4, 4), pad=-1)
    assert not any(tmp_path.iterdir())


def test_read_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="garbage.mp4"):
        read_video(garbage)


def test_read_video_reads_a_plain_pyav_file(tmp_path):
    # A file not written by write_video: independent of our writer's conventions.
    path = tmp_path / "plain.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        for i in range(7):
            frame = av.VideoFrame.from_ndarray(np.full((16, 32, 3), 30 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames, timestamps, fps = read_video(path)
    assert tuple(frames.shape) == (7, 16, 32, 3)
    assert fps == pytest.approx(25)
    assert torch.all(frames.float().mean((1, 2, 3)).diff() > 0)  # brightness order survives


def test_write_samples_writes_each_video_grid_and_captions(tmp_path):
    from reference_models.common.video_io import write_samples

    videos = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    paths = write_samples(videos, tmp_path / "samples", stem="step_10", fps=8, captions=["a", "b"])
    assert [p.name for p in paths] == ["step_10_00.mp4", "step_10_01.mp4", "step_10_grid.png", "step_10_captions.txt"]
    for p in paths[:2]:
        frames, _, _ = read_video(p)
        assert tuple(frames.shape) == (5, 16, 24, 3)
    assert (tmp_path / "samples" / "step_10_captions.txt").read_text().splitlines() == [
        "step_10_00.mp4\ta",
        "step_10_01.mp4\tb",
    ]
    with pytest.raises(ValueError, match="one caption per sample"):
        write_samples(videos, tmp_path, stem="x", fps=8, captions=["a"])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Outputs go through a mkstemp file (0600); once in place they have the mode open() gives."""
    old = os.umask(umask)
    try:
        video = _smooth_video(3, 4, 16, 16)
        paths = [write_video(tmp_path / "a.mp4", video, 8), save_frame_grid(tmp_path / "g.png", video)]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
