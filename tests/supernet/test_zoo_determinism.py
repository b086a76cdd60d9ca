"""Training the testbeds deterministically leaves torch's process-wide settings as they were."""

from __future__ import annotations

import pytest
import torch

from supernet.zoo.determinism import deterministic_torch


def test_settings_are_restored_after_the_block_even_when_it_raises() -> None:
    threads = torch.get_num_threads()
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="inside"), deterministic_torch(threads + 1):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.get_num_threads() == threads + 1
        raise RuntimeError("inside")
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads


def test_without_a_thread_count_the_threads_are_left_alone() -> None:
    threads = torch.get_num_threads()
    with deterministic_torch():
        assert torch.get_num_threads() == threads
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
