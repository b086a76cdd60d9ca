"""Calibration time and quality: the default ``tcaq`` settings against the previous default, side by side.

For each model, each settings (``previous``: the default before issue 18, :data:`PREVIOUS_DEFAULT` applied to the
current defaults; ``default``: :class:`CalibrationSettings` as it is) and each calibration seed (the ``seed`` field:
the FP trajectories' noise and the reconstruction's batches), a supernet over the bit options is calibrated as the
settings say (the previous default: in this process, one option after the other, its differentiable quantizers as
the chains of elementary operators they were before they became closed-form autograd nodes,
:func:`supernet.calibration.reference.operator_chains`; the default: in worker processes where
``calibration.workers`` decides so), and for every bit option b the uniform candidate WbAb is sampled with
10 uniform DDIM steps from the same noise as the FP model. Reported:

- ``seconds``: per bit option, the calibration's seconds and their split by phase (``ranges``, ``reconstruction``,
  ``par-trajectories``, ...; :meth:`supernet.progress.ProgressTracker.phase_seconds`), plus the FP trajectories
  (``trajectories``) and the once-per-supernet ``prepare`` (TCR); ``estimate``: what
  :mod:`supernet.calibration.estimate` predicted before calibrating, and the measured time over it;
- ``rows``: per bit option and settings, each seed's PSNR against the FP samples (dB, higher is better) and, on the
  digits testbed, FDD against the real digits (lower is better);
- ``speedup_vs_previous_default``: the previous default's calibration seconds (all bit options, mean over the
  seeds) over the new default's, on the testbed; per model under ``models``;
- ``quality_within_noise``: true when, on the testbed, every row's mean over the seeds under the new default is no
  worse than the previous default's mean by more than the previous default's own two-seed spread (``|seed 0 -
  seed 1|``), for FDD and for PSNR; ``noise`` lists every comparison.

Models: ``testbed`` (the shipped 16x16 digits UNet) and ``rgb24`` (a differently shaped ``UNet2DModel`` the bench
generates with random weights from seed 0: 3 channels, 24x24, three levels, attention at 6x6, saved to a temporary
directory and loaded from it; PSNR only, FDD needs digits) by default; ``digits-sd`` (the shipped text-to-image
testbed on its prompts and guidance; FDD and PSNR of the decoded images) on request, e.g. for an ablation with
``--try``. ``--quick`` (under ten minutes on 2 cores): bit option 6 only, 256 samples per row, ``rgb24`` with one
seed. Prints progress to stderr and one JSON object as the last stdout line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep bench/ off the import path so `supernet` is the package, not bench/supernet.py.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import atexit
import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch

from supernet.calibration import CalibrationSettings, collect_calibration_data
from supernet.calibration.estimate import estimate_calibration
from supernet.calibration.reference import operator_chains
from supernet.metrics import FDDScorer, psnr
from supernet.models import DIGITS_SD_DIR, TESTBED_DIR, UNet2DAdapter, load_model
from supernet.models.base import DiffusionAdapter
from supernet.sampling import uniform_schedule
from supernet.supernet import QuantSupernet

#: The fields the issue-18 defaults changed, at their previous values (applied to today's defaults): the wide
#: widths' shorter reconstruction, the bit options calibrated one after the other in process, and DAQ's rule.
PREVIOUS_DEFAULT: dict[str, Any] = {
    "recon_iters_wide": None,
    "workers": 1,
    "daq_rule": "power_law",
    "recon_round_below": 9,
    "par_rounding": True,
    "par_decay": 0.5,
}
#: The generated second model: RGB at 24x24, three levels (the testbed: one channel at 16x16, three levels).
RGB24_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DModel",
    "sample_size": 24,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}
RGB24_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True,
}
MODELS = ("testbed", "rgb24", "digits-sd")
#: The models FDD is measured on (the shipped digits classifier's): the others get PSNR only.
DIGITS_MODELS = ("testbed", "digits-sd")


def _log(msg: str) -> None:
    print(f"[bench/calibration] {msg}", file=sys.stderr, flush=True)


_GENERATED: dict[str, Path] = {}


def build(name: str) -> DiffusionAdapter:
    """The named model: the shipped testbed, or the generated ``rgb24`` (random weights from seed 0), saved once
    to a temporary diffusers directory and loaded from there, as a user's local checkpoint is."""
    if name == "testbed":
        return load_model(TESTBED_DIR)
    if name == "digits-sd":
        return load_model(DIGITS_SD_DIR)  # conditioned on its shipped prompts and guidance
    if name not in _GENERATED:
        torch.manual_seed(0)
        out = Path(tempfile.mkdtemp(prefix=f"tmpq-bench-{name}-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        UNet2DAdapter.from_config(RGB24_CONFIG, RGB24_SCHEDULER).save_pretrained(out)
        _GENERATED[name] = out
    return load_model(_GENERATED[name])


def settings_pair(
    seed: int, trial: dict[str, Any] | None = None, baseline: str = "previous"
) -> dict[str, CalibrationSettings]:
    """The baseline and ``default`` settings with calibration seed ``seed``; ``trial`` changes the new default (to
    try other settings in its place). ``baseline``: ``previous`` (the default before issue 18) or ``current`` (the
    default as it is: the bench then measures what ``trial`` costs and gains over it, e.g. ``restarts=2``)."""
    default = CalibrationSettings(seed=seed)
    return {
        baseline: default if baseline == "current" else dataclasses.replace(default, **PREVIOUS_DEFAULT),
        "default": dataclasses.replace(default, **(trial or {})),
    }


def _pairs(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--try: expected FIELD=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def calibrate_one(name: str, settings: CalibrationSettings, bits: tuple[int, ...]) -> tuple[QuantSupernet, dict]:
    """A supernet of model ``name`` calibrated with ``settings``; its seconds by bit option and phase."""
    model = build(name)
    estimate = estimate_calibration(model, bits, settings)
    start = time.perf_counter()
    data = collect_calibration_data(model, settings)
    trajectories = time.perf_counter() - start
    sn = QuantSupernet.build(model, bits, calib_settings=settings)
    start = time.perf_counter()
    sn.calibrate(data, estimate=estimate)
    total = trajectories + time.perf_counter() - start  # wall-clock: bit options may overlap in workers
    meta = sn.calibration_metadata
    predicted = estimate.seconds - estimate.phases.get("report", 0.0)  # the bench calibrates without the report
    seconds = {
        "estimate": {"seconds": round(predicted, 1), "measured_over_estimate": round(total / predicted, 3)},
        "trajectories": round(trajectories, 3),
        "prepare": meta["seconds"]["prepare"],
        "workers": meta.get("workers"),
        "total": round(total, 3),
        "per_bits": {
            str(b): {"total": round(s, 3), "phases": meta["phase_seconds"].get(str(b), {})}
            for b, s in sn.calibration_seconds.items()
        },
    }
    return sn, seconds


def score_rows(
    sn: QuantSupernet, fp_images: torch.Tensor, scorer: FDDScorer | None, steps: int, n: int, seed: int
) -> dict[str, dict[str, float | None]]:
    """PSNR against ``fp_images`` (and FDD with ``scorer``) of every uniform WbAb row of ``sn``."""
    schedule = uniform_schedule(steps, sn.model.num_train_timesteps)
    sampler = sn.model.sampler(128)
    out = {}
    for b in sn.bit_options:
        with sn.assembled(sn.uniform(b, b, schedule)):
            images = sampler.sample(schedule, n, seed=seed)
        out[f"W{b}A{b}"] = {
            "psnr": round(psnr(images, fp_images), 3),
            "fdd": None if scorer is None else round(scorer.score(images), 3),
        }
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def compare(
    rows: dict[str, dict[str, dict[str, list[float | None]]]], baseline: str = "previous"
) -> tuple[bool | None, list[dict[str, Any]]]:
    """``quality_within_noise`` and its comparisons from ``rows[row][settings][metric]`` (one value per seed), the
    ``default`` settings against ``baseline``'s."""
    checks = []
    for row, by_settings in rows.items():
        for metric, higher_better in (("psnr", True), ("fdd", False)):
            old = [v for v in by_settings[baseline][metric] if v is not None]
            new = [v for v in by_settings["default"][metric] if v is not None]
            if len(old) < 2 or not new:
                continue
            noise = max(old) - min(old)
            loss = (_mean(old) - _mean(new)) if higher_better else (_mean(new) - _mean(old))
            checks.append(
                {
                    "row": row,
                    "metric": metric,
                    baseline: [round(v, 3) for v in old],
                    "default": [round(v, 3) for v in new],
                    "loss": round(loss, 3),
                    "noise": round(noise, 3),
                    "within": loss <= noise,
                }
            )
    return (all(c["within"] for c in checks) if checks else None), checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="bit option 6, 256 samples, rgb24 with one seed (< 10 min)")
    p.add_argument("--models", nargs="+", default=list(MODELS[:2]), choices=MODELS)
    p.add_argument("--bits", nargs="+", type=int, default=None, help="bit options (default 4 6 8; --quick 6)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="calibration seeds (default 0 1)")
    p.add_argument("--samples", type=int, default=None, help="samples per row (default 1024; --quick 256)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--noise-seed", type=int, default=2024, help="noise seed of the scored samples")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument(
        "--try",
        dest="trial",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="settings to try as the new default (JSON values), e.g. recon_iters=40; the previous default is fixed",
    )
    p.add_argument(
        "--baseline",
        choices=("previous", "current"),
        default="previous",
        help="what --try is compared with: the previous default (default) or the current one (with --baseline "
        "current, speedup_vs_previous_default is the current default's seconds over the trial's: below 1 is its cost)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    bits = tuple(sorted(args.bits or ([6] if args.quick else [4, 6, 8])))
    trial = _pairs(args.trial)
    settings_pair(0, trial)  # bad --try values fail here, before any work
    if args.baseline == "current" and not trial:
        raise SystemExit("--baseline current: give the settings to compare with --try FIELD=VALUE")
    n = args.samples or (256 if args.quick else 1024)
    scorer = FDDScorer.for_testbed()
    models: dict[str, Any] = {}
    for name in args.models:
        fp = build(name)
        schedule = uniform_schedule(args.steps, fp.num_train_timesteps)
        fp_images = fp.sampler(128).sample(schedule, n, seed=args.noise_seed)
        model_scorer = scorer if name in DIGITS_MODELS else None
        fp_fdd = None if model_scorer is None else round(model_scorer.score(fp_images), 3)
        seeds = args.seeds[:1] if args.quick and name != "testbed" else args.seeds
        seconds: dict[str, dict[str, Any]] = {}
        rows: dict[str, dict[str, dict[str, list[float | None]]]] = {}
        for seed in seeds:
            for label, settings in settings_pair(seed, trial, args.baseline).items():
                with operator_chains() if label == "previous" else contextlib.nullcontext():
                    sn, secs = calibrate_one(name, settings, bits)
                seconds.setdefault(label, {})[str(seed)] = secs
                _log(f"{name} {label} seed {seed}: {secs['total']} s {[v['total'] for v in secs['per_bits'].values()]}")
                for row, cell in score_rows(sn, fp_images, model_scorer, args.steps, n, args.noise_seed).items():
                    for metric, value in cell.items():
                        rows.setdefault(row, {}).setdefault(label, {}).setdefault(metric, []).append(value)
                    _log(f"  {row}: {cell}")
                sn.detach()
        totals = {label: _mean([s["total"] for s in by_seed.values()]) for label, by_seed in seconds.items()}
        within, checks = compare(rows, args.baseline)
        models[name] = {
            "parameters": sum(p.numel() for p in fp.denoiser.parameters()),
            "seeds": seeds,
            "fp_fdd": fp_fdd,
            "seconds": seconds,
            "mean_total_s": {k: round(v, 2) for k, v in totals.items()},
            "speedup_vs_previous_default": round(totals[args.baseline] / totals["default"], 3),
            "rows": rows,
            "quality_within_noise": within,
            "noise": checks,
        }
        _log(f"{name}: speed-up {models[name]['speedup_vs_previous_default']}x, within noise {within}")
    first = models.get("testbed") or next(iter(models.values()))
    result = {
        "bench": "calibration",
        "quick": args.quick,
        "bit_options": list(bits),
        "steps": args.steps,
        "samples": n,
        "baseline": args.baseline,
        "previous_default": PREVIOUS_DEFAULT,
        "previous_code": "operator chains" if args.baseline == "previous" else "current",
        "default": settings_pair(0, trial)["default"].to_dict(),
        "trial": trial,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "load_average": round(os.getloadavg()[0], 2),
        "models": models,
        "speedup_vs_previous_default": first["speedup_vs_previous_default"],
        "quality_within_noise": first["quality_within_noise"],
    }
    print(json.dumps(result))
    return result


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
