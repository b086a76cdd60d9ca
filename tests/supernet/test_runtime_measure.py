"""What an export holds in memory (tensor bytes) and the measurement record's JSON form. The timed measurement
itself runs for real in the server's measure tests (tests/server/test_measure_route.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.models import TESTBED_DIR, load_model
from supernet.runtime import cpu_int8_unavailable
from supernet.runtime.measure import RuntimeMeasurement, denoiser_bytes
from supernet.sampling import uniform_schedule


@pytest.fixture(scope="module")
def w6a6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = load_model(TESTBED_DIR)
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    sn = load_supernet(shipped, model)
    out = tmp_path_factory.mktemp("exports") / "w6a6"
    return export_candidate(
        sn, sn.uniform(6, 6, uniform_schedule(4, 1000)), out, scheduler_config=model.scheduler_config
    )


def test_fp_bytes_are_its_parameters_and_buffers() -> None:
    denoiser = load_model(TESTBED_DIR).denoiser
    expected = sum(t.numel() * t.element_size() for t in [*denoiser.parameters(), *denoiser.buffers()])
    assert denoiser_bytes(denoiser) == expected


@pytest.mark.skipif(cpu_int8_unavailable() is not None, reason=str(cpu_int8_unavailable()))
def test_int8_sites_keep_only_their_packed_weights(w6a6: Path) -> None:
    fp = denoiser_bytes(load_model(TESTBED_DIR).denoiser)
    reference = denoiser_bytes(load(w6a6).denoiser)
    fast = load(w6a6, backend="cpu-int8", compile=False)
    assert set(fast.backend_report.values()) <= {"int8"}  # W6A6: every site int8, on any x86 CPU
    int8 = denoiser_bytes(fast.denoiser)
    # reference: the float weights (4 bytes each) and their 6-bit codes (1 byte); cpu-int8: 1 byte per weight plus
    # the float tensors that are no site's (norms, biases, the time embedding's tables)
    assert fp < reference < 1.4 * fp, (fp, reference)
    assert int8 < 0.5 * fp, (int8, fp)


def test_measurement_round_trip_and_ratios() -> None:
    m = RuntimeMeasurement(
        backend="cpu-int8", batch_size=64, threads=1, steps=10, reference_steps=100, step_ms=50.0, fp_step_ms=75.0,
        sample_ms=600.0, fp_sample_ms=8000.0, peak_rss_bytes=90, fp_peak_rss_bytes=100, weight_bytes=1,
        fp_weight_bytes=4, repeats=9, machine="m", measured_at="2026-12-06T00:00:00+00:00",
    )  # fmt: skip
    data = m.to_dict()
    assert data["speedup_per_step"] == 1.5 and data["speedup_vs_reference"] == pytest.approx(13.333, abs=1e-3)
    assert data["memory_ratio"] == 0.9
    assert RuntimeMeasurement.from_dict(data) == m
    with pytest.raises(ValueError, match="version"):
        RuntimeMeasurement.from_dict({**data, "version": 0})
    with pytest.raises(ValueError, match="lacks"):
        RuntimeMeasurement.from_dict({k: v for k, v in data.items() if k != "step_ms"})
