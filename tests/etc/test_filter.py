import csv
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from reference_models.common.data.moving_shapes import PALETTE, MovingShapes
from reference_models.common.video_io import write_video
from reference_models.etc.filter import (
    PAPER_EPSILON,
    VideoFilter,
    builtin_encoders,
    clip_score,
    keep_top,
    main,
    num_kept,
    sample_frames,
)

RGB_WORDS = ("red", "green", "blue")


def mean_rgb_encoder(frames):
    """Test image encoder: the mean colour of each frame, frames in [-1, 1] -> (n, 3) in [0, 1]."""
    return ((frames + 1) / 2).mean(dim=(2, 3))


def rgb_word_encoder(captions):
    """Test text encoder: counts of the words red, green, blue -> (n, 3)."""
    return torch.tensor([[float(c.split().count(w)) for w in RGB_WORDS] for c in captions])


def solid_video(colours, h=4, w=4):
    """(3, t, h, w) in [-1, 1], frame k filled with colours[k] (RGB in [0, 1])."""
    frames = torch.tensor(colours, dtype=torch.float32)[:, :, None, None].expand(-1, -1, h, w)
    return frames.permute(1, 0, 2, 3) * 2 - 1


RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


@given(
    b=st.integers(1, 3),
    t=st.integers(1, 4),
    d=st.integers(1, 6),
    epsilon=st.floats(0.1, 200.0),
    seed=st.integers(0, 2**16),
)
def test_clip_score_is_the_frame_mean_of_scaled_cosines(b, t, d, epsilon, seed):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    text = torch.randn(b, d, generator=g, dtype=torch.float64)
    per_frame = clip_score(image, text, epsilon=epsilon, per_frame=True)
    reference = epsilon * F.cosine_similarity(image, text[:, None, :].expand_as(image), dim=-1)
    assert per_frame.shape == (b, t)
    torch.testing.assert_close(per_frame, reference)
    torch.testing.assert_close(clip_score(image, text, epsilon=epsilon), reference.mean(dim=1))
    # Eq. 5 normalises both sides: positive rescaling changes nothing.
    torch.testing.assert_close(clip_score(image * 3.0, text * 0.25, epsilon=epsilon), reference.mean(dim=1))
    assert (per_frame.abs() <= epsilon * (1 + 1e-9)).all()


def test_clip_score_extremes_and_the_paper_constant():
    v = torch.tensor([[0.3, -1.0, 2.0]])
    assert PAPER_EPSILON == pytest.approx(math.exp(math.log(1 / 0.07)))
    torch.testing.assert_close(clip_score(v[:, None], v), torch.tensor([PAPER_EPSILON]))
    torch.testing.assert_close(clip_score(v[:, None], -v, epsilon=100.0), torch.tensor([-100.0]))
    torch.testing.assert_close(clip_score(v[:, None], torch.zeros(1, 3)), torch.zeros(1))


def test_clip_score_rejects_malformed_input():
    with pytest.raises(ValueError, match=r"\(b, d\) with d=3"):
        clip_score(torch.randn(2, 4, 3), torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(b, t, d\)"):
        clip_score(torch.randn(4, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="batch size"):
        clip_score(torch.randn(2, 4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="epsilon"):
        clip_score(torch.randn(2, 4, 3), torch.randn(2, 3), epsilon=0.0)


def test_one_mismatching_frame_lowers_the_score_by_its_share():
    vf = VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=0.5, epsilon=10.0)
    pure = solid_video([RED, RED, RED, RED])
    mixed = solid_video([RED, RED, BLUE, RED])
    scores = vf.score([pure, mixed], ["a red square", "a red square"])
    # Red frames score epsilon, the blue one 0 against "red": the mean is 3/4 epsilon.
    torch.testing.assert_close(scores, torch.tensor([10.0, 7.5], dtype=torch.float64))
    assert vf.filter([pure, mixed], ["a red square", "a red square"]) == [0]


@given(
    scores=st.lists(st.sampled_from([0.0, 1.0, 2.0, 2.5, math.nan]), min_size=1, max_size=12),
    q=st.integers(1, 10),
    p=st.integers(1, 10),
)
def test_keep_top_keeps_exactly_the_top_fraction(scores, q, p):
    p = min(p, q)
    kept = keep_top(scores, p / q)
    n = len(scores)
    assert len(kept) == math.ceil(Fraction(p, q) * n) == num_kept(n, p / q)
    assert kept == sorted(kept) and len(set(kept)) == len(kept)
    key = [-math.inf if math.isnan(s) else s for s in scores]
    dropped = [i for i in range(n) if i not in kept]
    for i in kept:
        for j in dropped:
            # Higher scores win; ties go to the lower index: deterministic.
            assert key[i] > key[j] or (key[i] == key[j] and i < j)
    assert keep_top(torch.tensor(scores), p / q) == kept


def test_filter_keeps_the_best_matching_half_for_any_input_form():
    # Frame k of video v is red for k < v, green otherwise: more red frames, higher "red" score.
    videos = [solid_video([RED if k < v else GREEN for k in range(4)]) for v in (2, 0, 4, 1, 2, 3)]
    captions = ["red"] * len(videos)
    vf = VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=0.5, batch_size=3)
    # 4 and 3 red frames, then the tie at 2 goes to the lower index (0 before 4).
    assert vf.filter(videos, captions) == [0, 2, 5]
    scores = vf.score(videos, captions)
    for batch_size in (1, 2, 64):
        other = VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=0.5, batch_size=batch_size)
        torch.testing.assert_close(other.score(torch.stack(videos), captions), scores)
        items = [{"video": v, "caption": c} for v, c in zip(videos, captions)]
        torch.testing.assert_close(other.score(items), scores)


def test_videos_of_different_sizes_are_scored_apart():
    vf = VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=1.0, batch_size=64)
    videos = [solid_video([RED] * 3, 4, 4), solid_video([BLUE] * 2, 6, 2), solid_video([RED, BLUE], 4, 4)]
    scores = vf.score(videos, ["red", "blue", "blue"])
    torch.testing.assert_close(scores, torch.tensor([vf.epsilon, vf.epsilon, vf.epsilon / 2], dtype=torch.float64))


def test_any_positive_alpha_keeps_at_least_one_video():
    assert num_kept(5, 1e-12) == 1 and num_kept(0, 0.5) == 0 and num_kept(10, 0.3) == 3
    assert keep_top([0.5, 3.0, 1.0], 1e-12) == [1]


@pytest.mark.parametrize("alpha", [0, 0.0, -0.5, 1.01, math.nan, math.inf])
def test_invalid_alpha_raises_value_error(alpha):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=alpha)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        keep_top([1.0, 2.0], alpha)


@pytest.mark.parametrize("alpha", [True, "0.5", None])
def test_non_numeric_alpha_raises_type_error(alpha):
    with pytest.raises(TypeError, match="keep_ratio"):
        VideoFilter(mean_rgb_encoder, rgb_word_encoder, keep_ratio=alpha)


def test_encoder_outputs_are_checked():
    video, caption = [solid_video([RED, RED])], ["red"]
    bad_rows = VideoFilter(lambda x: mean_rgb_encoder(x)[:1], rgb_word_encoder, keep_ratio=1.0)
    with pytest.raises(ValueError, match=r"image_encoder to return features of shape \(n, d\) with n=2"):
        bad_rows.score(video, caption)
    bad_width = VideoFilter(mean_rgb_encoder, lambda c: torch.ones(len(c), 5), keep_ratio=1.0)
    with pytest.raises(ValueError, match="same width d"):
        bad_width.score(video, caption)
    with pytest.raises(ValueError, match="one caption per video"):
        bad_width.score(video, ["red", "blue"])


def test_builtin_encoders_rank_matching_captions_above_mismatching_ones():
    data = MovingShapes(24, frames=3, height=24, width=24, seed=3)
    items = [data[i] for i in range(len(data))]
    colours = [{w for w in it["caption"].split() if w in PALETTE} for it in items]
    vf = VideoFilter(*builtin_encoders(), keep_ratio=0.5)
    matched = vf.score(items)
    pairs = [(i, j) for i in range(len(items)) for j in range(len(items)) if not colours[i] & colours[j]][:40]
    assert pairs
    mismatched = vf.score([items[i]["video"] for i, _ in pairs], [items[j]["caption"] for _, j in pairs])
    for (i, _), wrong in zip(pairs, mismatched):
        assert matched[i] > wrong
    black = -torch.ones(3, 2, 8, 8)
    assert vf.score([black], ["a red circle"]).item() == 0.0


def square_video(colour, *, t=6, size=16):
    """A colour square moving right on black: (3, t, size, size) in [-1, 1]."""
    video = -torch.ones(3, t, size, size)
    for k in range(t):
        video[:, k, 4:10, k : k + 6] = torch.tensor(colour)[:, None, None] * 2 - 1
    return video


def test_sample_frames_spreads_frames_over_the_whole_video(tmp_path):
    levels = torch.linspace(-0.8, 0.8, 10)
    video = levels[None, :, None, None].expand(3, 10, 12, 20).contiguous()
    path = write_video(tmp_path / "ramp.mp4", video, fps=10)
    clip = sample_frames(path, 4, 6, 8)
    assert clip.shape == (3, 4, 6, 8)
    torch.testing.assert_close(clip.mean(dim=(0, 2, 3)), levels[[0, 3, 6, 9]], atol=0.03, rtol=0)
    assert sample_frames(path, 12, 6, 8).shape == (3, 12, 6, 8)  # more frames than the file: repeats


def write_folder(root):
    spec = {
        "a.mp4": (PALETTE["red"], "a red square moving right"),
        "sub/b.mp4": (PALETTE["blue"], "a blue square moving right"),
        "c.mp4": (PALETTE["green"], "a yellow square moving right"),
        "d.mp4": (PALETTE["magenta"], "an orange square moving right"),
    }
    for name, (colour, _) in spec.items():
        write_video(root / name, square_video(colour), fps=8)
    with (root / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption"])
        writer.writerows([name, caption] for name, (_, caption) in spec.items())


def read_scores(path):
    with path.open(newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f)}


def test_cli_writes_the_kept_list_and_scores(tmp_path, capsys):
    data = tmp_path / "videos"
    write_folder(data)
    out = tmp_path / "out" / "kept.txt"
    kept = main(["--data", str(data), "--keep", "0.5", "--out", str(out), "--frames", "4", "--size", "16"])
    assert kept == ["a.mp4", "sub/b.mp4"]
    assert out.read_text().splitlines() == kept
    rows = read_scores(tmp_path / "out" / "kept_scores.csv")
    assert set(rows) == {"a.mp4", "sub/b.mp4", "c.mp4", "d.mp4"}
    assert {name for name, row in rows.items() if row["kept"] == "1"} == set(kept)
    assert min(float(rows[n]["score"]) for n in kept) > max(float(rows[n]["score"]) for n in ("c.mp4", "d.mp4"))
    assert "built-in" in capsys.readouterr().err


def test_cli_uses_an_encoder_factory(tmp_path, monkeypatch):
    data = tmp_path / "videos"
    write_folder(data)
    (tmp_path / "my_encoders.py").write_text(
        "from reference_models.etc.filter import builtin_encoders\n"
        "def make():\n"
        "    image, text = builtin_encoders()\n"
        "    return image, lambda captions: -text(captions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "kept.txt"
    kept = main(
        [
            "--data",
            str(data),
            "--keep",
            "0.5",
            "--out",
            str(out),
            "--frames",
            "3",
            "--size",
            "16",
            "--encoder",
            "my_encoders:make",
        ]
    )
    # Negated text features invert the ranking: the mismatching captions now win.
    assert kept == ["c.mp4", "d.mp4"]


@pytest.mark.parametrize("keep", ["0", "1.5", "nan"])
def test_cli_rejects_invalid_alpha(tmp_path, keep, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--keep", keep, "--out", str(tmp_path / "k.txt")])
    assert "(0, 1]" in capsys.readouterr().err
