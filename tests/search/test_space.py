"""Timestep groups, precision units and enumeration of the search space."""

from __future__ import annotations

import itertools

import pytest

from search.candidate import Candidate
from search.errors import ConfigError, InvalidCandidate
from search.space import SearchSpace, blocks_by_prefix, ddim_uniform_schedule, timestep_groups

SITES = ("down.0.conv", "down.0.attn.qk", "mid.0.conv", "up.0.conv")


def test_nonuniform_groups_match_tmpq_dm_for_t1000_k10() -> None:
    groups = timestep_groups(1000, 10, "nonuniform")
    assert [len(g) for g in groups] == [9, 30, 49, 70, 88, 109, 128, 149, 168, 200]
    assert groups[0].start == 0 and groups[-1].stop == 1000
    assert all(a.stop == b.start for a, b in itertools.pairwise(groups))


def test_uniform_groups_have_equal_widths_and_start_at_ddim_steps() -> None:
    groups = timestep_groups(1000, 8, "uniform")
    assert [len(g) for g in groups] == [125] * 8
    assert tuple(g.start for g in reversed(groups)) == ddim_uniform_schedule(8, 1000)
    assert [len(g) for g in timestep_groups(10, 3, "uniform")] == [3, 3, 4]


def test_single_step_is_one_group_over_all_timesteps() -> None:
    assert timestep_groups(1000, 1) == (range(0, 1000),)


@pytest.mark.parametrize(("t", "k"), [(1000, 40), (10, 11), (5, 0), (1, 2)])
def test_empty_or_impossible_groups_name_steps(t: int, k: int) -> None:
    with pytest.raises(ConfigError) as info:
        timestep_groups(t, k, "nonuniform")
    assert info.value.field == "steps"


def test_unknown_grouping_names_grouping() -> None:
    with pytest.raises(ConfigError) as info:
        timestep_groups(1000, 10, "cosine")
    assert info.value.field == "grouping"


def test_ddim_seed_schedule_is_clipped_into_the_groups() -> None:
    space = SearchSpace(1000, (10,), SITES, (4, 8))
    schedule = space.ddim_schedule(10)
    groups = space.descending_groups(10)
    assert all(t in g for t, g in zip(schedule, groups, strict=True))
    assert schedule[0] == 900 and schedule[-1] == 0  # the DDIM steps that already lie in their groups
    # A DDIM step outside its group moves to the nearest end of that group.
    assert schedule[-2] == groups[-2].stop - 1 == 38


def test_seeds_cover_every_k_and_uniform_precision() -> None:
    space = SearchSpace(100, (4, 6), SITES, (4, 6, 8), grouping="uniform")
    seeds = space.seed_candidates()
    assert {(c.steps, c.bits_summary()) for c in seeds} == {(k, f"W{b}A{b}") for k in (4, 6) for b in (4, 6, 8)}
    assert all(space.contains(c) for c in seeds)


def test_block_granularity_groups_sites() -> None:
    blocks = blocks_by_prefix(SITES, depth=2)
    assert blocks["down.0.attn.qk"] == "down.0"
    space = SearchSpace(100, (4,), SITES, (4, 8), granularity="block", site_blocks=blocks)
    assert space.units == ("down.0", "mid.0", "up.0")
    assert space.unit_sites("down.0") == ("down.0.attn.qk", "down.0.conv")
    mixed = Candidate.from_maps(
        space.ddim_schedule(4), {s: 8 for s in SITES} | {"down.0.conv": 4}, {s: 8 for s in SITES}
    )
    with pytest.raises(InvalidCandidate, match="differ inside block"):
        space.check(mixed)


def test_block_granularity_needs_every_site_mapped() -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpace(100, (4,), SITES, (4, 8), granularity="block", site_blocks={"down.0.conv": "d"})
    assert info.value.field == "site_blocks"


def test_check_rejects_timesteps_outside_groups_and_unknown_k() -> None:
    space = SearchSpace(1000, (10,), SITES, (4, 8))
    bad = Candidate.uniform(ddim_uniform_schedule(10, 1000), SITES, 8, 8)  # 100 is not in [9, 39)
    with pytest.raises(InvalidCandidate, match="outside its group"):
        space.check(bad)
    with pytest.raises(InvalidCandidate, match="step counts"):
        space.check(Candidate.uniform((500, 0), SITES, 8, 8))


def test_enumerate_lists_every_candidate_once() -> None:
    space = SearchSpace(12, (2, 3), ("a", "b"), (4, 8), grouping="uniform")
    candidates = list(space.enumerate())
    assert len(candidates) == space.size() == (6 * 6 + 4 * 4 * 4) * 2**4
    assert len({c.key() for c in candidates}) == len(candidates)
    assert all(space.contains(c) for c in candidates)


def test_enumerate_given_schedules_and_limit() -> None:
    space = SearchSpace(1000, (10,), SITES, (4, 8))
    schedules = [space.ddim_schedule(10), tuple(g.start for g in space.descending_groups(10))]
    assert len(list(space.enumerate(schedules))) == 2 * 2 ** (2 * len(SITES))
    with pytest.raises(ConfigError) as info:
        space.enumerate(limit=1000)
    assert info.value.field == "limit"
