"""Predicted run-time latency of a candidate from a per-site table measured once per (machine, backend, batch).

A run-time backend has kernels at some widths only: ``cpu-int8`` runs every conv/linear site whose weights and
inputs have at most 8 bits on an int8 kernel (a site at 5 bits costs what one at 8 does), and a site left in FP on
float kernels. So a site's cost depends on its *kernel class*, not on its bits:

- ``fp``: weights or inputs in FP (or wider than the backend's kernels);
- ``int8``: an int8 kernel;
- ``int8-offset``: an int8 kernel plus the per-channel offset term that 8-bit asymmetric weights need;
- ``reference``: float products of the site's codes (the input rounded to its codes, then a float32 convolution
  or matmul), for the widths whose int8 products the CPU would saturate (one without VNNI: the table lists them
  per site in ``reference_widths``). It costs the ``fp`` class plus the rounding pass.

:class:`LatencyTable` holds, per priced site, the milliseconds of each class at the table's batch size, and a
``base_ms``: the rest of a denoiser step (norms, activations, attention, the sites it does not price), anchored so
that the table reproduces a measured step of a whole exported candidate. The prediction of one step is
``base_ms + Σ_sites site_ms[site][class]``; of a candidate, that times its K steps (the denoiser's work; the
decoder's pass is the same for every candidate). Torch-free: the search prices candidates with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from search.candidate import Candidate
from search.errors import InvalidCandidate
from search.spec import FP_OPTION

FP_CLASS = "fp"
INT8_CLASS = "int8"
INT8_OFFSET_CLASS = "int8-offset"
REFERENCE_CLASS = "reference"
KERNEL_CLASSES = (FP_CLASS, INT8_CLASS, INT8_OFFSET_CLASS, REFERENCE_CLASS)
LATENCY_TABLE_VERSION = 3


def kernel_class(w_bits: int, a_bits: int, kernel_bits: int, offset_at_widest: bool) -> str:
    """The kernel a site at ``w_bits``/``a_bits`` runs on when integer kernels exist up to ``kernel_bits``;
    ``offset_at_widest``: the site's weights at exactly ``kernel_bits`` are asymmetric (an offset term more)."""
    if w_bits == FP_OPTION or a_bits == FP_OPTION or w_bits > kernel_bits or a_bits > kernel_bits:
        return FP_CLASS
    if offset_at_widest and w_bits == kernel_bits:
        return INT8_OFFSET_CLASS
    return INT8_CLASS


@dataclass(frozen=True)
class LatencyTable:
    """Milliseconds per denoiser step, per site and kernel class, on one machine, backend and batch size.

    Attributes:
        backend: the run-time backend measured (``cpu-int8``).
        batch_size: images per denoiser call.
        machine: what it was measured on (CPU, threads, torch), for the record and the cache key.
        base_ms: the step's time outside the priced sites (anchored on ``anchor_ms``).
        site_ms: ``{site: {class: ms}}`` for every priced site; sites not in it (attention matmuls, cached
            time-embedding projections) are in ``base_ms``.
        offset_sites: sites whose weights at ``kernel_bits`` are asymmetric (the ``int8-offset`` class).
        reference_widths: per site, the ``(w_bits, a_bits)`` the backend runs in the ``reference`` class although
            both fit the kernel (on a CPU without VNNI, where their int8 products would saturate).
        kernel_bits: the widest integer kernel; narrower widths run on it.
        anchor: the uniform candidate whose measured step anchors ``base_ms``: its bits summary, its widths and
            that measurement, ``{"candidate": "W8A8", "bits": [8, 8], "measured_ms": ...}``.
    """

    backend: str
    batch_size: int
    machine: str
    base_ms: float
    site_ms: Mapping[str, Mapping[str, float]]
    offset_sites: frozenset[str] = frozenset()
    reference_widths: Mapping[str, frozenset[tuple[int, int]]] = field(default_factory=dict)
    kernel_bits: int = 8
    anchor: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        site_ms = {str(s): {str(k): float(v) for k, v in row.items()} for s, row in self.site_ms.items()}
        for site, row in site_ms.items():
            unknown = set(row) - set(KERNEL_CLASSES)
            if unknown:
                raise ValueError(f"site {site}: unknown kernel classes {sorted(unknown)}")
        object.__setattr__(self, "site_ms", site_ms)
        object.__setattr__(self, "offset_sites", frozenset(self.offset_sites))
        widths = {str(s): frozenset((int(w), int(a)) for w, a in pairs) for s, pairs in self.reference_widths.items()}
        object.__setattr__(self, "reference_widths", widths)
        object.__setattr__(self, "anchor", dict(self.anchor))

    def site_class(self, site: str, w_bits: int, a_bits: int) -> str:
        """The kernel class ``site`` runs in at ``w_bits``/``a_bits``."""
        if (w_bits, a_bits) in self.reference_widths.get(site, ()):
            return REFERENCE_CLASS
        return kernel_class(w_bits, a_bits, self.kernel_bits, site in self.offset_sites)

    def classes(self, candidate: Candidate) -> dict[str, str]:
        """``{site: kernel class}`` of the priced sites of ``candidate``."""
        w, a = candidate.w_map(), candidate.a_map()
        missing = sorted(set(self.site_ms) - set(w))
        if missing:
            raise InvalidCandidate(f"the latency table prices sites the candidate lacks: {missing[:3]}")
        return {s: self.site_class(s, w[s], a[s]) for s in sorted(self.site_ms)}

    def step_range(self, bit_options: Sequence[int]) -> tuple[float, float]:
        """The least and the most milliseconds one step can take when every site may take any of ``bit_options``
        for its weights and its inputs (time is not monotone in bits: a width the CPU cannot run on int8, or an
        offset term, may cost more than a wider one)."""
        low = high = self.base_ms
        for site, row in self.site_ms.items():
            classes = {self.site_class(site, w, a) for w in bit_options for a in bit_options}
            times = [row[c] for c in classes if c in row]
            if times:
                low, high = low + min(times), high + max(times)
        return low, high

    def step_ms(self, candidate: Candidate) -> float:
        """Predicted milliseconds of one denoiser step of ``candidate`` at :attr:`batch_size`."""
        total = self.base_ms
        for site, cls in self.classes(candidate).items():
            row = self.site_ms[site]
            if cls not in row:
                raise InvalidCandidate(f"site {site}: the latency table has no {cls!r} time (measured {sorted(row)})")
            total += row[cls]
        return total

    def latency_ms(self, candidate: Candidate) -> float:
        """Predicted milliseconds of ``candidate``'s K denoiser steps at :attr:`batch_size`."""
        return self.step_ms(candidate) * candidate.steps

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form."""
        return {
            "version": LATENCY_TABLE_VERSION,
            "backend": self.backend,
            "batch_size": self.batch_size,
            "machine": self.machine,
            "base_ms": self.base_ms,
            "site_ms": {s: dict(row) for s, row in self.site_ms.items()},
            "offset_sites": sorted(self.offset_sites),
            "reference_widths": {s: sorted([w, a] for w, a in pairs) for s, pairs in self.reference_widths.items()},
            "kernel_bits": self.kernel_bits,
            "anchor": dict(self.anchor),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`; ValueError for another format version."""
        if data.get("version") != LATENCY_TABLE_VERSION:
            raise ValueError(f"latency table version {data.get('version')!r} (expected {LATENCY_TABLE_VERSION})")
        return cls(
            backend=str(data["backend"]),
            batch_size=int(data["batch_size"]),
            machine=str(data["machine"]),
            base_ms=float(data["base_ms"]),
            site_ms=data["site_ms"],
            offset_sites=frozenset(data.get("offset_sites", ())),
            reference_widths={s: frozenset(tuple(p) for p in pairs) for s, pairs in data["reference_widths"].items()},
            kernel_bits=int(data.get("kernel_bits", 8)),
            anchor=data.get("anchor", {}),
        )
