"""What a supernet calibration is doing, for a progress callback: :class:`CalibrationProgress`, torch-free.

:func:`supernet.artifact.get_or_build_supernet` and :meth:`supernet.supernet.QuantSupernet.calibrate` take an
optional ``progress`` callback and call it at every phase and block boundary (not every optimiser step) through a
:class:`ProgressTracker`. An exception the callback raises propagates out of the calibration (the job driver
cancels a job that way); the calibration is then abandoned as a whole: nothing is cached and the model is left as
it was (see those functions).

Phases, in order: ``trajectories`` (the FP calibration inputs are collected), ``prepare`` (the strategy's once-per-
supernet step, e.g. TCR), then per bit option ``ranges``, ``reconstruction`` (block ``step`` of ``total``, per
``round``), ``par-trajectories`` (PAR re-samples the quantized model's trajectories before round ``round``),
``temporal`` (the temporal-feature cache), and finally ``done``.

The ETA is elapsed time per unit of work so far times the units left, where a unit is a block of one reconstruction
round or one other phase step of a bit option (so bit options weigh by their block count); time spent before the
first bit option (trajectories, prepare) is not part of the rate. Until a unit is done the ETA is the estimate made
before calibrating (:mod:`supernet.calibration.estimate`, given by :meth:`ProgressTracker.expect`) less the time
elapsed, or ``None`` without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

SOURCES = ("cache", "shipped", "calibrating")
PHASES = ("trajectories", "prepare", "ranges", "par-trajectories", "reconstruction", "temporal", "done")


@dataclass(frozen=True)
class CalibrationProgress:
    """One progress report of a calibration (or of a supernet loaded instead of calibrated).

    Attributes:
        source: ``cache`` or ``shipped`` (loaded, not calibrated: one report) or ``calibrating``.
        bits: the bit option being calibrated (``None`` before the first and when loaded).
        bit_index: its index among the bit options (0-based).
        bit_count: how many bit options there are.
        phase: one of :data:`PHASES`.
        round: the reconstruction / PAR round (1-based) where the phase has rounds, else ``None``.
        step: units of the phase done (e.g. blocks reconstructed so far).
        total: units of the phase.
        elapsed_s: seconds since the calibration (or the load) started.
        eta_s: estimated seconds left; ``None`` before any unit of work is done.
    """

    source: str
    bits: int | None
    bit_index: int
    bit_count: int
    phase: str
    round: int | None
    step: int
    total: int
    elapsed_s: float
    eta_s: float | None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (exactly the attributes)."""
        return {
            "source": self.source,
            "bits": self.bits,
            "bit_index": self.bit_index,
            "bit_count": self.bit_count,
            "phase": self.phase,
            "round": self.round,
            "step": self.step,
            "total": self.total,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
        }


ProgressCallback = Callable[[CalibrationProgress], None]


class ProgressTracker:
    """Turns phase boundaries into :class:`CalibrationProgress` reports with an ETA (reports nothing without a
    callback), and keeps the seconds spent per bit option and phase (:meth:`phase_seconds`).

    Args:
        callback: where reports go (``None``: nowhere).
        bit_options: the bit options that will be calibrated, in order.
        clock: seconds (monotonic); the tracker's start is its first reading.
    """

    def __init__(
        self,
        callback: ProgressCallback | None,
        bit_options: Sequence[int],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.callback = callback
        self.bit_options = tuple(int(b) for b in bit_options)
        self._clock = clock
        self._start = clock()
        self._index = 0
        self._bits: int | None = None
        self._plans: dict[int, int] = {}  # bit index → planned units
        self._done: dict[int, int] = {}  # bit index → units done
        self._work_start: float | None = None  # when the first bit option began (the rate's clock)
        self._last = self._start  # the clock at the latest boundary
        self._expected: float | None = None  # the estimated seconds of the whole calibration, if any
        self._phase_s: dict[str, dict[str, float]] = {}  # bits (or "-" before the first option) → phase → seconds

    @classmethod
    def of(cls, progress: ProgressCallback | ProgressTracker | None, bit_options: Sequence[int]) -> ProgressTracker:
        """``progress`` itself when it is a tracker already running, else a new tracker calling it."""
        if isinstance(progress, ProgressTracker):
            return progress
        return cls(progress, bit_options)

    @property
    def active(self) -> bool:
        return self.callback is not None

    def elapsed(self) -> float:
        return self._clock() - self._start

    def expect(self, seconds: float | None) -> None:
        """The calibration is estimated to take ``seconds`` from the tracker's start: the ETA until a unit is done."""
        self._expected = None if seconds is None else max(0.0, float(seconds))

    def phase_seconds(self) -> dict[str, dict[str, float]]:
        """Seconds spent per bit option (``"-"`` before the first) and phase so far, rounded to milliseconds.

        The time between two boundaries counts for the phase of the later one when that report completes a unit
        (``step >= 1``), else for ``other`` (set-up between phases).
        """
        return {b: {k: round(v, 3) for k, v in phases.items()} for b, phases in self._phase_s.items()}

    def _account(self, phase: str, step: int) -> None:
        now = self._clock()
        key = "-" if self._bits is None else str(self._bits)
        phases = self._phase_s.setdefault(key, {})
        name = phase if step >= 1 else "other"
        phases[name] = phases.get(name, 0.0) + (now - self._last)
        self._last = now

    # --- bookkeeping --------------------------------------------------------------------------------------
    def begin_bits(self, index: int, bits: int) -> None:
        """Bit option ``index`` (``bits``) starts."""
        self._index, self._bits = index, int(bits)
        self._done.setdefault(index, 0)
        if self._work_start is None:
            self._work_start = self._clock()

    def plan(self, units: int) -> None:
        """The current bit option has ``units`` units of work (blocks per round, other phase steps)."""
        self._plans[self._index] = max(1, int(units), self._done.get(self._index, 0))

    def end_bits(self) -> None:
        """The current bit option is finished: whatever it planned counts as done."""
        planned = self._plans.setdefault(self._index, max(1, self._done.get(self._index, 0)))
        self._done[self._index] = planned

    def _eta(self) -> float | None:
        done = sum(self._done.values())
        if self._work_start is None or done == 0 or not self._plans:
            return None if self._expected is None else max(0.0, self._expected - self.elapsed())
        latest = self._plans[max(self._plans)]
        total = sum(self._plans.get(i, latest) for i in range(len(self.bit_options)))
        rate = (self._clock() - self._work_start) / done
        return max(0.0, rate * (total - done))

    # --- reports ----------------------------------------------------------------------------------------------
    def report(self, phase: str, step: int, total: int, round: int | None = None) -> None:
        """A boundary of ``phase``: ``step`` of ``total`` units done. Within a bit option, a report with
        ``step >= 1`` completes one unit of work."""
        self._account(phase, step)
        if self._bits is not None and step >= 1:
            self._done[self._index] = self._done.get(self._index, 0) + 1
            planned = self._plans.get(self._index)
            if planned is not None and self._done[self._index] > planned:
                self._plans[self._index] = self._done[self._index]
        if self.callback is None:
            return
        self.callback(
            CalibrationProgress(
                "calibrating",
                self._bits,
                self._index,
                len(self.bit_options),
                phase,
                round,
                int(step),
                int(total),
                round_s(self.elapsed()),
                _rounded(self._eta()),
            )
        )

    def done(self) -> None:
        """The calibration is finished."""
        if self.callback is None:
            return
        self.callback(
            CalibrationProgress(
                "calibrating",
                self._bits,
                self._index,
                len(self.bit_options),
                "done",
                None,
                1,
                1,
                round_s(self.elapsed()),
                0.0,
            )
        )

    def loaded(self, source: str) -> None:
        """The supernet was loaded from ``source`` (``cache`` or ``shipped``) instead of being calibrated."""
        if self.callback is None:
            return
        self.callback(
            CalibrationProgress(
                source, None, 0, len(self.bit_options), "done", None, 1, 1, round_s(self.elapsed()), 0.0
            )
        )


def round_s(seconds: float) -> float:
    """Seconds to milliseconds' precision."""
    return round(float(seconds), 3)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round_s(seconds)
