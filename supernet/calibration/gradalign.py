"""Gradient-aligned calibration: a learned weight per calibration sample in the block reconstruction's loss.

The method is from *Gradient-Aligned Calibration for Post-Training Quantization of Diffusion Models*, Dung Anh
Hoang, Cuong Pham, Trung Le, Jianfei Cai, Thanh-Toan Do (Monash University), ICLR 2026, arXiv:2602.01289
(OpenReview ``CtFSOlrjth``; no public code when this was written). Its observation: the quantization loss's
gradients of different timesteps point in conflicting directions, and the uniform weight every earlier method gives
each calibration sample lets some timesteps' updates undo others'. Its remedy: learn a weight per calibration sample
by a bi-level (meta-learning) step so that the quantized model's gradients of the timesteps align, judged on a
held-out validation set with an equal number of samples per timestep.

What is the paper's (from its abstract and secondary summaries; the method section itself could not be read here,
so the exact outer objective and its solver are not verified):

- a weight ``ω_i`` per calibration sample, used in the calibration (reconstruction) loss ``Σ_i ω_i L_i``;
- ``ω`` learned by a bi-level step: the inner problem fits the quantization parameters with the weighted loss, the
  outer one asks that the resulting model's gradients of different timesteps align;
- the outer objective is judged on a held-out validation split with the same number of samples per timestep;
- the weights are a softmax over learned scores (temperature 1), the validation split is 5 % of the data, in 5
  timestep groups (these three as DESIGN.md section 5 records them; our defaults follow them).

What is ours:

- **Where it runs.** Inside BRECQ-style block reconstruction (:mod:`~supernet.calibration.reconstruction`): the
  learnable parameters ``θ`` are the block's AdaRound variables and log step sizes, and a sample's loss ``e_i`` is
  its relative output error (squared error over the batch's mean squared target, the quantity whose batch mean is
  the unweighted loss). One score vector per configuration (bit option), carried from block to block in forward
  order and into later PAR rounds (a sample keeps its identity: the same noise at the same grid timestep); the
  temporal information block (``tib``), whose pool is one input per grid timestep, is trained unweighted.
- **The inner loss.** A batch is drawn uniformly from the training samples and weighted by the softmax of its
  samples' scores, ``Σ_{i∈B} softmax(s_B)_i e_i``: a weighted mean, so the loss keeps its scale (uniform scores give
  the unweighted batch mean) and an unlucky score cannot multiply the learning rate.
- **The held-out split.** ``grad_align_holdout`` of each grid timestep's samples (at least one, at most all but
  one; the default 5 % of 32 rounds to 2, 6 % of the pool), drawn with the calibration seed, taken out of training;
  the grid is cut into ``grad_align_groups`` contiguous timestep groups (as DAQ's groups), each group's held-out
  samples giving its gradient ``G_k``.
- **The outer objective and its solver.** The mean pairwise cosine ``A`` of the groups' held-out gradients after a
  one-step lookahead ``θ' = θ - α ⊙ g_w`` with the weighted training gradient ``g_w`` (``α``: each parameter
  group's reconstruction learning rate). The gradients are aligned over the AdaRound variables only: the activation
  step sizes are per grid timestep, so two groups' gradients never share a coordinate there (they could only dilute
  the cosine); the lookahead moves both. The gradient of ``A`` with respect to the batch's scores is taken at the
  lookahead's first order: ``dA/ds = -⟨α ⊙ Σ_k H_k v_k, ∂g_w/∂s⟩`` with ``v_k = ∂A/∂G_k`` and ``H_k`` the
  Hessian of group ``k``'s held-out loss (its rows for the AdaRound variables), computed with two double-backward
  passes (one over the held-out forwards, one over the training batch) and no third-order term. The scores take a
  normalised ascent step: the largest change of a score is ``grad_align_lr`` (scale-free, since ``dA/ds`` is
  proportional to ``α`` and to the loss's scale).
- **The cost.** The outer step runs every ``grad_align_every`` inner steps (default 20, from the first) and reuses
  that step's training gradient for the inner update, so the reconstruction's optimiser sees the same number of
  steps. One outer step costs about 7 inner steps on the testbed, so the default adds about a third to the
  reconstruction steps' time (measured on a tiny run: docs/gradient-aligned-calibration.md). The default score step
  (``grad_align_lr`` 0.2) is ours too, chosen so that a sample's score moves by at most about 1.6 over the default
  W4 calibration (it is in about 8 outer batches); the ablation is to decide it.
- **The record.** Per configuration: each timestep group's boundaries and weight (its share of the total weight,
  and its mean weight relative to uniform), the mean relative weight per grid timestep, every training sample's
  relative weight (``null`` for held-out ones), the effective sample count ``1 / Σ w²`` and the alignment per block
  (at its first and last outer step); :func:`group_rows` makes the calibration report's compact per-group rows.

Off (``grad_align: false``, the default until the ablation says otherwise) the reconstruction runs exactly as
before: same batches, same loss, same numbers.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from supernet.calibration.daq import timestep_groups
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError

log = logging.getLogger(__name__)

#: Significant digits of the weights recorded in the metadata.
DIGITS = 4
_TINY = 1e-12

#: ``loss(positions)``: the unweighted reconstruction loss of the pool samples at ``positions`` (with a graph).
LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class GradAlignOptions:
    """The gradient-alignment settings of one calibration (made by :meth:`from_settings`).

    Attributes:
        lr: the largest change of a score per outer step.
        holdout: fraction of each grid timestep's samples held out.
        groups: timestep groups (contiguous chunks of the grid) whose held-out gradients are aligned.
        every: an outer step every this many inner steps.
        seed: seed of the held-out draw.
    """

    lr: float
    holdout: float
    groups: int
    every: int
    seed: int

    @classmethod
    def from_settings(cls, s: CalibrationSettings) -> GradAlignOptions | None:
        """The options of ``s``, or ``None`` when its ``grad_align`` switch is off."""
        if not s.grad_align:
            return None
        return cls(s.grad_align_lr, s.grad_align_holdout, s.grad_align_groups, s.grad_align_every, s.seed)


def _round(x: float) -> float:
    return float(f"{x:.{DIGITS}g}")


def mean_pairwise_cosine(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean cosine similarity over every pair of the flat vectors ``grads`` (at least two)."""
    pairs = [F.cosine_similarity(a, b, dim=0, eps=_TINY) for a, b in itertools.combinations(grads, 2)]
    return torch.stack(pairs).mean()


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


class SampleWeights:
    """The learned weights of one configuration's calibration samples (see the module docstring).

    A block's pool is bound with :meth:`bind`; the scores belong to the first pool bound (its layout: a grid index
    per sample, the same number of samples per grid timestep), and a later pool with another layout is trained
    unweighted.

    Args:
        options: the settings.
        grid: the calibration grid (timesteps, descending), for the record.
    """

    def __init__(self, options: GradAlignOptions, grid: Sequence[int]) -> None:
        self.options = options
        self.grid = tuple(int(t) for t in grid)
        self.scores: torch.Tensor | None = None
        self.skipped: str | None = None
        self._layout: torch.Tensor | None = None
        self._train = torch.zeros(0, dtype=torch.long)
        self._heldout: list[torch.Tensor] = []
        self._groups: list[list[int]] = []
        self._per_timestep = 0
        self._alignment: list[float] = []
        self._blocks: list[dict[str, Any]] = []

    # --- the split ------------------------------------------------------------------------------------------
    def bind(self, index: torch.Tensor) -> bool:
        """Take a block's pool (``index``: each sample's grid index); ``False`` when it is trained unweighted."""
        index = index.cpu()
        if self._layout is not None:
            return self.skipped is None and torch.equal(index, self._layout)
        self._layout = index.clone()
        self.skipped = self._split(index)
        if self.skipped is not None:
            log.warning("gradient alignment off for this configuration: %s", self.skipped)
            return False
        self.scores = torch.zeros(len(index))
        return True

    def _split(self, index: torch.Tensor) -> str | None:
        """Choose the held-out samples and groups; the reason when the pool cannot be split."""
        counts = torch.bincount(index, minlength=len(self.grid))
        if len(counts) != len(self.grid) or int(counts.min()) != int(counts.max()):
            return "the pool does not hold the same number of samples at every grid timestep"
        per_t = int(counts[0])
        if per_t < 2:
            return "one sample per grid timestep leaves none to hold out"
        held = min(per_t - 1, max(1, round(self.options.holdout * per_t)))
        gen = torch.Generator().manual_seed(self.options.seed)
        heldout_mask = torch.zeros(len(index), dtype=torch.bool)
        for i in range(len(self.grid)):
            where = torch.nonzero(index == i).flatten()
            heldout_mask[where[torch.randperm(per_t, generator=gen)[:held]]] = True
        self._groups = timestep_groups(len(self.grid), self.options.groups)
        if len(self._groups) < 2:
            return "a grid of one timestep has no groups to align"
        self._heldout = [
            torch.nonzero(heldout_mask & torch.isin(index, torch.tensor(g))).flatten() for g in self._groups
        ]
        self._train = torch.nonzero(~heldout_mask).flatten()
        self._per_timestep = held
        return None

    @property
    def train_size(self) -> int:
        """Samples of the bound pool that are trained on (the rest are held out)."""
        return int(self._train.numel())

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Pool positions of a training batch of ``batch`` samples, uniformly with replacement."""
        n = self.train_size
        return self._train[torch.randint(n, (min(batch, n),), generator=generator)]

    # --- the inner loss ----------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether inner step ``step`` (0-based) also updates the scores."""
        return step % self.options.every == 0

    def weighted_loss(self, errors: torch.Tensor, sel: torch.Tensor, track: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ softmax(s_sel)_i errors_i, s_sel)``; with ``track`` the batch's scores require gradients."""
        if self.scores is None:
            raise CalibrationError("no pool is bound to the sample weights")
        batch_scores = self.scores[sel].clone().requires_grad_(track)
        weights = torch.softmax(batch_scores, dim=0).to(errors)
        return (weights * errors).sum(), batch_scores

    # --- the outer step -----------------------------------------------------------------------------------
    def outer_step(
        self,
        loss: torch.Tensor,
        batch_scores: torch.Tensor,
        sel: torch.Tensor,
        params: Sequence[torch.Tensor],
        shared: int,
        lookahead: Sequence[float],
        heldout_loss: LossFn,
    ) -> list[torch.Tensor | None]:
        """Update the scores of batch ``sel`` (``batch_scores`` from :meth:`weighted_loss` with ``track``) and return
        the gradient of ``loss`` with respect to ``params`` (the inner step's, detached; ``None`` where unused).

        The groups' gradients are aligned over the first ``shared`` parameters (those every timestep uses); the
        lookahead moves all of them, each by its ``lookahead`` step size. ``heldout_loss``: see :data:`LossFn`.
        """
        inner = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        detached = [None if g is None else g.detach() for g in inner]
        aligned = list(params[:shared])
        group_grads = []
        for positions in self._heldout if aligned else ():
            if positions.numel():
                grads = torch.autograd.grad(heldout_loss(positions), aligned, create_graph=True, allow_unused=True)
                group_grads.append(torch.cat([g.reshape(-1) for g in _flat(grads, aligned)]))
        if len(group_grads) < 2 or not all(g.requires_grad for g in group_grads):
            return detached
        probes = [g.detach().requires_grad_() for g in group_grads]
        alignment = mean_pairwise_cosine(probes)
        directions = torch.autograd.grad(alignment, probes)
        self._alignment.append(float(alignment.detach()))
        hessian_dot = torch.stack([(g * v).sum() for g, v in zip(group_grads, directions, strict=True)]).sum()
        hv = _flat(torch.autograd.grad(hessian_dot, params, allow_unused=True), params)
        terms = [(a * h * g).sum() for a, h, g in zip(lookahead, hv, inner, strict=True) if g is not None]
        coupling = torch.stack(terms).sum() if terms else None
        if coupling is None or not coupling.requires_grad:
            return detached
        (ds,) = torch.autograd.grad(coupling, batch_scores, allow_unused=True)
        if ds is None:
            return detached
        ascent = -ds.detach().cpu()  # A(θ - α ⊙ g_w) grows along -⟨α ⊙ Σ_k H_k v_k, ∂g_w/∂s⟩
        peak = float(ascent.abs().max())
        if math.isfinite(peak) and peak > _TINY:
            assert self.scores is not None
            self.scores.index_add_(0, sel, ascent * (self.options.lr / peak))
        return detached

    def end_block(self, name: str) -> None:
        """Record the alignment of block ``name``'s outer steps (at the first and the last)."""
        if self._alignment:
            first, last = self._alignment[0], self._alignment[-1]
            self._blocks.append(
                {"block": name, "outer_steps": len(self._alignment), "alignment": [_round(first), _round(last)]}
            )
        self._alignment = []

    # --- the record ---------------------------------------------------------------------------------------
    def distribution(self) -> torch.Tensor:
        """The weight of every training sample (softmax of the scores over the training samples; sums to 1)."""
        if self.scores is None:
            raise CalibrationError("no pool is bound to the sample weights")
        return torch.softmax(self.scores[self._train], dim=0)

    def report(self) -> dict[str, Any]:
        """JSON-ready record (see the module docstring); ``{"skipped": reason}`` when no pool could be split."""
        if self.scores is None or self._layout is None:
            return {"skipped": self.skipped or "no block was reconstructed"}
        w = self.distribution()
        n = len(w)
        relative = torch.full((len(self._layout),), float("nan"))
        relative[self._train] = w * n
        train_index = self._layout[self._train]
        per_t = [float(relative[self._layout == i].nanmean()) for i in range(len(self.grid))]
        groups = []
        for g in self._groups:
            members = torch.isin(train_index, torch.tensor(g))
            groups.append(
                {
                    "timesteps": [self.grid[g[0]], self.grid[g[-1]]],
                    "share": _round(float(w[members].sum())),
                    "relative": _round(float((w[members] * n).mean())),
                }
            )
        samples = [
            [None if math.isnan(v) else _round(v) for v in relative[self._layout == i].tolist()]
            for i in range(len(self.grid))
        ]
        return {
            "groups": groups,
            "per_timestep": {str(t): _round(v) for t, v in zip(self.grid, per_t, strict=True)},
            "effective_samples": _round(float(1.0 / w.square().sum())),
            "train_samples": n,
            "heldout_per_timestep": self._per_timestep,
            "blocks": self._blocks,
            "settings": {k: getattr(self.options, k) for k in ("lr", "holdout", "groups", "every")},
            "weights": samples,
        }


def group_rows(metadata: dict[str, Any]) -> dict[str, Any]:
    """The calibration report's compact rows: per configuration, per timestep group ``{"t": [first, last],
    "weight": mean weight relative to uniform, "share": share of the total weight}`` (``{"skipped": reason}`` where
    the configuration was not weighted). ``metadata``: ``calibration_metadata["grad_align"]``."""
    rows: dict[str, Any] = {}
    for label, rec in metadata.items():
        if "groups" not in rec:
            rows[label] = {"skipped": rec.get("skipped", "")}
            continue
        rows[label] = [{"t": g["timesteps"], "weight": g["relative"], "share": g["share"]} for g in rec["groups"]]
    return rows
