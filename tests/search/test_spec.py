"""SearchSpec: defaults, round trip, YAML, and errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search.errors import ConfigError
from search.spec import SearchSpec, UniformBudget

FULL: dict[str, Any] = {
    "model": "models/testbed",
    "bit_options": [8, 4, 6],
    "steps": [10, 5, 15],
    "grouping": "uniform",
    "granularity": "block",
    "objective": "fdd",
    "samples": 128,
    "rescore_samples": 0,
    "reference_steps": 50,
    "budget": "W6A6@10",
    "algorithm": "tmpq_evolution",
    "population": 30,
    "generations": 5,
    "seed": 7,
    "calibration": {"method": "tcaq", "iters": 100},
    "ray": {"address": "auto", "num_actors": 2, "num_cpus": 1.0, "num_gpus": 0, "threads_per_actor": 1},
    "output": "runs/x",
}


def test_defaults_and_normalisation() -> None:
    spec = SearchSpec.from_dict({"model": "m", "steps": 10, "bit_options": [8, 6]})
    assert spec.steps == (10,) and spec.bit_options == (6, 8)
    assert (spec.samples, spec.rescore_samples, spec.reference_steps) == (64, 1024, 100)
    assert spec.algorithm == "nsga2" and spec.budget is None and spec.ray == {} and spec.output is None


def test_round_trip() -> None:
    spec = SearchSpec.from_dict(FULL)
    assert spec.steps == (5, 10, 15) and spec.budget == UniformBudget(6, 6, 10)
    data = spec.to_dict()
    assert data["budget"] == "W6A6@10" and data["steps"] == [5, 10, 15]
    assert SearchSpec.from_dict(data) == spec
    single = SearchSpec.from_dict({"model": "m", "steps": 8, "budget": 1.5e9})
    assert single.to_dict()["steps"] == 8 and SearchSpec.from_dict(single.to_dict()) == single


def test_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("model: models/testbed\nsteps: [5, 10]\nbudget: W4A8@10\nray:\n  num_actors: 3\n")
    spec = SearchSpec.from_yaml(path)
    assert spec.steps == (5, 10) and spec.budget == UniformBudget(4, 8, 10) and spec.ray == {"num_actors": 3}
    path.write_text("- not a mapping\n")
    with pytest.raises(ConfigError) as info:
        SearchSpec.from_yaml(path)
    assert info.value.field == "spec"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"population": "ten"}, "population"),
        ({"population": 1}, "population"),
        ({"generations": 0}, "generations"),
        ({"generations": True}, "generations"),
        ({"bit_options": [8, 9]}, "bit_options[1]"),
        ({"bit_options": [8, 32]}, "bit_options[1]"),
        ({"bit_options": [8, 8]}, "bit_options"),
        ({"bit_options": []}, "bit_options"),
        ({"steps": [10, 0]}, "steps[1]"),
        ({"steps": "ten"}, "steps"),
        ({"grouping": "cosine"}, "grouping"),
        ({"granularity": "layer"}, "granularity"),
        ({"objective": "fid"}, "objective"),
        ({"algorithm": "cmaes"}, "algorithm"),
        ({"budget": "W6A6"}, "budget"),
        ({"budget": "W9A6@10"}, "budget"),
        ({"budget": -5}, "budget"),
        ({"samples": 0}, "samples"),
        ({"rescore_samples": -1}, "rescore_samples"),
        ({"calibration": [1, 2]}, "calibration"),
        ({"ray": {"num_actors": 0}}, "ray.num_actors"),
        ({"ray": {"num_cpus": "lots"}}, "ray.num_cpus"),
        ({"ray": {"workers": 2}}, "ray.workers"),
        ({"model": ""}, "model"),
        ({"version": 2}, "version"),
    ],
)
def test_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpec.from_dict({**FULL, **change})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and "\n" not in str(info.value)


def test_model_is_required() -> None:
    with pytest.raises(ConfigError) as info:
        SearchSpec.from_dict({"steps": 10})
    assert info.value.field == "model"


def test_validate_for_model() -> None:
    spec = SearchSpec.from_dict({"model": "m", "steps": [10, 20], "grouping": "uniform"})
    spec.validate_for_model(1000)
    with pytest.raises(ConfigError) as info:
        spec.validate_for_model(15)
    assert info.value.field == "steps" and "20" in info.value.reason
    dense = SearchSpec.from_dict({"model": "m", "steps": 40})  # quadratic groups run empty near t=0
    with pytest.raises(ConfigError) as info:
        dense.validate_for_model(1000)
    assert info.value.field == "steps"
    dense.replace(grouping="uniform").validate_for_model(1000)
    with pytest.raises(ConfigError) as info:
        SearchSpec.from_dict({"model": "m", "steps": 4, "budget": "W6A6@50"}).validate_for_model(20)
    assert info.value.field == "budget"
