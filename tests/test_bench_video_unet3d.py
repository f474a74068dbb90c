"""bench/_video_unet3d.py, the pixel-space 3D U-Net that bench/pvdm_cost.py times PVDM against: any
clip size, every parameter learns, and inputs are checked at the boundary."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "bench"))  # bench scripts import their helpers as top-level modules

from _video_unet3d import VideoUNet3D  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(**kw) -> VideoUNet3D:
    torch.manual_seed(0)
    return VideoUNet3D(
        **{
            "in_channels": 2,
            "base_channels": 8,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attn_resolutions": (1, 2),
            "heads": 2,
            **kw,
        }
    )


@given(b=st.integers(1, 2), t=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5))
def test_any_clip_size_comes_back_at_its_size(b, t, h, w):
    model = tiny().eval()
    x = torch.randn(b, 2, t, h, w)
    with torch.no_grad():
        out = model(x, torch.randint(0, 1000, (b,)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_every_parameter_receives_a_gradient():
    model = tiny()
    model(torch.randn(2, 2, 3, 4, 5), torch.tensor([3, 700])).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_inputs_name_the_layout():
    model = tiny()
    with pytest.raises(ValueError, match=r"expected x of shape \(b, c, t, h, w\) with c=2"):
        model(torch.randn(1, 3, 2, 4, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="channel_mult"):
        VideoUNet3D(channel_mult=())
