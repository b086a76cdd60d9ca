"""The measured latency table: its prediction of a whole candidate's step on the compiled ``cpu-int8`` backend is
within 20 % of that step measured (a mix of 4/6/8-bit and FP sites, against a table anchored on uniform W8A8),
and it is measured once per machine, backend and batch size, then read from the cache."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from search.candidate import Candidate
from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.models import TESTBED_DIR, load_model
from supernet.runtime import cpu_int8_unavailable
from supernet.runtime.latency import (
    best_ms,
    get_or_measure_latency_table,
    latency_table_path,
    measure_latency_table,
)
from tests.torch_threads import one_torch_thread  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(cpu_int8_unavailable(compile=True) is not None, reason=str(cpu_int8_unavailable(True))),
]

BATCH = 16


def _mixed(sn, seed: int) -> Candidate:
    rng = random.Random(seed)
    blocks = sorted(set(sn.site_blocks.values()))
    bits = {b: (rng.choice((4, 6, 8, 16)), rng.choice((6, 8, 16))) for b in blocks}
    w = {s: bits[b][0] for s, b in sn.site_blocks.items()}
    a = {s: bits[b][1] for s, b in sn.site_blocks.items()}
    return Candidate.from_maps([700, 300], w, a)


def _measured_step_ms(path: Path) -> float:
    model = load(path, backend="cpu-int8").model
    x = torch.randn(BATCH, *model.sample_shape)
    return best_ms(lambda: model.predict_noise(x, 500), repeats=9)  # the first warm-up call compiles


def test_table_predicts_a_mixed_candidates_step_within_20_percent(tmp_path: Path) -> None:
    model = load_model(TESTBED_DIR)
    (shipped,) = (TESTBED_DIR / SHIPPED_DIR).iterdir()
    sn = load_supernet(shipped, model)
    table = get_or_measure_latency_table(sn, tmp_path / "cache", shipped.name, batch_size=BATCH)
    assert latency_table_path(tmp_path / "cache", shipped.name, "cpu-int8", BATCH).exists()
    assert table.batch_size == BATCH and table.kernel_bits == 8
    assert len(table.site_ms) == 64  # every conv/linear site of the testbed runs on an int8 kernel at W8A8
    assert table.base_ms > 0
    again = get_or_measure_latency_table(sn, tmp_path / "cache", shipped.name, batch_size=BATCH)
    assert again == table  # read back, not measured again (a re-measurement would differ in the noise)

    candidate = _mixed(sn, seed=3)
    classes = table.classes(candidate)
    assert {"fp", "int8"} <= set(classes.values())  # the mix exercises FP sites and int8 ones
    path = export_candidate(sn, candidate, tmp_path / "mix", scheduler_config=model.scheduler_config)
    measured = _measured_step_ms(path)
    predicted = table.step_ms(candidate)
    assert abs(predicted - measured) / measured < 0.20, (predicted, measured, table.anchor, table.base_ms)
    assert table.latency_ms(candidate) == pytest.approx(2 * predicted)


def test_only_backends_with_integer_kernels_are_priced() -> None:
    sn = load_supernet(next((TESTBED_DIR / SHIPPED_DIR).iterdir()), load_model(TESTBED_DIR))
    with pytest.raises(ValueError, match="reference"):
        measure_latency_table(sn, backend="reference")
