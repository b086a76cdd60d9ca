"""Calibration: settings, FP trajectory data, the session a strategy works in, and the strategies.

The names below are imported lazily (PEP 562), so ``supernet.calibration.settings`` — what the server and the job
spec need — stays importable without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CALIBRATION_SETTINGS_VERSION": "supernet.calibration.settings",
    "CalibrationSettings": "supernet.calibration.settings",
    "CalibrationData": "supernet.calibration.data",
    "calibration_grid": "supernet.calibration.data",
    "collect_calibration_data": "supernet.calibration.data",
    "collect_inputs": "supernet.calibration.data",
    "CalibrationSession": "supernet.calibration.session",
    "FitFn": "supernet.calibration.session",
    "CalibrationStrategy": "supernet.calibration.strategy",
    "RangeCalibrator": "supernet.calibration.strategy",
    "available_strategies": "supernet.calibration.strategy",
    "make_strategy": "supernet.calibration.strategy",
    "register_strategy": "supernet.calibration.strategy",
    "TCAQCalibrator": "supernet.calibration.tcaq",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
