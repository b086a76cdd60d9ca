"""The calibration report saved with every supernet: how good each bit option came out, where the error sits.

Made right after calibrating (:func:`supernet.artifact.get_or_build_supernet`) and stored in the artifact's
metadata (``calibration_metadata["report"]``), so ``tmpq supernets``, a job's status and the web page can show it
without loading tensors. For each bit option b:

- the uniform candidate WbAb sampled with :data:`REPORT_STEPS` uniform DDIM steps from held-out noise (a seed the
  calibration trajectories never used), against the FP model on the same schedule and noise: MSE and PSNR of the
  images (quantization error alone: both run the same schedule);
- an error ranking (unless the settings' ``report_ranking`` is off): the denoiser's relative output error
  (``mean((ε̂ - ε)²) / mean(ε²)``) on calibration inputs at a few grid timesteps with only one site (or, for models
  with more than :data:`MAX_RANKED_SITES` sites, one block) at WbAb and the rest in FP, highest first.

The report also records the settings, its own seconds and, when the calibration was checked against it, the plain
range fit's uniform W8A8 (:func:`range_w8a8_check`): a calibration whose W8A8 is worse than that fails loudly.
With gradient-aligned calibration (the ``grad_align`` switch) it shows the learned sample weights per configuration
and timestep group (:func:`~supernet.calibration.gradalign.group_rows`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from search.candidate import FP_BITS, Candidate
from supernet.calibration.data import CalibrationData
from supernet.calibration.gradalign import group_rows
from supernet.errors import CalibrationError
from supernet.metrics import mse, psnr
from supernet.sampling import uniform_schedule

#: The fixed schedule's uniform DDIM steps and the held-out samples of the image metrics.
REPORT_STEPS = 10
REPORT_SAMPLES = 64
#: Added to the calibration seed for the held-out noise (the trajectories use the seed itself).
HELDOUT_SEED_OFFSET = 7919
#: Grid timesteps and samples per timestep of the error ranking.
RANKING_TIMESTEPS = 3
RANKING_SAMPLES = 8
#: Above this many sites the ranking is per block.
MAX_RANKED_SITES = 96
#: The width the range-fit check compares.
CHECK_BITS = 8
FP = max(FP_BITS)


def report_unavailable(model: Any) -> str | None:
    """Why no report can be made for a supernet of ``model`` (an adapter that cannot sample), else ``None``."""
    try:
        model.schedule  # noqa: B018 (raises for a bare module without a noise schedule)
    except CalibrationError as exc:
        return str(exc)
    return None


def _schedule(supernet: Any) -> list[int]:
    return list(uniform_schedule(REPORT_STEPS, supernet.model.num_train_timesteps))


def _images(supernet: Any, candidate: Candidate, n: int, seed: int) -> torch.Tensor:
    sampler = supernet.model.sampler(min(n, 64))
    with supernet.assembled(candidate):
        return sampler.sample(candidate.timesteps, n, seed=seed)


def image_error(images: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """MSE and PSNR (dB) of ``images`` against ``reference`` (both in [-1, 1])."""
    return {"mse": round(mse(images, reference), 8), "psnr": round(psnr(images, reference), 3)}


def uniform_quality(supernet: Any, bits: Sequence[int], n: int, seed: int) -> dict[int, dict[str, float]]:
    """Image MSE/PSNR of each uniform WbAb against FP, on the fixed schedule from the noise of ``seed``."""
    schedule = _schedule(supernet)
    fp = _images(supernet, supernet.uniform(FP, FP, schedule), n, seed)
    return {b: image_error(_images(supernet, supernet.uniform(b, b, schedule), n, seed), fp) for b in bits}


def _groups(supernet: Any) -> tuple[str, dict[str, list[str]]]:
    names = supernet.sites
    if len(names) <= MAX_RANKED_SITES:
        return "site", {n: [n] for n in names}
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(supernet.model.block_of(n), []).append(n)
    return "block", groups


def error_ranking(supernet: Any, bits: int, data: CalibrationData) -> tuple[str, list[dict[str, Any]]]:
    """``(granularity, [{"name", "rel_mse"}, ...])``: each site's (or block's) relative denoiser output error with
    only it at ``bits``/``bits``, on calibration inputs, highest first."""
    model = supernet.model
    grid = data.timesteps
    picks = sorted({round(i * (len(grid) - 1) / max(1, RANKING_TIMESTEPS - 1)) for i in range(RANKING_TIMESTEPS)})
    batches = [(grid[i], data.inputs[i, :RANKING_SAMPLES]) for i in picks]
    granularity, groups = _groups(supernet)

    def outputs(candidate: Candidate) -> list[torch.Tensor]:
        with torch.no_grad(), supernet.assembled(candidate):
            return [
                model.predict_noise(x.to(model.device), t, model.condition_for(x.shape[0])).float() for t, x in batches
            ]

    names = supernet.sites
    reference = outputs(supernet.uniform(FP, FP))
    rows = []
    for group, members in groups.items():
        chosen = set(members)
        w = {n: (bits if n in chosen else FP) for n in names}
        out = outputs(Candidate.from_maps((0,), w, w))
        errs = [_relative(o, r) for o, r in zip(out, reference, strict=True)]
        rows.append({"name": group, "rel_mse": sum(errs) / len(errs)})
    rows.sort(key=lambda r: -r["rel_mse"])
    return granularity, [{"name": r["name"], "rel_mse": float(f"{r['rel_mse']:.4g}")} for r in rows]


def _relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).square().mean() / ref.square().mean().clamp_min(1e-12))


def calibration_report(
    supernet: Any, data: CalibrationData, range_check: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report of a calibrated ``supernet`` (see the module docstring); ``{"skipped": reason}`` when its model
    cannot sample. ``range_check`` (from :func:`range_w8a8_check`) is compared with this calibration's W8A8:
    :class:`CalibrationError` when this one is worse."""
    reason = report_unavailable(supernet.model)
    if reason is not None:
        return {"skipped": reason}
    start = time.perf_counter()
    seed = supernet.calib_settings.seed + HELDOUT_SEED_OFFSET
    n = REPORT_SAMPLES
    quality = uniform_quality(supernet, supernet.bit_options, n, seed)
    per_bits: dict[str, Any] = {}
    ranked = supernet.calib_settings.report_ranking
    granularity = _groups(supernet)[0]
    for b, q in quality.items():
        per_bits[str(b)] = {**q, "ranking": error_ranking(supernet, b, data)[1] if ranked else []}
    report: dict[str, Any] = {
        "schedule": _schedule(supernet),
        "samples": n,
        "noise_seed": seed,
        "ranking": (
            {"granularity": granularity, "timesteps": RANKING_TIMESTEPS, "samples": RANKING_SAMPLES}
            if ranked
            else {"skipped": "calibration.report_ranking is off"}
        ),
        "bits": per_bits,
        "settings": supernet.calib_settings.to_dict(),
    }
    aligned = supernet.calibration_metadata.get("grad_align")
    if aligned:
        report["grad_align"] = group_rows(aligned)
    if range_check is not None:
        mine = quality.get(CHECK_BITS)
        report["range_check"] = {**range_check, "passed": mine is not None and mine["mse"] <= range_check["mse"]}
    report["seconds"] = round(time.perf_counter() - start, 2)
    if range_check is not None and not report["range_check"]["passed"]:
        raise CalibrationError(
            f"the {supernet.calib_settings.strategy} calibration's uniform W{CHECK_BITS}A{CHECK_BITS} is worse than "
            f"the plain range fit's (image MSE {quality[CHECK_BITS]['mse']:.3g} against {range_check['mse']:.3g} on "
            f"held-out noise at {REPORT_STEPS} steps): not cached; try other calibration settings or strategy 'range'"
        )
    return report


def range_w8a8_check(model: Any, data: CalibrationData, supernet_settings: Any, calib_settings: Any) -> dict[str, Any]:
    """Image MSE/PSNR of the plain range fit's uniform W8A8 of ``model`` (strategy ``range``, the other settings as
    given) against FP, as :func:`calibration_report` measures its own; the model is left as it was."""
    from supernet.supernet import QuantSupernet

    start = time.perf_counter()
    settings = dataclasses.replace(calib_settings, strategy="range")
    supernet = QuantSupernet.build(model, (CHECK_BITS,), supernet_settings, settings)
    try:
        supernet.calibrate(data)
        q = uniform_quality(supernet, (CHECK_BITS,), REPORT_SAMPLES, calib_settings.seed + HELDOUT_SEED_OFFSET)
    finally:
        supernet.detach()
    return {**q[CHECK_BITS], "strategy": "range", "seconds": round(time.perf_counter() - start, 2)}
