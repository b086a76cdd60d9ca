"""Calibration strategies: a small base class (public bookkeeping, one ``_calibrate`` hook) and a registry.

``"range"`` (below) is the plain baseline; ``"tcaq"`` (:mod:`supernet.calibration.tcaq`: TCR, DAQ, PAR over block
reconstruction) is the default. The supernet calls every strategy the same way: ``prepare`` once on the FP model,
then ``calibrate`` once per bit option with a fresh session, then ``report`` for its metadata.
"""

from __future__ import annotations

import abc
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

from search.errors import ConfigError
from supernet.calibration.data import CalibrationData
from supernet.calibration.session import CalibrationSession
from supernet.calibration.settings import CalibrationSettings, declare_strategy

if TYPE_CHECKING:
    from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)


class CalibrationStrategy(abc.ABC):
    """Fits the quantizers of one configuration.

    Subclasses set ``name`` (the value of ``CalibrationSettings.strategy`` that selects them) and implement
    :meth:`_calibrate`; they read their own parameters from ``settings.strategy_params``.
    """

    name: ClassVar[str] = ""

    def __init__(self, settings: CalibrationSettings) -> None:
        self.settings = settings

    def prepare(self, supernet: QuantSupernet, data: CalibrationData) -> None:
        """Called once before any bit option, with every site in FP (e.g. to reparameterize weights).

        The default does nothing.
        """
        return None

    def calibrate(self, session: CalibrationSession) -> None:
        """Fit ``session``'s configuration and commit it.

        The configuration is planned as one unit of work; a strategy with more (blocks, rounds) declares them with
        ``session.plan`` and reports its phase boundaries with ``session.report``.
        """
        start = time.perf_counter()
        session.plan(1)
        self._calibrate(session)
        session.commit()
        log.info("%s calibration of %d sites in %.2f s", self.name, len(session.sites), time.perf_counter() - start)

    def report(self) -> dict[str, Any]:
        """JSON-ready description of what the strategy decided (recorded in the supernet's metadata).

        The default reports nothing.
        """
        return {}

    @abc.abstractmethod
    def _calibrate(self, session: CalibrationSession) -> None:
        """Set every weight (``session.set_weight``/``fit_weights``) and every operand's parameters at every grid
        timestep (``session.set_act_params``/``fit_activations``) of the session's configuration."""


_STRATEGIES: dict[str, type[CalibrationStrategy]] = {}


def register_strategy(cls: type[CalibrationStrategy]) -> type[CalibrationStrategy]:
    """Class decorator: make ``cls`` selectable by ``CalibrationSettings(strategy=cls.name)`` (the name is also
    declared to the torch-free settings, which validate it)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _STRATEGIES[cls.name] = cls
    declare_strategy(cls.name)
    return cls


def _load_builtins() -> None:
    import supernet.calibration.tcaq  # noqa: F401  (registers "tcaq")


def available_strategies() -> tuple[str, ...]:
    """Names of the registered strategies."""
    _load_builtins()
    return tuple(sorted(_STRATEGIES))


def make_strategy(settings: CalibrationSettings) -> CalibrationStrategy:
    """The strategy ``settings`` names, constructed with ``settings``."""
    _load_builtins()
    cls = _STRATEGIES.get(settings.strategy)
    if cls is None:
        raise ConfigError(
            "strategy",
            f"unknown calibration strategy {settings.strategy!r} (available: {', '.join(available_strategies())})",
        )
    return cls(settings)


@register_strategy
class RangeCalibrator(CalibrationStrategy):
    """Plain post-training ranges: weights per output channel, then one observing pass per grid timestep in
    which every activation operand fits its range (min-max or MSE) with the upstream layers already quantized.
    """

    name = "range"

    def _calibrate(self, session: CalibrationSession) -> None:
        session.report("ranges", 0, 1)
        session.fit_weights()
        session.fit_activations()
        session.report("ranges", 1, 1)
