"""What a *uniform baseline* is: the one rule the local ``tmpq search`` plot and the server (its plot, and
``is_baseline`` in every candidate it answers) both use. Torch-free.

A candidate is a uniform baseline when every site has the same weight bit-width, every site has the same activation
bit-width (the two may differ: W4A8 is one, as are the diagonal W6A6 the search is seeded with and the mixed
W8A4 its initial population takes), and its timesteps are DDIM's uniform schedule of its step count K for the
model's T training timesteps, as the search seeds it (``search.space.baseline_schedule``): exact in the uniform
grouping, moved into the groups in the non-uniform one. Both groupings' versions count, so the rule needs only T;
for a candidate of the job's own space the two readings cannot differ (an exact DDIM schedule that lies in the
non-uniform groups is its own nearest member), except in the one corner where the moved schedule also happens to
lie in the uniform groups, which then counts too.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from search.candidate import Candidate
from search.errors import ConfigError
from search.space import baseline_schedule

#: The groupings whose baseline schedules count (``search.spec.GROUPINGS``; spelled out so that this module does not
#: depend on the job spec's layout).
BASELINE_GROUPINGS = ("nonuniform", "uniform")


def _one(bits: Any) -> int | None:
    """The one bit-width of a ``{site: bits}`` map, or None when they differ (or the map is not one)."""
    if not isinstance(bits, Mapping) or not bits:
        return None
    values = set(bits.values())
    return int(next(iter(values))) if len(values) == 1 else None


def _parts(candidate: Candidate | Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """``(timesteps, weight bits map, activation bits map)`` of a :class:`Candidate` or its ``to_dict()``."""
    if isinstance(candidate, Candidate):
        return candidate.timesteps, candidate.w_map(), candidate.a_map()
    return candidate.get("timesteps"), candidate.get("weight_bits"), candidate.get("act_bits")


def uniform_bits(candidate: Candidate | Mapping[str, Any]) -> tuple[int, int] | None:
    """``(weight bits, activation bits)`` of a candidate whose sites all share them, else None."""
    _, weights, acts = _parts(candidate)
    w, a = _one(weights), _one(acts)
    return (w, a) if w is not None and a is not None else None


@lru_cache(maxsize=4096)
def baseline_schedules(steps: int, num_train_timesteps: int) -> frozenset[tuple[int, ...]]:
    """The schedules a uniform baseline of K=``steps`` may have for a model of T timesteps (empty when K does not
    fit T)."""
    schedules = set()
    for grouping in BASELINE_GROUPINGS:
        try:
            schedules.add(baseline_schedule(steps, num_train_timesteps, grouping))
        except ConfigError:
            continue
    return frozenset(schedules)


def is_uniform_baseline(candidate: Candidate | Mapping[str, Any], num_train_timesteps: int) -> bool:
    """Whether a candidate (a :class:`Candidate` or its ``to_dict()``) is a uniform baseline for a model of T
    training timesteps (see the module's docstring)."""
    if uniform_bits(candidate) is None:
        return False
    timesteps, _, _ = _parts(candidate)
    if not isinstance(timesteps, list | tuple) or not timesteps:
        return False
    try:
        schedule = tuple(int(t) for t in timesteps)
    except (TypeError, ValueError):
        return False
    return schedule in baseline_schedules(len(schedule), int(num_train_timesteps))
