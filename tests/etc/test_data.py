"""ETC triple data (section 4.2, eq. 6): what each kind holds, mixing ratios, user folders."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from reference_models.common.data import ImageFolder, MovingShapes, MovingShapesImages, VideoFolder
from reference_models.common.video_io import write_video
from reference_models.etc.data import (
    CAPTION_IMAGE_FPS,
    FPS_CHOICES,
    FPS_TOLERANCE,
    KINDS,
    LABEL_IMAGE_FPS,
    MultiRateVideoFolder,
    TripleDataset,
    collate_etc,
    folder_triple,
)

T, H, W = 4, 16, 16


def shapes_sources(n_videos=24, n_images=40, channels=3):
    videos = MovingShapes(n_videos, frames=T, height=H, width=W, channels=channels, seed=3)
    images = MovingShapesImages(n_images, height=H, width=W, channels=channels, seed=4)
    return videos, images


@pytest.fixture(scope="module")
def triple():
    videos, images = shapes_sources()
    return TripleDataset(videos, images, images, frames=T, seed=7)


def test_every_kind_holds_what_eq6_says(triple):
    videos, labelled, captioned = triple.sources
    seen = set()
    for i in range(len(triple)):
        plan, item = triple.plan(i), triple[i]
        seen.add(item["kind"])
        assert item["kind"] == plan.kind and item["fps"] == plan.fps
        assert item["video"].shape == (3, T, H, W) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        if plan.kind == "video":  # V^t = the scene at t / FPS: exactly MovingShapes rendered at that rate
            (j,) = plan.indices
            assert item["fps"] in FPS_CHOICES and item["label"] == -1
            assert torch.equal(item["video"], videos.render(j, fps=item["fps"], frames=T))
            assert item["caption"] == videos[j]["caption"]
        elif plan.kind == "label_images":  # V^t = I^t: T different images of one label, FPS 0
            assert item["fps"] == LABEL_IMAGE_FPS
            assert len(set(plan.indices)) == T
            for k, j in enumerate(plan.indices):
                source = labelled[j]
                assert source["label"] == item["label"] == plan.label
                assert torch.equal(item["video"][:, k], source["image"])
            frames = item["video"].flatten(2)  # (c, t, h*w)
            assert all(not torch.equal(frames[:, a], frames[:, b]) for a in range(T) for b in range(a))
            assert item["caption"] == labelled.class_names[item["label"]]
        else:  # V^t = I^0: one image repeated, FPS 120
            (j,) = plan.indices
            assert item["fps"] == CAPTION_IMAGE_FPS and item["label"] == -1
            assert all(torch.equal(item["video"][:, k], captioned[j]["image"]) for k in range(T))
            assert item["caption"] == captioned[j]["caption"]
    assert seen == set(KINDS)


def test_deterministic_per_seed_and_seeds_differ(triple):
    videos, images = triple.sources[0], triple.sources[1]
    again = TripleDataset(videos, images, images, frames=T, seed=7)
    other = TripleDataset(videos, images, images, frames=T, seed=8)
    assert again.kinds == triple.kinds and other.kinds != triple.kinds
    for i in range(0, len(triple), 5):
        assert again.plan(i) == triple.plan(i)
        a, b = again[i], triple[i]
        assert torch.equal(a["video"], b["video"]) and a["caption"] == b["caption"]


@given(
    weights=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)).filter(lambda w: sum(w) > 0),
    n=st.integers(1, 400),
    seed=st.integers(0, 2**20),
)
def test_mixing_ratios_hold_exactly(weights, n, seed):
    videos, images = shapes_sources(8, 20)
    sources = [s if w else None for s, w in zip((videos, images, images), weights)]
    ds = TripleDataset(*sources, frames=T, ratios=weights, seed=seed, num_samples=n)
    counts = [ds.kinds.count(k) for k in KINDS]
    assert sum(counts) == n == len(ds)
    for count, w in zip(counts, weights):
        assert abs(count - n * w / sum(weights)) < 1  # rounding only
        assert (count == 0) == (w == 0) or n * w / sum(weights) < 1


def test_an_epoch_visits_every_video_at_every_rate_when_it_holds_them_all():
    videos = MovingShapes(5, frames=T, height=H, width=W, seed=1)
    n_rates = len(FPS_CHOICES)
    ds = TripleDataset(videos, None, None, frames=T, ratios=(1, 0, 0), seed=2, num_samples=5 * n_rates)
    pairs = {(ds.plan(i).indices[0], ds.plan(i).fps) for i in range(len(ds))}
    assert pairs == {(j, f) for j in range(5) for f in FPS_CHOICES}
    # the default length holds every video (and every caption image) at least once
    images = MovingShapesImages(20, height=H, width=W, seed=1)
    ds = TripleDataset(videos, images, images, frames=T, ratios=(1, 1, 1))
    plans = [ds.plan(i) for i in range(len(ds))]
    assert {p.indices[0] for p in plans if p.kind == "video"} == set(range(5))
    assert {p.indices[0] for p in plans if p.kind == "caption_image"} == set(range(20))


def test_small_labels_repeat_their_images_with_a_warning():
    images = MovingShapesImages(10, height=H, width=W, seed=0)  # 2 images per label
    with pytest.warns(RuntimeWarning, match="fewer than 4 images"):
        ds = TripleDataset(None, images, None, frames=T, ratios=(0, 1, 0), num_samples=6)
    for i in range(len(ds)):
        plan = ds.plan(i)
        assert set(plan.indices) == set(images.indices_for_label(plan.label))


def test_collate_keeps_captions_and_kinds_as_lists(triple):
    batch = collate_etc([triple[i] for i in range(6)])
    assert batch["video"].shape == (6, 3, T, H, W)
    assert batch["fps"].dtype == torch.float32 and batch["fps"].shape == (6,)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (6,)
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 6
    assert batch["kind"] == [triple[i]["kind"] for i in range(6)]
    with pytest.raises(ValueError, match="video, fps, caption, label, kind"):
        collate_etc([{"video": torch.zeros(3, T, H, W)}])


def test_malformed_setups_are_rejected():
    videos, images = shapes_sources(4, 8)
    with pytest.raises(ValueError, match="no label_images source"):
        TripleDataset(videos, None, images, frames=T)
    with pytest.raises(ValueError, match="three non-negative numbers"):
        TripleDataset(videos, images, images, frames=T, ratios=(1, -1, 1))
    with pytest.raises(ValueError, match="positive sum"):
        TripleDataset(videos, images, images, frames=T, ratios=(0, 0, 0))
    with pytest.raises(ValueError, match="fps choices"):
        TripleDataset(videos, images, images, frames=T, fps_choices=(8, 240))
    small = MovingShapesImages(8, height=8, width=8, seed=0)
    with pytest.raises(ValueError, match=r"one \(channels, height, width\)"):
        TripleDataset(videos, images, small, frames=T)
    ds = TripleDataset(WrongLength(), None, None, frames=T, ratios=(1, 0, 0))
    with pytest.raises(ValueError, match=r"\(c, t, h, w\) with t=4"):
        ds[0]


class WrongLength(torch.utils.data.Dataset):
    """A fixed-rate video source whose clips have one frame too many."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"video": torch.zeros(3, T + 1, H, W), "caption": "", "fps": 8.0}


# ----------------------------------------------------------------------------- user folders

BITS = 5  # frame index as 5 black/white stripes of 4 pixels (survives H.264)
VH, VW = 8, 4 * BITS


def indexed_video(n):
    video = -torch.ones(3, n, VH, VW)
    for i in range(n):
        for b in range(BITS):
            if (i >> b) & 1:
                video[:, i, :, 4 * b : 4 * (b + 1)] = 1.0
    return video


def decode_indices(clip):
    stripes = clip.mean(0).reshape(clip.shape[1], VH, BITS, 4)[:, 2:-2, :, 1:3].mean((1, 3))
    return ((stripes > 0).long() * 2 ** torch.arange(BITS)).sum(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("etc_data")
    videos = root / "videos"
    write_video(videos / "short.mp4", indexed_video(30), 30)  # 1 s: too short for 4 frames at 1 or 2 fps
    write_video(videos / "long.mp4", indexed_video(31), 10)  # 3 s
    (videos / "captions.csv").write_text("file,caption\nshort.mp4,a short clip\nlong.mp4,a long clip\n")
    images = root / "images"
    rng = np.random.default_rng(0)
    captions = {}
    for label in ("cats", "dogs"):
        (images / label).mkdir(parents=True)
        for k in range(5):
            name = f"{label}/{k}.png"
            Image.fromarray(rng.integers(0, 256, (VH, VW, 3), dtype=np.uint8)).save(images / name)
            if k < 2:
                captions[name] = f"{label} photo {k}"
    (images / "captions.json").write_text(json.dumps(captions))
    return videos, images


def test_multi_rate_folder_samples_at_the_rate_or_the_next_that_fits(folders):
    videos, _ = folders
    rates = (1.0, 2.0, 4.0, 8.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = MultiRateVideoFolder(videos, frames=T, height=VH, width=VW, fps_choices=rates, clip_start="first")
        names = [p.name for p in ds.files]
        for fps in rates:
            for i, name in enumerate(names):
                item = ds.clip(i, fps)
                expected = fps if name == "long.mp4" or fps >= 4 else 4.0  # short.mp4 spans 0.97 s
                assert item["fps"] == expected and item["path"].endswith(name)
                source_rate = 10 if name == "long.mp4" else 30
                assert torch.equal(decode_indices(item["video"]), item["frame_indices"])
                # clip frame k is the source frame nearest k / fps seconds (clips start at 0 here)
                targets = torch.arange(T, dtype=torch.float64) * source_rate / expected
                assert torch.all((item["frame_indices"].double() - targets).abs() <= 0.5 + 1e-9)
    assert any("too short for 4 frames at 1 fps" in str(w.message) for w in caught)


def test_folder_triple_builds_all_three_kinds(folders):
    videos, images = folders
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ds = folder_triple(videos, images, frames=T, height=VH, width=VW, fps_choices=(4.0, 8.0), seed=1)
        folder = ImageFolder(images, height=VH, width=VW)
        kinds = set()
        for i in range(len(ds)):
            item, plan = ds[i], ds.plan(i)
            kinds.add(item["kind"])
            assert item["video"].shape == (3, T, VH, VW)
            if plan.kind == "video":
                assert item["caption"] in ("a short clip", "a long clip") and item["fps"] in (4.0, 8.0)
            elif plan.kind == "label_images":
                assert item["caption"] == folder.classes[item["label"]] and item["fps"] == 0
                assert {folder.labels[j] for j in plan.indices} == {item["label"]}
            else:  # only captioned images are caption-image pairs
                assert item["caption"].endswith(("photo 0", "photo 1")) and item["fps"] == 120
    assert kinds == set(KINDS)
    with pytest.raises(ValueError, match="a video directory, an image directory"):
        folder_triple(None, None, frames=T, height=VH, width=VW)


# ----------------------------------------------------------------------------- honest FPS labels

NTSC = Fraction(30000, 1001)  # 29.97 fps
RATE_T = 6  # clip frames: 5 gaps, so a wrong label shows as a drift of several source frames


def gray_ramp(n):
    """``n`` frames of distinct gray levels (the content does not matter here, only timestamps)."""
    return torch.linspace(-1, 1, n).view(1, n, 1, 1).expand(3, n, VH, VW).contiguous()


@pytest.fixture(scope="module")
def real_rates(tmp_path_factory):
    """25 and 29.97 fps files, 6 s long: long enough for 6 frames at every default rate."""
    root = tmp_path_factory.mktemp("etc_rates")
    videos = root / "videos"
    write_video(videos / "pal.mp4", gray_ramp(152), 25)
    write_video(videos / "ntsc.mp4", gray_ramp(182), NTSC)
    (videos / "captions.csv").write_text("file,caption\npal.mp4,pal\nntsc.mp4,ntsc\n")
    odd = root / "odd"  # files that honour no rate of (8, 15, 30) or are too short at those they honour
    write_video(odd / "pal.mp4", gray_ramp(152), 25)
    write_video(odd / "slow.mp4", gray_ramp(40), 5)  # 8 s at 5 fps
    write_video(odd / "tiny.mp4", gray_ramp(8), 25)  # 0.28 s: fits 6 frames at 30 fps only
    return videos, odd, {"pal.mp4": 25.0, "ntsc.mp4": float(NTSC)}


def assert_honest_clip(item, source_fps):
    """The clip's label is at most what its source honours, no source frame repeats, and frame ``k``
    lies within half a source frame of ``s_0 + k / label`` for one start ``s_0``."""
    label = item["fps"]
    assert label <= source_fps * (1 + FPS_TOLERANCE)
    assert torch.all(item["frame_indices"].diff() > 0), item["frame_indices"]
    offsets = item["timestamps"] - torch.arange(len(item["timestamps"]), dtype=torch.float64) / label
    assert float(offsets.max() - offsets.min()) <= 1 / source_fps + 1e-9


def test_multi_rate_clips_never_claim_more_than_their_source_rate(real_rates):
    videos, _, own = real_rates
    for clip_start, seed in (("first", None), ("center", None), ("random", 0), ("random", 1)):
        ds = MultiRateVideoFolder(videos, frames=RATE_T, height=VH, width=VW, clip_start=clip_start, seed=seed)
        for i, path in enumerate(ds.files):
            source_fps = own[path.name]
            assert ds.source_fps(i) == pytest.approx(source_fps, rel=1e-6)
            honoured = ds.honoured_rates(i)
            # 29.97 honours 30 (within the 1% tolerance); 25 honours up to 15; neither honours 60
            assert honoured == ((1.0, 2.0, 4.0, 8.0, 15.0, 30.0) if path.name == "ntsc.mp4" else FPS_CHOICES[:5])
            for fps in FPS_CHOICES:
                item = ds.clip(i, fps)
                assert item["path"] == str(path)
                # a rate the file honours is served as asked; a higher one at the highest it honours
                assert item["fps"] == (fps if fps in honoured else honoured[-1])
                assert_honest_clip(item, source_fps)
        assert ds.skipped == []


def test_triple_video_items_are_labelled_with_rates_their_files_honour(real_rates):
    videos, _, own = real_rates
    ds = folder_triple(videos, None, frames=RATE_T, height=VH, width=VW, num_samples=28, seed=2)
    seen = {"pal": set(), "ntsc": set()}
    for i in range(len(ds)):
        item, plan = ds[i], ds.plan(i)
        source_fps = own[f"{item['caption']}.mp4"]
        assert item["kind"] == "video" and item["fps"] in FPS_CHOICES
        assert item["fps"] <= source_fps * (1 + FPS_TOLERANCE)
        assert item["fps"] == min(plan.fps, 15.0 if item["caption"] == "pal" else 30.0)
        seen[item["caption"]].add(item["fps"])
    # 28 items = each video 14 times = every rate asked twice: all honoured rates appear, no others
    assert seen == {"pal": set(FPS_CHOICES[:5]), "ntsc": set(FPS_CHOICES[:6])}


def test_files_that_honour_no_usable_rate_are_skipped_like_unreadable_files(real_rates):
    _, odd, _ = real_rates
    ds = MultiRateVideoFolder(odd, frames=RATE_T, height=VH, width=VW, fps_choices=(8, 15, 30), clip_start="first")
    names = [p.name for p in ds.files]
    assert names == ["pal.mp4", "slow.mp4", "tiny.mp4"]  # all long enough for one clip at 30 fps
    assert ds.honoured_rates(1) == () and ds.honoured_rates(2) == (8.0, 15.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds.clip(1, 8.0)  # falls back to the next usable file (tiny.mp4 is not), asked for the same rate
    assert item["path"].endswith("pal.mp4") and item["fps"] == 8.0
    skips = [str(w.message) for w in caught if "skipping" in str(w.message)]
    assert len(skips) == 2 and "slow.mp4" in skips[0] and "honours none of the fps choices" in skips[0]
    assert "tiny.mp4" in skips[1] and "too short for 6 frames at every rate" in skips[1]  # 30 > its 25 fps
    assert [(Path(s.path).name, s.reason.split(":")[0]) for s in ds.skipped] == [
        ("slow.mp4", "RateNotHonoured"),
        ("tiny.mp4", "RateNotHonoured"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped file is not tried (or reported) again
        assert ds.clip(1, 30.0)["fps"] == 15.0 and ds.clip(2, 15.0)["path"].endswith("pal.mp4")
    assert ds.num_skipped == 2

    only_slow = odd.parent / "only_slow"
    only_slow.mkdir()
    (only_slow / "slow.mp4").write_bytes((odd / "slow.mp4").read_bytes())
    lonely = MultiRateVideoFolder(only_slow, frames=RATE_T, height=VH, width=VW, fps_choices=(8, 15, 30))
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="no video .* gives a clip"):
        lonely.clip(0, 8.0)


def test_a_fixed_rate_source_that_repeats_frames_is_reported(real_rates):
    videos, _, _ = real_rates
    fixed = VideoFolder(videos, frames=RATE_T, height=VH, width=VW, fps=60, clip_start="first")
    ds = TripleDataset(fixed, None, None, frames=RATE_T, ratios=(1, 0, 0))
    with pytest.warns(RuntimeWarning, match="repeats frames .* labelled 60 fps"):
        assert ds[0]["fps"] == 60.0
    honest = VideoFolder(videos, frames=RATE_T, height=VH, width=VW, fps=15, clip_start="first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(len(honest)):
            TripleDataset(honest, None, None, frames=RATE_T, ratios=(1, 0, 0))[i]
