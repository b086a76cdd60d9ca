"""Evaluators for benchmarks and studies: replaying stored evaluations, and small "menu" spaces of schedules.

- :class:`TableEvaluator` serves evaluations from a table keyed by ``Candidate.key()``. Keys it does not know
  go to an optional fallback evaluator (and are remembered), or come back failed. With a table filled by an
  exhaustive evaluation it replays a search at no cost, so many search seeds are cheap; with a fallback it
  shares evaluations between several searches of the same space (the quality of a candidate is a fixed
  function of the candidate, since every candidate is sampled from the same noise).
- :class:`ScheduleMenu` is a space whose only timestep gene picks one of a few given schedules (all with the
  same step count K), with the precision genes of a real space. It is a plain :class:`SearchSpace` with
  ``T = len(schedules)`` and ``K = 1``: its candidate with timestep ``i`` stands for schedule ``i`` with the
  same bits, so every algorithm searches it unchanged. It prices a candidate per forward (BitOps of the real
  candidate divided by K): fronts and normalised hypervolumes are the same as with the real prices.
  :meth:`ScheduleMenu.evaluator` evaluates menu candidates through an evaluator of real candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from search.candidate import Candidate
from search.cost import CostModel
from search.evaluator import Evaluation, Evaluator
from search.space import SearchSpace

logger = logging.getLogger(__name__)


class TableEvaluator:
    """Replays evaluations from a table; unknown candidates go to ``fallback`` (then are stored) or fail.

    Args:
        table: evaluations by candidate key (copied).
        fallback: evaluates candidates missing from the table; ``None``: they come back failed.

    Attributes:
        hits: candidates served from the table.
        misses: candidates that were not in it (evaluated by the fallback, or failed).
    """

    def __init__(self, table: Mapping[str, Evaluation] | None = None, fallback: Evaluator | None = None) -> None:
        self.table: dict[str, Evaluation] = dict(table or {})
        self.fallback = fallback
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_evaluations(cls, evaluations: Iterable[Evaluation], fallback: Evaluator | None = None) -> TableEvaluator:
        """A table of ``evaluations`` (keyed by their ``key``)."""
        return cls({e.key: e for e in evaluations}, fallback)

    def __len__(self) -> int:
        return len(self.table)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate, in order: stored, freshly evaluated by the fallback, or failed.

        Successful fallback evaluations are stored; failed ones are returned but not stored (tried again).
        """
        missing = list({c.key(): c for c in candidates if c.key() not in self.table}.values())
        misses = sum(1 for c in candidates if c.key() not in self.table)
        self.misses += misses
        self.hits += len(candidates) - misses
        fresh: dict[str, Evaluation] = {}
        if missing and self.fallback is not None:
            fresh = {e.key: e for e in self.fallback.evaluate(missing)}
            self.table.update((k, e) for k, e in fresh.items() if e.ok)
        return [self.table.get(c.key()) or fresh.get(c.key()) or self._missing(c) for c in candidates]

    def _missing(self, candidate: Candidate) -> Evaluation:
        reason = "not in the replay table" if self.fallback is None else "the fallback evaluator returned no result"
        return Evaluation.failure(candidate.key(), reason)


class ScheduleMenu:
    """A few schedules of one step count × the precision genes of a real space; see the module docstring.

    Args:
        schedules: the schedules (descending timesteps), all of the same length K; index 0 is the one the
            search seeds its uniform-precision baselines with.
        sites: the real model's quantizable sites.
        bit_options: the bit-widths the precision genes choose among.
        site_blocks: ``{site: unit}`` for block granularity (``None``: one unit per site).

    Raises ValueError when there is no schedule, a schedule repeats, or the step counts differ.
    """

    def __init__(
        self,
        schedules: Sequence[Sequence[int]],
        sites: Iterable[str],
        bit_options: Sequence[int],
        site_blocks: Mapping[str, str] | None = None,
    ) -> None:
        menu = tuple(tuple(int(t) for t in s) for s in schedules)
        if not menu:
            raise ValueError("a schedule menu needs at least one schedule")
        if len(set(menu)) != len(menu):
            raise ValueError("the schedule menu names a schedule twice")
        if len({len(s) for s in menu}) != 1:
            raise ValueError(f"every schedule of a menu must have the same K, got {sorted({len(s) for s in menu})}")
        self.schedules = menu
        granularity = "site" if site_blocks is None else "block"
        self.space = SearchSpace(len(menu), (1,), tuple(sites), tuple(bit_options), "uniform", granularity, site_blocks)

    @property
    def steps(self) -> int:
        """K of every schedule of the menu."""
        return len(self.schedules[0])

    def size(self) -> int:
        """Number of candidates (schedules × precision assignments)."""
        return self.space.size()

    def to_real(self, candidate: Candidate) -> Candidate:
        """The real candidate a menu candidate stands for."""
        self.space.check(candidate)
        return Candidate(self.schedules[candidate.timesteps[0]], candidate.weight_bits, candidate.act_bits)

    def from_real(self, candidate: Candidate) -> Candidate:
        """The menu candidate of a real candidate whose schedule is on the menu (ValueError otherwise)."""
        try:
            index = self.schedules.index(candidate.timesteps)
        except ValueError:
            raise ValueError(f"schedule {list(candidate.timesteps)} is not on the menu") from None
        return Candidate((index,), candidate.weight_bits, candidate.act_bits)

    def evaluator(self, real: Evaluator) -> MenuEvaluator:
        """An evaluator of menu candidates that measures their real candidates with ``real``."""
        return MenuEvaluator(self, real)

    @staticmethod
    def cost_model(real: CostModel) -> CostModel:
        """The cost model of menu candidates: the real one, applied to a 1-step candidate (BitOps per forward)."""
        return CostModel(real.macs, real.params, real.fp_params)


class MenuEvaluator:
    """Evaluates :class:`ScheduleMenu` candidates by evaluating the real candidates they stand for."""

    def __init__(self, menu: ScheduleMenu, real: Evaluator) -> None:
        self.menu = menu
        self.real = real

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        reals = [self.menu.to_real(c) for c in candidates]
        by_key = {e.key: e for e in self.real.evaluate(reals)}
        out = []
        for menu_candidate, real in zip(candidates, reals, strict=True):
            evaluation = by_key.get(real.key())
            if evaluation is None:
                out.append(Evaluation.failure(menu_candidate.key(), "the real evaluator returned no result"))
            else:
                out.append(replace(evaluation, key=menu_candidate.key()))
        return out
