"""A cheap, deterministic stand-in for the torch evaluator, and small fixtures for the search tests."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from search.candidate import Candidate
from search.cost import CostModel
from search.evaluator import Evaluation


def make_cost_model(sites: Sequence[str]) -> CostModel:
    """Sites with different MAC and parameter counts (so bit choices matter unevenly)."""
    macs = {s: 1000 * (i + 1) for i, s in enumerate(sites)}
    params = {s: 100 * (i + 1) for i, s in enumerate(sites)}
    return CostModel(macs=macs, params=params, fp_params=10)


def synthetic_quality(candidate: Candidate, num_train_timesteps: int) -> float:
    """Quantisation error falls with bits (sensitivity differs per site); schedule error falls with K and
    depends on where each step sits (best near a fixed fraction of each position's range)."""
    sens = {s: 1.0 + (i % 3) for i, s in enumerate(candidate.sites)}
    quant = sum(
        sens[s] * (2.0 ** (-w) + 2.0 ** (-a))
        for (s, w), (_, a) in zip(candidate.weight_bits, candidate.act_bits, strict=True)
    )
    k = candidate.steps
    ideal = [num_train_timesteps * (k - j - 0.5) / k for j in range(k)]
    placement = sum(((t - i) / num_train_timesteps) ** 2 for t, i in zip(candidate.timesteps, ideal, strict=True))
    return quant + 0.5 / k + 0.2 * placement


class SyntheticEvaluator:
    """Implements the Evaluator protocol; counts every candidate it is asked to evaluate.

    ``fail`` keys raise inside the batch (so the whole batch raises and the runner retries one by one);
    ``nan`` keys get a NaN quality; ``error`` keys come back with ``error`` set.
    """

    def __init__(
        self,
        cost_model: CostModel,
        num_train_timesteps: int,
        *,
        fail: Iterable[str] = (),
        nan: Iterable[str] = (),
        error: Iterable[str] = (),
    ) -> None:
        self.cost_model = cost_model
        self.num_train_timesteps = num_train_timesteps
        self.fail, self.nan, self.error = set(fail), set(nan), set(error)
        self.calls: Counter[str] = Counter()
        self.evaluated: list[Candidate] = []
        self.batches = 0

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        self.batches += 1
        for c in candidates:
            if c.key() in self.fail:
                raise RuntimeError(f"boom on {c.key()}")
        out = []
        for c in candidates:
            self.calls[c.key()] += 1
            self.evaluated.append(c)
            cost = self.cost_model.cost(c)
            if c.key() in self.error:
                out.append(Evaluation.failure(c.key(), "sampling diverged", cost.bitops, cost.weight_bytes))
                continue
            q = math.nan if c.key() in self.nan else synthetic_quality(c, self.num_train_timesteps)
            out.append(Evaluation(c.key(), q, cost.bitops, cost.weight_bytes, {"psnr": 30.0}))
        return out
