"""The joint search space: timestep groups per step count K, and precision units (sites or blocks).

Timestep grouping follows TMPQ-DM's public code (``sihouzi21c/TMPQ-DM``, ``EvolutionSearcher.__init__``): for
T training steps and K kept steps the boundaries are ``floor(linspace(0, sqrt(0.8·T), K) ** 2)`` without the
first, and the groups are ``[0, b1), [b1, b2), …, [b_{K-1}, T)`` — narrow near t=0, wide near pure noise. A
candidate takes one timestep per group and samples them in descending order. The ``uniform`` grouping has
equal widths (boundaries ``i·(T//K)``, the last group takes the remainder), so the DDIM "leading" schedule is
its group starts. TMPQ-DM silently merges empty groups (giving fewer than K steps); here an empty group is a
ConfigError on ``steps``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from search.candidate import Candidate
from search.errors import ConfigError, InvalidCandidate
from search.spec import FP_OPTION, GRANULARITIES, GROUPINGS

if TYPE_CHECKING:
    from search.spec import SearchSettings

#: ``enumerate`` refuses spaces larger than this unless told otherwise.
DEFAULT_ENUMERATION_LIMIT = 1_000_000


def timestep_groups(num_train_timesteps: int, steps: int, grouping: str = "nonuniform") -> tuple[range, ...]:
    """The K timestep groups, ascending in t (group 0 contains t=0, group K-1 ends at T).

    Raises ConfigError on ``steps`` when K is not in [1, T] or a group would be empty, and on ``grouping`` for
    an unknown grouping.
    """
    t, k = num_train_timesteps, steps
    if not 1 <= k <= t:
        raise ConfigError("steps", f"K={k} must be in [1, {t}] for a model with {t} timesteps")
    if grouping == "nonuniform":
        # The same float arithmetic as TMPQ-DM: int() of the squared linspace (floor for positives).
        bounds = [int(b) for b in (np.linspace(0, np.sqrt(t * 0.8), k) ** 2)[1:]]
    elif grouping == "uniform":
        bounds = [i * (t // k) for i in range(1, k)]
    else:
        raise ConfigError("grouping", f"must be one of {list(GROUPINGS)}, got {grouping!r}")
    edges = [0, *bounds, t]
    if any(lo >= hi for lo, hi in itertools.pairwise(edges)):
        raise ConfigError("steps", f"K={k} leaves an empty {grouping} timestep group for T={t}; use fewer steps")
    return tuple(range(lo, hi) for lo, hi in itertools.pairwise(edges))


def ddim_uniform_schedule(steps: int, num_train_timesteps: int) -> tuple[int, ...]:
    """DDIM's "leading" uniform schedule, descending (K=10 of T=1000: 900, 800, …, 0)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ConfigError("steps", f"K={steps} must be in [1, {num_train_timesteps}]")
    stride = num_train_timesteps // steps
    return tuple(i * stride for i in reversed(range(steps)))


def baseline_schedule(steps: int, num_train_timesteps: int, grouping: str = "nonuniform") -> tuple[int, ...]:
    """DDIM's uniform K-step schedule moved into the space's groups (each step clipped into its group).

    This is the schedule of the uniform baselines the search is seeded with: in the non-uniform grouping the
    exact DDIM schedule is usually not a member of the space, so its nearest member stands in for it.
    """
    groups = timestep_groups(num_train_timesteps, steps, grouping)[::-1]
    ddim = ddim_uniform_schedule(steps, num_train_timesteps)
    return tuple(min(max(t, g.start), g.stop - 1) for t, g in zip(ddim, groups, strict=True))


def blocks_by_prefix(sites: Iterable[str], depth: int = 2) -> dict[str, str]:
    """A ``{site: block}`` map taking the first ``depth`` dotted components of each site name.

    For diffusers UNets ``depth=2`` groups e.g. ``down_blocks.1.attentions.0.to_q`` into ``down_blocks.1``.
    """
    if depth < 1:
        raise ConfigError("depth", f"must be at least 1, got {depth}")
    return {s: ".".join(s.split(".")[:depth]) for s in sites}


@dataclass(frozen=True)
class SearchSpace:
    """Step counts with their timestep groups, and the precision units with their bit options.

    Attributes:
        num_train_timesteps: T of the model.
        steps: the step counts K searched (sorted ascending).
        sites: the quantizable sites (sorted).
        bit_options: bit-widths the precision genes choose among (sorted ascending).
        grouping: ``nonuniform`` or ``uniform``.
        granularity: ``site`` (one unit per site), ``block`` or ``kind`` (one unit per value of ``site_blocks``).
        site_blocks: ``{site: unit}``: the site's block (``block``), or its block and kind of layer (``kind``);
            required for both (every site mapped; names of sites outside ``sites`` are ignored).
    """

    num_train_timesteps: int
    steps: tuple[int, ...]
    sites: tuple[str, ...]
    bit_options: tuple[int, ...]
    grouping: str = "nonuniform"
    granularity: str = "site"
    site_blocks: Mapping[str, str] | None = None
    _groups: dict[int, tuple[range, ...]] = field(init=False, repr=False, compare=False)
    _units: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _site_unit: dict[str, str] = field(init=False, repr=False, compare=False)
    _unit_sites: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps = tuple(sorted({int(k) for k in self.steps}))
        if not steps:
            raise ConfigError("steps", "at least one step count is needed")
        bits = tuple(sorted({int(b) for b in self.bit_options}))
        if not bits or any(not (2 <= b <= 8 or b == FP_OPTION) for b in bits):
            raise ConfigError("bit_options", f"each must be in 2..8 or {FP_OPTION}, got {list(self.bit_options)}")
        sites = tuple(sorted(self.sites))
        if not sites or len(set(sites)) != len(sites):
            raise ConfigError("sites", "need at least one quantizable site, each named once")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "bit_options", bits)
        object.__setattr__(self, "sites", sites)
        groups = {k: timestep_groups(self.num_train_timesteps, k, self.grouping) for k in steps}
        object.__setattr__(self, "_groups", groups)
        site_unit = self._resolve_units(sites)
        object.__setattr__(self, "_site_unit", site_unit)
        units = tuple(sorted(set(site_unit.values())))
        object.__setattr__(self, "_units", units)
        unit_sites = {u: tuple(s for s in sites if site_unit[s] == u) for u in units}
        object.__setattr__(self, "_unit_sites", unit_sites)
        if self.site_blocks is not None:
            object.__setattr__(self, "site_blocks", dict(self.site_blocks))

    def _resolve_units(self, sites: tuple[str, ...]) -> dict[str, str]:
        if self.granularity == "site":
            return {s: s for s in sites}
        if self.granularity not in GRANULARITIES:
            raise ConfigError("granularity", f"must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if self.site_blocks is None:
            raise ConfigError("site_blocks", f"{self.granularity} granularity needs a {{site: unit}} map")
        missing = [s for s in sites if s not in self.site_blocks]
        if missing:
            raise ConfigError("site_blocks", f"{len(missing)} sites have no block, e.g. {missing[0]!r}")
        return {s: str(self.site_blocks[s]) for s in sites}

    @classmethod
    def from_spec(
        cls,
        spec: SearchSettings,
        sites: Iterable[str],
        num_train_timesteps: int,
        site_blocks: Mapping[str, str] | None = None,
    ) -> SearchSpace:
        """The space of a job, once the model's sites and T are known."""
        spec.validate_for_model(num_train_timesteps)
        return cls(
            num_train_timesteps,
            spec.steps,
            tuple(sites),
            spec.bit_options,
            spec.grouping,
            spec.granularity,
            site_blocks,
        )

    # -- timesteps ---------------------------------------------------------------------------------------

    @property
    def max_steps(self) -> int:
        return self.steps[-1]

    def groups(self, steps: int) -> tuple[range, ...]:
        """The K groups, ascending in t."""
        try:
            return self._groups[steps]
        except KeyError:
            raise InvalidCandidate(f"K={steps} is not one of the searched step counts {list(self.steps)}") from None

    def descending_groups(self, steps: int) -> tuple[range, ...]:
        """The K groups in sampling order: ``descending_groups(K)[j]`` holds ``timesteps[j]``."""
        return self.groups(steps)[::-1]

    def nearest_schedule(self, timesteps: Sequence[int]) -> tuple[int, ...]:
        """The valid schedule closest to ``timesteps`` (same K): each step clipped into its group."""
        ordered = sorted((int(t) for t in timesteps), reverse=True)
        groups = self.descending_groups(len(ordered))
        return tuple(min(max(t, g.start), g.stop - 1) for t, g in zip(ordered, groups, strict=True))

    def ddim_schedule(self, steps: int) -> tuple[int, ...]:
        """The uniform DDIM schedule of K steps, moved to the nearest valid schedule of this space."""
        return baseline_schedule(steps, self.num_train_timesteps, self.grouping)

    def schedule_count(self, steps: int) -> int:
        """How many schedules of K steps the space holds (the product of the group sizes)."""
        return math.prod(len(g) for g in self.groups(steps))

    def schedules(self, steps: int) -> Iterator[tuple[int, ...]]:
        """Every schedule of K steps (descending), in lexicographic order of the groups."""
        return itertools.product(*self.descending_groups(steps))

    # -- precision units --------------------------------------------------------------------------------

    @property
    def units(self) -> tuple[str, ...]:
        """Precision units (site names, or block names with block granularity), sorted."""
        return self._units

    def unit_of(self, site: str) -> str:
        """The precision unit ``site`` belongs to."""
        return self._site_unit[site]

    def unit_sites(self, unit: str) -> tuple[str, ...]:
        """The sites that share ``unit``'s genes."""
        return self._unit_sites[unit]

    def bits_from_units(self, unit_bits: Mapping[str, int]) -> dict[str, int]:
        """Expand ``{unit: bits}`` to ``{site: bits}``."""
        return {s: unit_bits[self._site_unit[s]] for s in self.sites}

    # -- candidates -------------------------------------------------------------------------------------

    def check(self, candidate: Candidate) -> None:
        """Raise InvalidCandidate saying why ``candidate`` is not a point of this space."""
        if set(candidate.sites) != set(self.sites):
            raise InvalidCandidate("candidate sites do not match the space's sites")
        for j, (t, g) in enumerate(zip(candidate.timesteps, self.descending_groups(candidate.steps), strict=True)):
            if t not in g:
                raise InvalidCandidate(f"timestep {t} (step {j}) is outside its group [{g.start}, {g.stop})")
        for kind, bits in (("weight", candidate.w_map()), ("activation", candidate.a_map())):
            for unit in self.units:
                values = {bits[s] for s in self.unit_sites(unit)}
                if len(values) != 1:
                    raise InvalidCandidate(f"{kind} bits differ inside block {unit!r}: {sorted(values)}")
                if values.pop() not in self.bit_options:
                    raise InvalidCandidate(f"{kind} bits of {unit!r} are not in {list(self.bit_options)}")

    def contains(self, candidate: Candidate) -> bool:
        try:
            self.check(candidate)
        except InvalidCandidate:
            return False
        return True

    def uniform_candidate(
        self, steps: int, w_bits: int, a_bits: int, schedule: Sequence[int] | None = None
    ) -> Candidate:
        """Every site at WxAy with ``schedule`` (default: the nearest valid DDIM schedule of K steps)."""
        timesteps = self.ddim_schedule(steps) if schedule is None else self.nearest_schedule(schedule)
        return Candidate.uniform(timesteps, self.sites, w_bits, a_bits)

    def seed_candidates(self) -> list[Candidate]:
        """The DDIM schedule of each K at each uniform precision WbAb of the bit options."""
        return [self.uniform_candidate(k, b, b) for k in self.steps for b in self.bit_options]

    def mixed_uniform_candidates(self) -> list[Candidate]:
        """The DDIM schedule of each K at each uniform precision WwAa with w ≠ a (W4A8, W8A4, ...): the other
        uniform configurations users compare against, which the initial population takes while it has room."""
        bits = self.bit_options
        return [self.uniform_candidate(k, w, a) for k in self.steps for w in bits for a in bits if w != a]

    def cheapest(self) -> Candidate:
        """The candidate of least BitOps (fewest steps, lowest bits; BitOps are monotone in both)."""
        return self.uniform_candidate(self.steps[0], self.bit_options[0], self.bit_options[0])

    def dearest(self) -> Candidate:
        """The candidate of most BitOps (most steps, highest bits)."""
        return self.uniform_candidate(self.steps[-1], self.bit_options[-1], self.bit_options[-1])

    def size(self) -> int:
        """Number of distinct candidates in the space."""
        precisions = len(self.bit_options) ** (2 * len(self.units))
        return sum(self.schedule_count(k) for k in self.steps) * precisions

    def enumerate(
        self, schedules: Iterable[Sequence[int]] | None = None, limit: int = DEFAULT_ENUMERATION_LIMIT
    ) -> Iterator[Candidate]:
        """Every candidate of the space, or of the given schedules × every precision assignment.

        For an exhaustive reference front of a small space (a few block genes × a few schedules). Raises
        ConfigError on ``limit`` before yielding anything when there would be more than ``limit`` candidates.
        """
        if schedules is None:
            chosen: list[tuple[int, ...]] | None = None
            n_schedules = sum(self.schedule_count(k) for k in self.steps)
        else:
            chosen = [tuple(int(t) for t in s) for s in schedules]
            n_schedules = len(chosen)
        total = n_schedules * len(self.bit_options) ** (2 * len(self.units))
        if total > limit:
            raise ConfigError("limit", f"the space has {total} candidates, more than the limit {limit}")
        return self._enumerate(chosen)

    def _enumerate(self, chosen: list[tuple[int, ...]] | None) -> Iterator[Candidate]:
        sources = chosen if chosen is not None else itertools.chain(*(self.schedules(k) for k in self.steps))
        n = len(self.units)
        low = self.bit_options[0]
        for timesteps in sources:
            self.check(Candidate.uniform(timesteps, self.sites, low, low))
            for combo in itertools.product(self.bit_options, repeat=2 * n):
                w = self.bits_from_units(dict(zip(self.units, combo[:n], strict=True)))
                a = self.bits_from_units(dict(zip(self.units, combo[n:], strict=True)))
                yield Candidate.from_maps(timesteps, w, a)
