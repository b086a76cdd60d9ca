"""Calibration: settings, FP trajectory data, the session a strategy works in, and the strategies."""

from supernet.calibration.data import (
    CalibrationData,
    calibration_grid,
    collect_calibration_data,
    collect_inputs,
)
from supernet.calibration.session import CalibrationSession, FitFn
from supernet.calibration.settings import CALIBRATION_SETTINGS_VERSION, CalibrationSettings
from supernet.calibration.strategy import (
    CalibrationStrategy,
    RangeCalibrator,
    available_strategies,
    make_strategy,
    register_strategy,
)
from supernet.calibration.tcaq import TCAQCalibrator

__all__ = [
    "CALIBRATION_SETTINGS_VERSION",
    "CalibrationData",
    "CalibrationSession",
    "CalibrationSettings",
    "CalibrationStrategy",
    "FitFn",
    "RangeCalibrator",
    "TCAQCalibrator",
    "available_strategies",
    "calibration_grid",
    "collect_calibration_data",
    "collect_inputs",
    "make_strategy",
    "register_strategy",
]
