"""Training :class:`~.net.ProbeNet` on rendered ground-truth clips, reading clips with it, and
measuring its accuracy on held-out ground truth (the ceiling generated clips are read against)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .net import ProbeNet
from .objects import _max_pixels, one_object_fraction
from .spec import _FLIP, _HELDOUT_SEED, _TRAIN_SEED, ATTRIBUTES, ProbeSpec

__all__ = ["train_probe"]


def _render(
    spec: ProbeSpec, num: int, seed: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``num`` ground-truth clips ``(n, c, t, h, w)``, their labels ``{attribute: (n,)}`` (class
    indices), frame rates ``(n,)`` and whether the shape bounces before frame 1 ``(n,)`` bool."""
    data = spec.dataset(num, seed)
    videos, labels, rates, bounced = [], {a: [] for a in ATTRIBUTES}, [], []
    for i in range(num):
        shape = data.shapes(i)[0]
        rate = data.fps_of(i)
        videos.append(data.render(i, fps=rate))
        for a in ATTRIBUTES:
            labels[a].append(spec.classes(a).index(getattr(shape, a)))
        rates.append(rate)
        x, y = shape.center_at(np.array([1.0 / rate]), spec.height, spec.width)
        free = (shape.position[0] + shape.velocity[0] / rate, shape.position[1] + shape.velocity[1] / rate)
        bounced.append(abs(float(x[0]) - free[0]) > 1e-9 or abs(float(y[0]) - free[1]) > 1e-9)
    return (
        torch.stack(videos),
        {a: torch.tensor(v) for a, v in labels.items()},
        torch.tensor(rates, dtype=torch.float64),
        torch.tensor(bounced),
    )


def train_probe(spec: ProbeSpec) -> ProbeNet:
    """Train :class:`ProbeNet` for ``spec`` on CPU, deterministically (seeded; the global RNGs are
    left as they were). Returns it in eval mode.

    The clips are rendered once, in chunks, and only the network's parameter-free inputs
    (:meth:`ProbeNet.inputs`) of each clip and of its mirror image are kept, so an epoch costs the
    learned layers alone."""
    r = spec.recipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        net = ProbeNet(spec)
    gen = torch.Generator().manual_seed(spec.seed)
    mirror = spec.mirror_closed
    flip = torch.tensor([spec.directions.index(_FLIP[d]) if mirror else i for i, d in enumerate(spec.directions)])
    data = spec.dataset(r.num_clips, _TRAIN_SEED + spec.seed)
    parts: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[], []]  # [plain, mirrored]
    labels: dict[str, list[int]] = {a: [] for a in spec.attributes}
    with torch.no_grad():
        for start in range(0, r.num_clips, 500):
            chunk = range(start, min(start + 500, r.num_clips))
            videos = torch.stack([data[i]["video"] for i in chunk])  # n c t h w
            if start == 0:
                net.fit_moment_stats(videos)
            parts[0].append(net.inputs(videos))
            parts[1].append(net.inputs(videos.flip(-1)))  # an exact symmetry of the data
            for i in chunk:
                shape = data.shapes(i)[0]
                for a in spec.attributes:
                    labels[a].append(spec.classes(a).index(getattr(shape, a)))
    moments = torch.stack([torch.cat([m for m, _ in p]) for p in parts])  # 2 n k t
    frames = torch.stack([torch.cat([f for _, f in p]) for p in parts])  # 2 n c+1 f h' w'
    y_all = {a: torch.tensor(v) for a, v in labels.items()}
    y_all = {a: torch.stack([v, flip[v]]) if a == "direction" else torch.stack([v, v]) for a, v in y_all.items()}
    steps_per_epoch = max(1, r.num_clips // r.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=r.lr, weight_decay=r.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=r.lr, total_steps=r.epochs * steps_per_epoch, pct_start=0.15
    )
    net.train()
    for _ in range(r.epochs):
        order = torch.randperm(r.num_clips, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * r.batch_size : (i + 1) * r.batch_size]
            side = (torch.rand(len(idx), generator=gen) < 0.5).long() * mirror  # plain or mirrored
            f = net.features_from_inputs(moments[side, idx], frames[side, idx])
            loss = sum(F.cross_entropy(head(f), y_all[a][side, idx]) for a, head in net.heads.items())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def _predict(net: ProbeNet, videos: torch.Tensor, batch: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Class indices ``{attribute: (b,)}`` and features ``(b, d)``, in chunks."""
    preds: dict[str, list[torch.Tensor]] = {a: [] for a in net.heads}
    feats = []
    for chunk in torch.split(videos, batch):
        f = net.features(chunk)
        feats.append(f)
        for a, head in net.heads.items():
            preds[a].append(head(f).argmax(dim=1))
    return {a: torch.cat(v) for a, v in preds.items()}, torch.cat(feats)


def _mean(x: torch.Tensor) -> float | None:
    return float(x.double().mean()) if x.numel() else None


def _measure_ground_truth(net: ProbeNet, spec: ProbeSpec) -> dict[str, Any]:
    """Accuracies on ``heldout_clips`` ground-truth clips of unseen seeds: overall, per rate, per
    kind; direction also without the clips that bounce before frame 1; the one-object fraction."""
    videos, labels, rates, bounced = _render(spec, spec.recipe.heldout_clips, _HELDOUT_SEED + spec.seed)
    preds, _ = _predict(net, videos)
    hit = {a: preds[a] == labels[a] for a in spec.attributes}
    out: dict[str, Any] = {
        "num_clips": len(videos),
        "accuracy": {a: _mean(hit[a]) for a in spec.attributes},
        "kind_accuracy": {k: _mean(hit["kind"][labels["kind"] == i]) for i, k in enumerate(spec.kinds)},
        "per_fps": {f"{r:g}": {a: _mean(hit[a][rates == r]) for a in spec.attributes} for r in spec.fps},
        "one_object_fraction": one_object_fraction(videos, max_pixels=_max_pixels(spec)),
    }
    if spec.has_direction:
        out["bounce_before_frame_1"] = _mean(bounced)
        out["direction_without_bounce"] = _mean(hit["direction"][~bounced])
    return out
