import csv
import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from reference_models.common.data.video_folder import VideoFolder, nearest_frame_indices
from reference_models.common.video_io import write_video

BITS = 7  # frame index written as 7 black/white stripes of 4 pixels: survives H.264 intact
H, W = 16, 4 * BITS


def indexed_video(n):
    """(3, n, H, W) in [-1, 1]; stripe b of frame i is white iff bit b of i is set."""
    video = -torch.ones(3, n, H, W)
    for i in range(n):
        for b in range(BITS):
            if (i >> b) & 1:
                video[:, i, :, 4 * b : 4 * (b + 1)] = 1.0
    return video


def decode_indices(clip):
    """Frame indices written by ``indexed_video``, read back from a (c, t, H, W) clip."""
    stripes = clip.mean(0).reshape(clip.shape[1], H, BITS, 4)[:, 2:-2, :, 1:3].mean((1, 3))  # (t, BITS)
    return ((stripes > 0).long() * 2 ** torch.arange(BITS)).sum(1)


@pytest.fixture(scope="module")
def indexed_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("indexed")
    write_video(root / "thirty.mp4", indexed_video(90), 30)
    write_video(root / "twentyfive.mp4", indexed_video(75), 25)
    write_video(root / "anim.gif", indexed_video(45), 30)
    return root


@given(seed=st.integers(0, 2**31), frames=st.integers(2, 8))
def test_thirty_fps_file_gives_every_third_frame_at_ten_fps(indexed_root, seed, frames):
    ds = VideoFolder(indexed_root, frames=frames, height=H, width=W, fps=10, seed=seed, extensions=(".mp4", ".gif"))
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, frames, H, W) and item["fps"] == 10.0
        picked = decode_indices(item["video"])
        assert torch.equal(picked, item["frame_indices"])  # the content is the frame we claim
        spacing = item["timestamps"].diff()
        if item["path"].endswith("thirty.mp4"):
            assert torch.all(picked.diff() == 3)
            assert torch.allclose(spacing, torch.full_like(spacing, 0.1), atol=1e-9)
        else:
            # 25 fps and centisecond GIF delays: the nearest frame is within half a source frame.
            source_dt = 1 / 25 if item["path"].endswith("twentyfive.mp4") else 1 / 30 + 0.005
            assert torch.all((spacing - 0.1).abs() <= source_dt + 1e-9)


def test_nearest_frame_in_a_25_fps_file_matches_brute_force(indexed_root):
    # 7 fps targets k/7 never fall halfway between 25 fps frames (50k = 7(2j + 1) has no solution),
    # so the nearest frame is unambiguous.
    ds = VideoFolder(indexed_root, frames=8, height=H, width=W, fps=7, clip_start="first", extensions=(".mp4",))
    item = next(ds[i] for i in range(len(ds)) if ds[i]["path"].endswith("twentyfive.mp4"))
    targets = np.arange(8) / 7
    expected = [int(np.argmin(np.abs(np.arange(75) / 25 - s))) for s in targets]
    assert decode_indices(item["video"]).tolist() == expected
    assert len(set(np.diff(expected))) > 1  # a true resampling, not a fixed stride


@given(
    timestamps=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=20, unique=True),
    targets=st.lists(st.floats(-5, 105, allow_nan=False), min_size=1, max_size=10),
)
def test_nearest_frame_indices_agree_with_argmin(timestamps, targets):
    ts, tg = np.sort(np.array(timestamps)), np.array(targets)
    got = nearest_frame_indices(ts, tg)
    distance = np.abs(ts[None, :] - tg[:, None])
    assert np.allclose(distance[np.arange(len(tg)), got], distance.min(1))


def test_clip_start_modes_and_seeded_determinism(indexed_root):
    kw = dict(frames=4, height=H, width=W, fps=10, extensions=(".mp4",))
    first = VideoFolder(indexed_root, clip_start="first", **kw)
    assert all(first[i]["frame_indices"][0] == 0 for i in range(len(first)))
    center = VideoFolder(indexed_root, clip_start="center", **kw)
    for i in range(len(center)):
        idx = center[i]["frame_indices"]
        n = 90 if center[i]["path"].endswith("thirty.mp4") else 75
        assert abs(idx[0] - (n - 1 - idx[-1])) <= 1  # as much video before as after
    a, b = VideoFolder(indexed_root, seed=3, **kw), VideoFolder(indexed_root, seed=3, **kw)
    assert all(torch.equal(a[i]["video"], b[i]["video"]) for i in range(len(a)))
    starts = {int(VideoFolder(indexed_root, seed=s, **kw)[0]["frame_indices"][0]) for s in range(6)}
    assert len(starts) > 1


def test_native_rate_takes_consecutive_frames(indexed_root):
    ds = VideoFolder(indexed_root, frames=5, height=H, width=W, seed=0, extensions=(".mp4",))
    for i in range(len(ds)):
        item = ds[i]
        assert torch.all(decode_indices(item["video"]).diff() == 1)
        expected = 30 if item["path"].endswith("thirty.mp4") else 25
        assert item["fps"] == pytest.approx(expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_shorter_side_and_centre_crop(tmp_path, channels):
    # 32 x 64 source: red and blue bands on the outer 12 columns, green between. Covering 16 x 16
    # scales by one half (16 x 32); the centre crop is source columns 16..48, all green (4 columns
    # of margin absorb the codec's chroma subsampling and the resampling filter).
    video = -torch.ones(3, 3, 32, 64)
    video[0, :, :, :12] = 1
    video[1, :, :, 12:52] = 1
    video[2, :, :, 52:] = 1
    write_video(tmp_path / "bands.mp4", video, 30)
    clip = VideoFolder(tmp_path, frames=3, height=16, width=16, channels=channels)[0]["video"]
    assert clip.shape == (channels, 3, 16, 16)
    assert clip.min() >= -1 and clip.max() <= 1
    if channels == 3:
        green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None, None]
        assert (clip - green).abs().max() < 0.25
    else:
        assert clip.std() < 0.1  # uniform luma: no red or blue band got in


@pytest.fixture()
def messy_root(tmp_path):
    write_video(tmp_path / "cats" / "c1.mp4", indexed_video(40), 30)
    write_video(tmp_path / "cats" / "c2.gif", indexed_video(40), 30)
    write_video(tmp_path / "dogs" / "d1.mp4", indexed_video(40), 30)
    write_video(tmp_path / "top.mp4", indexed_video(40), 30)
    (tmp_path / "dogs" / "random.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    real = (tmp_path / "cats" / "c1.mp4").read_bytes()
    (tmp_path / "dogs" / "truncated.mp4").write_bytes(real[: len(real) // 2])
    write_video(tmp_path / "dogs" / "short.mp4", indexed_video(6), 30)  # 0.2 s, a clip spans 0.3 s
    (tmp_path / "notes.txt").write_text("not a video")
    return tmp_path


def test_corrupt_and_short_files_are_skipped_and_counted(messy_root):
    with pytest.warns(RuntimeWarning, match="skipping"):
        ds = VideoFolder(messy_root, frames=4, height=H, width=W, fps=10, seed=0)
    assert ds.num_skipped == 3
    skipped = {s.path.rsplit("/", 1)[-1]: s.reason for s in ds.skipped}
    assert set(skipped) == {"random.mp4", "truncated.mp4", "short.mp4"}
    assert "short" in skipped["short.mp4"].lower() or "spans" in skipped["short.mp4"]
    assert len(ds) == 4
    items = [ds[i] for i in range(len(ds))]
    assert all(item["video"].shape == (3, 4, H, W) for item in items)


def test_labels_from_folder_names(messy_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = VideoFolder(messy_root, frames=4, height=H, width=W, fps=10)
        flat = VideoFolder(messy_root, frames=4, height=H, width=W, fps=10, labels_from_folders=False)
    assert ds.classes == ["cats", "dogs"] and ds.class_to_idx == {"cats": 0, "dogs": 1}
    by_name = {ds[i]["path"].rsplit("/", 1)[-1]: ds[i]["label"] for i in range(len(ds))}
    assert by_name == {"c1.mp4": 0, "c2.gif": 0, "d1.mp4": 1, "top.mp4": -1}
    assert [ds.files[i].name for i in ds.indices_for_label(0)] == ["c1.mp4", "c2.gif"]
    assert flat.num_classes == 0 and all(flat[i]["label"] == -1 for i in range(len(flat)))


def test_file_corrupted_after_construction_falls_back_to_the_next(messy_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = VideoFolder(messy_root, frames=4, height=H, width=W, fps=10, seed=0)
    before = ds.num_skipped
    victim = ds.files.index(messy_root / "cats" / "c1.mp4")
    ds.files[victim].write_bytes(b"\x00" * 1000)
    with pytest.warns(RuntimeWarning, match="c1.mp4"):
        item = ds[victim]
    assert item["path"] == str(ds.files[(victim + 1) % len(ds)])
    assert ds.num_skipped == before + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not tried (nor warned about) again
        assert ds[victim]["path"] == item["path"]
    assert ds.num_skipped == before + 1


def test_dataloader_workers_survive_a_corrupt_file(messy_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = VideoFolder(messy_root, frames=4, height=H, width=W, fps=10, seed=0)
        (messy_root / "dogs" / "d1.mp4").write_bytes(b"garbage" * 100)
        batches = list(DataLoader(ds, batch_size=2, num_workers=2, timeout=60))
    assert sum(len(b["path"]) for b in batches) == len(ds)
    assert all(b["video"].shape[1:] == (3, 4, H, W) for b in batches)
    assert str(messy_root / "dogs" / "d1.mp4") not in [p for b in batches for p in b["path"]]


def test_only_unusable_videos_is_an_error(tmp_path):
    write_video(tmp_path / "short.mp4", indexed_video(5), 30)
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="no readable video"):
            VideoFolder(tmp_path, frames=8, height=H, width=W, fps=10)


def test_missing_or_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolder(tmp_path / "nowhere", frames=4, height=8, width=8)
    (tmp_path / "readme.txt").write_text("no videos here")
    with pytest.raises(ValueError, match="no video files"):
        VideoFolder(tmp_path, frames=4, height=8, width=8)


@pytest.mark.parametrize(
    "kwargs", [{"channels": 2}, {"fps": 0}, {"frames": 0}, {"clip_start": "middle"}, {"seed": -1}, {"height": 0}]
)
def test_invalid_options_are_rejected(indexed_root, kwargs):
    options = dict(frames=4, height=8, width=8) | kwargs
    with pytest.raises((ValueError, TypeError)):
        VideoFolder(indexed_root, **options)


@pytest.mark.parametrize("sidecar", ["csv", "json"])
def test_captions_from_sidecar(tmp_path, sidecar):
    root = tmp_path / "videos"
    for name in ("a/one.mp4", "b/two.mp4", "three.gif"):
        write_video(root / name, indexed_video(12), 30)
    # one key as a relative path, one as a bare file name, one file without a caption
    table = {"a/one.mp4": "a first clip, with a comma", "two.mp4": "the second"}
    path = tmp_path / f"captions.{sidecar}"
    if sidecar == "csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "caption"])
            writer.writerows(table.items())
    else:
        path.write_text(json.dumps(table))
    ds = VideoFolder(root, frames=3, height=8, width=8, captions=path)
    captions = {ds[i]["path"].rsplit("/", 1)[-1]: ds[i]["caption"] for i in range(len(ds))}
    assert captions == {"one.mp4": "a first clip, with a comma", "two.mp4": "the second", "three.gif": ""}


def test_malformed_caption_sidecar(tmp_path):
    write_video(tmp_path / "v" / "a.mp4", indexed_video(4), 30)
    bad = tmp_path / "bad.csv"
    bad.write_text("name,text\na.mp4,hello\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        VideoFolder(tmp_path / "v", frames=2, height=8, width=8, captions=bad)
    with pytest.raises(FileNotFoundError):
        VideoFolder(tmp_path / "v", frames=2, height=8, width=8, captions=tmp_path / "none.json")


@pytest.mark.timeout(120)
def test_forked_workers_do_not_hang_after_the_parent_decoded(tmp_path):
    """Regression: FFmpeg's swscale slice threads do not survive fork. The parent decodes and scales
    frames first (through VideoFolder and through PyAV's own shared ``to_ndarray`` path), then two
    *forked* workers decode: each batch must arrive within the DataLoader's time limit."""
    import av

    gen = torch.Generator().manual_seed(0)
    for i in range(4):
        write_video(tmp_path / f"v{i}.mp4", torch.rand(3, 30, 120, 160, generator=gen) * 2 - 1, 25)
    ds = VideoFolder(tmp_path, frames=4, height=64, width=64, fps=10, seed=0)
    assert ds[0]["video"].shape == (3, 4, 64, 64)  # the parent scales frames itself
    with av.open(str(tmp_path / "v0.mp4")) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24", width=80, height=60)  # PyAV's shared, threaded context
    for _ in range(2):  # a second epoch forks fresh workers from the same parent
        loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork", timeout=30)
        batches = list(loader)
        assert [b["video"].shape for b in batches] == [(2, 3, 4, 64, 64)] * 2
