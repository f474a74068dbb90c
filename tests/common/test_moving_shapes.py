from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from reference_models.common.data.moving_shapes import (
    DIRECTIONS,
    PALETTE,
    SHAPE_KINDS,
    MovingShapes,
    MovingShapesImages,
    render_shapes,
)

_LUMA = np.array([0.299, 0.587, 0.114])


def test_deterministic_per_seed_and_seeds_differ():
    a, b, other = (MovingShapes(8, frames=4, height=16, width=20, seed=s) for s in (5, 5, 6))
    for i in range(8):
        x, y = a[i], b[i]
        assert torch.equal(x["video"], y["video"])
        assert (x["label"], x["caption"], x["fps"]) == (y["label"], y["caption"], y["fps"])
    assert any(not torch.equal(a[i]["video"], other[i]["video"]) for i in range(8))


@given(
    frames=st.integers(1, 6),
    height=st.integers(8, 24),
    width=st.integers(8, 24),
    channels=st.sampled_from([1, 3]),
    fps=st.sampled_from([1.0, 7.5, 8.0, 30.0]),
    max_shapes=st.integers(1, 3),
    seed=st.integers(0, 2**31),
)
def test_item_contract(frames, height, width, channels, fps, max_shapes, seed):
    ds = MovingShapes(
        6, frames=frames, height=height, width=width, fps=fps, channels=channels, max_shapes=max_shapes, seed=seed
    )
    assert len(ds) == 6 and ds.num_classes == len(SHAPE_KINDS) == len(ds.class_names)
    for i in range(len(ds)):
        item = ds[i]
        video = item["video"]
        assert video.shape == (channels, frames, height, width) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert video.min() == -1  # background is visible: shapes never fill the frame
        assert item["fps"] == fps
        assert 0 <= item["label"] < ds.num_classes
        shapes = ds.shapes(i)
        assert 1 <= len(shapes) <= max_shapes
        primary = item["caption"].split(" and ")[0]
        assert ds.class_names[item["label"]] in primary.split()
        assert shapes[0].kind == ds.class_names[item["label"]]
        assert (shapes[0].color in primary.split()) == (channels == 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_primary_shape_is_drawn_on_top_in_its_colour(channels):
    ds = MovingShapes(20, frames=3, height=32, width=40, channels=channels, max_shapes=3, seed=2)
    for i in range(len(ds)):
        video = ds[i]["video"]
        primary = ds.shapes(i)[0]
        x, y = primary.center_at(np.arange(3) / ds.fps_choices[0], 32, 40)
        rgb = np.array(PALETTE[primary.color])
        expected = torch.tensor(rgb if channels == 3 else [rgb @ _LUMA], dtype=torch.float32) * 2 - 1
        for k in range(3):
            pixel = video[:, k, int(y[k]), int(x[k])]  # the pixel holding the shape centre
            assert torch.allclose(pixel, expected, atol=1e-6)


def test_label_by_shape_color_names_colour_and_kind():
    ds = MovingShapes(30, frames=2, height=16, width=16, label_by="shape_color", colors=("red", "blue"), seed=1)
    assert ds.num_classes == 2 * len(SHAPE_KINDS)
    for i in range(len(ds)):
        item = ds[i]
        name = ds.class_names[item["label"]]
        assert name in item["caption"].split(" and ")[0]
        assert name == f"{ds.shapes(i)[0].color} {ds.shapes(i)[0].kind}"


def test_shapes_move_and_stay_inside_the_frame():
    h, w = 24, 36
    ds = MovingShapes(16, frames=8, height=h, width=w, fps=8, max_shapes=3, seed=4)
    times = np.linspace(0, 60, 2001)  # many bounces
    for i in range(len(ds)):
        video = ds[i]["video"]
        assert not torch.equal(video[:, 0], video[:, -1])
        for shape in ds.shapes(i):
            x, y = shape.center_at(times, h, w)
            assert np.all(x - shape.radius >= -1e-9) and np.all(x + shape.radius <= w + 1e-9)
            assert np.all(y - shape.radius >= -1e-9) and np.all(y + shape.radius <= h + 1e-9)
            assert np.ptp(x) + np.ptp(y) > 0


def test_a_shape_is_never_clipped_by_the_border():
    # Reference: the same shape, frozen at each frame's centre, drawn on a canvas with a margin.
    # Shifting by a whole number of pixels keeps the pixel count, so equal counts mean no clipping.
    h, w, margin = 20, 28, 6
    ds = MovingShapes(25, frames=12, height=h, width=w, fps=4, max_shapes=1, seed=9)
    for i in range(len(ds)):
        video = ds[i]["video"]
        shape = ds.shapes(i)[0]
        xs, ys = shape.center_at(np.arange(12) / 4, h, w)
        for k in range(12):
            frozen = replace(shape, position=(xs[k] + margin, ys[k] + margin), velocity=(0.0, 0.0))
            big = render_shapes([frozen], np.zeros(1), h + 2 * margin, w + 2 * margin)
            lit = (video[:, k] > -1).any(0).sum()
            assert lit > 0 and lit == (big[:, 0] > -1).any(0).sum()


def test_motion_is_consistent_across_frame_rates():
    slow = MovingShapes(6, frames=5, height=20, width=30, fps=8, max_shapes=3, seed=11)
    fast = MovingShapes(6, frames=10, height=20, width=30, fps=16, max_shapes=3, seed=11)
    for i in range(6):
        assert torch.equal(slow[i]["video"], fast[i]["video"][:, ::2])  # time k/8 == (2k)/16
        assert torch.equal(slow.render(i, fps=16, frames=10)[:, ::2], slow[i]["video"])
        assert slow[i]["caption"] == fast[i]["caption"] and slow[i]["label"] == fast[i]["label"]


def test_sequence_of_frame_rates():
    rates = (1, 2, 4, 8, 15, 30, 60)
    ds = MovingShapes(24, frames=3, height=16, width=16, fps=rates, seed=0)
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["fps"] in rates
        seen.add(item["fps"])
        assert torch.equal(item["video"], ds.render(i, fps=item["fps"]))
    assert len(seen) > 1


def test_indices_for_label_partition_the_dataset():
    ds = MovingShapes(23, frames=1, height=8, width=8, seed=3)
    groups = [list(ds.indices_for_label(label)) for label in range(ds.num_classes)]
    assert sorted(i for g in groups for i in g) == list(range(23))
    for label, group in enumerate(groups):
        assert all(ds[i]["label"] == label for i in group)
    with pytest.raises(ValueError):
        ds.indices_for_label(ds.num_classes)


def test_images_dataset():
    ds = MovingShapesImages(30, height=12, width=18, channels=3, max_shapes=2, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 12, 18)
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert ds.class_names[item["label"]] in item["caption"].split(" and ")[0].split()
        assert "moving" not in item["caption"]
    group = list(ds.indices_for_label(2))
    images = ds.images_for_label(2, 3)
    assert images.shape == (3, 3, 12, 18)
    assert all(torch.equal(images[j], ds[group[j]]["image"]) for j in range(3))
    drawn = ds.images_for_label(2, len(group), generator=torch.Generator().manual_seed(0))
    as_set = {tuple(x.flatten().tolist()) for x in drawn}
    assert as_set == {tuple(ds[i]["image"].flatten().tolist()) for i in group}
    with pytest.raises(ValueError, match="only"):
        ds.images_for_label(2, len(group) + 1)


def test_dataloader_collates_items():
    ds = MovingShapes(8, frames=3, height=8, width=12, channels=1, seed=0)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 1, 3, 8, 12)
    assert batch["label"].shape == (4,) and len(batch["caption"]) == 4
    assert len(list(iter(ds))) == len(ds)  # the legacy iteration protocol stops at IndexError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 2},
        {"channels": 1, "label_by": "shape_color"},
        {"label_by": "direction"},
        {"fps": 0},
        {"fps": []},
        {"height": 4},
        {"kinds": ("hexagon",)},
        {"colors": ("red", "red")},
        {"directions": ("sideways",)},
        {"directions": ()},
        {"size_range": (0.1, 0.6)},
        {"seed": -1},
    ],
)
def test_invalid_options_are_rejected(kwargs):
    with pytest.raises((ValueError, TypeError)):
        MovingShapes(4, **kwargs)


def test_directions_restrict_the_motion_and_the_default_scenes_are_unchanged():
    axis = ("left", "right", "up", "down")
    ds = MovingShapes(64, frames=2, height=16, width=16, max_shapes=2, directions=axis)
    assert ds.directions == axis
    assert all(s.direction in axis for i in range(64) for s in ds.shapes(i))
    # the velocity follows the named direction
    for s in (sh for i in range(64) for sh in ds.shapes(i)):
        vx, vy = s.velocity
        assert {"left": vx < 0 == vy, "right": vx > 0 == vy, "up": vy < 0 == vx, "down": vy > 0 == vx}[s.direction]
    # naming every direction (in DIRECTIONS' order) draws exactly the default scenes
    default, named = MovingShapes(16, frames=2), MovingShapes(16, frames=2, directions=tuple(DIRECTIONS))
    assert all(default.shapes(i) == named.shapes(i) for i in range(16))


def test_out_of_range_index():
    ds = MovingShapes(3, frames=1, height=8, width=8)
    with pytest.raises(IndexError):
        ds[3]
    assert torch.equal(ds[-1]["video"], ds[2]["video"])
