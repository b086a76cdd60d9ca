"""The latency table's arithmetic: kernel classes from bits, a step as base plus the sites' class times, K steps,
its JSON form and the errors of a table that does not fit the candidate."""

from __future__ import annotations

from dataclasses import replace

import pytest

from search.candidate import Candidate
from search.errors import InvalidCandidate
from search.latency import FP_CLASS, INT8_CLASS, INT8_OFFSET_CLASS, REFERENCE_CLASS, LatencyTable, kernel_class

SITES = ("a", "b", "c")


def _table() -> LatencyTable:
    return LatencyTable(
        backend="cpu-int8",
        batch_size=8,
        machine="test cpu",
        base_ms=10.0,
        site_ms={
            "a": {FP_CLASS: 4.0, INT8_CLASS: 1.0, INT8_OFFSET_CLASS: 1.5},
            "b": {FP_CLASS: 2.0, INT8_CLASS: 1.0, REFERENCE_CLASS: 2.5},
        },
        offset_sites=frozenset({"a"}),
    )


@pytest.mark.parametrize(
    ("w", "a", "offset", "expected"),
    [
        (8, 8, False, INT8_CLASS),
        (8, 8, True, INT8_OFFSET_CLASS),
        (6, 8, True, INT8_CLASS),  # narrower weights centre on their zero-point: no offset term
        (4, 5, True, INT8_CLASS),
        (16, 8, False, FP_CLASS),
        (8, 32, True, FP_CLASS),
        (10, 8, False, FP_CLASS),  # wider than the kernels
    ],
)
def test_kernel_class(w: int, a: int, offset: bool, expected: str) -> None:
    assert kernel_class(w, a, 8, offset) == expected


def test_step_is_base_plus_site_classes_and_latency_scales_with_steps() -> None:
    table = _table()
    w = {"a": 8, "b": 16, "c": 4}
    a = {"a": 8, "b": 8, "c": 4}
    one = Candidate.from_maps([500], w, a)
    assert table.classes(one) == {"a": INT8_OFFSET_CLASS, "b": FP_CLASS}  # "c" is not priced: in base_ms
    assert table.step_ms(one) == pytest.approx(10.0 + 1.5 + 2.0)
    three = Candidate.from_maps([900, 500, 100], {**w, "a": 6}, a)
    assert table.latency_ms(three) == pytest.approx(3 * (10.0 + 1.0 + 2.0))


def test_widths_the_cpu_would_saturate_are_priced_as_float_products_of_codes() -> None:
    table = replace(_table(), reference_widths={"b": [(8, 8)]})  # "b" at W8A8: the reference, without VNNI
    at = {w: Candidate.from_maps([500], {"a": 6, "b": w, "c": 4}, {"a": 6, "b": 8, "c": 4}) for w in (6, 8, 16)}
    assert table.classes(at[8])["b"] == REFERENCE_CLASS
    assert table.classes(at[6])["b"] == INT8_CLASS
    assert table.classes(at[16])["b"] == FP_CLASS
    assert table.step_ms(at[8]) - table.step_ms(at[6]) == pytest.approx(2.5 - 1.0)
    assert table.step_ms(at[8]) - table.step_ms(at[16]) == pytest.approx(2.5 - 2.0)  # the rounding costs more than FP


def test_step_range_spans_every_width_not_just_the_uniform_corners() -> None:
    table = replace(_table(), reference_widths={"b": [(8, 8)]})  # "b" at W8A8 runs float products (no VNNI)
    low, high = table.step_range([4, 8])
    assert low == pytest.approx(10.0 + 1.0 + 1.0)  # "a" int8 (4 bits), "b" int8
    assert high == pytest.approx(10.0 + 1.5 + 2.5)  # "a" with its offset term (8 bits), "b" codes in float at W8A8
    w8 = Candidate.from_maps([500], {"a": 8, "b": 8, "c": 8}, {"a": 8, "b": 8, "c": 8})
    assert low <= table.step_ms(w8) <= high


def test_round_trip_and_errors() -> None:
    table = _table()
    assert LatencyTable.from_dict(table.to_dict()) == table
    wide = replace(table, reference_widths={"b": [(8, 8), (8, 7)]})
    assert LatencyTable.from_dict(wide.to_dict()) == wide
    with pytest.raises(ValueError, match="version"):
        LatencyTable.from_dict({**table.to_dict(), "version": 99})
    with pytest.raises(ValueError, match="unknown kernel classes"):
        LatencyTable(backend="cpu-int8", batch_size=1, machine="m", base_ms=0.0, site_ms={"a": {"int4": 1.0}})
    lacking = Candidate.from_maps([500], {"b": 8, "c": 8}, {"b": 8, "c": 8})
    with pytest.raises(InvalidCandidate, match="lacks"):
        table.step_ms(lacking)
    no_offset_time = Candidate.from_maps([500], {"a": 8, "b": 8}, {"a": 8, "b": 8})
    assert table.step_ms(no_offset_time) == pytest.approx(12.5)
    unmeasured = LatencyTable(
        backend="cpu-int8", batch_size=1, machine="m", base_ms=0.0, site_ms={"a": {INT8_CLASS: 1.0}},
        offset_sites=frozenset({"a"}),
    )  # fmt: skip
    with pytest.raises(InvalidCandidate, match="no 'int8-offset' time"):
        unmeasured.step_ms(no_offset_time)
