"""Shared fixtures of the supernet tests."""

from __future__ import annotations

from tests.torch_threads import one_torch_thread  # noqa: F401  (autouse: every supernet test module)
