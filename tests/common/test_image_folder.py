import json
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from reference_models.common.data.image_folder import ImageFolder, load_captions


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@given(
    src_h=st.integers(4, 40),
    src_w=st.integers(4, 40),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    channels=st.sampled_from([1, 3]),
)
def test_any_source_size_gives_the_requested_size(tmp_path_factory, src_h, src_w, height, width, channels):
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(src_h * 100 + src_w)
    _save(root / "x.png", rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8))
    image = ImageFolder(root, height=height, width=width, channels=channels)[0]["image"]
    assert image.shape == (channels, height, width) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1


def test_constant_colour_is_kept_exactly(tmp_path):
    colour = np.array([200, 40, 90], dtype=np.uint8)
    _save(tmp_path / "c.png", np.broadcast_to(colour, (21, 13, 3)).copy())
    image = ImageFolder(tmp_path, height=8, width=8)[0]["image"]
    expected = torch.tensor(colour, dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(image, expected[:, None, None].expand(3, 8, 8), atol=1e-6)


def test_centre_crop_keeps_the_middle(tmp_path):
    # 20 x 60: left and right thirds white, middle third black. Covering 10 x 10 scales to
    # 10 x 30 and the centre crop is exactly the black middle.
    array = np.full((20, 60), 255, dtype=np.uint8)
    array[:, 20:40] = 0
    _save(tmp_path / "bands.png", array)
    image = ImageFolder(tmp_path, height=10, width=10, channels=1)[0]["image"]
    assert image.shape == (1, 10, 10)
    assert image[:, :, 2:-2].max() < -0.9  # the bicubic filter may blur the outermost columns only


def test_labels_captions_and_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat/a.png", "cat/b.jpg", "dog/c.png", "loose.png"):
        _save(tmp_path / name, rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    (tmp_path / "dog" / "random.png").write_bytes(rng.bytes(500))
    valid = (tmp_path / "cat" / "a.png").read_bytes()
    (tmp_path / "dog" / "truncated.png").write_bytes(valid[: len(valid) // 2])  # header fine, data cut
    (tmp_path / "captions.json").write_text(json.dumps({"cat/a.png": "a cat", "c.png": "a dog"}))
    with pytest.warns(RuntimeWarning, match="random.png"):
        ds = ImageFolder(tmp_path, height=8, width=8, captions=tmp_path / "captions.json")
    assert ds.classes == ["cat", "dog"] and ds.num_skipped == 1
    assert len(ds) == 5  # the truncated file passes the header probe

    with pytest.warns(RuntimeWarning, match="truncated.png"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_skipped == 2
    assert {s.path.rsplit("/", 1)[-1] for s in ds.skipped} == {"random.png", "truncated.png"}
    truncated = [str(p) for p in ds.files].index(str(tmp_path / "dog" / "truncated.png"))
    assert items[truncated]["path"] == str(ds.files[(truncated + 1) % len(ds)])  # next index instead

    by_name = {item["path"].rsplit("/", 1)[-1]: (item["label"], item["caption"]) for item in items}
    assert by_name == {"a.png": (0, "a cat"), "b.jpg": (0, ""), "c.png": (1, "a dog"), "loose.png": (-1, "")}
    assert all(item["image"].shape == (3, 8, 8) for item in items)
    assert [ds.files[i].name for i in ds.indices_for_label(1)] == ["c.png", "truncated.png"]


def test_every_file_failing_at_load_time_is_an_error(tmp_path):
    valid_png = tmp_path / "v.png"
    _save(valid_png, np.zeros((32, 32, 3), dtype=np.uint8) + np.arange(32, dtype=np.uint8)[:, None, None])
    data = valid_png.read_bytes()
    valid_png.write_bytes(data[: len(data) // 2])
    ds = ImageFolder(tmp_path, height=4, width=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="failed to load"):
            ds[0]


def test_missing_empty_or_unreadable_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "nowhere", height=4, width=4)
    with pytest.raises(ValueError, match="no image files"):
        ImageFolder(tmp_path, height=4, width=4)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="no readable image"):
            ImageFolder(tmp_path, height=4, width=4)


def test_invalid_options(tmp_path):
    _save(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    for kwargs in ({"channels": 4}, {"height": 0}, {"width": 2.5}):
        with pytest.raises((ValueError, TypeError)):
            ImageFolder(tmp_path, **({"height": 4, "width": 4} | kwargs))
    with pytest.raises(ValueError, match=".csv or .json"):
        load_captions(tmp_path / "a.png")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="file: caption"):
        load_captions(tmp_path / "list.json")
