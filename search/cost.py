"""Cost of a candidate: BitOps and weight bytes from per-site MAC and parameter counts, and, where a latency table
was measured for a run-time backend, its predicted milliseconds.

The counts come from one traced forward of the model (``supernet.cost.trace_costs``), the table from
``supernet.runtime.latency``; this module only does the arithmetic, so the search can price a candidate without
torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from search.candidate import Candidate
from search.errors import InvalidCandidate
from search.latency import LatencyTable


@dataclass(frozen=True)
class Cost:
    """BitOps for the whole schedule, the weight storage of the assembled network and, with a latency table, the
    predicted milliseconds of the schedule's denoiser steps (NaN without one)."""

    bitops: float
    weight_bytes: float
    steps: int
    latency_ms: float = math.nan

    @property
    def bitops_per_forward(self) -> float:
        return self.bitops / self.steps


@dataclass(frozen=True)
class CostModel:
    """Per-site MACs (one UNet forward at batch 1) and weight parameter counts.

    BitOps per forward = Σ_sites MACs · b_w · b_a (attention matmuls included: both operands are activations,
    the ``weight_bits`` gene of a matmul site is its second operand's width); total = per forward × K.
    Weight bytes = Σ params · b_w / 8 (matmul sites have no parameters). Parameters outside every site
    (norms, biases of unwrapped layers) are counted at 32 bits in ``fp_params``.

    ``latency`` (optional, :meth:`with_latency`): a measured per-site latency table; it is not part of
    :meth:`to_dict` (that is the model's arithmetic, which a checkpoint's fingerprint digests: a table measured
    again, with other noise, must not make a search unresumable).
    """

    macs: Mapping[str, int]
    params: Mapping[str, int]
    fp_params: int = 0
    latency: LatencyTable | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # Private copies (plain dicts, so the model pickles for Ray); treat them as read-only.
        object.__setattr__(self, "macs", {str(k): int(v) for k, v in self.macs.items()})
        object.__setattr__(self, "params", {str(k): int(v) for k, v in self.params.items()})
        if self.latency is not None:
            unknown = sorted(set(self.latency.site_ms) - set(self.macs))
            if unknown:
                raise ValueError(f"the latency table prices sites the model does not have: {unknown[:3]}")

    def with_latency(self, table: LatencyTable | None) -> CostModel:
        """This model, pricing latency with ``table`` (``None``: without)."""
        return replace(self, latency=table)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(sorted(self.macs))

    def cost(self, candidate: Candidate) -> Cost:
        """Price ``candidate``; it must name exactly this model's sites."""
        w, a = candidate.w_map(), candidate.a_map()
        if set(w) != set(self.macs):
            unknown = sorted(set(w) - set(self.macs))
            missing = sorted(set(self.macs) - set(w))
            raise InvalidCandidate(f"sites do not match the model: unknown {unknown[:3]}, missing {missing[:3]}")
        per_forward = float(sum(m * w[s] * a[s] for s, m in self.macs.items()))
        weight_bytes = sum(self.params.get(s, 0) * w[s] for s in self.macs) / 8 + self.fp_params * 4
        latency = self.latency.latency_ms(candidate) if self.latency is not None else math.nan
        return Cost(
            bitops=per_forward * candidate.steps, weight_bytes=weight_bytes, steps=candidate.steps, latency_ms=latency
        )

    def uniform_cost(self, w_bits: int, a_bits: int, steps: int) -> Cost:
        """Cost of every site at WxAy for ``steps`` steps (used for budgets such as "W6A6 at K=10")."""
        per_forward = float(sum(self.macs.values())) * w_bits * a_bits
        weight_bytes = sum(self.params.values()) * w_bits / 8 + self.fp_params * 4
        return Cost(bitops=per_forward * steps, weight_bytes=weight_bytes, steps=steps)

    def to_dict(self) -> dict[str, Any]:
        return {"macs": dict(self.macs), "params": dict(self.params), "fp_params": self.fp_params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        return cls(macs=data["macs"], params=data["params"], fp_params=int(data.get("fp_params", 0)))
