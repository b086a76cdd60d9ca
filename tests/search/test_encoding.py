"""Vectors ↔ candidates: bounds, round trips, repair, K sets and block genes."""

from __future__ import annotations

import numpy as np
import pytest

from search.encoding import Encoding
from search.errors import InvalidCandidate
from search.space import SearchSpace, blocks_by_prefix

SITES = ("down.0.conv", "down.0.attn.qk", "mid.0.conv", "up.0.conv", "up.0.attn.pv")


@pytest.fixture
def single_k() -> Encoding:
    return Encoding(SearchSpace(1000, (10,), SITES, (4, 6, 8)))


@pytest.fixture
def k_set() -> Encoding:
    return Encoding(SearchSpace(1000, (5, 8, 10, 15), SITES, (4, 5, 6, 7, 8)))


def test_bounds_of_single_k_are_the_group_sizes(single_k: Encoding) -> None:
    groups = single_k.space.descending_groups(10)
    n_units = len(SITES)
    assert single_k.n_var == 10 + 2 * n_units
    assert list(single_k.xu[:10]) == [len(g) - 1 for g in groups]
    assert list(single_k.xu[10:]) == [2] * (2 * n_units)
    assert single_k.gene_names[0] == "t0" and single_k.gene_names[-1] == "a:up.0.conv"


def test_every_gene_value_decodes_inside_its_group(single_k: Encoding) -> None:
    groups = single_k.space.descending_groups(10)
    x = single_k.encode(single_k.space.seed_candidates()[0])
    for j, g in enumerate(groups):
        seen = set()
        for value in range(single_k.xu[j] + 1):
            x[j] = value
            seen.add(single_k.decode(x).timesteps[j])
        assert seen == set(g)  # the gene reaches every timestep of its group and nothing else


def test_round_trip_single_k(single_k: Encoding) -> None:
    rng = np.random.default_rng(0)
    for x in single_k.random(200, rng):
        candidate = single_k.decode(x)
        assert single_k.space.contains(candidate)
        assert np.array_equal(single_k.encode(candidate), x)
        assert single_k.decode(single_k.encode(candidate)) == candidate


def test_round_trip_k_set(k_set: Encoding) -> None:
    rng = np.random.default_rng(1)
    steps = set()
    for x in k_set.random(300, rng):
        candidate = k_set.decode(x)
        steps.add(candidate.steps)
        assert k_set.space.contains(candidate)
        assert k_set.decode(k_set.encode(candidate)) == candidate
        assert np.array_equal(k_set.repair(x), x)  # random() returns canonical vectors
    assert steps == {5, 8, 10, 15}


def test_k_set_genes_reach_every_timestep_of_every_group() -> None:
    enc = Encoding(SearchSpace(60, (2, 3, 5), ("a",), (4, 8), grouping="nonuniform"))
    for i, k in enumerate(enc.space.steps):
        for j, group in enumerate(enc.space.descending_groups(k)):
            reached = set()
            x = enc.encode(enc.space.uniform_candidate(k, 4, 4))
            for value in range(enc.xu[1 + j] + 1):
                x[0], x[1 + j] = i, value
                reached.add(enc.decode(x).timesteps[j])
            assert reached == set(group)


def test_k_set_seed_candidates_encode_and_inactive_genes_are_ignored(k_set: Encoding) -> None:
    for seed in k_set.space.seed_candidates():
        x = k_set.encode(seed)
        assert k_set.decode(x) == seed
        k = seed.steps
        if k < k_set.space.max_steps:
            x[1 + k :][: k_set.space.max_steps - k] = k_set.xu[1 + k : 1 + k_set.space.max_steps]
            assert k_set.decode(x) == seed


def test_repair_makes_any_vector_valid(k_set: Encoding) -> None:
    rng = np.random.default_rng(2)
    wild = rng.normal(0, 50, size=(500, k_set.n_var))
    wild[::7] = np.nan
    wild[3::11] = np.inf
    repaired = k_set.repair(wild)
    assert repaired.dtype.kind == "i"
    assert np.all(repaired >= k_set.xl) and np.all(repaired <= k_set.xu)
    for x in repaired:
        candidate = k_set.decode(x)
        assert k_set.space.contains(candidate)
        assert np.array_equal(k_set.repair(x), x)  # idempotent
    assert np.array_equal(k_set.repair(wild[5]), repaired[5])  # one vector as well as a matrix


def test_decode_rejects_out_of_bounds_and_fractions(single_k: Encoding) -> None:
    x = single_k.encode(single_k.space.seed_candidates()[0]).astype(float)
    x[0] = single_k.xu[0] + 1
    with pytest.raises(InvalidCandidate, match="t0"):
        single_k.decode(x)
    x[0] = 0.5
    with pytest.raises(InvalidCandidate, match="integers"):
        single_k.decode(x)
    with pytest.raises(InvalidCandidate):
        single_k.decode(x[:-1])


def test_block_genes_are_shared_by_the_sites_of_a_block() -> None:
    blocks = blocks_by_prefix(SITES, depth=2)
    enc = Encoding(SearchSpace(1000, (8,), SITES, (4, 6, 8), granularity="block", site_blocks=blocks))
    assert enc.n_var == 8 + 2 * 3
    assert [n for n in enc.gene_names if n.startswith("w:")] == ["w:down.0", "w:mid.0", "w:up.0"]
    for x in enc.random(50, np.random.default_rng(3)):
        candidate = enc.decode(x)
        w, a = candidate.w_map(), candidate.a_map()
        assert w["down.0.conv"] == w["down.0.attn.qk"] and a["up.0.conv"] == a["up.0.attn.pv"]
        assert np.array_equal(enc.encode(candidate), x)
