"""EVDM metrics: PSNR / SSIM against closed forms and skimage, best-of-k, Frechet distance, the I3D pipeline."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from reference_models.common.metrics import (
    best_of_k,
    frechet_distance,
    frechet_distance_from_features,
    fvd,
    gaussian_stats,
    i3d_features,
    load_i3d,
    preprocess_i3d,
    psnr,
    ssim,
    trajectory_metrics,
    video_psnr,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


sizes = st.tuples(
    st.integers(1, 2), st.sampled_from([1, 3]), st.integers(1, 3), st.integers(11, 16), st.integers(11, 16)
)


def rand_video(shape, seed, low=-1.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- PSNR


@given(shape=sizes, seed=st.integers(0, 1000))
def test_identical_frames_give_infinite_psnr_and_ssim_one(shape, seed):
    x = rand_video(shape, seed)
    assert psnr(x, x).shape == (shape[0], shape[2])
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(shape[0], shape[2], dtype=torch.float64))


@given(offset=st.floats(0.01, 1.0), shape=sizes, seed=st.integers(0, 1000))
def test_known_mse_gives_known_psnr(offset, shape, seed):
    target = rand_video(shape, seed)
    # an offset d in [-1, 1] is d / 2 in [0, 1]: MSE (d / 2)^2
    expected = 10 * math.log10(1 / (offset / 2) ** 2)
    assert torch.allclose(
        psnr(target + offset, target), torch.full((shape[0], shape[2]), expected, dtype=torch.float64)
    )
    assert torch.allclose(
        psnr(target * 0.5 + 0.5, target * 0.5 + 0.5 + offset / 2, value_range=(0, 1)),
        torch.full((shape[0], shape[2]), expected, dtype=torch.float64),
    )


def test_video_psnr_is_the_psnr_of_the_mean_mse():
    target = torch.zeros(1, 1, 2, 4, 4)
    pred = target.clone()
    pred[:, :, 0] += 0.2  # MSE 0.01 in [0, 1]
    pred[:, :, 1] += 0.6  # MSE 0.09
    assert video_psnr(pred, target).item() == pytest.approx(10 * math.log10(1 / 0.05))
    assert video_psnr(pred, target).item() < psnr(pred, target).mean().item()  # -log is convex


def test_psnr_and_ssim_agree_with_skimage():
    from skimage import metrics  # scikit-image is in the test extra

    x, y = rand_video((2, 3, 2, 13, 17), 1), rand_video((2, 3, 2, 13, 17), 2)
    y = (0.7 * x + 0.3 * y).clamp(-1, 1)  # correlated, so SSIM is far from 0
    ours_psnr, ours_ssim, ours_luma = psnr(x, y), ssim(x, y), ssim(x, y, luma=True)
    x01, y01 = ((x + 1) / 2).numpy(), ((y + 1) / 2).numpy()
    luma = np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1)
    for b in range(2):
        for t in range(2):
            a, c = x01[b, :, t], y01[b, :, t]
            assert ours_psnr[b, t].item() == pytest.approx(metrics.peak_signal_noise_ratio(c, a, data_range=1.0))
            reference = metrics.structural_similarity(
                a, c, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=0
            )
            assert ours_ssim[b, t].item() == pytest.approx(reference, abs=1e-9)
            reference = metrics.structural_similarity(
                (a * luma).sum(0),
                (c * luma).sum(0),
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            assert ours_luma[b, t].item() == pytest.approx(reference, abs=1e-9)


# ----------------------------------------------------------------------------- SSIM


@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_ssim_of_constant_frames_is_the_luminance_term(a, b):
    """Flat frames have zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = 0.01^2."""
    x, y = torch.full((1, 1, 1, 12, 12), a), torch.full((1, 1, 1, 12, 12), b)
    c1 = 0.01**2
    assert ssim(x, y, value_range=(0, 1)).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


@given(shape=sizes, seed=st.integers(0, 1000))
def test_ssim_is_symmetric_and_at_most_one(shape, seed):
    x, y = rand_video(shape, seed), rand_video(shape, seed + 1)
    s = ssim(x, y)
    assert torch.allclose(s, ssim(y, x))
    assert (s <= 1 + 1e-12).all() and (s >= -1 - 1e-12).all()


def test_malformed_inputs_are_rejected_with_the_layout():
    x = torch.zeros(1, 1, 2, 8, 8)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x, x)
    assert ssim(x, x, win_size=7).shape == (1, 2)
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        psnr(x, torch.zeros(1, 1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(b, c, t, h, w\)"):
        psnr(torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="c=3"):
        ssim(torch.zeros(1, 1, 1, 11, 11), torch.zeros(1, 1, 1, 11, 11), luma=True)


# ----------------------------------------------------------------------------- best of k


def test_best_of_k_takes_the_best_trajectory_average_per_video():
    # k=2 trajectories, b=2 videos, t=2 frames
    scores = torch.tensor([[[30.0, 10.0], [20.0, 20.0]], [[15.0, 15.0], [40.0, 0.0]]])
    # video 0: means 20 vs 15 -> 20; video 1: means 20 vs 20 -> 20 (not the per-frame max 40 or 20)
    assert best_of_k(scores).tolist() == [20.0, 20.0]
    assert best_of_k(scores, higher_is_better=False).tolist() == [15.0, 20.0]
    assert best_of_k(scores.mean(2)).tolist() == [20.0, 20.0]
    with pytest.raises(ValueError, match=r"\(k, b\)"):
        best_of_k(torch.zeros(3))


def test_trajectory_metrics_keep_the_exact_trajectory_of_each_video():
    target = rand_video((2, 1, 3, 12, 12), 0)
    bad = rand_video((2, 1, 3, 12, 12), 1)
    first_exact = torch.stack([target[0], bad[0]])  # trajectory 0 exact for video 0 only
    second_exact = torch.stack([bad[1], target[1]])  # trajectory 1 exact for video 1 only
    samples = torch.stack([first_exact, second_exact])  # k b c t h w
    out = trajectory_metrics(samples, target)
    assert torch.isinf(out["psnr"]).all() and torch.equal(out["mse"], torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(out["ssim"], torch.ones(2, dtype=torch.float64))
    small = trajectory_metrics([target[:, :, :, :8, :8]], target[:, :, :, :8, :8])
    assert "ssim" not in small and torch.isinf(small["psnr"]).all()


# ----------------------------------------------------------------------------- Frechet distance


@given(d=st.integers(1, 6), n=st.integers(20, 60), seed=st.integers(0, 1000))
def test_frechet_distance_of_identical_and_shifted_sets(d, n, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # same covariance: only the means differ
    assert frechet_distance_from_features(f, f + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6, abs=1e-8)


@given(a=st.lists(st.floats(0.0, 4.0), min_size=1, max_size=5), data=st.data())
def test_frechet_distance_of_diagonal_gaussians(a, data):
    b = data.draw(st.lists(st.floats(0.0, 4.0), min_size=len(a), max_size=len(a)))
    mu1 = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=len(a), max_size=len(a))), dtype=torch.float64)
    mu2 = torch.zeros(len(a), dtype=torch.float64)
    va, vb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    expected = float(mu1.pow(2).sum() + (va.sqrt() - vb.sqrt()).pow(2).sum())
    assert frechet_distance(mu1, torch.diag(va), mu2, torch.diag(vb)) == pytest.approx(expected, rel=1e-6, abs=1e-8)


@given(d=st.integers(2, 8), seed=st.integers(0, 1000))
def test_frechet_distance_agrees_with_scipy_sqrtm(d, seed):
    import scipy.linalg

    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(d, dtype=torch.float64)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    expected = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * np.real(root))
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(expected, rel=1e-7, abs=1e-7)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9, abs=1e-9)


def test_gaussian_stats_match_numpy_and_reject_a_single_sample():
    f = rand_video((30, 4), 3)
    mu, sigma = gaussian_stats(f)
    assert torch.allclose(mu, torch.from_numpy(f.numpy().mean(0)))
    assert torch.allclose(sigma, torch.from_numpy(np.cov(f.numpy(), rowvar=False)))
    with pytest.raises(ValueError, match="n >= 2"):
        gaussian_stats(torch.zeros(1, 4))


# ----------------------------------------------------------------------------- I3D features and FVD


class StandInI3D(nn.Module):
    """Stand-in for i3d_torchscript.pt: (b, 3, t, 224, 224) -> (b, 5) summary features; the last
    feature is 1 when called with StyleGAN-V's keywords (rescale=False, resize=False, features)."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False
    ) -> torch.Tensor:
        flags = float(return_features and not rescale and not resize)
        stats = torch.stack(
            [x.mean(dim=(1, 2, 3, 4)), x.std(dim=(1, 2, 3, 4)), x.amin(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))],
            dim=1,
        )  # b 4
        return torch.cat([stats, torch.full_like(stats[:, :1], flags)], dim=1)  # b 5


class PlainExtractor(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))  # b 3


def save_script(module: nn.Module, path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated, still the format
        torch.jit.save(torch.jit.script(module), str(path))


def test_preprocess_i3d_layout_and_range():
    gray = rand_video((2, 1, 3, 16, 24), 0)
    x = preprocess_i3d(gray)
    assert x.shape == (2, 3, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray repeated to RGB
    flat = preprocess_i3d(torch.full((1, 3, 2, 32, 32), 0.5), value_range=(0, 1))
    assert torch.allclose(flat, torch.zeros_like(flat), atol=1e-6)  # 0.5 in [0, 1] is 0 in [-1, 1]


def test_fvd_pipeline_with_a_torchscript_stand_in(tmp_path):
    save_script(StandInI3D(), tmp_path / "i3d.pt")
    detector = load_i3d(tmp_path / "i3d.pt")
    real = rand_video((6, 1, 4, 16, 16), 0).float()
    fake = (rand_video((6, 1, 4, 16, 16), 1) * 0.5).float()
    features = i3d_features(detector, real, batch_size=4)
    assert features.shape == (6, 5) and features.dtype == torch.float64
    assert (features[:, 4] == 1).all()  # called with rescale=False, resize=False, return_features=True
    expected = StandInI3D()(preprocess_i3d(real), rescale=False, resize=False, return_features=True)
    assert torch.allclose(features, expected.double(), atol=1e-6)
    assert fvd(detector, real, real) == pytest.approx(0.0, abs=1e-8)
    score = fvd(detector, real, fake)
    assert score > 0
    assert score == pytest.approx(frechet_distance_from_features(features, i3d_features(detector, fake)), rel=1e-9)
    assert fvd(detector, [real[:3], real[3:]], fake) == pytest.approx(score, rel=1e-9)  # batches of videos
    assert torch.equal(i3d_features(nn.DataParallel(detector), real), features)  # MCVD wraps it so

    save_script(PlainExtractor(), tmp_path / "plain.pt")
    plain = load_i3d(tmp_path / "plain.pt")
    assert i3d_features(plain, real).shape == (6, 3)  # called as detector(x)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript"):
        load_i3d(tmp_path / "missing.pt")
