"""Pareto plots (PNG, matplotlib's Agg backend): quality against BitOps, front highlighted, baselines marked.

Torch- and Ray-free, and matplotlib is imported only when a plot is drawn, so the API server can render plots
(``GET /api/v1/jobs/{id}/front.png``). Figures are built with matplotlib's object API (no ``pyplot`` global state)
and drawn one at a time under a lock, so rendering from several server threads is safe.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, overload

QUALITY_LABELS = {
    "mse": "MSE vs FP reference (same noise, lower is better)",
    "latent_mse": "latent MSE vs FP reference (same noise, lower is better)",
    "fdd": "FDD, Fréchet distance to real digits (lower is better)",
    "fd": "Fréchet distance to FP samples in the job's feature space (lower is better)",
}

#: Text drawn on a plot that has no point to show.
EMPTY_NOTE = "no points yet"

_DRAW_LOCK = threading.Lock()


@dataclass(frozen=True)
class PlotPoint:
    """One point: its cost (total BitOps of the schedule, or predicted milliseconds on a latency plot), quality,
    and a short label."""

    cost: float
    quality: float
    label: str = ""

    @property
    def drawable(self) -> bool:
        """Both coordinates are finite numbers and the cost is positive (the x axis is logarithmic)."""
        return math.isfinite(self.cost) and math.isfinite(self.quality) and self.cost > 0


def _plain_log_labels(axis: Any) -> None:
    """Label a log axis with plain numbers (``3``, ``0.006``) instead of ``3×10^0``, on the ticks matplotlib's
    ``LogFormatter`` would label."""
    from matplotlib.ticker import Formatter, LogFormatter

    class PlainLogFormatter(Formatter):
        def __init__(self) -> None:
            self.chooser = LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))

        def set_axis(self, axis: Any) -> None:
            super().set_axis(axis)
            self.chooser.set_axis(axis)

        def set_locs(self, locs: Any) -> None:
            super().set_locs(locs)
            self.chooser.set_locs(locs)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if self.chooser(x, pos) else ""

    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter())


def _labelled(
    ax: Any,
    points: Sequence[PlotPoint],
    scale: float,
    marker: str,
    size: float,
    color: str,
    label: str,
    offset: tuple[int, int],
    zorder: int,
) -> None:
    """Hollow markers with each point's label beside it (nothing when ``points`` is empty)."""
    if not points:
        return
    xs, ys = [p.cost / scale for p in points], [p.quality for p in points]
    ax.scatter(xs, ys, marker=marker, s=size, facecolors="none", edgecolors=color, label=label, zorder=zorder)
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(p.label, (x, y), textcoords="offset points", xytext=offset, fontsize=7, color=color)


@overload
def plot_front(
    path: str | os.PathLike[str],
    front: Sequence[PlotPoint],
    *,
    others: Sequence[PlotPoint] = (),
    baselines: Sequence[PlotPoint] = (),
    references: Sequence[PlotPoint] = (),
    quality: str = "mse",
    title: str = "",
    budget: float | None = None,
) -> Path: ...


@overload
def plot_front(
    path: BinaryIO,
    front: Sequence[PlotPoint],
    *,
    others: Sequence[PlotPoint] = (),
    baselines: Sequence[PlotPoint] = (),
    references: Sequence[PlotPoint] = (),
    quality: str = "mse",
    title: str = "",
    budget: float | None = None,
) -> BinaryIO: ...


def plot_front(
    path: str | os.PathLike[str] | BinaryIO,
    front: Sequence[PlotPoint],
    *,
    others: Sequence[PlotPoint] = (),
    baselines: Sequence[PlotPoint] = (),
    references: Sequence[PlotPoint] = (),
    quality: str = "mse",
    title: str = "",
    budget: float | None = None,
    latency: str | None = None,
) -> Path | BinaryIO:
    """Draw the front (line + points), every other evaluated candidate (grey) and the uniform baselines as a PNG.

    Args:
        path: a file path (parent directories are created) or a binary file object such as ``io.BytesIO``.
        front: the Pareto points (joined by a line in BitOps order).
        others: every other evaluated candidate.
        baselines: the uniform baselines (red squares, labelled).
        references: the FP model on the front's schedules (black diamonds, labelled): what each K costs without
            quantization.
        quality: the quality objective (``mse``, ``fdd`` or any name, used as the y label).
        title: the plot's title.
        budget: a BitOps budget drawn as a dashed vertical line (not on a latency plot).
        latency: the points' cost is milliseconds measured on this backend (e.g. ``cpu-int8 at batch 64``), not
            BitOps: the x axis says so.

    Points with a non-finite coordinate or non-positive BitOps are left out; with nothing left the plot says
    "no points yet". The quality axis is logarithmic when every drawn quality is positive. Returns the written
    path, or the file object.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scale = 1.0 if latency else 1e9
    others = [p for p in others if p.drawable]
    front = sorted((p for p in front if p.drawable), key=lambda p: p.cost)
    baselines = [p for p in baselines if p.drawable]
    references = [p for p in references if p.drawable]
    drawn = [*others, *front, *baselines, *references]

    with _DRAW_LOCK:
        fig = Figure(figsize=(7.5, 5), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if others:
            ax.scatter(
                [p.cost / scale for p in others],
                [p.quality for p in others],
                s=10,
                c="#bbbbbb",
                label=f"evaluated ({len(others)})",
                zorder=1,
            )
        if front:
            ax.plot(
                [p.cost / scale for p in front],
                [p.quality for p in front],
                "-o",
                c="#1f77b4",
                ms=5,
                label=f"Pareto front ({len(front)})",
                zorder=3,
            )
        _labelled(ax, baselines, scale, "s", 40, "#d62728", f"uniform baselines ({len(baselines)})", (4, 4), 4)
        _labelled(
            ax, references, scale, "D", 36, "#111111", f"FP at the front's schedules ({len(references)})", (4, -9), 5
        )
        if budget is not None and math.isfinite(budget) and budget > 0 and not latency:
            ax.axvline(budget / 1e9, ls="--", c="#555555", lw=1, label=f"budget ({budget / 1e9:.4g} GBitOps)")
        if drawn:
            ax.set_xscale("log")
            _plain_log_labels(ax.xaxis)
            if all(p.quality > 0 for p in drawn):
                ax.set_yscale("log")
                _plain_log_labels(ax.yaxis)
            ax.legend(fontsize=8)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.text(
                0.5, 0.5, EMPTY_NOTE, transform=ax.transAxes, ha="center", va="center", fontsize=14, color="#777777"
            )
        if latency:
            ax.set_xlabel(f"predicted denoising latency on {latency} (ms, log scale)")
        else:
            ax.set_xlabel("BitOps per sample over the whole schedule (GBitOps, log scale)")
        ax.set_ylabel(QUALITY_LABELS.get(quality, quality))
        ax.set_title(title or "tmpq: quality vs cost")
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        if isinstance(path, str | os.PathLike):
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, format="png")
            return out
        fig.savefig(path, format="png")
        return path
