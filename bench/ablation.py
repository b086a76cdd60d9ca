"""Ablation of the TCAQ-DM calibration on the shipped testbed: what reconstruction, TCR, DAQ and PAR each buy.

For each method a supernet over bit options {4, 6, 8} is calibrated on the same FP trajectories; each row (uniform
W8A8, W6A6, W4A8, W4A4) is then assembled and sampled with 10 uniform DDIM steps from the same noise as the FP
model. A cell is FDD (vs the real digits) and PSNR (vs the FP samples), plus the calibration seconds of the bit
options the row uses (W4A8: the 4-bit and the 8-bit calibrations). Methods, cumulative as in TCAQ-DM's ablation:

- ``FP``; ``baseline`` (min-max weights, MSE activation ranges: strategy ``"range"``; the other methods start
  from the default weight ranges: MSE from 6 bits, min-max below);
- ``+reconstruction`` (BRECQ block reconstruction); ``+TCR``; ``+TCR+DAQ``; ``full`` (+PAR: the default settings);
- each extra switch on top of ``full``: ``full+TIB`` (TFMQ-DM's temporal block), ``full+dilation`` (DilateQuant),
  ``full+cache`` (TFMQ-DM's cache of quantized temporal features per timestep, chosen per projection by error).

Two tables. ``table`` is strictly uniform: every layer at the row's widths. ``table_edges8`` follows the convention
of the papers whose claims the targets restate (BRECQ, Q-Diffusion, TFMQ-DM keep the first and the last layer at 8
bits in every W/A row of their tables): the layer that reads the image and the one that writes the prediction
(``conv_in``, ``conv_out``) at W8A8, with their 8-bit calibration, the rest at the row's widths; each of its cells
also says what that costs (``bitops_ratio`` to the strict row). ``targets`` checks the issue's targets per table
(full within 10% of FP's FDD at W8A8 and W6A6; W4A4 within 2x FP where the baseline is not) and ``worse`` lists
every cell where adding a component raised FDD (cumulative chain, and each extra switch against ``full``): one
calibration seed per run, so read it against the seed-to-seed noise.

Prints progress to stderr and one JSON object as the last stdout line; its ``table`` is a list of
``{bits, method, fdd, psnr, calib_s}``. ``--quick`` (under a minute) uses a tiny calibration (4 grid timesteps x 8
samples, 4 reconstruction steps) and 32 samples per cell: a smoke test of the wiring, not a measurement.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts bench/ first on sys.path, where benchmark names (supernet.py) shadow the packages
# they measure: drop it.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search.candidate import Candidate
from supernet.calibration import CalibrationSettings, collect_calibration_data
from supernet.metrics import FDDScorer, psnr
from supernet.models import TESTBED_DIR, load_model
from supernet.sampling import Sampler, uniform_schedule
from supernet.supernet import QuantSupernet

ROWS = (("W8A8", 8, 8), ("W6A6", 6, 6), ("W4A8", 4, 8), ("W4A4", 4, 4))
OFF = {"reconstruction": False, "tcr": False, "daq": False, "par": False}
#: method → changes to the default (full) settings; ``None`` is the FP model.
METHODS: dict[str, dict[str, Any] | None] = {
    "FP": None,
    "baseline": {"strategy": "range", "weight_method": "minmax"},
    "+reconstruction": {**OFF, "reconstruction": True},
    "+TCR": {**OFF, "reconstruction": True, "tcr": True},
    "+TCR+DAQ": {**OFF, "reconstruction": True, "tcr": True, "daq": True},
    "full": {},
    "full+TIB": {"tib": True},
    "full+dilation": {"dilation": True},
    "full+cache": {"temporal_cache": True},
}
#: The sites that read the model's input and write its output (diffusers UNets), and the width the papers keep them at.
EDGE_SITES = ("conv_in", "conv_out")
EDGE_BITS = 8
#: Each method's predecessor: the cell it is compared with in ``worse``.
PREVIOUS = {
    "+reconstruction": "baseline",
    "+TCR": "+reconstruction",
    "+TCR+DAQ": "+TCR",
    "full": "+TCR+DAQ",
    "full+TIB": "full",
    "full+dilation": "full",
    "full+cache": "full",
}
QUICK = {"grid_steps": 3, "samples": 4, "recon_iters": 2, "recon_samples": 4, "mse_grid": 8}


def _log(msg: str) -> None:
    print(f"[bench/ablation] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny calibration and 32 samples per cell (< 1 minute)")
    p.add_argument("--model", type=Path, default=TESTBED_DIR)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS])
    p.add_argument("--samples", type=int, default=None, help="samples per cell (default 1024; --quick 32)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=2024, help="noise seed of the samples")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument(
        "--no-edges", dest="edges", action="store_false", help="skip table_edges8 (the first and last layer at W8A8)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override calibration settings of every method (JSON values), e.g. recon_iters=100",
    )
    return p.parse_args(argv)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def with_edges(candidate: Candidate, sites: tuple[str, ...] = EDGE_SITES, bits: int = EDGE_BITS) -> Candidate:
    """``candidate`` with ``sites`` at W``bits``A``bits`` (the papers' first/last-layer convention)."""
    missing = [s for s in sites if s not in candidate.sites]
    if missing:
        raise SystemExit(f"--edges: the model has no quantized site {missing[0]!r}; use --no-edges")
    w, a = candidate.w_map(), candidate.a_map()
    for s in sites:
        w[s] = a[s] = bits
    return Candidate.from_maps(candidate.timesteps, w, a)


@dataclass(frozen=True)
class _Cells:
    """Samples one method's calibrated supernet at a candidate and scores it against FP."""

    sn: QuantSupernet
    sampler: Sampler
    scorer: FDDScorer
    fp_images: torch.Tensor
    schedule: Sequence[int]
    n: int
    seed: int
    method: str

    def measure(self, candidate: Candidate, name: str, label: str = "") -> dict[str, Any]:
        """The cell of row ``name``: FDD, PSNR vs FP and the calibration seconds of the widths it uses."""
        with self.sn.assembled(candidate):
            images = self.sampler.sample(self.schedule, self.n, seed=self.seed)
        used = {b for _, b in (*candidate.weight_bits, *candidate.act_bits)}
        cell = {
            "bits": name,
            "method": self.method,
            "fdd": round(self.scorer.score(images), 3),
            "psnr": round(psnr(images, self.fp_images), 2),
            "calib_s": round(sum(self.sn.calibration_seconds[b] for b in used), 2),
        }
        _log(f"{self.method} {name}{label}: fdd {cell['fdd']} psnr {cell['psnr']} calib {cell['calib_s']} s")
        return cell


def _fdd(table: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(c["bits"], c["method"]): c["fdd"] for c in table}


def targets(table: list[dict[str, Any]], fp_fdd: float) -> dict[str, bool | None]:
    """The issue's targets on one table (``None`` where a needed cell was not run)."""
    fdd = _fdd(table)

    def within(bits: str, factor: float) -> bool | None:
        value = fdd.get((bits, "full"))
        return None if value is None else value <= factor * fp_fdd

    usable = within("W4A4", 2.0)
    baseline = fdd.get(("W4A4", "baseline"))
    return {
        "W8A8_full_within_10pct": within("W8A8", 1.1),
        "W6A6_full_within_10pct": within("W6A6", 1.1),
        "W4A4_full_usable_baseline_not": None
        if usable is None or baseline is None
        else usable and baseline > 2.0 * fp_fdd,
    }


def worse(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every cell where a method's FDD is above its predecessor's (:data:`PREVIOUS`) at the same bits."""
    fdd = _fdd(table)
    out = []
    for (bits, method), value in fdd.items():
        before = fdd.get((bits, PREVIOUS.get(method, "")))
        if before is not None and value > before:
            out.append({"bits": bits, "method": method, "versus": PREVIOUS[method], "fdd": value, "before": before})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.samples or (32 if args.quick else 1024)
    base = {**(QUICK if args.quick else {}), **_overrides(args.set)}
    rows = [r for r in ROWS if r[0] in args.rows]
    bits = tuple(sorted({b for _, w, a in rows for b in (w, a)} | ({EDGE_BITS} if args.edges else set())))

    fp_model = load_model(args.model)
    schedule = uniform_schedule(args.steps, fp_model.num_train_timesteps)
    scorer = FDDScorer.for_testbed()
    data_settings = CalibrationSettings(**base)
    start = time.perf_counter()
    data = collect_calibration_data(fp_model, data_settings, source={"model_hash": fp_model.model_hash})
    _log(f"calibration data {tuple(data.inputs.shape)} in {time.perf_counter() - start:.1f} s")
    fp_images = fp_model.sampler(args.batch).sample(schedule, n, seed=args.seed)
    fp_fdd = scorer.score(fp_images)
    table: list[dict[str, Any]] = []
    table_edges: list[dict[str, Any]] = []
    settings_used: dict[str, Any] = {}
    calib_seconds: dict[str, dict[str, float]] = {}
    decisions: dict[str, Any] = {}
    for method in args.methods:
        change = METHODS[method]
        if change is None:
            fp_rows = [
                {"bits": name, "method": "FP", "fdd": round(fp_fdd, 3), "psnr": None, "calib_s": 0.0}
                for name, _, _ in rows
            ]
            table += fp_rows
            table_edges += [dict(c) for c in fp_rows] if args.edges else []
            continue
        settings = dataclasses.replace(CalibrationSettings(**base), **change)
        settings_used[method] = settings.to_dict()
        model = load_model(args.model)
        sn = QuantSupernet.build(model, bits, calib_settings=settings)
        start = time.perf_counter()
        sn.calibrate(data)
        _log(f"{method}: calibrated {bits} in {time.perf_counter() - start:.1f} s {sn.calibration_seconds}")
        calib_seconds[method] = {str(b): round(s, 2) for b, s in sn.calibration_seconds.items()}
        sampler = sn.model.sampler(args.batch)
        cells = _Cells(sn, sampler, scorer, fp_images, schedule, n, args.seed, method)
        for name, w, a in rows:
            uniform = sn.uniform(w, a, schedule)
            cell = cells.measure(uniform, name)
            table.append(cell)
            if args.edges:
                edged = with_edges(uniform)
                same = edged == uniform  # W8A8: the same cell, not sampled twice
                ratio = sn.cost(edged).bitops / sn.cost(uniform).bitops
                table_edges.append(
                    {**(cell if same else cells.measure(edged, name, " (edges W8A8)")), "bitops_ratio": round(ratio, 5)}
                )
        meta = sn.calibration_metadata
        decisions[method] = {
            "reparameterization": meta.get("reparameterization"),
            "daq": {site: [g["choice"] for g in groups] for site, groups in (meta.get("daq") or {}).items()},
        }
        if meta.get("temporal_cache"):  # per configuration: the projections that read the cache
            decisions[method]["temporal_cache"] = {
                label: sorted(n for n, r in rep["sites"].items() if r["choice"] == "cache")
                for label, rep in meta["temporal_cache"].items()
            }
        sn.detach()
    result = {
        "bench": "ablation",
        "quick": args.quick,
        "model": str(args.model),
        "model_hash": fp_model.model_hash,
        "bit_options": list(bits),
        "steps": args.steps,
        "samples": n,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_average": round(os.getloadavg()[0], 2),
        "fp_fdd": round(fp_fdd, 3),
        "calibration_seconds": calib_seconds,
        "settings": settings_used,
        "decisions": decisions,
        "table": table,
        "targets": targets(table, fp_fdd),
        "worse": worse(table),
    }
    if args.edges:
        result.update(
            table_edges8=table_edges, targets_edges8=targets(table_edges, fp_fdd), worse_edges8=worse(table_edges)
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
