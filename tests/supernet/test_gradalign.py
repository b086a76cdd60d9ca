"""Gradient-aligned calibration (:mod:`supernet.calibration.gradalign`): the settings, the outer step's direction,
the learned weights on a real tiny calibration, the switch off leaving the reconstruction as it was, and the weights
saved with the artifact and shown per timestep group in its report."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from search.errors import ConfigError
from supernet.artifact import get_or_build_supernet, load_supernet
from supernet.calibration import CalibrationSettings
from supernet.calibration.estimate import GRAD_ALIGN_OUTER, estimate_from_forward
from supernet.calibration.gradalign import GradAlignOptions, SampleWeights, group_rows, mean_pairwise_cosine
from supernet.calibration.settings import KEY_STABLE_DEFAULTS
from supernet.catalog import list_supernets
from supernet.supernet import QuantSupernet
from supernet.testing import TOY_SHAPE, params_key, random_data, toy_net
from supernet.zoo.testbed import random_testbed
from tests.supernet.test_reconstruction import RECON_ONLY

#: Reconstruction alone on the toy net (``test_reconstruction``'s, shorter).
RECON = dataclasses.replace(RECON_ONLY, recon_iters=40)
#: The same with the weights learned: 2 of each timestep's 16 samples held out, one group per grid timestep.
ALIGNED = dataclasses.replace(RECON, grad_align=True, grad_align_every=2, grad_align_groups=3, grad_align_holdout=0.125)


def test_settings_default_off_keep_old_keys_and_name_the_bad_field() -> None:
    s = CalibrationSettings()
    assert not s.grad_align and s.grad_align_groups == 5 and s.grad_align_holdout == 0.05
    for name, old in KEY_STABLE_DEFAULTS.items():
        if name.startswith("grad_align"):
            assert getattr(s, name) == old and name not in s.to_dict()  # the cache keys of shipped supernets hold
    on = dataclasses.replace(s, grad_align=True, grad_align_lr=0.5)
    assert on.to_dict()["grad_align"] is True and on.key() != s.key()
    assert CalibrationSettings.from_dict(on.to_dict()) == on and CalibrationSettings.from_dict(s.to_dict()) == s
    for field, bad in (
        ("grad_align", "yes"),
        ("grad_align_lr", -0.1),
        ("grad_align_lr", float("inf")),
        ("grad_align_holdout", 0.0),
        ("grad_align_holdout", 0.9),
        ("grad_align_groups", 1),
        ("grad_align_groups", 2.5),
        ("grad_align_every", 0),
    ):
        with pytest.raises(ConfigError) as err:
            CalibrationSettings(**{field: bad})
        assert err.value.field == field, (field, bad)


def test_the_outer_step_raises_the_lookahead_alignment_of_conflicting_groups() -> None:
    """Three timesteps with their own targets: a score update makes the group gradients after the lookahead step
    more aligned than they were, every time."""
    gen = torch.Generator().manual_seed(0)
    index = torch.arange(3).repeat_interleave(8)
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64)
    mix = (
        torch.randn(24, 5, generator=gen, dtype=torch.float64) * 0.3 + torch.randn(3, 5, generator=gen).double()[index]
    )
    y = torch.randn(3, generator=gen).double()[index]
    theta = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = 0.01

    def errors(th: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return ((mix[pos] * torch.tanh(x[pos] * th)).sum(1) - y[pos]).square()

    weights = SampleWeights(GradAlignOptions(lr=0.02, holdout=0.25, groups=3, every=1, seed=0), (900, 500, 100))
    assert weights.bind(index) and weights.train_size == 18
    assert weights.scores is not None
    weights.scores = weights.scores.double()

    def lookahead_alignment(sel: torch.Tensor) -> float:
        assert weights.scores is not None
        th = theta.detach().requires_grad_()
        w = torch.softmax(weights.scores[sel], 0)
        (g,) = torch.autograd.grad((w * errors(th, sel)).sum(), th)
        ahead = (th - alpha * g).detach().requires_grad_()
        grads = [torch.autograd.grad(errors(ahead, pos).mean(), ahead)[0] for pos in weights._heldout]
        return float(mean_pairwise_cosine(grads))

    for _ in range(20):
        sel = weights.draw(8, gen)
        before = lookahead_alignment(sel)
        loss, batch_scores = weights.weighted_loss(errors(theta, sel), sel, track=True)
        (g_inner,) = weights.outer_step(
            loss, batch_scores, sel, [theta], 1, [alpha], lambda pos: errors(theta, pos).mean()
        )
        assert g_inner is not None and torch.allclose(g_inner, torch.autograd.grad(loss, theta)[0])
        assert lookahead_alignment(sel) > before
    w = weights.distribution()
    assert float(w.sum()) == pytest.approx(1.0) and bool((w > 0).all()) and float(w.max() / w.min()) > 1.01


def _calibrated(settings: CalibrationSettings) -> QuantSupernet:
    sn = QuantSupernet.build(toy_net(), (3,), calib_settings=settings, sample_shape=TOY_SHAPE)
    sn.calibrate(random_data(TOY_SHAPE, n=16))
    return sn


def test_learned_weights_are_a_distribution_that_moves_from_uniform() -> None:
    sn = _calibrated(ALIGNED)
    rec = sn.calibration_metadata["grad_align"]["W3A3"]
    assert rec["train_samples"] == 42 and rec["heldout_per_timestep"] == 2
    assert [g["timesteps"] for g in rec["groups"]] == [[900, 900], [500, 500], [100, 100]]
    assert sum(g["share"] for g in rec["groups"]) == pytest.approx(1.0, abs=1e-3)
    flat = [w for row in rec["weights"] for w in row if w is not None]
    assert len(flat) == 42 and sum(row.count(None) for row in rec["weights"]) == 6
    assert all(w > 0 for w in flat) and sum(flat) / len(flat) == pytest.approx(1.0, abs=1e-3)  # relative to uniform
    assert max(flat) / min(flat) > 1.5  # moved from uniform: the toy's timesteps pull its rounding apart
    assert rec["effective_samples"] < 42
    assert [b["block"] for b in rec["blocks"]] == ["conv", "fc"] and all(b["outer_steps"] == 20 for b in rec["blocks"])
    report = sn.calibration_metadata["reconstruction"]["W3A3"]["round_1"]
    assert all(b["steps"] == 40 for b in report.values())


def _digest(sn: QuantSupernet) -> str:
    """sha256 of every weight code, scale and zero-point, every activation table and every block's losses."""
    h = hashlib.sha256()
    for name in sn.sites:
        site = sn.site(name)
        for bits, qt in sorted(getattr(site, "slots", {}).items()):
            for t in (qt.codes, qt.params.scale, qt.params.zero_point):
                h.update(f"{name}/{bits}".encode() + t.detach().cpu().contiguous().numpy().tobytes())
        for q in site.act_quantizers():
            for bits, table in sorted(q.tables.items()):
                h.update(f"{q.key}/{bits}".encode() + repr([params_key(p) for p in table]).encode())
    for label, rounds in sorted(sn.calibration_metadata["reconstruction"].items()):
        for r, blocks in sorted(rounds.items()):
            for block, rep in blocks.items():
                h.update(repr((label, r, block, {k: v for k, v in rep.items() if k != "seconds"})).encode())
    return h.hexdigest()


def test_the_switch_off_reconstructs_exactly_as_before() -> None:
    """Off, nothing of the method runs: no weights recorded, and its knobs change no bit of the calibration. (That
    the off path is bit-identical to the code before the switch existed was checked once against commit 59467bd on
    the machine it was written on; a digest recorded there would not hold on a CPU whose kernels round otherwise.)"""
    off = _calibrated(RECON)
    assert "grad_align" not in off.calibration_metadata and not off.calibration_metadata["switches"]["grad_align"]
    knobs = dataclasses.replace(RECON, grad_align_lr=1.0, grad_align_every=1, grad_align_groups=2)
    assert _digest(_calibrated(knobs)) == _digest(off)
    assert _digest(_calibrated(ALIGNED)) != _digest(off)  # the digest sees what the switch changes


def test_the_weights_are_saved_with_the_artifact_and_shown_per_group_in_its_report(tmp_path: Path) -> None:
    small = dict.fromkeys(("samples", "recon_samples", "recon_batch", "recon_iters"), 4)
    settings = dataclasses.replace(RECON, **small, grad_align=True, grad_align_holdout=0.25)
    sn = get_or_build_supernet(random_testbed(0), (4,), None, settings, tmp_path, batch_size=4)
    meta = sn.calibration_metadata
    rows = meta["report"]["grad_align"]
    assert rows == group_rows(meta["grad_align"]) and list(rows) == ["W4A4"]
    assert [r["t"] for r in rows["W4A4"]] == [[999, 999], [500, 500], [0, 0]]  # min(5 groups, 3 timesteps)
    sn.detach()
    (entry,) = list_supernets(tmp_path, [])
    assert entry.report["grad_align"] == rows  # what `tmpq supernets --json` shows
    loaded = load_supernet(entry.path, random_testbed(0))
    assert loaded.calibration_metadata["grad_align"] == meta["grad_align"]
    loaded.detach()


def test_the_estimate_counts_the_outer_steps() -> None:
    s = CalibrationSettings()
    off, on = (estimate_from_forward(1e-3, (4, 8), x, blocks=10) for x in (s, dataclasses.replace(s, grad_align=True)))
    ratio = on.phases["reconstruction"] / off.phases["reconstruction"]
    assert 1.0 < ratio < 1.0 + GRAD_ALIGN_OUTER / s.grad_align_every
    assert on.phases["ranges"] == off.phases["ranges"]
