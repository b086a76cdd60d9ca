"""Sampling on arbitrary schedules: validation, determinism, batch independence."""

from __future__ import annotations

import pytest
import torch

from search.errors import ScheduleError
from supernet.sampling import make_noise, uniform_schedule, validate_schedule


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([], "empty"),
        ([5, 5, 1], "not strictly descending"),
        ([1, 5], "not strictly descending"),
        ([1000, 10], "outside"),
        ([10, -1], "outside"),
    ],
)
def test_bad_schedules_are_refused(schedule, message):
    with pytest.raises(ScheduleError, match=message):
        validate_schedule(schedule, 1000)


def test_uniform_schedule():
    assert uniform_schedule(10, 1000) == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert uniform_schedule(1, 1000) == [0]
    assert len(uniform_schedule(1000, 1000)) == 1000
    with pytest.raises(ScheduleError):
        uniform_schedule(0, 1000)
    with pytest.raises(ScheduleError):
        uniform_schedule(1001, 1000)


def test_noise_is_a_function_of_the_seed():
    assert torch.equal(make_noise(4, (1, 16, 16), 3), make_noise(4, (1, 16, 16), 3))
    assert not torch.equal(make_noise(4, (1, 16, 16), 3), make_noise(4, (1, 16, 16), 4))
    # the first samples do not depend on how many are drawn
    assert torch.equal(make_noise(8, (1, 16, 16), 3)[:4], make_noise(4, (1, 16, 16), 3))


def test_sampler_is_deterministic(testbed_model):
    sampler = testbed_model.sampler(batch_size=16)
    a = sampler.sample([700, 400, 100, 0], n=16, seed=5)
    b = sampler.sample([700, 400, 100, 0], n=16, seed=5)
    c = sampler.sample([700, 400, 100, 0], n=16, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == (16, 1, 16, 16)
    assert a.min() >= -1 and a.max() <= 1


def test_sampler_does_not_depend_on_batch_size(testbed_model):
    a = testbed_model.sampler(batch_size=12).sample([600, 300, 0], n=12, seed=2)
    b = testbed_model.sampler(batch_size=5).sample([600, 300, 0], n=12, seed=2)
    assert torch.allclose(a, b, atol=1e-4)


def test_sampler_refuses_bad_schedule(testbed_model):
    with pytest.raises(ScheduleError):
        testbed_model.sampler().sample([0, 10], n=2, seed=0)


def test_schedule_changes_the_result(testbed_model):
    sampler = testbed_model.sampler(batch_size=8)
    a = sampler.sample([900, 500, 0], n=8, seed=0)
    b = sampler.sample([950, 520, 3], n=8, seed=0)
    assert not torch.allclose(a, b)


def test_hook_sees_every_step(testbed_model):
    seen: list[tuple[int, tuple[int, ...]]] = []
    testbed_model.sampler(batch_size=3).sample(
        [800, 200, 0], n=6, seed=0, hook=lambda t, x: seen.append((t, tuple(x.shape)))
    )
    assert seen == [(800, (3, 1, 16, 16)), (200, (3, 1, 16, 16)), (0, (3, 1, 16, 16))] * 2
