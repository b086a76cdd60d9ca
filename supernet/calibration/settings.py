"""Calibration settings: a frozen, versioned, validated dataclass whose canonical dict keys the supernet cache."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import ConfigError, VersionMismatchError
from supernet.quant.protocol import QUANT_KINDS, RANGE_METHODS
from supernet.settings import canonical_key

CALIBRATION_SETTINGS_VERSION = 1
GRID_SPACINGS = ("linear", "quadratic")

#: The fields that decide the calibration *data* (the FP trajectories); the rest decide how it is used.
DATA_FIELDS = ("grid_steps", "grid_spacing", "samples", "seed")


@dataclass(frozen=True)
class CalibrationSettings:
    """How a supernet is calibrated.

    Attributes:
        strategy: name of a registered :class:`~supernet.calibration.strategy.CalibrationStrategy`.
        grid_steps: number of calibration timesteps, covering ``[0, T)`` from ``T-1`` down to 0.
        grid_spacing: ``"linear"`` or ``"quadratic"`` (denser near t=0, like TMPQ-DM's groups).
        samples: trajectories (images) per timestep.
        seed: noise seed of the FP trajectories.
        weight_method / act_method: ``"minmax"`` or ``"mse"`` (search over clipping ratios).
        mse_grid / mse_min_ratio / mse_norm: the clipping-ratio search (``mse_grid`` ratios in
            ``[mse_min_ratio, 1]``, error ``mean |x - x̂|^mse_norm``).
        act_max_elems: activation MSE searches use at most this many (strided) elements per tensor.
        pv_quantizer: default quantizer of the post-softmax input of ``.pv`` sites, ``"uniform"`` or ``"log2"``;
            a strategy may choose per (site, bits) instead.
        strategy_params: extra JSON-scalar parameters of the strategy, as sorted ``(name, value)`` pairs
            (a mapping is accepted).
        version: format version of these settings.
    """

    strategy: str = "range"
    grid_steps: int = 20
    grid_spacing: str = "linear"
    samples: int = 64
    seed: int = 0
    weight_method: str = "minmax"
    act_method: str = "mse"
    mse_grid: int = 40
    mse_min_ratio: float = 0.3
    mse_norm: float = 2.0
    act_max_elems: int = 16384
    pv_quantizer: str = "uniform"
    strategy_params: tuple[tuple[str, Any], ...] = ()
    version: int = CALIBRATION_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != CALIBRATION_SETTINGS_VERSION:
            raise VersionMismatchError(f"calibration settings version {self.version} is not supported "
                                       f"(expected {CALIBRATION_SETTINGS_VERSION})")
        _check(bool(self.strategy) and isinstance(self.strategy, str), "strategy", "must be a non-empty name")
        for name, low in (("grid_steps", 1), ("samples", 1), ("mse_grid", 1), ("act_max_elems", 1), ("seed", 0)):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= low, name,
                   f"must be an integer >= {low}")
        _check(self.grid_spacing in GRID_SPACINGS, "grid_spacing", f"must be one of {GRID_SPACINGS}")
        _check(self.weight_method in RANGE_METHODS, "weight_method", f"must be one of {RANGE_METHODS}")
        _check(self.act_method in RANGE_METHODS, "act_method", f"must be one of {RANGE_METHODS}")
        _check(self.pv_quantizer in QUANT_KINDS, "pv_quantizer", f"must be one of {QUANT_KINDS}")
        _check(_finite(self.mse_min_ratio) and 0.0 < self.mse_min_ratio <= 1.0, "mse_min_ratio", "must be in (0, 1]")
        _check(_finite(self.mse_norm) and self.mse_norm > 0, "mse_norm", "must be > 0")
        object.__setattr__(self, "mse_min_ratio", float(self.mse_min_ratio))
        object.__setattr__(self, "mse_norm", float(self.mse_norm))
        object.__setattr__(self, "strategy_params", _normalise_params(self.strategy_params))

    def param(self, name: str, default: Any = None) -> Any:
        """A strategy parameter by name."""
        return dict(self.strategy_params).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-ready form (part of the supernet cache key)."""
        d = asdict(self)
        d["strategy_params"] = {k: v for k, v in self.strategy_params}
        return d

    def data_dict(self) -> dict[str, Any]:
        """The part of :meth:`to_dict` that decides the calibration data."""
        return {"version": self.version, **{k: getattr(self, k) for k in DATA_FIELDS}}

    def key(self) -> str:
        """Short stable digest of :meth:`to_dict`."""
        return canonical_key(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationSettings:
        """Inverse of :meth:`to_dict`; refuses another version or unknown fields."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError("calibration settings", f"unknown fields {sorted(unknown)}")
        return cls(**dict(data))


def _check(ok: bool, field: str, reason: str) -> None:
    if not ok:
        raise ConfigError(field, reason)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _normalise_params(params: Any) -> tuple[tuple[str, Any], ...]:
    items = params.items() if isinstance(params, Mapping) else params
    try:
        pairs = tuple(sorted((str(k), v) for k, v in items))
    except (TypeError, ValueError):
        raise ConfigError("strategy_params", "must be a mapping or (name, value) pairs") from None
    if len({k for k, _ in pairs}) != len(pairs):
        raise ConfigError("strategy_params", "a parameter is named twice")
    for k, v in pairs:
        if not (v is None or isinstance(v, str | bool | int) or _finite(v)):
            raise ConfigError("strategy_params", f"{k}: value must be a JSON scalar, got {type(v).__name__}")
    json.dumps(pairs)
    return pairs
