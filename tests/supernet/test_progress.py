"""Calibration progress: every phase and block boundary is reported, in order, ending in ``done``; a supernet loaded
instead of calibrated is reported once; an exception in the callback stops the calibration and corrupts nothing."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from pathlib import Path

import pytest
import torch

from supernet.artifact import META_FILE, SHIPPED_DIR, get_or_build_supernet
from supernet.calibration.settings import SWITCHES
from supernet.models import ModuleAdapter
from supernet.progress import PHASES, CalibrationProgress, ProgressTracker
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.testing import TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import random_testbed

KEYS = ["source", "bits", "bit_index", "bit_count", "phase", "round", "step", "total", "elapsed_s", "eta_s"]
#: Every TCAQ phase, as small as it gets: 3 grid timesteps, 2 samples, a few reconstruction steps, two PAR rounds.
ALL_PHASES = dataclasses.replace(
    TINY_CALIB,
    strategy="tcaq",
    samples=2,
    recon_samples=2,
    recon_iters=2,
    recon_batch=2,
    **{**dict.fromkeys(SWITCHES, False), "reconstruction": True, "par": True, "temporal_cache": True, "tcr": True},
)


class Recorder:
    def __init__(self, fail_at: tuple[str, int, int] | None = None) -> None:
        self.reports: list[CalibrationProgress] = []
        self.fail_at = fail_at  # (phase, bit_index, step)

    def __call__(self, progress: CalibrationProgress) -> None:
        self.reports.append(progress)
        if self.fail_at == (progress.phase, progress.bit_index, progress.step):
            raise KeyboardInterrupt("cancelled")  # what a cancel looks like to calibration: not an Exception


def _check_monotone(reports: list[CalibrationProgress]) -> None:
    assert all(list(r.to_dict()) == KEYS for r in reports)
    assert all(r.source == "calibrating" and r.phase in PHASES for r in reports)
    for a, b in itertools.pairwise(reports):
        assert b.bit_index >= a.bit_index and b.elapsed_s >= a.elapsed_s, (a, b)
    assert reports[-1].phase == "done" and reports[-1].eta_s == 0.0
    assert all(r.eta_s is None or r.eta_s >= 0 for r in reports)


def test_a_calibration_reports_every_phase_in_order_and_a_load_reports_once(tmp_path: Path) -> None:
    recorder = Recorder()
    model = random_testbed(0)
    sn = get_or_build_supernet(model, (4, 8), None, TINY_CALIB, tmp_path, batch_size=4, progress=recorder)
    reports = recorder.reports
    _check_monotone(reports)
    steps = [(r.phase, r.bits, r.step, r.total) for r in reports]
    assert steps == [
        ("trajectories", None, 0, 1),
        ("trajectories", None, 1, 1),
        ("prepare", None, 0, 1),
        ("prepare", None, 1, 1),
        ("ranges", 4, 0, 1),
        ("ranges", 4, 1, 1),
        ("ranges", 8, 0, 1),
        ("ranges", 8, 1, 1),
        ("done", 8, 1, 1),
    ]
    assert [r.bit_index for r in reports] == [0, 0, 0, 0, 0, 0, 1, 1, 1] and {r.bit_count for r in reports} == {2}
    # nothing of the bit options done yet: the estimate made before calibrating, running down
    estimate = sn.calibration_metadata["estimate"]
    assert set(estimate["per_bits"]) == {"4", "8"} and estimate["seconds"] > 0
    assert reports[0].eta_s == pytest.approx(max(0.0, estimate["seconds"] - reports[0].elapsed_s), abs=0.2)
    assert all(r.eta_s is not None for r in reports)
    # where the time went, per bit option and phase: it adds up to each option's calibration time
    phases = sn.calibration_metadata["phase_seconds"]
    assert set(phases) == {"-", "4", "8"} and set(phases["-"]) >= {"trajectories", "prepare"}
    for bits, seconds in sn.calibration_seconds.items():
        assert set(phases[str(bits)]) <= {"other", "ranges"} and "ranges" in phases[str(bits)]
        assert sum(phases[str(bits)].values()) == pytest.approx(seconds, abs=0.05 + 0.1 * seconds)
    sn.detach()

    again = Recorder()
    get_or_build_supernet(model, (4, 8), None, TINY_CALIB, tmp_path, batch_size=4, progress=again).detach()
    assert [r.to_dict() | {"elapsed_s": 0.0} for r in again.reports] == [
        {**dict.fromkeys(KEYS), "source": "cache", "bit_index": 0, "bit_count": 2, "phase": "done"}
        | {"step": 1, "total": 1, "elapsed_s": 0.0, "eta_s": 0.0}
    ]


def test_every_tcaq_phase_is_reported_with_blocks_and_rounds(tmp_path: Path) -> None:
    recorder = Recorder()
    sn = get_or_build_supernet(random_testbed(0), (4,), None, ALL_PHASES, tmp_path, batch_size=2, progress=recorder)
    reports = recorder.reports
    _check_monotone(reports)
    phases = [r.phase for r in reports]
    assert phases[:6] == ["trajectories", "trajectories", "prepare", "prepare", "ranges", "ranges"]
    assert phases[-3:] == ["temporal", "temporal", "done"]
    recon = [r for r in reports if r.phase == "reconstruction"]
    blocks = recon[0].total
    assert blocks > 5 and [r.round for r in recon] == [1] * (blocks + 1) + [2] * (blocks + 1)
    assert [r.step for r in recon] == list(range(blocks + 1)) * 2  # block i of n, per round
    par = [r for r in reports if r.phase == "par-trajectories"]
    assert [(r.round, r.step) for r in par] == [(2, 0), (2, 1)]
    assert phases.index("par-trajectories") > phases.index("reconstruction")  # between the rounds
    # the plan (1 ranges + 2 rounds x blocks + 1 resample + 1 temporal) is what was done: the ETA runs down to 0
    last = reports[-2]
    assert last.phase == "temporal" and last.step == 1 and last.eta_s == pytest.approx(0.0, abs=1e-3)
    sn.detach()


def test_a_shipped_supernet_is_reported_as_shipped(tmp_path: Path) -> None:
    data = random_data(TOY_SHAPE, n=8)
    get_or_build_supernet(toy_net(), (4,), None, TINY_CALIB, tmp_path / "build", data=data).detach()
    entry = next(p for p in (tmp_path / "build").iterdir() if (p / META_FILE).is_file())
    model_dir = tmp_path / "model"
    shutil.copytree(entry, model_dir / SHIPPED_DIR / entry.name)
    recorder = Recorder()
    model = ModuleAdapter(toy_net(), sample_shape=TOY_SHAPE, path=model_dir)
    get_or_build_supernet(model, (4,), None, TINY_CALIB, tmp_path / "cache", data=data, progress=recorder)
    assert [(r.source, r.phase) for r in recorder.reports] == [("shipped", "done")]


@pytest.mark.parametrize("fail_at", [("ranges", 1, 0), ("done", 1, 1)])
def test_an_exception_in_the_callback_propagates_and_corrupts_nothing(
    tmp_path: Path, fail_at: tuple[str, int, int]
) -> None:
    model = random_testbed(0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = model.predict_noise(x, 300)
    with pytest.raises(KeyboardInterrupt, match="cancelled"):
        get_or_build_supernet(model, (4, 8), None, TINY_CALIB, tmp_path, batch_size=4, progress=Recorder(fail_at))
    # nothing cached but the reusable FP trajectories; the model is unwrapped and computes as before
    assert not [p for p in tmp_path.iterdir() if (p / META_FILE).exists()]
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]  # no half-written artifact
    assert not any(isinstance(m, QuantWeightLayer) for m in model.denoiser.modules())
    with torch.no_grad():
        assert torch.equal(model.predict_noise(x, 300), before)
    # and the next request calibrates as usual, reusing the collected trajectories
    recorder = Recorder()
    sn = get_or_build_supernet(model, (4, 8), None, TINY_CALIB, tmp_path, batch_size=4, progress=recorder)
    assert sn.calibrated and recorder.reports[0].phase == "prepare" and recorder.reports[-1].phase == "done"
    sn.detach()


def test_the_eta_is_the_rate_so_far_times_the_units_left() -> None:
    now = [0.0]
    seen: list[CalibrationProgress] = []
    tracker = ProgressTracker(seen.append, (4, 8), clock=lambda: now[0])
    now[0] = 10.0  # trajectories and prepare: not part of the rate
    tracker.begin_bits(0, 4)
    tracker.plan(4)
    tracker.report("reconstruction", 0, 4, round=1)
    assert seen[-1].eta_s is None and seen[-1].elapsed_s == 10.0
    now[0] = 12.0
    tracker.report("reconstruction", 1, 4, round=1)  # 1 of 8 units in 2 s: 7 left, 14 s
    assert seen[-1].eta_s == 14.0
    now[0] = 18.0
    tracker.end_bits()  # 4 of 8 in 8 s
    tracker.begin_bits(1, 8)
    tracker.report("ranges", 0, 1)
    assert (seen[-1].bits, seen[-1].bit_index, seen[-1].eta_s) == (8, 1, 8.0)
    assert tracker.phase_seconds() == {"4": {"other": 10.0, "reconstruction": 2.0}, "8": {"other": 6.0}}
    silent = ProgressTracker(None, (4,))
    silent.report("ranges", 1, 1)  # no callback: nothing to call, nothing raised
    with pytest.raises(ValueError, match="phase"):
        CalibrationProgress("calibrating", None, 0, 1, "warming-up", None, 0, 1, 0.0, None)


def test_before_any_unit_the_eta_is_the_estimate_less_the_time_elapsed() -> None:
    now = [0.0]
    seen: list[CalibrationProgress] = []
    tracker = ProgressTracker(seen.append, (4, 8), clock=lambda: now[0])
    tracker.report("trajectories", 0, 1)
    assert seen[-1].eta_s is None  # no estimate: nothing to say yet
    tracker.expect(60.0)
    now[0] = 5.0
    tracker.report("trajectories", 1, 1)
    assert seen[-1].eta_s == 55.0
    tracker.begin_bits(0, 4)
    tracker.plan(2)
    now[0] = 70.0
    tracker.report("ranges", 0, 1)
    assert seen[-1].eta_s == 0.0  # over the estimate: never negative
    now[0] = 75.0
    tracker.report("ranges", 1, 1)  # a unit done: the measured rate takes over (70 s a unit, 3 of 4 left)
    assert seen[-1].eta_s == 210.0
    assert tracker.phase_seconds() == {"-": {"other": 0.0, "trajectories": 5.0}, "4": {"other": 65.0, "ranges": 5.0}}
