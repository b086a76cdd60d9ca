"""What a calibration strategy works with while it fits one configuration.

A :class:`CalibrationSession` is opened for one bit option of the supernet (every site at WbAb) or for one
candidate (the per-configuration PTQ baseline). Through it a strategy fits or sets weight codes and activation
parameters; nothing becomes visible to the supernet until :meth:`CalibrationSession.commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from search.errors import ConfigError
from supernet.calibration.data import CalibrationData
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError
from supernet.qlayers.act import ActQuantizer, Observer
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.registry import Site
from supernet.qlayers.temporal import TemporalTable
from supernet.qlayers.weighted import QLinear, QuantWeightLayer
from supernet.quant.log2 import Log2Quantizer
from supernet.quant.protocol import QParams, Quantizer, check_bits, is_fp
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformQuantizer
from supernet.settings import SupernetSettings

if TYPE_CHECKING:
    from supernet.models.base import DiffusionAdapter
    from supernet.progress import ProgressTracker

#: ``fit(quantizer, x, bits) -> params``: how an observing pass turns one operand's input into parameters.
FitFn = Callable[[ActQuantizer, torch.Tensor, int], QParams]


class CalibrationSession:
    """One configuration being calibrated.

    Args:
        model: the model adapter whose denoiser the sites are installed in.
        sites: every site, by name.
        ctx: the timestep context (its grid is ``data.timesteps``).
        data: the calibration inputs.
        settings / supernet_settings: calibration and quantizer-format settings.
        w_bits / a_bits: the configuration, ``{site: bits}`` (2..8 or 16/32).
    """

    def __init__(
        self,
        model: DiffusionAdapter,
        sites: Mapping[str, Site],
        ctx: TimestepContext,
        data: CalibrationData,
        settings: CalibrationSettings,
        supernet_settings: SupernetSettings,
        w_bits: Mapping[str, int],
        a_bits: Mapping[str, int],
    ) -> None:
        self.model = model
        self.sites = dict(sites)
        self.ctx = ctx
        self.data = data
        self.settings = settings
        self.supernet_settings = supernet_settings
        self.w_bits = dict(w_bits)
        self.a_bits = dict(a_bits)
        self._weights: dict[str, QuantizedTensor] = {}
        self._temporal: dict[str, TemporalTable | None] = {}
        self._tables: dict[ActQuantizer, list[QParams | None]] = {
            q: [None] * len(data.timesteps) for q in self.act_quantizers()
        }
        self._kinds: dict[ActQuantizer, str] = {q: self._default_kind(q) for q in self._tables}
        #: Where the strategy's phase and block boundaries are reported (set by ``QuantSupernet.calibrate``).
        self.progress: ProgressTracker | None = None

    @property
    def denoiser(self) -> nn.Module:
        """The wrapped module tree (``model.denoiser``)."""
        return self.model.denoiser

    # --- progress ---------------------------------------------------------------------------------------------
    def plan(self, units: int) -> None:
        """Declare this configuration's units of work (blocks per reconstruction round, other phase steps), for
        the progress estimate (:mod:`supernet.progress`)."""
        if self.progress is not None:
            self.progress.plan(units)

    def report(self, phase: str, step: int, total: int, round: int | None = None) -> None:
        """A phase or block boundary: ``step`` of ``total`` units of ``phase`` done (a report with ``step >= 1``
        completes one unit). An exception of the progress callback propagates."""
        if self.progress is not None:
            self.progress.report(phase, step, total, round)

    # --- what is being calibrated -------------------------------------------------------------------------
    def weight_sites(self) -> list[QuantWeightLayer]:
        """Sites with a weight that this configuration quantizes."""
        return [s for s in self.sites.values() if isinstance(s, QuantWeightLayer) and not is_fp(self.w_bits[s.name])]

    def act_quantizers(self) -> list[ActQuantizer]:
        """Activation operands this configuration quantizes."""
        return [q for s in self.sites.values() for q in s.act_quantizers() if not is_fp(self.bits_of(q))]

    def bits_of(self, q: ActQuantizer) -> int:
        """The width of operand ``q`` in this configuration."""
        return (self.a_bits if q.gene == "a" else self.w_bits)[q.site]

    # --- quantizer choice (DAQ hooks here) -------------------------------------------------------------------
    def _default_kind(self, q: ActQuantizer) -> str:
        return self.settings.pv_quantizer if self._is_probability(q) else "uniform"

    @staticmethod
    def _is_probability(q: ActQuantizer) -> bool:
        return q.site.endswith(".pv") and q.role == "a"

    def kind_of(self, q: ActQuantizer) -> str:
        """``"uniform"`` or ``"log2"``: the quantizer the default fit uses for ``q``."""
        return self._kinds[q]

    def set_kind(self, q: ActQuantizer, kind: str) -> None:
        """Choose the quantizer of ``q`` for this configuration (log2 only for post-softmax inputs)."""
        if kind not in ("uniform", "log2"):
            raise ConfigError("kind", f"must be 'uniform' or 'log2', got {kind!r}")
        if kind == "log2" and not self._is_probability(q):
            raise ConfigError("kind", f"{q.key}: log2 is only for post-softmax inputs (.pv first operand)")
        self._kinds[q] = kind

    def weight_quantizer(self, bits: int) -> UniformQuantizer:
        """The per-output-channel weight quantizer of these settings for ``bits``-bit weights: ``weight_method``'s
        ranges, min-max below ``weight_minmax_below`` bits."""
        s = self.settings
        method = "minmax" if bits < s.weight_minmax_below else s.weight_method
        return UniformQuantizer(
            symmetric=self.supernet_settings.weight_symmetric,
            axis=0,
            method=method,
            grid=s.mse_grid,
            min_ratio=s.mse_min_ratio,
            norm=s.mse_norm,
        )

    def act_quantizer(self, q: ActQuantizer) -> Quantizer:
        """The per-tensor quantizer of these settings for operand ``q`` (its current kind)."""
        s = self.settings
        if self._kinds[q] == "log2":
            return Log2Quantizer(
                method=s.act_method,
                grid=s.mse_grid,
                min_ratio=max(s.mse_min_ratio, 0.5),
                norm=s.mse_norm,
                max_elems=s.act_max_elems,
            )
        return UniformQuantizer(
            symmetric=self.supernet_settings.act_symmetric,
            axis=None,
            method=s.act_method,
            grid=s.mse_grid,
            min_ratio=s.mse_min_ratio,
            norm=s.mse_norm,
            max_elems=s.act_max_elems,
        )

    # --- writing results --------------------------------------------------------------------------------------
    def set_weight(self, site: str, weight: QuantizedTensor) -> None:
        """Record the quantized weight of ``site`` (at this configuration's width) and use it from now on."""
        layer = self.sites[site]
        if not isinstance(layer, QuantWeightLayer) or weight.bits != self.w_bits[site]:
            raise CalibrationError(f"{site}: a {weight.bits}-bit weight does not fit this configuration")
        if weight.shape != tuple(layer.weight.shape):
            raise CalibrationError(f"{site}: weight codes of shape {weight.shape} do not fit")
        self._weights[site] = weight
        layer.use_weight(weight.dequantize(layer.weight))
        layer.w_bits = weight.bits

    def set_act_params(self, q: ActQuantizer, index: int, params: QParams) -> None:
        """Record operand ``q``'s parameters for grid timestep ``index``."""
        if params.bits != self.bits_of(q):
            raise CalibrationError(f"{q.key}: {params.bits}-bit parameters do not fit this configuration")
        self._tables[q][index] = params

    def set_temporal(self, site: str, table: TemporalTable | None) -> None:
        """Use cached temporal features for ``site`` at this configuration's activation width (``None``: compute
        the site as usual, dropping a table an earlier calibration left for that width). Takes effect on commit:
        the rest of this session runs the computed path."""
        layer = self.sites[site]
        bits = self.a_bits[site]
        if not isinstance(layer, QLinear) or is_fp(bits):
            raise CalibrationError(f"{site}: only a linear site with quantized activations can use cached features")
        if table is not None and table.bits != bits:
            raise CalibrationError(f"{site}: a {table.bits}-bit temporal table does not fit this configuration")
        self._temporal[site] = table

    def act_params(self, q: ActQuantizer, index: int) -> QParams | None:
        """What has been recorded for ``q`` at grid timestep ``index`` so far."""
        return self._tables[q][index]

    # --- running the model -------------------------------------------------------------------------------
    def run(self, t: int, x: torch.Tensor) -> torch.Tensor:
        """One forward pass at timestep ``t`` (no gradients): the predicted noise."""
        with torch.no_grad():
            return self.model.predict_noise(x, t, self.model.condition_for(int(x.shape[0])))

    @contextmanager
    def observe(self, fit: FitFn) -> Iterator[None]:
        """While open, every quantized operand fits its parameters on the input it sees (``fit``), records
        them for the current grid timestep and uses them at once, so later layers see quantized inputs."""

        def observer(q: ActQuantizer, x: torch.Tensor) -> QParams | None:
            index = self.ctx.index
            if q not in self._tables or index is None:
                return None
            params = fit(q, x, self.bits_of(q))
            self.set_act_params(q, index, params)
            return params

        with self.observing(observer):
            yield

    @contextmanager
    def observing(self, observer: Observer) -> Iterator[None]:
        """While open, every operand of every site routes its input through ``observer`` (removed on exit)."""
        every = [q for s in self.sites.values() for q in s.act_quantizers()]
        for q in every:
            q.set_observer(observer)
        try:
            yield
        finally:
            for q in every:
                q.set_observer(None)

    def default_fit(self, q: ActQuantizer, x: torch.Tensor, bits: int) -> QParams:
        """Fit ``q``'s quantizer of its current kind on ``x``."""
        return self.act_quantizer(q).fit(x, bits)

    def fit_weights(self) -> None:
        """Quantize every weight of this configuration with :meth:`weight_quantizer` at its width."""
        for layer in self.weight_sites():
            bits = check_bits(self.w_bits[layer.name])
            params = self.weight_quantizer(bits).fit(layer.weight, bits)
            self.set_weight(layer.name, QuantizedTensor.from_float(layer.weight, params))

    def fit_activations(self, fit: FitFn | None = None) -> None:
        """One observing pass per grid timestep over the calibration inputs (weights as set so far)."""
        with self.observe(fit or self.default_fit):
            for _, t, x in self.data.items():
                self.run(t, x)

    def apply(self) -> None:
        """Commit, then switch every site to this configuration (e.g. to sample with the quantized model)."""
        self.commit()
        for name, site in self.sites.items():
            site.activate(self.w_bits[name], self.a_bits[name])

    def resample(self, n: int | None = None, seed: int | None = None, batch_size: int = 64) -> CalibrationData:
        """Trajectory inputs of the model *as it is now* on the same grid (PAR's progressively aligned data),
        from the same noise as the current data by default.

        Call :meth:`apply` first to sample with the configuration fitted so far.
        """
        from supernet.calibration.data import collect_inputs
        from supernet.sampling import Sampler

        schedule = self.data.schedule
        if schedule is None:
            raise CalibrationError("the calibration data carries no alphas_cumprod: trajectories cannot be re-run")
        sampler = Sampler(self.model, batch_size, schedule=schedule)
        n = self.data.samples if n is None else n
        if seed is None:  # the noise of the data being replaced (its x_T), else the settings' seed
            seed = int(self.data.source.get("seed", self.settings.seed))
        inputs = collect_inputs(sampler, self.data.timesteps, n, seed)
        return CalibrationData(
            self.data.timesteps,
            inputs,
            self.data.alphas_cumprod,
            self.data.clip_sample,
            {**self.data.source, "resampled": True},
        )

    def use_data(self, data: CalibrationData) -> None:
        """Calibrate on ``data`` from now on (same grid required)."""
        if data.timesteps != self.data.timesteps:
            raise CalibrationError("replacement calibration data must use the same timestep grid")
        self.data = data

    def commit(self) -> None:
        """Make the results the supernet's: weight slots and activation tables for this configuration's widths.

        Raises :class:`CalibrationError` naming the first weight or (operand, timestep) left without parameters.
        """
        missing_w = [layer.name for layer in self.weight_sites() if layer.name not in self._weights]
        if missing_w:
            raise CalibrationError(f"calibration left {len(missing_w)} weights unquantized, e.g. {missing_w[0]}")
        for q, table in self._tables.items():
            if any(p is None for p in table):
                t = self.data.timesteps[table.index(None)]
                raise CalibrationError(f"calibration left {q.key} without parameters at timestep {t}")
        for site, weight in self._weights.items():
            self.sites[site].slots[weight.bits] = weight
        for q, table in self._tables.items():
            q.tables[self.bits_of(q)] = tuple(table)  # type: ignore[arg-type]
        for site, cache in self._temporal.items():
            layer = self.sites[site]
            assert isinstance(layer, QuantWeightLayer)
            if cache is None:
                layer.temporal.pop(self.a_bits[site], None)
            else:
                layer.temporal[cache.bits] = cache
