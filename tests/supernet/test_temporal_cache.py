"""TFMQ-DM's cache of quantized temporal features (calibration switch ``temporal_cache``): off by default and keyed,
the cached rows are the FP features quantized per timestep, the per-projection choice follows the lower error, and
saved/loaded supernets and exports sample exactly like the assembled candidate."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from search.candidate import Candidate
from supernet.artifact import META_FILE, TENSORS_FILE
from supernet.calibration import CalibrationSettings
from supernet.calibration.settings import SWITCHES
from supernet.export import QUANT_CONFIG_FILE, export_candidate, load
from supernet.identity import artifact_name
from supernet.models import NoiseSchedule
from supernet.sampling import Sampler
from supernet.settings import SupernetSettings
from supernet.supernet import QuantSupernet
from supernet.testing import TESTBED_SHAPE, TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import TESTBED_DIR
from supernet.zoo.testbed import testbed_scheduler as make_scheduler
from supernet.zoo.testbed import testbed_unet as make_testbed

#: Every TCAQ switch off (the range baseline) but the cache; min-max ranges, so a row can be checked by hand.
CACHE = dataclasses.replace(
    TINY_CALIB, strategy="tcaq", act_method="minmax", **{**dict.fromkeys(SWITCHES, False), "temporal_cache": True}
)
GRID = (999, 500, 0)
ZEROED = "mid_block.resnets.1.time_emb_proj"  # weight zeroed: the computed path is exact, the cache is not
CHECKED = "up_blocks.1.resnets.0.time_emb_proj"
SCHEDULER = dict(make_scheduler().config)


def model() -> torch.nn.Module:
    unet = make_testbed(0).eval()
    with torch.no_grad():
        unet.get_submodule(ZEROED).weight.zero_()
    return unet


@pytest.fixture(scope="module")
def supernet() -> QuantSupernet:
    sn = QuantSupernet.build(model(), (4, 8), calib_settings=CACHE)
    sn.calibrate(random_data(TESTBED_SHAPE, grid=GRID))
    return sn


def mixed(sn: QuantSupernet, timesteps: tuple[int, ...] = (950, 640, 123, 7)) -> Candidate:
    rng = random.Random(3)
    w = {s: rng.choice(sn.bit_options) for s in sn.sites}
    a = {s: rng.choice(sn.bit_options) for s in sn.sites}
    return Candidate.from_maps(timesteps, w, a)


def samples(sn: QuantSupernet, candidate: Candidate, n: int = 2, seed: int = 5) -> torch.Tensor:
    sampler = Sampler(sn.model, schedule=NoiseSchedule.from_config(SCHEDULER))
    with sn.assembled(candidate):
        return sampler.sample(candidate.timesteps, n, seed)


def _tables(sn: QuantSupernet) -> dict[str, dict]:
    """``{linear/conv site: its temporal tables by width}`` (copies of the dicts, same table objects)."""
    return {n: dict(sn.site(n).temporal) for n in sn.sites if hasattr(sn.site(n), "temporal")}


def fp_feature(site: str, t: int) -> torch.Tensor:
    """The FP model's output of ``site`` at timestep ``t`` in an ordinary forward pass."""
    unet, seen = model(), []
    unet.get_submodule(site).register_forward_hook(lambda _m, _i, out: seen.append(out[0].clone()))
    with torch.no_grad():
        unet(torch.zeros(1, *TESTBED_SHAPE), t)
    return seen[0]


def test_switch_is_off_by_default_keyed_and_leaves_existing_keys_alone() -> None:
    s = CalibrationSettings()
    assert "temporal_cache" in SWITCHES and not s.temporal_cache
    on = dataclasses.replace(s, temporal_cache=True)
    assert on.key() != s.key() and on.to_dict()["temporal_cache"] is True
    assert CalibrationSettings.from_dict(on.to_dict()) == on and CalibrationSettings.from_dict(s.to_dict()) == s
    # off, the key is the one artifacts were cached and shipped under before the switch existed
    assert "temporal_cache" not in s.to_dict()
    shipped = next((TESTBED_DIR / "tmpq-supernets").iterdir())
    meta = json.loads((shipped / META_FILE).read_text())
    assert CalibrationSettings.from_dict(meta["calibration"]) == s
    assert artifact_name(meta["model_hash"], meta["bit_options"], SupernetSettings(), s) == shipped.name


def test_a_model_without_projections_is_reported_and_left_alone() -> None:
    sn = QuantSupernet.build(toy_net(), (4,), calib_settings=CACHE, sample_shape=TOY_SHAPE)
    sn.calibrate(random_data(TOY_SHAPE))
    assert sn.calibration_metadata["temporal_cache"]["W4A4"] == {
        "sites": {},
        "skipped": "the model has no time embedding tmpq knows",
    }
    assert all(not sn.site(n).temporal for n in sn.sites)


def test_cached_rows_are_the_fp_features_quantized_per_timestep(supernet: QuantSupernet) -> None:
    table = supernet.site(CHECKED).temporal[4]
    assert table.timesteps == tuple(range(1000)) and table.bits == 4
    for t in (123, 999):  # off and on the calibration grid: every training timestep has its own row
        f = fp_feature(CHECKED, t)
        lo, hi = min(float(f.min()), 0.0), max(float(f.max()), 0.0)  # asymmetric min-max over this t alone
        scale = (hi - lo) / 15
        zp = round(-lo / scale)
        expected = ((f / scale).round() + zp).clamp(0, 15).sub(zp).mul(scale)
        torch.testing.assert_close(table.row(t), expected, rtol=0, atol=1e-5)
        assert len(torch.unique(table.row(t))) <= 16 and not torch.allclose(table.row(t), f, atol=1e-4)
    assert not torch.equal(table.row(123), table.row(124))


def test_the_choice_follows_the_lower_error_and_is_recorded(supernet: QuantSupernet) -> None:
    report = supernet.calibration_metadata["temporal_cache"]
    assert set(report) == {"W4A4", "W8A8"}
    projections = {n for n in supernet.sites if n.endswith("time_emb_proj")}
    for label, bits in (("W4A4", 4), ("W8A8", 8)):
        rows = report[label]["sites"]
        assert set(rows) == projections and report[label]["num_train_timesteps"] == 1000
        for name, row in rows.items():
            assert row["bits"] == bits
            assert row["choice"] == ("cache" if row["mse_cache"] < row["mse_computed"] else "computed")
            assert (bits in supernet.site(name).temporal) == (row["choice"] == "cache")
        # the zeroed projection computes its bias exactly; quantizing that bias per timestep cannot beat it
        assert rows[ZEROED]["mse_computed"] == 0.0 < rows[ZEROED]["mse_cache"]
        assert rows[ZEROED]["choice"] == "computed"
    assert any(r["choice"] == "cache" for r in report["W8A8"]["sites"].values())


def test_the_assembled_site_reads_its_row_and_forward_changes_nothing(supernet: QuantSupernet) -> None:
    seen: list[torch.Tensor] = []
    handle = supernet.site(CHECKED).register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))
    x = torch.randn(3, *TESTBED_SHAPE, generator=torch.Generator().manual_seed(0))
    try:
        with supernet.assembled(supernet.uniform(4, 4, (123,))), torch.no_grad():
            assert supernet.site(CHECKED).cached and not supernet.site(ZEROED).cached
            before = _tables(supernet)
            supernet.denoiser(x, 123)
            assert _tables(supernet) == before
        with torch.no_grad():
            supernet.denoiser(x, 123)  # FP again
    finally:
        handle.remove()
    assert torch.equal(seen[0], supernet.site(CHECKED).temporal[4].row(123).expand(3, -1))
    torch.testing.assert_close(seen[1][0], fp_feature(CHECKED, 123), rtol=0, atol=1e-5)


def test_a_saved_and_loaded_supernet_samples_identically(supernet: QuantSupernet, tmp_path: Path) -> None:
    path = supernet.save(tmp_path / "art")
    meta = json.loads((path / META_FILE).read_text())
    cached = {n: sorted(tables) for n, tables in _tables(supernet).items() if tables}
    assert {n: sorted(int(b) for b in v) for n, v in meta["temporal_cache"]["sites"].items()} == cached
    assert meta["temporal_cache"]["num_train_timesteps"] == 1000
    assert not [k for k in load_file(str(path / TENSORS_FILE)) if "temporal" in k]  # rebuilt, not stored
    loaded = QuantSupernet.load(path, model())
    for name, widths in cached.items():
        for b in widths:
            assert torch.equal(loaded.site(name).temporal[b].rows.codes, supernet.site(name).temporal[b].rows.codes)
            assert torch.equal(loaded.site(name).temporal[b].values, supernet.site(name).temporal[b].values)
    for candidate in (mixed(supernet), supernet.uniform(4, 4, (900, 123, 7))):
        assert torch.equal(samples(loaded, candidate), samples(supernet, candidate))


def test_an_export_samples_identically_and_carries_only_its_timesteps(supernet: QuantSupernet, tmp_path: Path) -> None:
    candidate = mixed(supernet)
    out = export_candidate(supernet, candidate, tmp_path / "export", scheduler_config=SCHEDULER)
    qcfg = json.loads((out / QUANT_CONFIG_FILE).read_text())
    a = candidate.a_map()
    expected = {n for n, tables in _tables(supernet).items() if a[n] in tables}
    assert expected, "the candidate reads at least one cached table"
    carried = {n: e["temporal_cache"] for n, e in qcfg["sites"].items() if "temporal_cache" in e}
    assert set(carried) == expected
    for name, entry in carried.items():
        assert entry["bits"] == a[name] and entry["timesteps"] == list(candidate.timesteps)
        assert entry["shape"][0] == len(candidate.timesteps)
    pipe = load(out)
    assert torch.equal(pipe.sample(2, seed=5), samples(supernet, candidate))
