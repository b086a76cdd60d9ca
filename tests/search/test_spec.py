"""SearchSettings (the job spec's ``search`` section): defaults, round trip, bounds, and errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from search.errors import ConfigError
from search.spec import MAX_GENERATIONS, MAX_POPULATION, SearchSettings, UniformBudget

FULL: dict[str, Any] = {
    "bit_options": [8, 4, 6],
    "steps": [10, 5, 15],
    "grouping": "uniform",
    "granularity": "block",
    "budget": "W6A6@10",
    "algorithm": "tmpq_evolution",
    "population": 30,
    "generations": 5,
    "seed": 7,
}


def test_defaults_and_normalisation() -> None:
    search = SearchSettings.from_dict({"steps": 10, "bit_options": [8, 6]})
    assert search.steps == (10,) and search.bit_options == (6, 8) and search.quantized_bits == (6, 8)
    assert search.algorithm == "nsga2" and search.budget is None and (search.population, search.generations) == (50, 20)
    assert SearchSettings.from_dict({"bit_options": [16, 4]}).quantized_bits == (4,)


def test_round_trip() -> None:
    search = SearchSettings.from_dict(FULL)
    assert search.steps == (5, 10, 15) and search.budget == UniformBudget(6, 6, 10)
    data = search.to_dict()
    assert data["budget"] == "W6A6@10" and data["steps"] == [5, 10, 15]
    assert SearchSettings.from_dict(data) == search
    single = SearchSettings.from_dict({"steps": 8, "budget": 1.5e9})
    assert single.to_dict()["steps"] == 8 and SearchSettings.from_dict(single.to_dict()) == single
    latency = SearchSettings.from_dict({"cost": "latency"})
    assert latency.to_dict()["cost"] == "latency" and SearchSettings.from_dict(latency.to_dict()) == latency


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"population": "ten"}, "population"),
        ({"population": 1}, "population"),
        ({"population": MAX_POPULATION + 1}, "population"),
        ({"generations": 0}, "generations"),
        ({"generations": MAX_GENERATIONS + 1}, "generations"),
        ({"generations": True}, "generations"),
        ({"bit_options": [8, 9]}, "bit_options[1]"),
        ({"bit_options": [8, 32]}, "bit_options[1]"),
        ({"bit_options": [8, 8]}, "bit_options"),
        ({"bit_options": []}, "bit_options"),
        ({"bit_options": [16]}, "bit_options"),
        ({"steps": [10, 0]}, "steps[1]"),
        ({"steps": "ten"}, "steps"),
        ({"steps": list(range(1, 40))}, "steps"),
        ({"grouping": "cosine"}, "grouping"),
        ({"granularity": "layer"}, "granularity"),
        ({"algorithm": "cmaes"}, "algorithm"),
        ({"cost": "watts"}, "cost"),
        ({"cost": 3}, "cost"),
        ({"budget": "W6A6"}, "budget"),
        ({"budget": "W9A6@10"}, "budget"),
        ({"budget": "W6A6@" + "9" * 5000}, "budget"),
        ({"budget": -5}, "budget"),
        ({"budget": {"w": 6}}, "budget"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"version": 2}, "version"),
    ],
)
def test_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSettings.from_dict({**FULL, **change})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and "\n" not in str(info.value)
    assert len(str(info.value)) < 300  # a huge value is never echoed back whole


def test_validate_for_model() -> None:
    search = SearchSettings.from_dict({"steps": [10, 20], "grouping": "uniform"})
    search.validate_for_model(1000)
    with pytest.raises(ConfigError) as info:
        search.validate_for_model(15)
    assert info.value.field == "steps" and "20" in info.value.reason
    dense = SearchSettings.from_dict({"steps": 40})  # quadratic groups run empty near t=0
    with pytest.raises(ConfigError) as info:
        dense.validate_for_model(1000)
    assert info.value.field == "steps"
    dense.replace(grouping="uniform").validate_for_model(1000)
    with pytest.raises(ConfigError) as info:
        SearchSettings.from_dict({"steps": 4, "budget": "W6A6@50"}).validate_for_model(20)
    assert info.value.field == "budget"
