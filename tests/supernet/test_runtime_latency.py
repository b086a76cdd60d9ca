"""The measured latency table: its prediction of a whole candidate's step on the compiled ``cpu-int8`` backend is
within 20 % of that step measured (a mix of 4/6/8-bit and FP sites, against a table anchored on a uniform
candidate), and it is measured once per machine, backend and batch size, then read from the cache.

The mix is timed side by side with the table's anchor (interleaved calls in one process), and the prediction is
judged relative to the anchor: the table's own anchor time was taken minutes earlier, and on a shared machine the
load then and now can differ by more than the 20 % (seen in CI: the anchor timed at 74.8 ms, then 69 ms)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from search.candidate import Candidate
from search.latency import REFERENCE_CLASS
from supernet.artifact import SHIPPED_DIR, load_supernet
from supernet.export import export_candidate, load
from supernet.models import TESTBED_DIR, load_model
from supernet.runtime import cpu_int8_unavailable
from supernet.runtime.latency import (
    ANCHOR_STEPS,
    get_or_measure_latency_table,
    latency_table_path,
    measure_latency_table,
)
from supernet.runtime.measure import step_times
from supernet.sampling import uniform_schedule
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


def _side_by_side_ms(paths: dict[str, Path]) -> dict[str, float]:
    """The fastest step of each export, loaded on the backend and called in alternating order (the first call of
    each compiles)."""
    models = {key: load(path, backend="cpu-int8").model for key, path in paths.items()}
    x = torch.randn(BATCH, *next(iter(models.values())).sample_shape)
    times, _ = step_times(models, x, repeats=15)
    return {key: 1e3 * min(t) for key, t in times.items()}


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
    if table.reference_widths:  # a CPU without VNNI: its saturating widths are priced as float products of codes
        assert all(REFERENCE_CLASS in table.site_ms[s] for s in table.reference_widths)
    w_bits, a_bits = table.anchor["bits"]
    anchor = sn.uniform(w_bits, a_bits, tuple(uniform_schedule(ANCHOR_STEPS, model.num_train_timesteps)))
    assert table.step_ms(anchor) == pytest.approx(table.anchor["measured_ms"])  # the table reproduces its anchor
    paths = {
        key: export_candidate(sn, c, tmp_path / key, scheduler_config=model.scheduler_config)
        for key, c in (("mix", candidate), ("anchor", anchor))
    }
    measured = _side_by_side_ms(paths)
    predicted = table.step_ms(candidate) / table.anchor["measured_ms"]  # relative to the anchor, as measured
    ratio = measured["mix"] / measured["anchor"]
    assert abs(predicted - ratio) / ratio < 0.20, (predicted, ratio, measured, table.anchor, table.base_ms)
    assert table.latency_ms(candidate) == pytest.approx(2 * table.step_ms(candidate))


def test_only_backends_with_integer_kernels_are_priced() -> None:
    sn = load_supernet(next((TESTBED_DIR / SHIPPED_DIR).iterdir()), load_model(TESTBED_DIR))
    with pytest.raises(ValueError, match="reference"):
        measure_latency_table(sn, backend="reference")
