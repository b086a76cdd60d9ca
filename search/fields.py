"""Typed readers for the sections of a job spec: each returns the value or raises ``ConfigError`` naming the field.

Torch-free and shared by every package that owns a section (search, model, evaluation, execution), so that a wrong
type or an out-of-range value reads the same wherever it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from search.errors import ConfigError


def read_int(value: Any, name: str, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"expected an integer, got {type(value).__name__} {shown(value)}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be in [{low}, {high}], got {value}")
    return int(value)


def read_number(value: Any, name: str, low: float, high: float, *, strict_low: bool = False) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``strict_low``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"expected a finite number, got {shown(value)}")
    if value < low or (strict_low and value == low) or value > high:
        bracket = "(" if strict_low else "["
        raise ConfigError(name, f"must be in {bracket}{low:g}, {high:g}], got {value}")
    return float(value)


def read_choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(name, f"must be one of {list(options)}, got {shown(value)}")
    return value


def read_str(value: Any, name: str, *, max_len: int = 4096, empty_ok: bool = False) -> str:
    """A non-empty (or, with ``empty_ok``, possibly empty) string of at most ``max_len`` characters."""
    if not isinstance(value, str) or not (empty_ok or value.strip()):
        raise ConfigError(name, f"expected a non-empty string, got {shown(value)}")
    if len(value) > max_len:
        raise ConfigError(name, f"at most {max_len} characters, got {len(value)}")
    return value


def read_mapping(value: Any, name: str) -> dict[str, Any]:
    """A mapping with string keys (``None`` reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(name, f"expected a mapping with string keys, got {type(value).__name__}")
    return dict(value)


def read_int_list(value: Any, name: str, check: Callable[[Any, str], int], max_items: int = 64) -> tuple[int, ...]:
    """One integer or a non-empty list of distinct ones, each checked; returned sorted ascending."""
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list | tuple) or not items:
        raise ConfigError(name, f"expected an integer or a non-empty list of integers, got {shown(value)}")
    if len(items) > max_items:
        raise ConfigError(name, f"at most {max_items} values, got {len(items)}")
    checked = [check(v, f"{name}[{i}]") for i, v in enumerate(items)]
    if len(set(checked)) != len(checked):
        raise ConfigError(name, f"duplicate values in {checked}")
    return tuple(sorted(checked))


def check_known(data: Mapping[str, Any], known: tuple[str, ...] | frozenset[str], section: str) -> None:
    """Refuse a key of ``data`` that is not in ``known``, naming it as ``section.key``."""
    for key in data:
        if key not in known:
            raise ConfigError(dotted(section, str(key)[:64]), f"unknown field (expected one of {sorted(known)})")


def dotted(section: str, field: str) -> str:
    """``section.field`` (just one of them when the other is empty)."""
    return f"{section}.{field}" if section and field else section or field


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def within(section: str, exc: ConfigError) -> ConfigError:
    """``exc`` with its field prefixed by ``section`` (an error of a section's own validation, named in the job)."""
    return ConfigError(dotted(section, exc.field), exc.reason)
