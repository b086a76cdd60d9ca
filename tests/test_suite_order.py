"""The suite's scheduling lists in ``tests/conftest.py`` name modules that exist (a renamed one would silently
lose its place in the order)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONG_MODULES, RAY_MODULES

REPO = Path(__file__).resolve().parents[1]


def test_the_scheduled_modules_exist() -> None:
    assert all((REPO / module).is_file() for module in LONG_MODULES), LONG_MODULES
    prefix = REPO / RAY_MODULES
    assert list(prefix.parent.glob(prefix.name + "*.py")), RAY_MODULES
