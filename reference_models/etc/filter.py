"""ETC's video filter (section 4.2, eq. 5): keep the videos whose frames best match their captions.

Eq. 5 scores one frame against its video's caption with CLIP-style features::

    CLIP_score = ε · (f_img / ||f_img||_2) · (f_txt / ||f_txt||_2)^T

computed "on a frame-by-frame basis"; a video's score is the **mean** over its frames (the paper
says frame by frame and then ranks videos, so one number per video is needed; the mean charges a
video for every off-caption or meaningless frame in proportion to how many there are, which is the
paper's two failure cases). The dataset keeps the top fraction ``α`` (``keep_ratio``) by score
("selecting a threshold ratio α and excluding all videos with scores below this threshold").

Readings.

* ``ε`` is printed as ``ln(1/0.07)^e``. We read it as ``e^{ln(1/0.07)} = 1/0.07 ≈ 14.29``, CLIP's
  logit scale at initialisation (temperature 0.07), which the expression spells out; the literal
  ``(ln(1/0.07))^e ≈ 14.27`` is within 0.2 % of it. :data:`PAPER_EPSILON` holds ``1/0.07``; pass
  ``epsilon=100.0`` for the ``100 · cos`` scale of CLIP-score tables (Table 1). Any ``ε > 0`` gives
  the same ranking, so the filter's choice of videos does not depend on it.
* How many videos ``α`` keeps: ``ceil(α · n)`` (computed with a 1e-9 tolerance so that ``0.3 · 10``
  keeps 3, not 4), so any ``α > 0`` keeps at least one video and ``α = 1`` keeps all. Ties are
  broken towards the lower index (dataset order), so the result is deterministic. ``α`` must lie in
  ``(0, 1]``.
* A feature vector of norm 0 (e.g. an all-black frame for the built-in encoder, an empty caption)
  scores 0 instead of NaN; a NaN score (a broken encoder output) ranks below every number.

Encoders are pluggable: ``image_encoder`` maps frames ``(n, c, h, w)`` float to ``(n, d)``,
``text_encoder`` maps ``list[str]`` to ``(n, d)``. Frames reach the image encoder exactly as the data
gives them (``VideoFolder``: RGB in ``[-1, 1]``), so a CLIP wrapper does its own resizing and
normalisation, e.g. with OpenCLIP weights on disk::

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="/models/clip.bin")
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    mean = torch.tensor(preprocess.transforms[-1].mean)[:, None, None]
    std = torch.tensor(preprocess.transforms[-1].std)[:, None, None]
    image_encoder = lambda x: model.encode_image((F.interpolate((x + 1) / 2, size=224, mode="bicubic") - mean) / std)
    text_encoder = lambda captions: model.encode_text(tokenizer(captions))

The CLI takes such a pair from ``--encoder module:factory`` (``factory() -> (image_encoder,
text_encoder)``). Without one it uses :func:`builtin_encoders`: colour histograms against colour
words, deterministic and download-free, enough to rank moving-shapes videos with matching captions
above mismatching ones and no substitute for CLIP::

    python -m reference_models.etc.filter --data DIR --keep 0.5 --out kept.txt [--encoder mod:factory]
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
import numbers
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from reference_models.common.data.image_folder import center_crop_box, resize_crop_size
from reference_models.common.data.moving_shapes import PALETTE
from reference_models.common.data.video_folder import VideoFolder
from reference_models.common.video_io import frame_to_array
from vdblocks.validation import check_positive_int, check_same_batch, check_tensor

__all__ = [
    "PAPER_EPSILON",
    "clip_score",
    "num_kept",
    "keep_top",
    "VideoFilter",
    "ColorHistogramImageEncoder",
    "ColorWordTextEncoder",
    "builtin_encoders",
    "sample_frames",
    "main",
]

PAPER_EPSILON = 1.0 / 0.07
"""ε of eq. 5, read as ``e^{ln(1/0.07)}`` (see the module docstring)."""

ImageEncoder = Callable[[torch.Tensor], torch.Tensor]
TextEncoder = Callable[[list[str]], torch.Tensor]


def _check_epsilon(epsilon: object) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real):
        raise TypeError(f"expected epsilon to be a positive number, got {epsilon!r}")
    if not 0 < float(epsilon) < math.inf:
        raise ValueError(f"expected epsilon to be a positive finite number, got {epsilon!r}")
    return float(epsilon)


def _check_keep_ratio(keep_ratio: object) -> float:
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, numbers.Real):
        raise TypeError(f"expected keep_ratio (alpha) to be a number in (0, 1], got {keep_ratio!r}")
    if not 0 < float(keep_ratio) <= 1:
        raise ValueError(f"expected keep_ratio (alpha) in (0, 1], got {keep_ratio!r}")
    return float(keep_ratio)


def clip_score(
    frame_features: torch.Tensor,
    caption_features: torch.Tensor,
    *,
    epsilon: float = PAPER_EPSILON,
    per_frame: bool = False,
) -> torch.Tensor:
    """Eq. 5 of ETC for every frame, averaged over the frames of each video.

    Shapes: ``frame_features (b, t, d)``, ``caption_features (b, d)`` -> ``(b,)`` (the mean over
    ``t``), or ``(b, t)`` with ``per_frame=True``. Both are L2-normalised along ``d`` (a zero
    vector stays zero and scores 0), so each frame scores ``epsilon * cos``, in
    ``[-epsilon, epsilon]``. Computed in float32 (float64 for float64 inputs).
    """
    check_tensor(frame_features, "frame_features", "(b, t, d)")
    check_tensor(caption_features, "caption_features", "(b, d)", sizes={"d": frame_features.shape[-1]})
    check_same_batch(frame_features, "frame_features", caption_features, "caption_features")
    epsilon = _check_epsilon(epsilon)
    work = torch.float64 if torch.float64 in (frame_features.dtype, caption_features.dtype) else torch.float32
    image = F.normalize(frame_features.to(work), dim=-1)  # b t d
    text = F.normalize(caption_features.to(work), dim=-1)  # b d
    scores = epsilon * torch.einsum("btd,bd->bt", image, text)  # b t
    return scores if per_frame else scores.mean(dim=1)  # b


def num_kept(n: int, keep_ratio: float) -> int:
    """How many of ``n`` videos the filter keeps: ``ceil(keep_ratio * n)`` (see the module docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"expected n to be a non-negative int, got {n!r}")
    keep_ratio = _check_keep_ratio(keep_ratio)
    # The tolerance absorbs float error (0.3 * 10 = 3.0000000000000004); any alpha > 0 keeps one.
    return min(n, max(math.ceil(keep_ratio * n - 1e-9), min(n, 1)))


def keep_top(scores: torch.Tensor | Sequence[float], keep_ratio: float) -> list[int]:
    """Indices of the top ``keep_ratio`` fraction of ``scores (n,)``, in ascending index order.

    Keeps :func:`num_kept` videos; higher scores first, equal scores by lower index, NaN last.
    """
    values = torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    if values.ndim != 1:
        raise ValueError(f"expected scores of shape (n,), got {tuple(values.shape)}")
    k = num_kept(values.shape[0], keep_ratio)
    values = torch.nan_to_num(values, nan=-math.inf).tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def _check_features(features: object, name: str, n: int) -> torch.Tensor:
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != n:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"expected the {name} to return features of shape (n, d) with n={n}, got {shape}")
    if not features.is_floating_point():
        raise TypeError(f"expected the {name} to return floating-point features, got {features.dtype}")
    return features


class VideoFilter:
    """Scores videos against their captions with eq. 5 and keeps the top ``keep_ratio`` (α).

    ``image_encoder``: ``(n, c, h, w)`` float -> ``(n, d)``; ``text_encoder``: ``list[str]`` ->
    ``(n, d)``. Frames of consecutive videos are packed into encoder batches of up to
    ``batch_size`` frames (videos of different frame sizes are never mixed in one batch), captions
    into batches of ``batch_size`` distinct captions; encoders run under ``torch.no_grad``.
    ``device``: where frames go before the image encoder (``None``: where they are).

    Inputs to :meth:`score` / :meth:`filter`, either

    * ``videos`` alone: an iterable of items with ``"video" (c, t, h, w)`` and ``"caption"`` (a
      ``VideoFolder`` or ``MovingShapes``, or a list of their items), or
    * ``videos`` as a ``(b, c, t, h, w)`` tensor or a sequence of ``(c, t, h, w)`` tensors, and
      ``captions`` one string each.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        *,
        keep_ratio: float,
        epsilon: float = PAPER_EPSILON,
        batch_size: int = 64,
        device: torch.device | str | None = None,
    ) -> None:
        if not callable(image_encoder) or not callable(text_encoder):
            raise TypeError("expected image_encoder and text_encoder to be callables")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.keep_ratio = _check_keep_ratio(keep_ratio)
        self.epsilon = _check_epsilon(epsilon)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.device = None if device is None else torch.device(device)

    @staticmethod
    def _pairs(videos, captions) -> Iterable[tuple[torch.Tensor, str]]:
        if captions is None:
            for item in videos:
                if not isinstance(item, Mapping) or "video" not in item or "caption" not in item:
                    raise TypeError(
                        "expected items with 'video' (c, t, h, w) and 'caption' when no captions are given, "
                        f"got {type(item).__name__}"
                    )
                yield item["video"], item["caption"]
            return
        if isinstance(captions, str) or not isinstance(captions, Sequence):
            raise TypeError(f"expected captions to be a sequence of str, got {type(captions).__name__}")
        if isinstance(videos, torch.Tensor):
            check_tensor(videos, "videos", "(b, c, t, h, w)")
        if len(videos) != len(captions):
            raise ValueError(f"expected one caption per video, got {len(videos)} videos and {len(captions)} captions")
        yield from zip(videos, captions)

    def _encode_frames(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``(n, c, h, w)`` -> list of ``(m, d)`` chunks, ``m <= batch_size``."""
        out = []
        for chunk in frames.split(self.batch_size):
            if self.device is not None:
                chunk = chunk.to(self.device)
            out.append(_check_features(self.image_encoder(chunk), "image_encoder", chunk.shape[0]).float().cpu())
        return out

    @torch.no_grad()
    def score(self, videos, captions: Sequence[str] | None = None) -> torch.Tensor:
        """Eq. 5 averaged over each video's frames: ``-> (n,)`` float64, one score per video."""
        features: list[torch.Tensor] = []  # (t_i, d) per video
        texts: list[str] = []
        pending: list[torch.Tensor] = []  # (t_i, c, h, w) frames not yet encoded

        def flush() -> None:
            if not pending:
                return
            counts = [p.shape[0] for p in pending]
            encoded = torch.cat(self._encode_frames(torch.cat(pending)))  # (sum t_i) d
            features.extend(encoded.split(counts))
            pending.clear()

        for video, caption in self._pairs(videos, captions):
            check_tensor(video, "video", "(c, t, h, w)")
            if not isinstance(caption, str):
                raise TypeError(f"expected each caption to be a str, got {type(caption).__name__}")
            frames = rearrange(video, "c t h w -> t c h w")
            if pending and pending[0].shape[1:] != frames.shape[1:]:
                flush()
            pending.append(frames)
            texts.append(caption)
            if sum(p.shape[0] for p in pending) >= self.batch_size:
                flush()
        flush()
        if not texts:
            return torch.zeros(0, dtype=torch.float64)

        distinct = list(dict.fromkeys(texts))
        text_features = torch.cat(
            [
                _check_features(
                    self.text_encoder(distinct[i : i + self.batch_size]),
                    "text_encoder",
                    len(distinct[i : i + self.batch_size]),
                )
                .float()
                .cpu()
                for i in range(0, len(distinct), self.batch_size)
            ]
        )  # (distinct captions) d
        if text_features.shape[1] != features[0].shape[1]:
            raise ValueError(
                "expected image and text features of the same width d, got "
                f"d={features[0].shape[1]} (image) and d={text_features.shape[1]} (text)"
            )
        row = {text: i for i, text in enumerate(distinct)}
        scores = [
            clip_score(f[None], text_features[row[text]][None], epsilon=self.epsilon)[0]
            for f, text in zip(features, texts)
        ]
        return torch.stack(scores).double()  # n

    def filter(self, videos, captions: Sequence[str] | None = None) -> list[int]:
        """Indices (ascending) of the videos kept: the top ``keep_ratio`` by :meth:`score`."""
        return keep_top(self.score(videos, captions), self.keep_ratio)


class ColorHistogramImageEncoder:
    """Built-in image features: how much of each named colour a frame shows.

    Shapes: ``frames (n, 3, h, w)`` in ``value_range`` -> ``(n, K)``, ``K = len(colors)``. Each pixel
    goes to its nearest colour among ``colors`` and black (the background); pixels farther than
    ``max_distance`` (RGB in [0, 1]) from every one, e.g. blended edges from video compression, and
    black pixels count for nothing. Feature ``k`` is ``sqrt(fraction of pixels of colour k)``: the
    square root weighs *whether* a colour appears more than how much of the frame it fills, which
    is what a caption naming colours says. An all-black frame gives the zero vector.
    """

    def __init__(
        self,
        colors: Mapping[str, Sequence[float]] = PALETTE,
        *,
        value_range: tuple[float, float] = (-1.0, 1.0),
        max_distance: float = 0.3,
    ) -> None:
        if not colors:
            raise ValueError("expected at least one colour")
        self.names = tuple(colors)
        self.centres = torch.tensor([list(colors[c]) for c in self.names] + [[0.0, 0.0, 0.0]])  # (K+1) 3
        low, high = (float(v) for v in value_range)
        if not high > low:
            raise ValueError(f"expected value_range with low < high, got {value_range!r}")
        self.value_range = (low, high)
        self.max_distance = float(max_distance)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        check_tensor(frames, "frames", "(n, c, h, w)", sizes={"c": 3})
        low, high = self.value_range
        x = ((frames.float().cpu() - low) / (high - low)).clamp(0, 1)
        pixels = rearrange(x, "n c h w -> n (h w) c")
        dist = torch.cdist(pixels.reshape(-1, 3), self.centres).reshape(*pixels.shape[:2], -1)  # n p (K+1)
        nearest = dist.argmin(-1)  # n p
        near = dist.amin(-1) <= self.max_distance  # n p
        counts = F.one_hot(nearest, len(self.centres))[..., :-1] * near[..., None]  # n p K, black dropped
        return counts.float().mean(dim=1).sqrt()  # n K


class ColorWordTextEncoder:
    """Built-in text features: how often each colour name occurs as a word of the caption.

    Shapes: ``list[str]`` of ``n`` captions -> ``(n, K)``, the same ``K`` colours, in the same order,
    as :class:`ColorHistogramImageEncoder`, so the two live in one feature space. Words are the
    lower-cased runs of letters. Shape and motion words are left out on purpose: the histogram
    cannot see them, so they would only shrink every score alike.
    """

    def __init__(self, colors: Mapping[str, Sequence[float]] | Sequence[str] = PALETTE) -> None:
        self.names = tuple(c.lower() for c in colors)
        if not self.names:
            raise ValueError("expected at least one colour")
        self.index = {name: i for i, name in enumerate(self.names)}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("expected captions to be a list of str")
        out = torch.zeros(len(captions), len(self.names))
        for row, caption in enumerate(captions):
            for word in re.findall(r"[a-z]+", caption.lower()):
                if word in self.index:
                    out[row, self.index[word]] += 1
        return out  # n K


def builtin_encoders(
    colors: Mapping[str, Sequence[float]] = PALETTE,
) -> tuple[ColorHistogramImageEncoder, ColorWordTextEncoder]:
    """The CLI's default ``(image_encoder, text_encoder)`` pair (moving-shapes colours)."""
    return ColorHistogramImageEncoder(colors), ColorWordTextEncoder(colors)


def sample_frames(path: str | Path, frames: int, height: int, width: int) -> torch.Tensor:
    """``frames`` frames spread evenly over a whole video file: ``-> (3, t, height, width)`` in [-1, 1].

    Frame positions are ``round(linspace(0, n - 1, frames))`` over the ``n`` frames of the first
    video stream (a short video repeats frames). Two passes with PyAV: packets are counted without
    decoding, then only the chosen frames are converted (scaled to cover ``height x width`` and
    centre-cropped, like ``VideoFolder``), so memory stays at ``frames`` small frames whatever the
    video's length. Should the decoder yield fewer frames than packets, missing positions take the
    last decoded frame.
    """
    check_positive_int(frames, "frames")
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"no video stream in {str(path)!r}")
        n = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size > 0)
    if n == 0:
        raise ValueError(f"no video frames in {str(path)!r}")
    picks = np.rint(np.linspace(0, n - 1, frames)).astype(int)
    wanted = set(picks.tolist())

    def convert(frame: av.VideoFrame) -> np.ndarray:
        rh, rw = resize_crop_size(frame.height, frame.width, height, width)
        image = frame_to_array(frame, width=rw, height=rh, interpolation="AREA")
        top, left = center_crop_box(rh, rw, height, width)
        return image[top : top + height, left : left + width]

    kept: dict[int, np.ndarray] = {}
    last = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            last = (i, frame)
            if i in wanted:
                kept[i] = convert(frame)
            if i >= picks[-1]:
                break
    if last is None:
        raise ValueError(f"no decodable video frames in {str(path)!r}")
    missing = wanted - kept.keys()
    if missing:
        fill = kept[last[0]] if last[0] in kept else convert(last[1])
        kept.update(dict.fromkeys(missing, fill))
    clip = torch.from_numpy(np.stack([kept[i] for i in picks.tolist()])).float() / 127.5 - 1.0  # t h w c
    return rearrange(clip, "t h w c -> c t h w").contiguous()


def _load_encoders(spec: str) -> tuple[ImageEncoder, TextEncoder]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected --encoder as module:factory, got {spec!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    pair = factory()
    if not isinstance(pair, tuple) or len(pair) != 2 or not all(callable(e) for e in pair):
        raise TypeError(f"expected {spec}() to return (image_encoder, text_encoder), got {type(pair).__name__}")
    return pair


def _find_captions(data: Path) -> Path | None:
    for name in ("captions.csv", "captions.json"):
        if (data / name).is_file():
            return data / name
    return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reference_models.etc.filter",
        description="ETC video filter (eq. 5): keep the videos whose frames best match their captions.",
    )
    p.add_argument("--data", required=True, type=Path, help="folder of videos (searched recursively)")
    p.add_argument("--keep", required=True, type=float, help="keep ratio alpha in (0, 1]")
    p.add_argument("--out", required=True, type=Path, help="kept list: relative paths, one per line")
    p.add_argument(
        "--captions",
        type=Path,
        default=None,
        help="caption sidecar (CSV file,caption or JSON); default DATA/captions.csv or .json",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="module:factory returning (image_encoder, text_encoder); default: built-in colour encoders",
    )
    p.add_argument("--scores", type=Path, default=None, help="scores CSV (default: OUT's name + _scores.csv)")
    p.add_argument("--frames", type=int, default=8, help="frames scored per video, spread over its length")
    p.add_argument("--size", type=int, default=64, help="frames are scaled and centre-cropped to SIZE x SIZE")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epsilon", type=float, default=PAPER_EPSILON)
    p.add_argument("--device", default=None, help="device the frames are moved to before the image encoder")
    return p


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Score every video under ``--data``, write the kept list and a scores CSV; return the kept paths."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check_keep_ratio(args.keep)
        _check_epsilon(args.epsilon)
        for name in ("frames", "size", "batch_size"):
            check_positive_int(getattr(args, name), f"--{name.replace('_', '-')}")
    except (TypeError, ValueError) as error:
        parser.error(str(error))
    captions = args.captions or _find_captions(args.data)
    if captions is None:
        parser.error(f"no caption file: pass --captions or put captions.csv / captions.json in {args.data}")
    if args.encoder is None:
        print(
            "filter: no --encoder given, using the built-in colour-histogram / colour-word encoders "
            "(they only read colour words; pass --encoder module:factory for CLIP)",
            file=sys.stderr,
        )
        image_encoder, text_encoder = builtin_encoders()
    else:
        try:
            image_encoder, text_encoder = _load_encoders(args.encoder)
        except (ImportError, AttributeError, TypeError, ValueError) as error:
            parser.error(f"--encoder {args.encoder}: {error}")
    video_filter = VideoFilter(
        image_encoder,
        text_encoder,
        keep_ratio=args.keep,
        epsilon=args.epsilon,
        batch_size=args.batch_size,
        device=args.device,
    )

    # The folder dataset gives the file list, captions and header checks; frames come from sample_frames.
    folder = VideoFolder(
        args.data, frames=1, height=args.size, width=args.size, captions=captions, labels_from_folders=False
    )
    rel = [p.relative_to(folder.root).as_posix() for p in folder.files]
    readable: list[int] = []

    def items():
        for i, path in enumerate(folder.files):
            try:
                video = sample_frames(path, args.frames, args.size, args.size)
            except (av.error.FFmpegError, OSError, ValueError) as error:
                warnings.warn(
                    f"filter: skipping {str(path)!r} ({type(error).__name__}: {error})", RuntimeWarning, stacklevel=2
                )
                continue
            readable.append(i)
            yield {"video": video, "caption": folder.captions[i]}

    scores = video_filter.score(items())
    if not readable:
        raise SystemExit(f"filter: no readable videos under {str(args.data)!r}")
    kept = {readable[j] for j in keep_top(scores, args.keep)}
    score_of = {i: float(s) for i, s in zip(readable, scores)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(f"{rel[i]}\n" for i in sorted(kept)), encoding="utf-8")
    scores_path = args.scores or args.out.with_name(args.out.stem + "_scores.csv")
    scores_path.parent.mkdir(parents=True, exist_ok=True)
    with scores_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "caption", "score", "kept"])
        for i, name in enumerate(rel):
            score = f"{score_of[i]:.6f}" if i in score_of else ""
            writer.writerow([name, folder.captions[i], score, int(i in kept)])
    print(
        f"filter: scored {len(readable)} videos ({len(rel) - len(readable) + folder.num_skipped} unreadable), "
        f"kept {len(kept)} (alpha={args.keep:g}) -> {args.out}; scores -> {scores_path}"
    )
    return [rel[i] for i in sorted(kept)]


if __name__ == "__main__":
    main()
