"""Errors of the supernet package (subclasses of the project's :class:`~search.errors.TmpqError`)."""

from __future__ import annotations

from search.errors import TmpqError


class CalibrationError(TmpqError):
    """A supernet was used for something it is not calibrated for, or calibration inputs are inconsistent."""
