"""Turning a search's evaluations into what users read: front rows, the front JSON and the Pareto plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.candidate import Candidate
from search.evaluator import Evaluation
from search.pareto import knee_point
from workers.plots import PlotPoint, plot_front


@dataclass(frozen=True)
class FrontRow:
    """One Pareto point as shown to users."""

    key: str
    timesteps: tuple[int, ...]
    bits: str
    quality: float
    bitops: float
    weight_bytes: float
    relative_cost: float
    extra: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "steps": len(self.timesteps), "timesteps": list(self.timesteps),
                "bits": self.bits, "quality": self.quality, "bitops": self.bitops,
                "weight_bytes": self.weight_bytes, "relative_cost": self.relative_cost, **dict(self.extra)}


def front_rows(front: Sequence[Evaluation], candidates: Mapping[str, Candidate], fp_bitops: float) -> list[FrontRow]:
    """Rows sorted by BitOps; ``relative_cost`` is BitOps over the FP (W32A32) cost at the largest K."""
    rows = []
    for e in sorted(front, key=lambda x: x.bitops):
        c = candidates[e.key]
        rows.append(FrontRow(e.key, c.timesteps, c.bits_summary(), e.quality, e.bitops, e.weight_bytes,
                             e.bitops / fp_bitops if fp_bitops > 0 else float("nan"), dict(e.extra)))
    return rows


def is_baseline(candidate: Candidate, baselines: Sequence[Candidate]) -> bool:
    return candidate.key() in {b.key() for b in baselines}


def write_front_json(path: str | Path, rows: Sequence[FrontRow], *, knee_key: str | None,
                     meta: Mapping[str, Any]) -> Path:
    """The front as JSON: ``{"meta": ..., "knee": key, "front": [rows]}``."""
    out = Path(path)
    out.write_text(json.dumps({"meta": dict(meta), "knee": knee_key, "front": [r.to_dict() for r in rows]},
                              indent=2) + "\n")
    return out


def knee_key(front: Sequence[Evaluation]) -> str | None:
    return knee_point(list(front)).key if front else None


def plot_search(path: str | Path, evaluations: Sequence[Evaluation], front: Sequence[Evaluation],
                candidates: Mapping[str, Candidate], baselines: Sequence[Candidate], *, quality: str,
                budget: float | None = None, title: str = "") -> Path:
    """The Pareto plot of a search: every evaluation, the front and the uniform baselines."""
    front_keys = {e.key for e in front}
    base_keys = {b.key(): b for b in baselines}
    ok = [e for e in evaluations if e.ok]
    return plot_front(
        path,
        [PlotPoint(e.bitops, e.quality) for e in front],
        others=[PlotPoint(e.bitops, e.quality) for e in ok if e.key not in front_keys],
        baselines=[PlotPoint(e.bitops, e.quality, f"{base_keys[e.key].bits_summary()} K={base_keys[e.key].steps}")
                   for e in ok if e.key in base_keys],
        quality=quality, budget=budget, title=title)
