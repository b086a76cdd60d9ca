"""A search candidate: a K-step schedule plus per-site weight/activation bit-widths.

Plain, frozen and torch-free, so the search, the workers and the store all share it. ``key()`` is stable
across processes and versions of Python: it is the identity used to deduplicate and cache evaluations.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from search.errors import InvalidCandidate

CANDIDATE_VERSION = 1

#: Bit-widths that mean "leave this tensor in floating point".
FP_BITS = (16, 32)


@dataclass(frozen=True)
class Candidate:
    """One point of the joint space.

    Attributes:
        timesteps: the kept timesteps, strictly descending (the order sampling runs them in).
        weight_bits: ``(site, bits)`` pairs sorted by site name. For an attention matmul site (``.qk``/``.pv``)
            this is the bit-width of the second operand (K, V).
        act_bits: ``(site, bits)`` pairs for the same sites: the input activation (Q, softmax probabilities).
    """

    timesteps: tuple[int, ...]
    weight_bits: tuple[tuple[str, int], ...]
    act_bits: tuple[tuple[str, int], ...]
    _key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ts = tuple(int(t) for t in self.timesteps)
        if not ts:
            raise InvalidCandidate("timesteps: empty schedule")
        if any(t < 0 for t in ts):
            raise InvalidCandidate(f"timesteps: negative timestep in {list(ts)}")
        if any(a <= b for a, b in itertools.pairwise(ts)):
            raise InvalidCandidate(f"timesteps: not strictly descending: {list(ts)}")
        wb = tuple(sorted((str(s), int(b)) for s, b in self.weight_bits))
        ab = tuple(sorted((str(s), int(b)) for s, b in self.act_bits))
        if [s for s, _ in wb] != [s for s, _ in ab]:
            raise InvalidCandidate("weight_bits and act_bits must name the same sites")
        if len({s for s, _ in wb}) != len(wb):
            raise InvalidCandidate("a site is named twice")
        for s, b in (*wb, *ab):
            if not (2 <= b <= 8 or b in FP_BITS):
                raise InvalidCandidate(f"site {s}: bit-width {b} is not in 2..8 or {FP_BITS}")
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "weight_bits", wb)
        object.__setattr__(self, "act_bits", ab)
        payload = json.dumps(self._canonical(), separators=(",", ":"), sort_keys=True)
        object.__setattr__(self, "_key", hashlib.sha256(payload.encode()).hexdigest()[:20])

    @classmethod
    def uniform(cls, timesteps: Iterable[int], sites: Iterable[str], w_bits: int, a_bits: int) -> Candidate:
        """Every site at the same weight and activation bit-width."""
        sites = list(sites)
        return cls(tuple(timesteps), tuple((s, w_bits) for s in sites), tuple((s, a_bits) for s in sites))

    @classmethod
    def from_maps(
        cls, timesteps: Iterable[int], weight_bits: Mapping[str, int], act_bits: Mapping[str, int]
    ) -> Candidate:
        """Build from ``{site: bits}`` dictionaries."""
        return cls(tuple(timesteps), tuple(weight_bits.items()), tuple(act_bits.items()))

    @property
    def steps(self) -> int:
        """Number of denoising steps (K)."""
        return len(self.timesteps)

    @property
    def sites(self) -> tuple[str, ...]:
        """Site names, sorted."""
        return tuple(s for s, _ in self.weight_bits)

    def w_map(self) -> dict[str, int]:
        """``{site: weight bits}``."""
        return dict(self.weight_bits)

    def a_map(self) -> dict[str, int]:
        """``{site: activation bits}``."""
        return dict(self.act_bits)

    def key(self) -> str:
        """Stable identity (hex digest of the canonical form)."""
        return self._key

    def bits_summary(self) -> str:
        """Short human summary, e.g. ``W6.2A7.5`` (mean bits) or ``W8A8`` when uniform."""
        w = [b for _, b in self.weight_bits]
        a = [b for _, b in self.act_bits]
        if w and len(set(w)) == 1 and len(set(a)) == 1:
            return f"W{w[0]}A{a[0]}"
        if not w:
            return "FP"
        return f"W{sum(w) / len(w):.1f}A{sum(a) / len(a):.1f}"

    def _canonical(self) -> dict[str, Any]:
        return {
            "t": list(self.timesteps),
            "w": [list(p) for p in self.weight_bits],
            "a": [list(p) for p in self.act_bits],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, versioned."""
        return {
            "version": CANDIDATE_VERSION,
            "timesteps": list(self.timesteps),
            "weight_bits": dict(self.weight_bits),
            "act_bits": dict(self.act_bits),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_dict`; refuses an unknown version."""
        version = data.get("version")
        if version != CANDIDATE_VERSION:
            raise InvalidCandidate(f"candidate version {version!r} is not supported (expected {CANDIDATE_VERSION})")
        try:
            return cls.from_maps(data["timesteps"], data["weight_bits"], data["act_bits"])
        except KeyError as exc:
            raise InvalidCandidate(f"candidate dict lacks {exc.args[0]!r}") from None
