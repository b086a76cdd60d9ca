"""The ``"tcaq"`` calibration strategy: TCAQ-DM's TCR, DAQ and PAR on top of BRECQ-style block reconstruction.

Per supernet (``prepare``, FP model, once): TCR factors (and, if switched on, DilateQuant's weight dilation) are
applied as a per-input-channel reparameterization of the FP weights, shared by every bit option.

Per configuration (``_calibrate``, one session):

1. DAQ (``daq``): the FP model's post-softmax probabilities of every ``.pv`` site are tested per timestep group
   (:mod:`~supernet.calibration.daq`). Both quantizers, log2 and uniform, are fitted at every grid timestep and
   width; ``daq_rule`` decides which is kept (:func:`daq_kind`): TCAQ-DM's test (``power_law``), the test unless
   its kind errs a hundred times more than the other (``guarded``, the default, ours), or the lower error
   (``error``). The test, both errors and the kind kept are reported (``daq_check``).
2. Initial quantizers: weights per output channel and activation ranges per grid timestep, layer after layer on
   the quantized upstream (the ``"range"`` baseline, with DAQ's kinds).
3. Block reconstruction (``reconstruction``) on the FP-trajectory inputs.
4. PAR (``par``): for rounds 2..``par_rounds``, the calibration inputs are re-collected by running the quantized
   model's own DDIM trajectories on the grid (same noise), then the blocks are reconstructed again toward the FP
   model's outputs with ``par_decay`` times fewer iterations, AdaRound starting next to the previous rounding.
   Without reconstruction, PAR re-fits the activation ranges on the quantized trajectories instead.

5. Temporal cache (``temporal_cache``): per time-embedding projection, the FP temporal features of every training
   timestep quantized per timestep replace the computed path where their error on the grid is lower
   (:mod:`~supernet.calibration.temporal`); choices and errors are reported per configuration.

Every switch off gives exactly the ``"range"`` baseline. ``tib`` adds TFMQ-DM's temporal information block to
the reconstruction (:mod:`~supernet.calibration.reconstruction`). ``grad_align`` (off by default) weights the
reconstruction's calibration samples by weights learned so that the timestep groups' held-out gradients align
(:mod:`~supernet.calibration.gradalign`); the weights per timestep group are reported per configuration under
``grad_align``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch

from supernet.calibration import temporal
from supernet.calibration.daq import PowerLawTest, power_law_test, subsample, timestep_groups
from supernet.calibration.data import CalibrationData
from supernet.calibration.dilation import compute_dilation
from supernet.calibration.gradalign import GradAlignOptions
from supernet.calibration.reconstruction import BlockReconstructor, ReconOptions
from supernet.calibration.reparam import plan_groups
from supernet.calibration.session import CalibrationSession, FitFn
from supernet.calibration.settings import DAQ_GUARD_RATIO, SWITCHES, CalibrationSettings
from supernet.calibration.strategy import CalibrationStrategy, register_strategy
from supernet.calibration.tcr import compute_tcr
from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.attention import QMatMul
from supernet.quant.protocol import QParams, is_fp
from supernet.quant.uniform import lp_error

if TYPE_CHECKING:
    from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)

#: Post-softmax values kept per (site, grid timestep) for the power-law test.
DAQ_VALUES = 20000
#: Cap of the dilation factors.
DILATION_MAX = 100.0

Decisions = dict[str, list[tuple[list[int], PowerLawTest]]]


def config_label(session: CalibrationSession) -> str:
    """``"W4A4"`` for a uniform configuration, else ``"mixed"``."""
    w, a = set(session.w_bits.values()), set(session.a_bits.values())
    return f"W{w.pop()}A{a.pop()}" if len(w) == 1 and len(a) == 1 else "mixed"


def daq_kind(rule: str, tested: str, log2_mse: float, uniform_mse: float) -> str:
    """The post-softmax quantizer ``daq_rule`` keeps at one timestep and width, given the power-law test's choice
    and each kind's quantization MSE on the observed probabilities."""
    if rule == "error":
        return "log2" if log2_mse < uniform_mse else "uniform"
    if rule == "guarded":
        mine, other = (log2_mse, uniform_mse) if tested == "log2" else (uniform_mse, log2_mse)
        if mine > DAQ_GUARD_RATIO * other:
            return "uniform" if tested == "log2" else "log2"
    return tested


@register_strategy
class TCAQCalibrator(CalibrationStrategy):
    """TCR + DAQ + PAR over block reconstruction, each a switch of :class:`CalibrationSettings`."""

    name = "tcaq"

    def __init__(self, settings: CalibrationSettings) -> None:
        super().__init__(settings)
        self._decisions: Decisions | None = None
        self._decided_on: int | None = None
        self._report: dict[str, Any] = {"switches": {k: getattr(settings, k) for k in SWITCHES}}
        self._targets: dict[int, Any] = {}  # FP block outputs on the FP trajectories, shared by every session

    # --- once per supernet ------------------------------------------------------------------------------
    def prepare(self, supernet: QuantSupernet, data: CalibrationData) -> None:
        """TCR (and dilation) factors on the FP model, applied to the supernet's weights."""
        s = self.settings
        if not (s.tcr or s.dilation):
            return
        start = time.perf_counter()
        sites = {n: supernet.site(n) for n in supernet.sites}
        groups = plan_groups(supernet.denoiser, sites)
        factors: dict[str, torch.Tensor] = {}
        if s.tcr:
            factors = compute_tcr(supernet.model, sites, groups, data.subset(s.recon_samples), s.tcr_max, s.tcr_alpha)
        if s.dilation:
            factors = compute_dilation(sites, groups, factors, DILATION_MAX)
        rep = supernet.reparameterize(factors)
        self._report["prepare_s"] = round(time.perf_counter() - start, 3)
        log.info("TCR/dilation: %d folded, %d explicit pre-scales", len(rep.folded), len(rep.explicit))

    # --- once per configuration ------------------------------------------------------------------------------
    def _calibrate(self, session: CalibrationSession) -> None:
        s = self.settings
        label = config_label(session)
        recon = BlockReconstructor(session, tib=s.tib, align=GradAlignOptions.from_settings(s))
        bits = min(session.w_bits.values(), default=0)  # a mixed configuration reconstructs as its lowest width
        rounds = s.par_rounds if s.par else 1
        blocks = len(recon.blocks()) if s.reconstruction else 0
        session.plan(1 + rounds * blocks + (rounds - 1) + (1 if s.temporal_cache else 0))
        session.report("ranges", 0, 1)
        kinds = self._kinds(session) if s.daq else None
        check: dict[str, list[list[float]]] = {}
        fit = self._fit(session, kinds, check)
        session.fit_weights()
        session.fit_activations(fit)
        if kinds:
            self._record_check(label, check)
        session.report("ranges", 1, 1)
        reports: dict[str, Any] = {}
        for r in range(rounds):
            if r > 0:
                if session.data.alphas_cumprod is None:
                    log.warning("PAR needs trajectories (alphas_cumprod): stopping after round %d", r)
                    break
                session.report("par-trajectories", 0, 1, round=r + 1)
                start = time.perf_counter()
                with recon.quantized():
                    session.use_data(session.resample())
                reports[f"resample_{r + 1}_s"] = round(time.perf_counter() - start, 3)
                if not s.reconstruction:
                    session.fit_activations(fit)
                session.report("par-trajectories", 1, 1, round=r + 1)
                if not s.reconstruction:
                    continue
            if s.reconstruction:
                cache = self._targets if r == 0 else None
                session.report("reconstruction", 0, blocks, round=r + 1)

                def on_block(done: int, total: int, r: int = r) -> None:
                    session.report("reconstruction", done, total, round=r + 1)

                opts = ReconOptions.from_settings(s, r, bits)
                reports[f"round_{r + 1}"] = recon.run(opts, cache, on_block)
        self._report.setdefault("reconstruction", {})[label] = reports
        if recon.weights is not None:
            self._report.setdefault("grad_align", {})[label] = recon.weights.report()
        if s.temporal_cache:
            session.report("temporal", 0, 1)
            self._temporal_cache(session, recon, label)
            session.report("temporal", 1, 1)

    def report(self) -> dict[str, Any]:
        """Switches, DAQ decisions (site → groups with choice, R, fit) and checks, reconstruction per block."""
        out = dict(self._report)
        if self._decisions is not None:
            out["daq"] = {
                site: [{"timesteps": ts, **test.to_dict()} for ts, test in groups]
                for site, groups in sorted(self._decisions.items())
            }
        return out

    # --- temporal cache ---------------------------------------------------------------------------------------
    def _temporal_cache(self, session: CalibrationSession, recon: BlockReconstructor, label: str) -> None:
        """Per projection: the cached (FP, quantized per timestep) or the computed temporal features, whichever
        is closer to FP on the grid; recorded under ``temporal_cache`` → configuration → site."""
        start = time.perf_counter()
        model = session.model
        reason = model.temporal_support()
        owners = (
            {}
            if reason
            else {n: b for n, b in temporal.projections(model, session.sites).items() if not is_fp(session.a_bits[n])}
        )
        out: dict[str, Any] = {"sites": {}}
        self._report.setdefault("temporal_cache", {})[label] = out
        if not owners:
            out["skipped"] = reason or "no time-embedding projection with quantized activations"
            log.warning("temporal cache: %s", out["skipped"])
            return
        T = temporal.num_timesteps(session.data)
        fp = temporal.fp_features(model, owners, T)
        grid = list(session.data.timesteps)
        computed: dict[str, list[torch.Tensor]] = {n: [] for n in owners}
        with recon.quantized():
            try:
                for t in grid:  # one grid timestep at a time: activation parameters are per grid timestep
                    session.ctx.select(t)
                    for n, f in temporal.features(model, owners, [t]).items():
                        computed[n].append(f[0])
            finally:
                session.ctx.select(None)
        rows = torch.tensor(grid, dtype=torch.long, device=next(iter(fp.values())).device)
        quantizer = temporal.table_quantizer(self.settings, session.supernet_settings)
        for name in owners:
            bits = session.a_bits[name]
            table = temporal.build_table(fp[name], bits, quantizer)
            target = fp[name][rows]
            mse_cache = float((table.values[rows] - target).square().mean())
            mse_computed = float((torch.stack(computed[name]) - target).square().mean())
            use = mse_cache < mse_computed
            session.set_temporal(name, table if use else None)
            out["sites"][name] = {
                "bits": bits,
                "choice": "cache" if use else "computed",
                "mse_cache": mse_cache,
                "mse_computed": mse_computed,
            }
        out["num_train_timesteps"] = T
        out["seconds"] = round(time.perf_counter() - start, 3)
        log.info(
            "temporal cache %s: %d of %d projections cached",
            label,
            sum(r["choice"] == "cache" for r in out["sites"].values()),
            len(owners),
        )

    # --- DAQ ------------------------------------------------------------------------------------------------
    def _kinds(self, session: CalibrationSession) -> dict[str, list[str]]:
        """``{.pv site: kind per grid index}`` from the (cached) decisions."""
        if self._decisions is None or self._decided_on != id(session.data.inputs):
            self._decisions = self._decide(session)
            self._decided_on = id(session.data.inputs)
        grid = session.data.timesteps
        kinds: dict[str, list[str]] = {}
        for site, groups in self._decisions.items():
            row = ["uniform"] * len(grid)
            for ts, test in groups:
                for t in ts:
                    row[grid.index(t)] = test.choice
            kinds[site] = row
        return kinds

    def _decide(self, session: CalibrationSession) -> Decisions:
        pvs = {n: s for n, s in session.sites.items() if isinstance(s, QMatMul) and s.which == "pv"}
        if not pvs:
            return {}
        gen = torch.Generator().manual_seed(self.settings.seed)
        seen: dict[str, list[list[torch.Tensor]]] = {n: [[] for _ in session.data.timesteps] for n in pvs}
        ctx = session.ctx

        def observer(q: ActQuantizer, x: torch.Tensor) -> None:
            if ctx.index is not None:
                seen[q.site][ctx.index].append(subsample(x, DAQ_VALUES, gen))
            return None

        recon = BlockReconstructor(session)
        for site in pvs.values():
            site.a.set_observer(observer)
        try:
            with torch.no_grad(), recon.full_precision():
                for _, t, x in session.data.subset(self.settings.recon_samples).items():
                    for chunk, cond in session.model.batches(x, 64):
                        session.model.predict_noise(chunk, t, cond)
        finally:
            for site in pvs.values():
                site.a.set_observer(None)
        grid = session.data.timesteps
        decisions: Decisions = {}
        for name in sorted(pvs):
            decisions[name] = []
            for idx in timestep_groups(len(grid), self.settings.daq_groups):
                values = torch.cat([torch.cat(seen[name][i]) for i in idx if seen[name][i]])
                test = power_law_test(subsample(values, DAQ_VALUES * 2, gen))
                decisions[name].append(([grid[i] for i in idx], test))
        log.info("DAQ: %s", {n: [t.choice for _, t in g] for n, g in decisions.items()})
        return decisions

    def _fit(
        self, session: CalibrationSession, kinds: dict[str, list[str]] | None, check: dict[str, list[list[float]]]
    ) -> FitFn:
        """The range fit, with DAQ's kind for post-softmax operands (both kinds fitted, errors recorded)."""
        max_elems = self.settings.act_max_elems

        def fit(q: ActQuantizer, x: torch.Tensor, bits: int) -> QParams:
            index = session.ctx.index
            if kinds is None or q.site not in kinds or q.role != "a" or index is None:
                return session.default_fit(q, x, bits)
            flat = x.detach().reshape(-1)
            flat = flat[:: max(1, flat.numel() // max_elems)]
            fits: dict[str, QParams] = {}
            errors = []
            for kind in ("log2", "uniform"):
                session.set_kind(q, kind)
                fits[kind] = session.act_quantizer(q).fit(x, bits)
                errors.append(float(lp_error(fits[kind].fake_quantize(flat), flat, 2.0, dim=0)))
            chosen = daq_kind(self.settings.daq_rule, kinds[q.site][index], errors[0], errors[1])
            session.set_kind(q, chosen)
            check.setdefault(q.site, [[] for _ in kinds[q.site]])[index] = errors
            return fits[chosen]

        return fit

    def _record_check(self, label: str, check: dict[str, list[list[float]]]) -> None:
        """Per (site, group): the mean quantization MSE of each kind on the observed inputs, whether the
        likelihood-ratio decision picked the one with the lower error, and the kind kept at each timestep."""
        assert self._decisions is not None
        out: dict[str, Any] = {}
        for site, groups in self._decisions.items():
            per_t = check.get(site)
            if not per_t:
                continue
            rows, first = [], 0
            for ts, test in groups:  # groups are contiguous runs of grid indices, in order
                errs = [e for e in per_t[first : first + len(ts)] if e]
                first += len(ts)
                if not errs:
                    continue
                log2_mse = sum(e[0] for e in errs) / len(errs)
                uni_mse = sum(e[1] for e in errs) / len(errs)
                better = "log2" if log2_mse < uni_mse else "uniform"
                rule = self.settings.daq_rule
                rows.append(
                    {
                        "timesteps": ts,
                        "choice": test.choice,
                        "mse_log2": log2_mse,
                        "mse_uniform": uni_mse,
                        "agrees": better == test.choice,
                        "kept": [daq_kind(rule, test.choice, e[0], e[1]) for e in errs],
                    }
                )
            out[site] = rows
        self._report.setdefault("daq_check", {})[label] = out
