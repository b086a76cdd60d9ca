"""Turning a search's evaluations into what users read: front rows, the front JSON and the Pareto plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.baselines import is_uniform_baseline, uniform_bits
from search.candidate import Candidate
from search.evaluator import Evaluation
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
        return {
            "key": self.key,
            "steps": len(self.timesteps),
            "timesteps": list(self.timesteps),
            "bits": self.bits,
            "quality": self.quality,
            "bitops": self.bitops,
            "weight_bytes": self.weight_bytes,
            "relative_cost": self.relative_cost,
            **dict(self.extra),
        }


def front_rows(front: Sequence[Evaluation], candidates: Mapping[str, Candidate], fp_bitops: float) -> list[FrontRow]:
    """Rows sorted by BitOps; ``relative_cost`` is BitOps over the FP (W32A32) cost at the largest K."""
    rows = []
    for e in sorted(front, key=lambda x: x.bitops):
        c = candidates[e.key]
        rows.append(
            FrontRow(
                e.key,
                c.timesteps,
                c.bits_summary(),
                e.quality,
                e.bitops,
                e.weight_bytes,
                e.bitops / fp_bitops if fp_bitops > 0 else float("nan"),
                dict(e.extra),
            )
        )
    return rows


def is_baseline(candidate: Candidate, baselines: Sequence[Candidate]) -> bool:
    return candidate.key() in {b.key() for b in baselines}


def write_front_json(
    path: str | Path,
    rows: Sequence[FrontRow],
    *,
    knee_key: str | None,
    meta: Mapping[str, Any],
    fp_references: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """The front as JSON: ``{"meta": ..., "knee": key, "front": [rows], "fp_references": [points]}``."""
    out = Path(path)
    body = {
        "meta": dict(meta),
        "knee": knee_key,
        "front": [r.to_dict() for r in rows],
        "fp_references": [dict(p) for p in fp_references],
    }
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


def baseline_keys(
    candidates: Mapping[str, Candidate],
    num_train_timesteps: int | None = None,
    seeds: Sequence[Candidate] = (),
) -> set[str]:
    """Keys of the uniform baselines among ``candidates``: :func:`search.baselines.is_uniform_baseline` with the
    model's T, the rule the server marks them by too.

    Without T (a caller that does not pass it yet), the schedules of the search's seed baselines (``seeds``:
    ``PreparedJob.baselines()``) stand in for the baseline schedules of T: every candidate with uniform bits on one
    of them is a baseline, which is the same set for the candidates of the job's space.
    """
    if num_train_timesteps is not None:
        return {k for k, c in candidates.items() if is_uniform_baseline(c, num_train_timesteps)}
    schedules = {s.timesteps for s in seeds}
    return {k for k, c in candidates.items() if c.timesteps in schedules and uniform_bits(c) is not None}


def plot_search(
    path: str | Path,
    evaluations: Sequence[Evaluation],
    front: Sequence[Evaluation],
    candidates: Mapping[str, Candidate],
    baselines: Sequence[Candidate] = (),
    *,
    quality: str,
    budget: float | None = None,
    title: str = "",
    num_train_timesteps: int | None = None,
    latency: str | None = None,
    fp_references: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """The Pareto plot of a search: every evaluation, the front and the uniform baselines (every evaluated candidate
    :func:`baseline_keys` names: pass the model's ``num_train_timesteps``; ``baselines``, the seeds, are only used
    without it). ``latency`` (what was measured, e.g. ``cpu-int8 at batch 64``): the search ranked milliseconds,
    drawn instead of BitOps. ``fp_references``: the FP model on the front's schedules
    (``workers.driver.analyse_front``; drawn on a BitOps plot only: they have no measured latency)."""
    axis = "latency" if latency else "bitops"
    front_keys = {e.key for e in front}
    base_keys = baseline_keys(candidates, num_train_timesteps, baselines)
    ok = [e for e in evaluations if e.ok]
    return plot_front(
        path,
        [PlotPoint(e.cost(axis), e.quality) for e in front],
        others=[PlotPoint(e.cost(axis), e.quality) for e in ok if e.key not in front_keys and e.key not in base_keys],
        baselines=[
            PlotPoint(e.cost(axis), e.quality, f"{candidates[e.key].bits_summary()} K={candidates[e.key].steps}")
            for e in ok
            if e.key in base_keys
        ],
        references=[] if latency else reference_points(fp_references),
        quality=quality,
        budget=budget,
        title=title,
        latency=latency,
    )


def reference_points(fp_references: Sequence[Mapping[str, Any]]) -> list[PlotPoint]:
    """Plot points of FP reference points (BitOps, the job's quality) labelled ``FP K=n``; those without a measured
    quality are left out."""
    return [
        PlotPoint(float(p["bitops"]), float(p["quality"]), f"FP K={p.get('steps', '?')}")
        for p in fp_references
        if isinstance(p.get("bitops"), int | float) and isinstance(p.get("quality"), int | float)
    ]
