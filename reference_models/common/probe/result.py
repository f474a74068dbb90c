"""What one evaluation of the probe measured: :class:`ProbeResult` (JSON-able, printable)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .spec import ATTRIBUTES

__all__ = ["ProbeResult"]


@dataclass(frozen=True)
class ProbeResult:
    """What :meth:`ShapesProbe.evaluate` measured on ``num_clips`` generated clips.

    ``accuracy[a]``: the fraction of the ``counts[a]`` clips whose condition names attribute ``a``
    for which the probe reads that value (``None`` when no condition names it; attributes the probe
    cannot read, colour of gray clips and direction of one-frame clips, are left out of every dict);
    ``ground_truth[a]``: the probe's accuracy on real clips at the same frame rates (its ceiling);
    ``chance[a]``: one over the number of classes; ``kind_accuracy``: accuracy per named kind;
    ``one_object_fraction``: clips whose frames mostly show exactly one object; ``frechet_distance``:
    between probe features of these clips and of ``num_real`` real clips, ``frechet_floor`` the
    same between two real sets of that size (``None`` under two clips); ``predictions``: what the
    probe reads in each clip.
    """

    num_clips: int
    accuracy: dict[str, float | None]
    counts: dict[str, int]
    ground_truth: dict[str, float | None]
    chance: dict[str, float]
    kind_accuracy: dict[str, float | None]
    kind_counts: dict[str, int]
    one_object_fraction: float
    frechet_distance: float | None
    frechet_floor: float | None
    num_real: int
    fps: tuple[float, ...] | None
    predictions: tuple[dict[str, str], ...]
    probe: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def format(self) -> str:
        """A short table for a log."""
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        rates = "the probe's rates" if self.fps is None else ", ".join(f"{r:g}" for r in sorted(set(self.fps)))
        lines = [
            f"shapes probe ({self.probe} clips, c x t x h x w) on {self.num_clips} clips at fps {rates}",
            f"{'attribute':<14}{'clips':>6}{'accuracy':>10}{'on real':>9}{'chance':>8}",
        ]
        for a in ATTRIBUTES:
            if a not in self.chance:
                continue
            lines.append(
                f"{a:<14}{self.counts[a]:>6}{fmt(self.accuracy[a]):>10}{fmt(self.ground_truth[a]):>9}"
                f"{self.chance[a]:>8.3f}"
            )
            if a == "kind":
                for k, acc in self.kind_accuracy.items():
                    if self.kind_counts[k]:
                        lines.append(f"  {k:<12}{self.kind_counts[k]:>6}{fmt(acc):>10}")
        lines.append("(on real: the probe's own accuracy on real clips at these rates, its ceiling)")
        lines.append(f"one object in {self.one_object_fraction:.1%} of clips")
        if self.frechet_distance is not None:
            lines.append(
                f"Frechet distance to {self.num_real} real clips (probe features): {self.frechet_distance:.3f} "
                f"(real vs real: {self.frechet_floor:.3f})"
            )
        return "\n".join(lines)

    table = format
    __str__ = format
