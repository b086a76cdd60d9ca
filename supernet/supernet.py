"""The weight-shared precision supernet: calibrate once per bit option, assemble any per-site mix in O(sites).

``QuantSupernet.build`` wraps the model's conv/linear layers and attention matmuls in place (sharing the FP
parameters). ``calibrate`` sets the whole network to each bit option b in turn (WbAb) and lets the calibration
strategy fit every site's quantizers with the rest of the net at b; the weight codes of every (site, b) and the
per-timestep activation parameters are stored. ``assemble(candidate)`` then swaps activation tables and
materialises each changed site's weight from its codes (one float copy per site; ``memory()`` accounts the bytes).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from search.candidate import FP_BITS, Candidate
from search.cost import Cost, CostModel
from search.errors import ConfigError, InvalidCandidate
from supernet.calibration.data import CalibrationData
from supernet.calibration.estimate import CalibrationEstimate
from supernet.calibration.processes import (
    OptionsOutcome,
    ParametersDiffer,
    merge_reports,
    parameters_digest,
    plan_workers,
    run_workers,
)
from supernet.calibration.reparam import Reparameterization, apply_reparameterization
from supernet.calibration.report import REPORT_STEPS, report_unavailable, uniform_quality
from supernet.calibration.session import CalibrationSession
from supernet.calibration.settings import CalibrationSettings
from supernet.calibration.strategy import CalibrationStrategy, make_strategy
from supernet.cost import trace_costs
from supernet.errors import CalibrationError
from supernet.models.base import DiffusionAdapter, as_adapter
from supernet.progress import ProgressCallback, ProgressTracker
from supernet.qlayers.attention import QuantAttnProcessor
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.registry import Installation, Site, install_sites
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.protocol import QUANT_BITS
from supernet.settings import SupernetSettings

log = logging.getLogger(__name__)

#: Restart r of a bit option (``calibration.restarts``) calibrates with seed ``seed + r * RESTART_SEED_STRIDE``.
RESTART_SEED_STRIDE = 104_729
#: Restarts are judged on noise of seed ``seed + RESTART_NOISE_OFFSET``: not the report's held-out noise (whose
#: figures would otherwise be the maximum of several draws), not the trajectories'.
RESTART_NOISE_OFFSET = 15_485
#: Held-out samples restarts are judged on, at the report's schedule (``REPORT_STEPS`` uniform DDIM steps).
RESTART_SAMPLES = 64


def kept_restarts_report(report: dict[str, Any], kept: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """A strategy's report with each restarted configuration's entries (``report[key]["W4A4"]``: reconstruction,
    gradient-aligned weights, ...) taken from the restart that was kept (``kept[bits]``: the strategy's report
    right after it) instead of the last one calibrated."""
    out = dict(report)
    for bits, snapshot in kept.items():
        label = f"W{bits}A{bits}"
        for key, value in snapshot.items():
            if isinstance(value, Mapping) and label in value and isinstance(out.get(key), Mapping):
                out[key] = {**out[key], label: value[label]}
    return out


def restart_seed(seed: int, restart: int) -> int:
    """The calibration seed of restart ``restart`` (0: ``seed`` itself)."""
    return (seed + restart * RESTART_SEED_STRIDE) % 2**63


#: Version of the saved artifact layout (``supernet.artifact``).

BitState = tuple[tuple[str, int, int], ...]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class SupernetMemory:
    """Bytes a supernet holds, by kind (accounted from the tensors, not measured from the process).

    Attributes:
        fp: the wrapped model's own parameters and buffers (the FP model; not the supernet's cost).
        codes: integer weight codes and their per-channel parameters, every (site, bit option).
        materialised: float weights of the assembled widths (one per quantized site at most).
        tables: cached temporal features (``temporal_cache``).
        reparam_saved: copies of the parameters a reparameterization (TCR, dilation) changed, kept to restore the
            model exactly on :meth:`QuantSupernet.detach`.
    """

    fp: int
    codes: int
    materialised: int
    tables: int
    reparam_saved: int

    @property
    def added(self) -> int:
        """What the supernet adds to the FP model."""
        return self.codes + self.materialised + self.tables + self.reparam_saved

    def to_dict(self) -> dict[str, int | float]:
        """JSON-ready, with ``added`` and its ratio to the FP bytes."""
        return {**asdict(self), "added": self.added, "added_over_fp": round(self.added / max(1, self.fp), 3)}


def _already_wrapped(unet: nn.Module) -> bool:
    return any(
        isinstance(m, QuantWeightLayer) or isinstance(getattr(m, "processor", None), QuantAttnProcessor)
        for m in unet.modules()
    )


class QuantSupernet:
    """A model whose every quantizable site can run at any of ``bit_options`` (or FP) independently.

    Build with :meth:`build` (or :func:`supernet.artifact.get_or_build_supernet`); do not call directly.
    """

    def __init__(
        self,
        model: DiffusionAdapter,
        bit_options: tuple[int, ...],
        settings: SupernetSettings,
        calib_settings: CalibrationSettings,
        model_hash: str,
        ctx: TimestepContext,
        installation: Installation,
        hooks: list[RemovableHandle],
        restorable: bool = True,
    ) -> None:
        #: The model adapter whose denoiser this supernet wraps (sample through ``model.sampler()``).
        self.model = model
        self.bit_options = bit_options
        self.settings = settings
        self.calib_settings = calib_settings
        self.model_hash = model_hash
        self.sample_shape: tuple[int, ...] = model.sample_shape
        self._ctx = ctx
        self._install = installation
        self._sites: dict[str, Site] = installation.sites
        self._names: tuple[str, ...] = tuple(self._sites)
        self._allowed = frozenset(bit_options) | frozenset(FP_BITS)
        self._hooks = hooks
        self.site_blocks: dict[str, str] = {s: model.block_of(s) for s in self._names}
        self.skipped: dict[str, str] = dict(installation.skipped)
        self.cost_model: CostModel = trace_costs(model, self._sites)
        self.calibrated = False
        self.calibration_source: dict[str, Any] = {}
        #: What the calibration strategy decided (JSON-ready; saved with the artifact): e.g. TCR's folded and
        #: explicit layers, DAQ's choice and likelihood ratio per post-softmax site and timestep group.
        self.calibration_metadata: dict[str, Any] = {}
        #: Seconds the last :meth:`calibrate` spent per bit option (``prepare`` excluded).
        self.calibration_seconds: dict[int, float] = {}
        #: The per-input-channel reparameterization of the FP weights (TCR, dilation), if any.
        self.reparam: Reparameterization | None = None
        #: Whether :meth:`detach` can restore the model exactly (False: a reparameterization keeps no copies).
        self.restorable = restorable

    # --- construction -----------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model: Any,
        bit_options: Iterable[int],
        settings: SupernetSettings | None = None,
        calib_settings: CalibrationSettings | None = None,
        *,
        model_hash: str | None = None,
        sample_shape: Sequence[int] | None = None,
        restorable: bool = True,
    ) -> QuantSupernet:
        """Wrap ``model``'s denoiser in place.

        Args:
            model: a :class:`~supernet.models.base.DiffusionAdapter` (a loaded model contributes its file hash), or
                a bare denoiser module (wrapped by :func:`~supernet.models.base.as_adapter`, identified by its
                state-dict hash).
            bit_options: the calibrated bit-widths (each in 2..8); 16/32 (FP) are always accepted too.
            settings: structure and quantizer format.
            calib_settings: how :meth:`calibrate` fits quantizers.
            model_hash: override the model identity recorded in artifacts.
            sample_shape: ``(C, H, W)`` of one input, for a bare module without a diffusers config; checked
                against the adapter's otherwise.
            restorable: keep copies of the parameters a reparameterization changes, so that :meth:`detach` restores
                the model exactly (False saves up to the FP weights' size, for a process that owns its model: an
                evaluation worker; :meth:`detach` and a second :meth:`calibrate` then refuse).
        """
        adapter = as_adapter(model, sample_shape)
        if sample_shape is not None and tuple(int(s) for s in sample_shape) != tuple(adapter.sample_shape):
            raise CalibrationError(
                f"sample shape {tuple(sample_shape)} does not match the model's {tuple(adapter.sample_shape)}"
            )
        denoiser = adapter.denoiser
        if _already_wrapped(denoiser):
            raise CalibrationError("this model is already wrapped by a supernet (detach() it first)")
        options = tuple(sorted({int(b) for b in bit_options}))
        if not options or not set(options) <= set(QUANT_BITS):
            raise ConfigError(
                "bit_options",
                f"must be a non-empty set of widths in 2..8, got {list(options)} "
                "(16/32 mean FP and are always accepted)",
            )
        settings = settings or SupernetSettings()
        identity = model_hash or adapter.identity()
        ctx = TimestepContext()
        installation = install_sites(denoiser, ctx, attention=settings.attention_matmuls, exclude=settings.exclude)
        hooks = ctx.install(denoiser)
        try:
            if not installation.sites:
                raise CalibrationError("the model has no quantizable layer")
            return cls(
                adapter,
                options,
                settings,
                calib_settings or CalibrationSettings(),
                identity,
                ctx,
                installation,
                hooks,
                restorable,
            )
        except BaseException:
            for h in hooks:
                h.remove()
            installation.uninstall()
            raise

    def detach(self) -> None:
        """Restore the model's original modules, weights and processors and remove the hooks (the supernet is
        unusable afterwards)."""
        self._drop_reparameterization()
        for h in self._hooks:
            h.remove()
        self._install.uninstall()
        self._sites, self._names = {}, ()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> QuantSupernet:
        """Move the wrapped model (and the weight codes, cached features, materialised weights) to ``device`` and/or
        cast its floating-point parameters to ``dtype``, keeping the calibration: the codes and the quantizer
        parameters do not change, so a supernet calibrated in float32 on the CPU evaluates on CUDA in bfloat16.
        Returns ``self``."""
        self.model.to(device, dtype)
        for site in self._sites.values():
            if isinstance(site, QuantWeightLayer):
                site.follow(device)
        return self

    # --- introspection --------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> nn.Module:
        """The wrapped module tree (``model.denoiser``)."""
        return self.model.denoiser

    @property
    def sites(self) -> tuple[str, ...]:
        """Site names, sorted (the order of ``Candidate.sites``)."""
        return self._names

    @property
    def grid(self) -> tuple[int, ...]:
        """The calibrated timesteps (empty before calibration)."""
        return self._ctx.grid

    def site(self, name: str) -> Site:
        """The site object called ``name``."""
        try:
            return self._sites[name]
        except KeyError:
            raise InvalidCandidate(f"unknown site {name!r}") from None

    def state(self) -> BitState:
        """``(site, w_bits, a_bits)`` of every site, as currently assembled."""
        return tuple((n, s.w_bits, s.a_bits) for n, s in self._sites.items())

    def uniform(self, w_bits: int, a_bits: int, timesteps: Sequence[int] = (0,)) -> Candidate:
        """The candidate with every site at ``w_bits``/``a_bits``."""
        return Candidate.uniform(timesteps, self._names, w_bits, a_bits)

    def random_candidate(self, rng: random.Random, timesteps: Sequence[int] = (0,)) -> Candidate:
        """Every gene drawn uniformly from ``bit_options``."""
        w = [(n, rng.choice(self.bit_options)) for n in self._names]
        a = [(n, rng.choice(self.bit_options)) for n in self._names]
        return Candidate(tuple(timesteps), tuple(w), tuple(a))

    # --- assembling -----------------------------------------------------------------------------------------
    def _check(self, candidate: Candidate) -> None:
        if candidate.sites != self._names:
            names = set(candidate.sites)
            unknown = sorted(names - set(self._names))
            if unknown:
                raise InvalidCandidate(f"unknown site {unknown[0]!r} ({len(unknown)} unknown in all)")
            missing = sorted(set(self._names) - names)
            raise InvalidCandidate(f"candidate does not set site {missing[0]!r} ({len(missing)} missing in all)")
        allowed = self._allowed
        for genes, what in ((candidate.weight_bits, "weight"), (candidate.act_bits, "activation")):
            for name, bits in genes:
                if bits not in allowed:
                    raise InvalidCandidate(
                        f"site {name!r}: {what} bit-width {bits} is not among the supernet's "
                        f"options {sorted(self.bit_options)} (or FP {FP_BITS})"
                    )

    def _apply(self, state: Iterable[tuple[str, int, int]]) -> None:
        before = self.state()
        try:
            sites = self._sites
            for name, w, a in state:
                sites[name].activate(w, a)
        except CalibrationError:
            for name, w, a in before:
                self._sites[name].activate(w, a)
            raise

    def assemble(self, candidate: Candidate) -> None:
        """Set every site's weight and activation width from ``candidate`` (O(sites); a site whose weight width
        changes dequantizes its codes).

        Raises :class:`InvalidCandidate` for an unknown or missing site or a width outside the options, and
        :class:`CalibrationError` if a width has not been calibrated; the previous state is kept on error.
        """
        self._check(candidate)
        self._apply((n, w, a) for (n, w), (_, a) in zip(candidate.weight_bits, candidate.act_bits, strict=True))

    @contextmanager
    def assembled(self, candidate: Candidate) -> Iterator[QuantSupernet]:
        """Assemble ``candidate`` for the duration of the block, then restore the previous state."""
        before = self.state()
        self.assemble(candidate)
        try:
            yield self
        finally:
            self._apply(before)

    def memory(self) -> SupernetMemory:
        """What this supernet holds now (see :class:`SupernetMemory`)."""
        layers = [s for s in self._sites.values() if isinstance(s, QuantWeightLayer)]
        denoiser = self.denoiser
        return SupernetMemory(
            fp=sum(_nbytes(t) for t in (*denoiser.parameters(), *denoiser.buffers())),
            codes=sum(slot.nbytes for layer in layers for slot in layer.slots.values()),
            materialised=sum(_nbytes(layer._w) for layer in layers if layer._w is not None),
            tables=sum(t.rows.nbytes + _nbytes(t.values) for layer in layers for t in layer.temporal.values()),
            reparam_saved=self.reparam.saved_bytes if self.reparam is not None else 0,
        )

    def site_units(self, granularity: str) -> dict[str, str] | None:
        """``{site: precision unit}`` of a search ``granularity``: ``None`` for ``site`` (each its own), the site's
        block for ``block``, its block and kind of layer (``transformer_blocks.3/attention``, see
        :meth:`~supernet.models.base.DiffusionAdapter.layer_kind`) for ``kind``."""
        if granularity == "site":
            return None
        if granularity == "block":
            return dict(self.site_blocks)
        if granularity == "kind":
            return {s: f"{b}/{self.model.layer_kind(s)}" for s, b in self.site_blocks.items()}
        raise ConfigError("granularity", f"unknown granularity {granularity!r}")

    def cost(self, candidate: Candidate) -> Cost:
        """BitOps (whole schedule) and weight bytes of ``candidate`` (analytic; see :class:`CostModel`).

        A time-embedding projection that reads cached temporal features (calibration switch ``temporal_cache``) does
        no work per step at run time (a table lookup), but is still counted here at its MACs · b_w · b_a: the cost
        model is keyed by site and genes only.
        """
        self._check(candidate)
        return self.cost_model.cost(candidate)

    # --- calibration ----------------------------------------------------------------------------------------
    def _check_data(self, data: CalibrationData) -> None:
        if tuple(data.inputs.shape[2:]) != tuple(self.sample_shape):
            raise CalibrationError(
                f"calibration inputs of shape {tuple(data.inputs.shape[2:])} do not match the "
                f"model's {self.sample_shape}"
            )

    def _fp_state(self) -> BitState:
        return tuple((n, 32, 32) for n in self._names)

    def _session(self, data: CalibrationData, w_bits: dict[str, int], a_bits: dict[str, int]) -> CalibrationSession:
        return CalibrationSession(
            self.model, self._sites, self._ctx, data, self.calib_settings, self.settings, w_bits, a_bits
        )

    def reparameterize(self, factors: Mapping[str, torch.Tensor]) -> Reparameterization:
        """Multiply the FP weights' input columns by per-channel ``factors`` (``{site: r}``) and divide the
        sites' inputs by them (folded into the preceding op where exact, else an explicit pre-scale), replacing
        any previous reparameterization. In FP the model computes the same function (to float rounding).
        Calibrations fitted before this call no longer match the weights."""
        self._drop_reparameterization()
        self.reparam = apply_reparameterization(self.denoiser, self._sites, factors, restorable=self.restorable)
        return self.reparam

    def _drop_reparameterization(self) -> None:
        if self.reparam is not None:
            self.reparam.undo()
            self.reparam = None

    def calibrate(
        self,
        data: CalibrationData,
        progress: ProgressCallback | ProgressTracker | None = None,
        estimate: CalibrationEstimate | None = None,
    ) -> None:
        """Fit every bit option: the whole network at WbAb, one strategy session per b. Replaces any previous
        calibration (and reparameterization); the supernet is left in FP. ``estimate``: the caller's
        :func:`~supernet.calibration.estimate.estimate_calibration` of these bit options and settings, whose worker
        plan (``calibration.workers``) is then taken instead of timing the model again.

        ``progress`` is called at every phase and block boundary (:mod:`supernet.progress`; a running tracker is
        used as is). An exception it raises propagates: the supernet is then left uncalibrated (``calibrated`` is
        false, every site in FP) and can be calibrated again.
        """
        self._check_data(data)
        if self.calib_settings.restarts > 1 and (reason := report_unavailable(self.model)) is not None:
            raise CalibrationError(f"calibration.restarts needs a model that samples (to judge them): {reason}")
        tracker = ProgressTracker.of(progress, self.bit_options)
        strategy = make_strategy(self.calib_settings)
        self._apply(self._fp_state())
        self.calibrated = False
        self._drop_reparameterization()
        for site in self._sites.values():
            if isinstance(site, QuantWeightLayer):
                site.slots.clear()
                site.temporal.clear()
            for q in site.act_quantizers():
                q.tables.clear()
        self._ctx.set_grid(data.timesteps)
        plan = plan_workers(self, data, estimate)
        digest = parameters_digest(self.denoiser) if plan is not None else ""
        start = time.perf_counter()
        tracker.report("prepare", 0, 1)
        strategy.prepare(self, data)
        tracker.report("prepare", 1, 1)
        prepare_s = time.perf_counter() - start
        outcome, fallback = None, ""
        if plan is not None:
            try:
                outcome, states = run_workers(self, data, plan, tracker, digest)
            except ParametersDiffer as exc:
                if not plan.automatic:
                    raise
                log.warning("calibrating in process: %s", exc)
                fallback = str(exc)
            else:
                for bits, state in states.items():
                    self._set_bit_state(bits, state)
        if outcome is None:
            outcome = self._calibrate_options(self.bit_options, strategy, data, tracker)
            if plan is not None:
                outcome.workers = {**plan.to_dict(), "fallback": fallback}
        self.calibration_source = dict(data.source)
        self.calibration_seconds = outcome.seconds
        phase_seconds = tracker.phase_seconds()
        if outcome.phase_seconds is not None:
            phase_seconds = {k: v for k, v in phase_seconds.items() if k == "-"} | outcome.phase_seconds
        self.calibration_metadata = {
            "strategy": self.calib_settings.strategy,
            **merge_reports(strategy.report(), outcome.report),
            "reparameterization": self.reparam.report() if self.reparam is not None else None,
            "seconds": {"prepare": round(prepare_s, 3), **{str(b): round(v, 3) for b, v in outcome.seconds.items()}},
            "phase_seconds": phase_seconds,
        }
        if outcome.workers is not None:
            self.calibration_metadata["workers"] = outcome.workers
        if outcome.restarts:
            self.calibration_metadata["restarts"] = {
                "count": self.calib_settings.restarts,
                "judged_on": {"steps": REPORT_STEPS, "samples": RESTART_SAMPLES, "noise_seed": self._restart_noise()},
                "bits": outcome.restarts,
            }
        self.calibrated = True
        tracker.done()

    def _calibrate_options(
        self, options: Sequence[int], strategy: CalibrationStrategy, data: CalibrationData, tracker: ProgressTracker
    ) -> OptionsOutcome:
        """Calibrate bit options ``options`` one after the other in this process (with ``calibration.restarts``,
        each several times, the best kept); the supernet is left in FP. Used by :meth:`calibrate` and by its worker
        processes (:mod:`supernet.calibration.processes`)."""
        outcome = OptionsOutcome()
        kept_reports: dict[int, dict[str, Any]] = {}
        base = strategy.settings
        try:
            for bits in options:
                uniform = dict.fromkeys(self._names, bits)
                start = time.perf_counter()
                tracker.begin_bits(tracker.bit_options.index(bits), bits)
                kept: tuple[float, int, dict[str, Any]] | None = None
                scores: list[float] = []
                for r in range(self.calib_settings.restarts):
                    strategy.settings = base if r == 0 else dataclasses.replace(base, seed=restart_seed(base.seed, r))
                    session = self._session(data, uniform, uniform)
                    session.progress = tracker
                    try:
                        strategy.calibrate(session)
                    finally:
                        self._apply(self._fp_state())
                    if self.calib_settings.restarts > 1:
                        scores.append(self._restart_score(bits))
                        if kept is None or scores[-1] < kept[0]:
                            kept = (scores[-1], r, self._bit_state(bits))
                            kept_reports[bits] = copy.deepcopy(strategy.report())
                if kept is not None:
                    self._set_bit_state(bits, kept[2])
                    outcome.restarts[str(bits)] = {"mse": [float(f"{v:.6g}") for v in scores], "kept": kept[1]}
                    log.info("W%dA%d: kept restart %d of %d (image MSE %s)", bits, bits, kept[1], len(scores), scores)
                tracker.end_bits()
                outcome.seconds[bits] = time.perf_counter() - start
                log.info(
                    "calibrated W%dA%d on %d timesteps x %d samples in %.1f s",
                    bits,
                    bits,
                    len(data.timesteps),
                    data.samples,
                    outcome.seconds[bits],
                )
        finally:
            strategy.settings = base
        outcome.report = kept_restarts_report(strategy.report(), kept_reports)
        return outcome

    def _restart_noise(self) -> int:
        return self.calib_settings.seed + RESTART_NOISE_OFFSET

    def _restart_score(self, bits: int) -> float:
        """Image MSE of uniform W``bits``A``bits`` against FP at :data:`RESTART_STEPS` uniform DDIM steps on
        :data:`RESTART_SAMPLES` samples of noise that neither the trajectories nor the report use."""
        return uniform_quality(self, (bits,), RESTART_SAMPLES, self._restart_noise())[bits]["mse"]

    def _bit_state(self, bits: int) -> dict[str, Any]:
        """A copy of what calibrating bit option ``bits`` set: per site its weight slot and temporal table (weighted
        sites) and each activation quantizer's table."""
        state: dict[str, Any] = {}
        for name, site in self._sites.items():
            weights = (
                (copy.deepcopy(site.slots.get(bits)), copy.deepcopy(site.temporal.get(bits)))
                if isinstance(site, QuantWeightLayer)
                else (None, None)
            )
            state[name] = (*weights, [copy.deepcopy(q.tables.get(bits)) for q in site.act_quantizers()])
        return state

    def _set_bit_state(self, bits: int, state: Mapping[str, Any]) -> None:
        """Put back a :meth:`_bit_state` copy."""
        for name, site in self._sites.items():
            slot, table, act_tables = state[name]
            if isinstance(site, QuantWeightLayer):
                for store, value in ((site.slots, slot), (site.temporal, table)):
                    if value is None:
                        store.pop(bits, None)
                    else:
                        store[bits] = value
            for q, value in zip(site.act_quantizers(), act_tables, strict=True):
                if value is None:
                    q.tables.pop(bits, None)
                else:
                    q.tables[bits] = value

    def calibrate_config(self, candidate: Candidate, data: CalibrationData) -> None:
        """Per-configuration PTQ (the baseline the supernet amortizes): fit exactly ``candidate``'s mix, with
        the network at that mix, overwriting the (site, bits) slots it uses. Leaves ``candidate`` assembled."""
        self._check(candidate)
        self._check_data(data)
        if self._ctx.grid and self._ctx.grid != data.timesteps:
            raise CalibrationError("calibrate_config needs the same timestep grid as the existing calibration")
        strategy = make_strategy(self.calib_settings)
        self._apply(self._fp_state())
        if not self._ctx.grid:
            self._ctx.set_grid(data.timesteps)
            if self.reparam is None:
                strategy.prepare(self, data)  # a fresh supernet: reparameterize as calibrate() would
        try:
            strategy.calibrate(self._session(data, candidate.w_map(), candidate.a_map()))
        finally:
            self._apply(self._fp_state())
        self.assemble(candidate)

    # --- persistence ----------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the calibrated supernet to directory ``path`` (see :mod:`supernet.artifact`)."""
        from supernet.artifact import save_supernet

        return save_supernet(self, path)

    @classmethod
    def load(cls, path: str | Path, model: Any) -> QuantSupernet:
        """Wrap ``model`` and restore the calibration saved at ``path``; refuses another format or model."""
        from supernet.artifact import load_supernet

        return load_supernet(path, model)
