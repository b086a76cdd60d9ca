"""Calibration settings: a frozen, versioned, validated dataclass whose canonical dict keys the supernet cache."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import ConfigError, VersionMismatchError
from search.fields import shown
from supernet.settings import QUANT_KINDS, RANGE_METHODS, canonical_key

CALIBRATION_SETTINGS_VERSION = 1
GRID_SPACINGS = ("linear", "quadratic")
#: How DAQ picks log2 or uniform for a post-softmax operand: TCAQ-DM's power-law test, the test guarded by the
#: quantization error, or the lower error alone.
DAQ_RULES = ("power_law", "guarded", "error")
#: ``daq_rule: guarded`` overrules the test where its kind's quantization MSE is more than this many times the other's.
DAQ_GUARD_RATIO = 100.0
#: Weights this wide or wider (and narrower than ``recon_wide_below``) reconstruct for ``recon_iters_wide`` steps.
WIDE_BITS = 6

#: The fields that decide the calibration *data* (the FP trajectories); the rest decide how it is used.
DATA_FIELDS = ("grid_steps", "grid_spacing", "samples", "seed")

#: On/off switches of the ``"tcaq"`` strategy (TCAQ-DM's three, then the extra seed-method ideas).
SWITCHES = ("reconstruction", "tcr", "daq", "par", "tib", "dilation", "temporal_cache", "grad_align")
#: Fields added after supernets were cached and shipped (``models/*/tmpq-supernets``), with the value they had in
#: effect before: :meth:`CalibrationSettings.cache_dict` leaves them out while they hold it, so the cache keys of
#: existing artifacts stay valid; any other value is part of the key as usual. A field whose default is not its old
#: value (``recon_wide_below``) is a default that changed the key on purpose; artifacts written before it existed
#: are read with the old value (:meth:`CalibrationSettings.from_stored`).
KEY_STABLE_DEFAULTS: dict[str, Any] = {
    "restarts": 1,
    "temporal_cache": False,
    "tcr_alpha": 1.0,
    "grad_align": False,
    "grad_align_lr": 0.2,
    "grad_align_holdout": 0.05,
    "grad_align_groups": 5,
    "grad_align_every": 20,
    "report_ranking": True,
    "workers": 0,
    "recon_wide_below": 9,
    "daq_rule": "power_law",
    "recon_round_below": 9,
    "par_rounding": True,
}
#: Fields that say how a calibration runs, not what it computes: never part of the cache key (:meth:`key`).
EXECUTION_FIELDS = ("workers",)
#: Strategies every installation has; :func:`declare_strategy` adds a plug-in's name (``register_strategy`` calls it).
BUILTIN_STRATEGIES = ("tcaq", "range")
_KNOWN_STRATEGIES: set[str] = set(BUILTIN_STRATEGIES)

#: Inclusive bounds of the integer fields: a job cannot ask for unbounded work (the README lists them).
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "grid_steps": (1, 1000),
    "samples": (1, 4096),
    "seed": (0, 2**63 - 1),
    "mse_grid": (1, 1000),
    "act_max_elems": (1, 2**24),
    "weight_minmax_below": (0, 9),
    "recon_wide_below": (0, 9),
    "recon_round_below": (0, 9),
    "par_rounds": (1, 10),
    "recon_iters": (0, 100_000),
    "recon_batch": (1, 4096),
    "recon_samples": (1, 4096),
    "daq_groups": (1, 1000),
    "restarts": (1, 10),
    "workers": (0, 64),
    "grad_align_groups": (2, 100),
    "grad_align_every": (1, 100_000),
}
#: Inclusive bounds of the float fields that have them besides their own rules below.
FLOAT_BOUNDS: dict[str, tuple[float, float]] = {
    "recon_epochs": (0.0, 1000.0),
    "recon_lr_round": (0.0, 10.0),
    "recon_lr_act": (0.0, 10.0),
    "recon_round_weight": (0.0, 1e6),
    "tcr_max": (1.0, 1e6),
    "grad_align_lr": (0.0, 10.0),
    "grad_align_holdout": (0.01, 0.5),
}
#: Limits of ``strategy_params``: how many, and how long a name or string value may be.
MAX_STRATEGY_PARAMS = 32
MAX_PARAM_CHARS = 256


def declare_strategy(name: str) -> None:
    """Make ``name`` a valid ``strategy`` (a plug-in strategy's registration calls this)."""
    _KNOWN_STRATEGIES.add(name)


def known_strategies() -> tuple[str, ...]:
    """The strategy names settings accept, sorted."""
    return tuple(sorted(_KNOWN_STRATEGIES))


FLOAT_FIELDS = (
    "par_decay",
    "recon_epochs",
    "recon_lr_round",
    "recon_lr_act",
    "recon_round_weight",
    "recon_warmup",
    "tcr_max",
    "tcr_alpha",
    "grad_align_lr",
    "grad_align_holdout",
)


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
        weight_minmax_below: weights narrower than this many bits take min-max ranges whatever ``weight_method``
            says. The defaults (``"mse"`` from 6 bits, min-max below) come from the testbed's ablation (full
            ``tcaq``, 10 DDIM steps, 1,024 samples, calibration seeds 0 and 1, side by side): MSE ranges, the
            initial step size BRECQ and Q-Diffusion give AdaRound, took uniform W6A6 from FDD 43.4 / 48.0 to
            37.1 / 41.3 (PSNR +1.7 / +2.0 dB), but at 4 bits they broke seed 0 (W4A4 67.8 → 233, W4A8 62.9 → 286;
            with ``conv_in``/``conv_out`` kept at 8 bits the same calibration gave 44.2 / 36.8, so the damage sits
            mostly in those two layers).
        mse_grid / mse_min_ratio / mse_norm: the clipping-ratio search (``mse_grid`` ratios in
            ``[mse_min_ratio, 1]``, error ``mean |x - x̂|^mse_norm``).
        act_max_elems: activation MSE searches use at most this many (strided) elements per tensor.
        pv_quantizer: default quantizer of the post-softmax input of ``.pv`` sites, ``"uniform"`` or ``"log2"``;
            a strategy may choose per (site, bits) instead.
        strategy_params: extra JSON-scalar parameters of the strategy, as sorted ``(name, value)`` pairs
            (a mapping is accepted).
        reconstruction / tcr / daq / par: the TCAQ-DM switches of the ``"tcaq"`` strategy (BRECQ-style block
            reconstruction, timestep-channel joint reparameterization, the dynamically adaptive post-softmax
            quantizer, progressively aligned reconstruction); ignored by other strategies.
        tib / dilation: extra switches of ``"tcaq"``, off by default: TFMQ-DM's temporal information block
            reconstructed jointly, and DilateQuant's weight dilation.
        temporal_cache: extra switch of ``"tcaq"``, off by default: TFMQ-DM's (journal version) cache of quantized
            temporal features. The output of every ResBlock's time-embedding projection (``*.time_emb_proj``)
            depends on the timestep only, so it is computed in FP for every training timestep, quantized per
            timestep and looked up at run time; per (projection, activation width) the cache replaces the
            computed path only where its error against the FP features on the grid is lower
            (:mod:`supernet.calibration.temporal`). Left out of :meth:`to_dict` while off (see
            :data:`KEY_STABLE_DEFAULTS`).
        par_rounds: calibration rounds when ``par`` is on (round 1 on the FP trajectories; each later round on
            the quantized model's own trajectories).
        par_rounding: whether later PAR rounds learn the weights' rounding again (AdaRound warm-started from the
            previous round's decisions, the behaviour before the field existed). Off (the default): they keep the
            rounding round 1 hardened and learn the activation step sizes alone, which needs no weight gradients.
            On the testbed the second round's AdaRound moved no block's error by more than 2 % while taking a third
            of a W4 calibration's steps (``docs/calibration-profile.md``).
        recon_iters: optimiser steps per block in round 1 at 4 bits (and below); round r uses
            ``recon_iters * par_decay**(r-1)``. Never more than ``recon_epochs`` passes over a block's calibration
            pool (small data stays cheap).
        recon_iters_wide: ``recon_iters`` for weights of :data:`WIDE_BITS` bits or more (``None``: ``recon_iters``
            at every width, the default before the field existed; part of every cache key, so supernets calibrated
            before it are not taken for the new default's). Measured on the testbed (``bench/calibration.py``):
            W6A6 is as good or better after 50 steps as after 200, W4A4 is not, and W8A8 after 12 steps fell below
            the plain range fit.
        recon_wide_below: weights of this many bits or more take ``recon_iters`` again (the wide count applies from
            :data:`WIDE_BITS` up to this, exclusive). 8 (the default): W8 reconstructs in full, since W8A8 after
            50 steps of AdaRound lost 1-4 dB of PSNR against 200 and once fell below the plain range fit; 9 applies
            the wide count to W8 as well (the behaviour before the field existed, left out of :meth:`to_dict`).
        recon_round_below: weights narrower than this many bits learn their rounding (AdaRound) while
            reconstructing; from this width up they keep their range fit's nearest rounding and reconstruction learns
            the activation step sizes alone (no AdaRound variables, no weight gradients: cheaper steps). 9 (the
            default): AdaRound at every width. ``recon_round_below: 8, recon_wide_below: 9`` calibrates W8 in a third
            of the time; measured on the testbed it kept W8A8's FDD but lost 0.45 dB of PSNR on 1,024 samples and
            2.4 dB in the shipped supernet's report (``docs/calibration-profile.md``), so it is not the default.
        recon_batch: samples per step; recon_epochs: see ``recon_iters``.
        recon_samples: calibration samples per grid timestep (the first ones) that reconstruction, TCR's and
            DAQ's statistics use (the initial range fit uses all of them).
        recon_lr_round / recon_lr_act: Adam learning rates of the AdaRound variables and of the log step sizes.
        recon_round_weight: weight of AdaRound's rounding regulariser (its mean over the block's weights, added to the
            relative output MSE); recon_warmup: fraction of steps without it.
        tcr_max: upper clamp of TCR's factors (lower clamp 1).
        tcr_alpha: migration strength of TCR: the reported factors are raised to this power before the clamp
            (1: the reported form, activations fully equalised; 0.5: the difficulty split evenly between
            activations and weights, as SmoothQuant's default; 0: no TCR).
        daq_groups: timestep groups (contiguous chunks of the grid) DAQ's power-law test decides for separately.
        daq_rule: how DAQ picks the quantizer of a post-softmax operand: ``"power_law"``, TCAQ-DM's
            likelihood-ratio test per timestep group (the behaviour before the field existed); ``"guarded"`` (the
            default), the test's choice unless, at that grid timestep and width, its quantization MSE on the observed
            probabilities is more than :data:`DAQ_GUARD_RATIO` times the other kind's; ``"error"``, the kind with the
            lower MSE alone. The test runs and is reported either way. Measured (``docs/calibration.md``): the test's
            log2 erred 436-1,636 times more than uniform at W8A8 on the DiT testbed and failed the range check; the
            lower MSE alone lost 50-90 FDD at W4A4 on the UNet testbed, where MSE on the probabilities misses the
            mass that uniform's coarse grid zeroes.
        restarts: calibrate every bit option this many times, restart r with seed ``seed + r · 104729`` on the same
            trajectories, and keep the one whose uniform candidate's image MSE against FP (the report's schedule, 64
            samples of noise neither the trajectories nor the report use) is lowest; costs about ``restarts`` times
            the per-bit calibration. 1 (the default) calibrates once. Needs a model that samples.
        grad_align: extra switch of ``"tcaq"``, off by default: gradient-aligned calibration (Hoang et al., ICLR
            2026; :mod:`supernet.calibration.gradalign`): the reconstruction loss weights every calibration sample
            by a softmax over learned scores, updated every ``grad_align_every`` steps so that the held-out
            gradients of the ``grad_align_groups`` timestep groups align; ``grad_align_holdout`` of each grid
            timestep's samples are held out for that; ``grad_align_lr`` is the largest change of a score per update.
            These fields are left out of :meth:`to_dict` at their defaults (see :data:`KEY_STABLE_DEFAULTS`).
        report_ranking: whether the calibration report ranks the sites (or blocks) by error: one denoiser pass per
            site and bit option at a few grid timesteps (about half of the report's time on the testbed). Off, the
            report keeps the uniform candidates' image quality and the range check.
        workers: processes that calibrate bit options side by side (:mod:`supernet.calibration.processes`), each
            with an equal share of the torch threads; 0 (the default) decides: one per bit option up to the
            threads available, on the CPU, for a model loaded from a directory, when the calibration is estimated
            to take at least a minute and to finish sooner so; otherwise, and with 1, every bit option is
            calibrated in this process. How a calibration runs, not what it computes: never part of the cache key
            (:data:`EXECUTION_FIELDS`).
        version: format version of these settings.
    """

    strategy: str = "tcaq"
    grid_steps: int = 20
    grid_spacing: str = "linear"
    samples: int = 64
    seed: int = 0
    weight_method: str = "mse"
    weight_minmax_below: int = 6
    act_method: str = "mse"
    mse_grid: int = 40
    mse_min_ratio: float = 0.3
    mse_norm: float = 2.0
    act_max_elems: int = 16384
    pv_quantizer: str = "uniform"
    strategy_params: tuple[tuple[str, Any], ...] = ()
    reconstruction: bool = True
    tcr: bool = True
    daq: bool = True
    par: bool = True
    tib: bool = False
    dilation: bool = False
    temporal_cache: bool = False
    par_rounds: int = 2
    par_decay: float = 0.25
    par_rounding: bool = False
    recon_iters: int = 200
    recon_iters_wide: int | None = 50
    recon_wide_below: int = 8
    recon_round_below: int = 9
    recon_batch: int = 32
    recon_samples: int = 32
    recon_epochs: float = 10.0
    recon_lr_round: float = 1e-2
    recon_lr_act: float = 4e-3
    recon_round_weight: float = 10.0
    recon_warmup: float = 0.2
    tcr_max: float = 100.0
    tcr_alpha: float = 1.0
    daq_groups: int = 4
    daq_rule: str = "guarded"
    restarts: int = 1
    grad_align: bool = False
    grad_align_lr: float = 0.2
    grad_align_holdout: float = 0.05
    grad_align_groups: int = 5
    grad_align_every: int = 20
    report_ranking: bool = True
    workers: int = 0
    version: int = CALIBRATION_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != CALIBRATION_SETTINGS_VERSION:
            raise VersionMismatchError(
                f"calibration settings version {self.version} is not supported "
                f"(expected {CALIBRATION_SETTINGS_VERSION})"
            )
        _check(
            isinstance(self.strategy, str) and self.strategy in _KNOWN_STRATEGIES,
            "strategy",
            f"unknown calibration strategy {shown(self.strategy)} (available: {', '.join(known_strategies())})",
        )
        for name in (*SWITCHES, "report_ranking", "par_rounding"):
            _check(isinstance(getattr(self, name), bool), name, "must be a boolean")
        for name, (low, high) in INT_BOUNDS.items():
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
                name,
                f"must be an integer in [{low}, {high}], got {shown(value)}",
            )
        wide = self.recon_iters_wide
        low, high = INT_BOUNDS["recon_iters"]
        _check(
            wide is None or (isinstance(wide, int) and not isinstance(wide, bool) and low <= wide <= high),
            "recon_iters_wide",
            f"must be null or an integer in [{low}, {high}], got {shown(wide)}",
        )
        for name, (low, high) in FLOAT_BOUNDS.items():
            value = getattr(self, name)
            _check(_finite(value) and low <= value <= high, name, f"must be a number in [{low:g}, {high:g}]")
        _check(self.grid_spacing in GRID_SPACINGS, "grid_spacing", f"must be one of {GRID_SPACINGS}")
        _check(self.weight_method in RANGE_METHODS, "weight_method", f"must be one of {RANGE_METHODS}")
        _check(self.act_method in RANGE_METHODS, "act_method", f"must be one of {RANGE_METHODS}")
        _check(self.pv_quantizer in QUANT_KINDS, "pv_quantizer", f"must be one of {QUANT_KINDS}")
        _check(self.daq_rule in DAQ_RULES, "daq_rule", f"must be one of {DAQ_RULES}")
        _check(_finite(self.mse_min_ratio) and 0.0 < self.mse_min_ratio <= 1.0, "mse_min_ratio", "must be in (0, 1]")
        _check(_finite(self.mse_norm) and self.mse_norm > 0, "mse_norm", "must be > 0")
        _check(_finite(self.par_decay) and 0.0 < self.par_decay <= 1.0, "par_decay", "must be in (0, 1]")
        _check(_finite(self.recon_warmup) and 0.0 <= self.recon_warmup < 1.0, "recon_warmup", "must be in [0, 1)")
        _check(_finite(self.tcr_alpha) and 0.0 <= self.tcr_alpha <= 1.0, "tcr_alpha", "must be in [0, 1]")
        for name in ("mse_min_ratio", "mse_norm", *FLOAT_FIELDS):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "strategy_params", _normalise_params(self.strategy_params))

    def param(self, name: str, default: Any = None) -> Any:
        """A strategy parameter by name."""
        return dict(self.strategy_params).get(name, default)

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-ready form that :meth:`from_dict` reads back; fields of :data:`KEY_STABLE_DEFAULTS` at
        their old value, where that is also their default, are left out (:meth:`from_dict` restores them)."""
        d = asdict(self)
        for name, old in KEY_STABLE_DEFAULTS.items():
            if d[name] == old == _DEFAULTS[name]:
                del d[name]
        d["strategy_params"] = {k: v for k, v in self.strategy_params}
        return d

    def data_dict(self) -> dict[str, Any]:
        """The part of :meth:`to_dict` that decides the calibration data."""
        return {"version": self.version, **{k: getattr(self, k) for k in DATA_FIELDS}}

    def cache_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the :data:`EXECUTION_FIELDS` and without the fields of
        :data:`KEY_STABLE_DEFAULTS` at their old value: what decides the calibrated supernet."""
        d = self.to_dict()
        for name, old in KEY_STABLE_DEFAULTS.items():
            if d.get(name, old) == old:
                d.pop(name, None)
        for name in EXECUTION_FIELDS:
            d.pop(name, None)
        return d

    def key(self) -> str:
        """Short stable digest of :meth:`cache_dict`."""
        return canonical_key(self.cache_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationSettings:
        """Inverse of :meth:`to_dict`; refuses another version or unknown fields (a ConfigError naming the first)."""
        for key in data:
            if key not in cls.__dataclass_fields__:
                raise ConfigError(
                    str(key)[:64], f"unknown field (see {cls.__name__}: strategy, samples, recon_iters, ...)"
                )
        version = data.get("version", CALIBRATION_SETTINGS_VERSION)
        if version != CALIBRATION_SETTINGS_VERSION:
            raise ConfigError("version", f"{shown(version)} is not supported (expected {CALIBRATION_SETTINGS_VERSION})")
        return cls(**dict(data))

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> CalibrationSettings:
        """:meth:`from_dict` for the settings an artifact was written with: a field of :data:`KEY_STABLE_DEFAULTS`
        it does not name was not there yet, so it takes the value in effect then, not today's default."""
        return cls.from_dict({**KEY_STABLE_DEFAULTS, **data})


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
    if len(pairs) > MAX_STRATEGY_PARAMS:
        raise ConfigError("strategy_params", f"at most {MAX_STRATEGY_PARAMS} parameters, got {len(pairs)}")
    for k, v in pairs:
        if len(k) > MAX_PARAM_CHARS or (isinstance(v, str) and len(v) > MAX_PARAM_CHARS):
            raise ConfigError(
                f"strategy_params.{k[:64]}", f"names and string values are at most {MAX_PARAM_CHARS} chars"
            )
    if len({k for k, _ in pairs}) != len(pairs):
        raise ConfigError("strategy_params", "a parameter is named twice")
    for k, v in pairs:
        if not (v is None or isinstance(v, str | bool | int) or _finite(v)):
            raise ConfigError("strategy_params", f"{k}: value must be a JSON scalar, got {type(v).__name__}")
    json.dumps(pairs)
    return pairs


#: Every field's default (what a dict that does not name the field means to :meth:`CalibrationSettings.from_dict`).
_DEFAULTS: dict[str, Any] = asdict(CalibrationSettings())
