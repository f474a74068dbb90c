"""Video metrics every system reports: per-frame PSNR and SSIM, best-of-k trajectories, and FVD
(the ones EVDM reports in its section 4.2; PVDM and CMD use the same).

PSNR and SSIM compare a sampled video with the real one frame by frame. Frames are mapped from
``value_range`` (our data lives in ``[-1, 1]``) to ``[0, 1]`` first, so the numbers are those of
images in ``[0, 1]`` (or, equally, of uint8 images with ``data_range=255``), the convention of MCVD
and of the tables EVDM copies from it:

* :func:`psnr`: ``10 log10(1 / MSE)`` per frame over channels and pixels; identical frames give
  ``inf``. MCVD's per-video PSNR is the PSNR of the *mean* MSE over the frames (:func:`video_psnr`),
  which is what :func:`trajectory_metrics` reports.
* :func:`ssim`: Wang et al. 2004 (the MATLAB ``ssim_index``): an 11x11 Gaussian window with
  ``sigma = 1.5``, ``K1 = 0.01``, ``K2 = 0.03``, population (not sample) variances, only windows
  that lie inside the frame ("valid" filtering), averaged over the frame and then over channels.
  That is skimage's ``structural_similarity(..., data_range=1, gaussian_weights=True,
  use_sample_covariance=False)``, the call MCVD makes. MCVD converts RGB frames to gray (PIL "L")
  before SSIM; ``luma=True`` does the same with the Rec. 601 weights (MCVD also quantises to uint8
  first, which we do not).

Best of k (Table 7's caption, MCVD's protocol): sample ``k`` trajectories per test video, score
each trajectory by its average over the frames, keep the best trajectory *per video* and metric,
then average over the videos (:func:`best_of_k`, :func:`trajectory_metrics`).

FVD (Unterthiner et al. 2019) is the Frechet distance between Gaussians fitted to I3D features of
real and generated videos, ``||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``
(:func:`frechet_distance`). The trace of the matrix square root is computed from the symmetric
matrix ``S_1^{1/2} S_2 S_1^{1/2}``, which has the same eigenvalues as ``S_1 S_2`` but, being
symmetric positive semi-definite, a stable ``eigh`` (no complex ``sqrtm`` round-off to discard).

Features come from a user-supplied TorchScript I3D (:func:`load_i3d`), typically StyleGAN-V's
``i3d_torchscript.pt`` (the TF-Hub I3D that the original FVD uses, converted), which MCVD and most
video-diffusion papers use. Its contract, which :func:`i3d_features` follows: input
``(b, 3, t, 224, 224)`` float in ``[-1, 1]``, called as
``detector(x, rescale=False, resize=False, return_features=True)``, returning ``(b, 400)`` (the
logits before the softmax). :func:`preprocess_i3d` produces that input the way MCVD does: gray
frames repeated to RGB, the shorter side resized to 224 (bilinear, no antialiasing), centre crop.
A detector whose ``forward`` takes none of those keywords is called as ``detector(x)``. MCVD
computes FVD on the conditioning plus generated frames (e.g. 10 + 30 for KTH); the I3D needs a
handful of frames at least (its temporal pooling), which is the caller's to provide.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import einops
import torch
import torch.nn.functional as F
from torch import nn

from reference_models.common.ema import unwrap_model
from vdblocks.validation import check_tensor

__all__ = [
    "to_unit_range",
    "psnr",
    "video_psnr",
    "ssim",
    "best_of_k",
    "trajectory_metrics",
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_features",
    "load_i3d",
    "preprocess_i3d",
    "i3d_features",
    "fvd",
    "I3D_RESOLUTION",
]

I3D_RESOLUTION = 224
"""Frame size the TF-Hub / StyleGAN-V I3D takes."""

_LUMA = (0.299, 0.587, 0.114)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    check_tensor(pred, "pred", "(b, c, t, h, w)")
    check_tensor(target, "target", "(b, c, t, h, w)")
    if pred.shape != target.shape:
        raise ValueError(
            f"expected pred and target of the same shape (b, c, t, h, w), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )


def to_unit_range(x: torch.Tensor, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map ``x`` linearly from ``value_range`` to ``[0, 1]`` in float64 (no clamping)."""
    if len(value_range) != 2 or not float(value_range[1]) > float(value_range[0]):
        raise ValueError(f"expected value_range as (low, high) with low < high, got {value_range!r}")
    low, high = float(value_range[0]), float(value_range[1])
    return (x.double() - low) / (high - low)


def _frame_mse(pred: torch.Tensor, target: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    diff = to_unit_range(pred, value_range) - to_unit_range(target, value_range)
    return diff.pow(2).mean(dim=(1, 3, 4))  # b t


def psnr(pred: torch.Tensor, target: torch.Tensor, *, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """Per-frame PSNR in dB: ``(b, c, t, h, w), (b, c, t, h, w) -> (b, t)`` float64.

    ``10 log10(1 / MSE)`` on frames mapped to ``[0, 1]`` (MSE over channels and pixels of a frame);
    ``inf`` where a frame is reproduced exactly.
    """
    _check_pair(pred, target)
    return -10.0 * torch.log10(_frame_mse(pred, target, value_range))  # b t


def video_psnr(pred: torch.Tensor, target: torch.Tensor, *, value_range: Sequence[float] = (-1.0, 1.0)) -> torch.Tensor:
    """MCVD's per-video PSNR: ``10 log10(1 / mean_t MSE_t)``, ``(b, c, t, h, w) x 2 -> (b,)`` float64.

    The PSNR of the video's mean frame MSE, not the mean of the per-frame PSNRs (which is never
    smaller, ``-log`` being convex, and is infinite as soon as one frame is exact).
    """
    _check_pair(pred, target)
    return -10.0 * torch.log10(_frame_mse(pred, target, value_range).mean(dim=1))  # b


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``(size,)`` float64 (the 11 taps of ``fspecial('gaussian', 11, 1.5)``)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over ``(n, 1, h, w)`` keeping only windows inside the frame."""
    k = window.numel()
    x = F.conv2d(x, window.view(1, 1, k, 1))  # n 1 h-k+1 w
    return F.conv2d(x, window.view(1, 1, 1, k))  # n 1 h-k+1 w-k+1


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    value_range: Sequence[float] = (-1.0, 1.0),
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    luma: bool = False,
) -> torch.Tensor:
    """Per-frame SSIM (Wang et al. 2004): ``(b, c, t, h, w) x 2 -> (b, t)`` float64, at most 1.

    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    Gaussian-weighted local statistics (``win_size`` taps, ``sigma``), ``C1 = (k1 L)^2``,
    ``C2 = (k2 L)^2`` and ``L = 1`` (frames mapped to ``[0, 1]``), averaged over the windows that
    fit in the frame and then over channels (skimage's ``channel_axis``). ``luma=True`` first turns
    RGB frames into Rec. 601 luma, as MCVD does. Frames must be at least ``win_size`` pixels high
    and wide.
    """
    _check_pair(pred, target)
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"expected win_size to be an odd positive int, got {win_size!r}")
    b, c, t, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(
            f"expected frames of pred (b, c, t, h, w) at least {win_size}x{win_size} for the SSIM window, "
            f"got {tuple(pred.shape)}; pass a smaller odd win_size"
        )
    x, y = to_unit_range(pred, value_range), to_unit_range(target, value_range)
    if luma:
        if c != 3:
            raise ValueError(f"luma=True expects RGB videos (b, c, t, h, w) with c=3, got {tuple(pred.shape)}")
        weights = torch.tensor(_LUMA, dtype=torch.float64, device=x.device).view(1, 3, 1, 1, 1)
        x, y = (x * weights).sum(1, keepdim=True), (y * weights).sum(1, keepdim=True)
        c = 1
    x = einops.rearrange(x, "b c t h w -> (b c t) 1 h w")
    y = einops.rearrange(y, "b c t h w -> (b c t) 1 h w")
    window = _gaussian_window(win_size, sigma).to(x.device)
    mu_x, mu_y = _blur_valid(x, window), _blur_valid(y, window)
    # population (co)variances, as Wang et al.: E[xy] - E[x]E[y] under the window's weights
    var_x = _blur_valid(x * x, window) - mu_x**2
    var_y = _blur_valid(y * y, window) - mu_y**2
    cov_xy = _blur_valid(x * y, window) - mu_x * mu_y
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    per_channel = ssim_map.mean(dim=(1, 2, 3))  # (b c t)
    return einops.reduce(per_channel, "(b c t) -> b t", "mean", b=b, c=c, t=t)


def best_of_k(scores: torch.Tensor, *, higher_is_better: bool = True) -> torch.Tensor:
    """The best of ``k`` trajectories per video: ``(k, b)`` or ``(k, b, t)`` -> ``(b,)``.

    Per-frame scores ``(k, b, t)`` are first averaged over the frames (one score per trajectory
    and video); then each video keeps its best trajectory (max, or min with
    ``higher_is_better=False``, e.g. for MSE). Average the result over the videos for the
    dataset's number. Each metric picks its own best trajectory, as MCVD does.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim not in (2, 3):
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"expected scores of shape (k, b) or (k, b, t), got {got}")
    per_video = scores.mean(dim=2) if scores.ndim == 3 else scores  # k b
    return per_video.amax(dim=0) if higher_is_better else per_video.amin(dim=0)  # b


def trajectory_metrics(
    samples: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor,
    *,
    value_range: Sequence[float] = (-1.0, 1.0),
    luma: bool = False,
) -> dict[str, torch.Tensor]:
    """Best-of-k MSE, PSNR and SSIM per video, MCVD's protocol (EVDM Table 7's caption).

    ``samples``: ``k`` trajectories ``(k, b, c, t, h, w)`` (or a list of ``(b, c, t, h, w)``) of
    the frames that were generated, ``target`` the real frames ``(b, c, t, h, w)``. Returns
    ``{"mse", "psnr", "ssim"}``, each ``(b,)`` float64: per trajectory the mean frame MSE, the PSNR
    of that mean (:func:`video_psnr`) and the mean frame SSIM; per video the best trajectory of
    each. SSIM is left out when frames are smaller than its 11x11 window.
    """
    if not isinstance(samples, torch.Tensor):
        samples = torch.stack(list(samples))
    check_tensor(samples, "samples", "(k, b, c, t, h, w)")
    mse = torch.stack([_checked_mse(s, target, value_range) for s in samples])  # k b
    out = {
        "mse": best_of_k(mse, higher_is_better=False),
        "psnr": best_of_k(-10.0 * torch.log10(mse)),
    }
    if min(target.shape[-2:]) >= 11:
        out["ssim"] = best_of_k(torch.stack([ssim(s, target, value_range=value_range, luma=luma) for s in samples]))
    return out


def _checked_mse(pred: torch.Tensor, target: torch.Tensor, value_range: Sequence[float]) -> torch.Tensor:
    _check_pair(pred, target)
    return _frame_mse(pred, target, value_range).mean(dim=1)  # b


# ----------------------------------------------------------------------------------------- FVD


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` (``np.cov``'s) of ``features (n, d)``, float64."""
    check_tensor(features, "features", "(n, d)")
    if features.shape[0] < 2:
        raise ValueError(f"expected features of shape (n, d) with n >= 2 for a covariance, got {tuple(features.shape)}")
    f = features.double()
    mu = f.mean(dim=0)  # d
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)  # d, d d


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues count as 0."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (FID / FVD).

    ``||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})`` with
    ``tr((S1 S2)^{1/2}) = sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` in float64. Means ``(d,)``,
    covariances ``(d, d)`` symmetric positive semi-definite.
    """
    for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
        check_tensor(mu, f"mu{name}", "(d,)")
        check_tensor(sigma, f"sigma{name}", "(d, d)", sizes={"d": mu.shape[0]})
        if sigma.shape[1] != mu.shape[0]:
            raise ValueError(f"expected sigma{name} of shape (d, d) with d={mu.shape[0]}, got {tuple(sigma.shape)}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"expected mu1 and mu2 of one shape (d,), got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    mu1, mu2, s1, s2 = (v.double() for v in (mu1, mu2, sigma1, sigma2))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # exact symmetry for eigh
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * trace_sqrt
    return float(value)


def frechet_distance_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to ``(n1, d)`` and ``(n2, d)`` features."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load a TorchScript feature extractor (e.g. StyleGAN-V's ``i3d_torchscript.pt``) in eval mode.

    Only ``torch.jit.load``: a TorchScript archive holds code and tensors, no pickled Python objects.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no I3D model at {os.fspath(path)!r}; FVD needs a TorchScript I3D such as StyleGAN-V's "
            "i3d_torchscript.pt (input (b, 3, t, 224, 224) in [-1, 1], returns (b, 400) features)"
        )
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript, but it is the format the FVD detectors are shipped in
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(os.fspath(path), map_location=device).eval()


def preprocess_i3d(
    videos: torch.Tensor, *, value_range: Sequence[float] = (-1.0, 1.0), resolution: int = I3D_RESOLUTION
) -> torch.Tensor:
    """``(b, c, t, h, w)`` with ``c`` in {1, 3} -> ``(b, 3, t, resolution, resolution)`` float32 in ``[-1, 1]``.

    MCVD's / StyleGAN-V's ``preprocess_single``: values to ``[0, 1]`` (clamped), gray repeated to
    RGB, the shorter side resized to ``resolution`` (bilinear, ``align_corners=False``, size of
    the longer side rounded up), centre crop, then ``[0, 1] -> [-1, 1]``.
    """
    check_tensor(videos, "videos", "(b, c, t, h, w)")
    b, c, t, h, w = videos.shape
    if c not in (1, 3):
        raise ValueError(f"expected videos of shape (b, c, t, h, w) with c in {{1, 3}}, got {tuple(videos.shape)}")
    x = to_unit_range(videos, value_range).clamp(0, 1).float()
    if c == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    frames = einops.rearrange(x, "b c t h w -> (b t) c h w")
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False)  # (b t) c H W
    top, left = (frames.shape[-2] - resolution) // 2, (frames.shape[-1] - resolution) // 2
    frames = frames[..., top : top + resolution, left : left + resolution]
    return einops.rearrange(frames * 2 - 1, "(b t) c h w -> b c t h w", b=b).contiguous()


_I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def _detector_kwargs(detector: Callable) -> dict[str, bool]:
    """The StyleGAN-V keywords that ``detector.forward`` accepts (none for a plain ``forward(x)``,
    all for a ``forward(x, **kwargs)``); a ``DataParallel`` wrapper is looked through."""
    detector = unwrap_model(detector) if isinstance(detector, nn.Module) else detector
    schema = getattr(getattr(detector, "forward", None), "schema", None)
    if schema is not None:  # TorchScript: the compiled signature
        names = {arg.name for arg in schema.arguments}
    else:
        try:
            params = inspect.signature(detector.forward if isinstance(detector, nn.Module) else detector).parameters
        except (TypeError, ValueError):
            params = {}
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return dict(_I3D_KWARGS)
        names = set(params)
    return {k: v for k, v in _I3D_KWARGS.items() if k in names}


@torch.no_grad()
def i3d_features(
    detector: Callable[..., torch.Tensor],
    videos: torch.Tensor | Iterable[torch.Tensor],
    *,
    value_range: Sequence[float] = (-1.0, 1.0),
    batch_size: int = 16,
    device: str | torch.device | None = None,
    detector_kwargs: Mapping[str, object] | None = None,
) -> torch.Tensor:
    """I3D features ``(n, d)`` float64 of videos ``(n, c, t, h, w)`` (or an iterable of such batches).

    Each batch of ``batch_size`` goes through :func:`preprocess_i3d` and
    ``detector(x, **detector_kwargs)``; the default keywords are StyleGAN-V's
    ``rescale=False, resize=False, return_features=True`` restricted to those the detector's
    ``forward`` accepts. ``device`` defaults to the detector's (CPU for a parameterless one).
    """
    if device is None:
        params = list(detector.parameters()) if isinstance(detector, nn.Module) else []
        device = params[0].device if params else torch.device("cpu")
    kwargs = dict(_detector_kwargs(detector) if detector_kwargs is None else detector_kwargs)
    batches = [videos] if isinstance(videos, torch.Tensor) else videos
    features = []
    for batch in batches:
        for chunk in torch.split(batch, batch_size):
            x = preprocess_i3d(chunk, value_range=value_range).to(device)
            out = detector(x, **kwargs)
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != chunk.shape[0]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"expected the detector to return features of shape (b, d) with b={chunk.shape[0]}, got {got}"
                )
            features.append(out.double().cpu())
    if not features:
        raise ValueError("expected at least one video to extract features from")
    return torch.cat(features)  # n d


def fvd(
    detector: Callable[..., torch.Tensor],
    real: torch.Tensor | Iterable[torch.Tensor],
    fake: torch.Tensor | Iterable[torch.Tensor],
    **kwargs,
) -> float:
    """Frechet Video Distance between real and generated videos ``(n, c, t, h, w)`` (at least 2 each).

    :func:`i3d_features` of both sets (``kwargs`` go there), then :func:`frechet_distance_from_features`.
    Papers use 256 or more videos per set; the estimate is biased upward for small sets.
    """
    return frechet_distance_from_features(
        i3d_features(detector, real, **kwargs), i3d_features(detector, fake, **kwargs)
    )
