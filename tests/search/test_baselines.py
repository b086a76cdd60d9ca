"""``search.baselines``: the one rule that says which candidates are uniform baselines (torch-free)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search.baselines import baseline_schedules, is_uniform_baseline, uniform_bits
from search.candidate import Candidate
from search.space import SearchSpace, baseline_schedule, ddim_uniform_schedule

SITES = ("a.conv", "b.attn.qk", "c.linear")


@pytest.mark.parametrize("grouping", ["nonuniform", "uniform"])
def test_the_seeds_and_the_mixed_uniform_candidates_of_a_space_are_baselines(grouping: str) -> None:
    space = SearchSpace(1000, (8, 10), SITES, (4, 6, 8), grouping)
    seeds, mixed = space.seed_candidates(), space.mixed_uniform_candidates()
    assert len(seeds) == 6 and len(mixed) == 12
    assert all(is_uniform_baseline(c, 1000) for c in seeds + mixed)
    assert all(is_uniform_baseline(c.to_dict(), 1000) for c in seeds + mixed)  # a stored candidate's form too
    assert {uniform_bits(c) for c in mixed if c.steps == 8} == {(w, a) for w in (4, 6, 8) for a in (4, 6, 8) if w != a}


def test_what_is_not_a_baseline() -> None:
    schedule = ddim_uniform_schedule(4, 100)
    assert schedule == (75, 50, 25, 0)
    assert is_uniform_baseline(Candidate.uniform(schedule, SITES, 4, 8), 100)
    assert not is_uniform_baseline(Candidate.uniform(schedule, SITES, 4, 8), 1000)  # another T's schedule
    per_site = Candidate.from_maps(schedule, {"a.conv": 4, "b.attn.qk": 6, "c.linear": 4}, dict.fromkeys(SITES, 8))
    assert uniform_bits(per_site) is None and not is_uniform_baseline(per_site, 100)
    shifted = Candidate.uniform((76, 50, 25, 0), SITES, 6, 6)
    assert not is_uniform_baseline(shifted, 100)
    for broken in (
        {"timesteps": [], "weight_bits": {}, "act_bits": {}},
        {"timesteps": "75,50", "weight_bits": {"a": 4}, "act_bits": {"a": 4}},
        {"timesteps": [75, "x"], "weight_bits": {"a": 4}, "act_bits": {"a": 4}},
        {"weight_bits": {"a": 4}, "act_bits": {"a": 4}},
        {},
    ):
        assert not is_uniform_baseline(broken, 100), broken


def test_both_groupings_schedules_count_and_a_k_too_large_for_one_grouping_still_has_the_other() -> None:
    assert baseline_schedules(10, 1000) == {
        baseline_schedule(10, 1000, "nonuniform"),
        baseline_schedule(10, 1000, "uniform"),
    }
    assert baseline_schedule(10, 1000, "uniform") == ddim_uniform_schedule(10, 1000)
    # K = 50 of T = 100 leaves an empty non-uniform group; the exact DDIM schedule is still a baseline's
    assert baseline_schedules(50, 100) == {ddim_uniform_schedule(50, 100)}
    assert is_uniform_baseline(Candidate.uniform(ddim_uniform_schedule(50, 100), SITES, 8, 8), 100)
    assert baseline_schedules(200, 100) == frozenset()


def test_the_module_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, search.baselines\n"
        "heavy = sorted({'torch', 'diffusers', 'ray', 'fastapi', 'sqlalchemy'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
