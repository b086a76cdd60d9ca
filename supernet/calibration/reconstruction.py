"""Block reconstruction (BRECQ, Li et al. 2021) of one calibration session's configuration.

Blocks are the model adapter's (``block_of``: for a UNet the top-level units ``conv_in``, ``time_embedding``,
``down_blocks.i``, ``mid_block``, ``up_blocks.i``, ``conv_out``), taken in the order the forward pass runs them.
For each block:

1. the FP model's block **outputs** are captured on the calibration inputs (the targets), and the block's
   **inputs** are captured from the model quantized as calibrated so far (earlier blocks reconstructed), so the
   block learns to absorb the error it receives;
2. AdaRound variables for every weight (:mod:`~supernet.calibration.adaround`) and log step sizes for every
   uniform activation operand, per grid timestep (:mod:`~supernet.calibration.lsq`), are trained with Adam on the
   relative output MSE (``mean((ŷ - y)²) / mean(y²)``, averaged over the output tensors) plus ``round_weight`` times
   the annealed rounding regulariser averaged over the block's weights (both scale-free, so one weight fits every
   block; measured on the testbed: 0.01 leaves the rounding soft and hardening undoes the gain, 10 does not); a
   batch mixes timesteps, each sample using its own timestep's activation parameters;
3. the rounding is hardened and the result written to the session as ordinary integer weight codes and
   per-timestep activation parameters (the forward path used afterwards is the supernet's usual one).

Weights of ``recon_round_below`` bits or more get no AdaRound variables: they keep the range fit's nearest rounding
and only the activation step sizes are trained (the steps then skip the weight gradients).

Choices of ours: a block whose hardened error on a fixed evaluation batch is worse than before training keeps its
previous quantizers (reported as ``reverted``); iterations are capped at ``recon_epochs`` passes over the block's
calibration pool; the attention matmuls are run through a differentiable copy of the processor's arithmetic while
training (the supernet's fast path writes into preallocated outputs, which autograd cannot follow).

With ``tib`` (TFMQ-DM's temporal information block), the time-embedding block and every embedding projection into
a block (the adapter's time-embedding pieces) are first reconstructed jointly against the FP projections
``g_i(h(t))`` on the grid timesteps (they do not depend on ``x_t``), then kept fixed while the other blocks are
reconstructed. Its pool is complete (one input
per grid timestep), so it is trained for the full ``recon_iters`` without the epoch cap.

With ``align`` (the ``grad_align`` switch, :mod:`~supernet.calibration.gradalign`), the loss weights each sample of
a block's pool by a softmax over learned scores, shared by the configuration's blocks, and every few steps an outer
step moves the scores so that the held-out gradients of the timestep groups align; the held-out samples are not
trained on. Without it the loss is the unweighted relative MSE above, as it always was.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from supernet.calibration.adaround import AdaRoundWeight, beta_at
from supernet.calibration.data import CalibrationData
from supernet.calibration.gradalign import GradAlignOptions, SampleWeights
from supernet.calibration.lsq import TimestepActQuant
from supernet.calibration.session import CalibrationSession
from supernet.calibration.settings import WIDE_BITS, CalibrationSettings
from supernet.errors import CalibrationError
from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.attention import QuantAttnProcessor
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.protocol import QParams
from supernet.quant.uniform import UniformParams

log = logging.getLogger(__name__)

#: Samples of the fixed batch on which a block's error is measured before and after training.
EVAL_SAMPLES = 128
#: Samples per forward pass while capturing a block's inputs or outputs.
CAPTURE_BATCH = 64
TIB = "temporal"


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


# --- nested inputs/outputs ----------------------------------------------------------------------------------
def _flatten(obj: Any, leaves: list[torch.Tensor]) -> Any:
    if torch.is_tensor(obj):
        leaves.append(obj)
        return ("t",)
    if isinstance(obj, tuple | list):
        return (type(obj), [_flatten(o, leaves) for o in obj])
    if isinstance(obj, dict):
        return (dict, {k: _flatten(v, leaves) for k, v in obj.items()})
    return ("c", obj)


def _unflatten(spec: Any, leaves: Iterator[torch.Tensor]) -> Any:
    if spec[0] == "t":
        return next(leaves)
    if spec[0] == "c":
        return spec[1]
    kind, body = spec
    if kind is dict:
        return {k: _unflatten(v, leaves) for k, v in body.items()}
    return kind(_unflatten(s, leaves) for s in body)


@dataclass
class Pool:
    """Captured tensors of many forward calls, concatenated along the batch, with each sample's grid index."""

    spec: Any
    leaves: list[torch.Tensor]
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.numel())

    def take(self, sel: torch.Tensor) -> Any:
        """The captured structure restricted to samples ``sel``."""
        return _unflatten(self.spec, iter([leaf[sel] for leaf in self.leaves]))

    def leaves_of(self, sel: torch.Tensor) -> list[torch.Tensor]:
        """The captured tensors restricted to samples ``sel``, flat."""
        return [leaf[sel] for leaf in self.leaves]


class _PoolBuilder:
    """Collects the (nested) tensors of successive calls into a :class:`Pool`."""

    def __init__(self) -> None:
        self.spec: Any = None
        self.parts: list[list[torch.Tensor]] = []
        self.index: list[torch.Tensor] = []

    def add(self, obj: Any, grid_index: int) -> None:
        leaves: list[torch.Tensor] = []
        spec = _flatten(obj, leaves)
        if self.spec is None:
            self.spec = spec
        elif repr(spec) != repr(self.spec):
            raise CalibrationError("a block's inputs change structure between calls")
        n = leaves[0].shape[0]
        if any(leaf.dim() == 0 or leaf.shape[0] != n for leaf in leaves):
            raise CalibrationError("every tensor a block takes or returns must lead with the batch dimension")
        self.parts.append([leaf.detach().clone() for leaf in leaves])
        self.index.append(torch.full((n,), grid_index, dtype=torch.long))

    def build(self) -> Pool:
        if self.spec is None:
            raise CalibrationError("the block was never called")
        leaves = [torch.cat(col) for col in zip(*self.parts, strict=True)]
        return Pool(self.spec, leaves, torch.cat(self.index))


# --- options ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReconOptions:
    """Hyper-parameters of one reconstruction round, made by :meth:`from_settings` (the defaults live in
    :class:`CalibrationSettings` only)."""

    iters: int
    batch: int
    samples: int
    epochs: float
    lr_round: float
    lr_act: float
    round_weight: float
    warmup: float
    seed: int
    round_weights: bool = True

    @classmethod
    def from_settings(cls, s: CalibrationSettings, round_index: int = 0, bits: int = 0) -> ReconOptions:
        """Round ``round_index`` (0-based) of ``s`` for weights of ``bits`` bits: ``recon_iters_wide`` steps from
        :data:`WIDE_BITS` bits up to ``recon_wide_below`` (when set), else ``recon_iters``; later rounds take
        ``par_decay`` times fewer. Weights narrower than ``recon_round_below`` learn their rounding, in later rounds
        only with ``par_rounding``."""
        wide = s.recon_iters_wide is not None and WIDE_BITS <= bits < s.recon_wide_below
        base = s.recon_iters_wide if wide else s.recon_iters
        iters = max(1, round(base * s.par_decay**round_index)) if base else 0
        return cls(
            iters,
            s.recon_batch,
            s.recon_samples,
            s.recon_epochs,
            s.recon_lr_round,
            s.recon_lr_act,
            s.recon_round_weight,
            s.recon_warmup,
            s.seed + 1000 * round_index,
            bits < s.recon_round_below and (round_index == 0 or s.par_rounding),
        )

    def steps_for(self, pool_size: int) -> int:
        """Iterations for a pool of ``pool_size`` samples (capped at ``epochs`` passes)."""
        return min(self.iters, max(1, math.ceil(self.epochs * pool_size / self.batch)))


@dataclass
class Block:
    """One unit of reconstruction: the sites trained together and how to run it on captured inputs."""

    name: str
    sites: tuple[str, ...]
    module: nn.Module | None
    frozen: tuple[str, ...] = ()
    run: Callable[[Any], Any] | None = None

    def forward(self, inputs: Any) -> Any:
        """Run the block on captured ``inputs`` (``(args, kwargs)`` of its module, or ``run``'s argument)."""
        if self.run is not None:
            return self.run(inputs)
        assert self.module is not None
        args, kwargs = inputs
        return self.module(*args, **kwargs)


def _attend_autograd(
    self: QuantAttnProcessor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The arithmetic of :meth:`QuantAttnProcessor._attend` without in-place or ``out=`` operations."""
    qq, sq = self.qk.a.split(query)
    kk, sk = self.qk.b.split(key)
    vv, sv = self.pv.b.split(value)
    scores = torch.bmm(qq, kk.transpose(-1, -2)) * (scale * (sq or 1.0) * (sk or 1.0))
    if mask is not None:
        scores = scores + mask
    probs, sp = self.pv.a.split(scores.softmax(dim=-1))
    return torch.bmm(probs, vv) * ((sp or 1.0) * (sv or 1.0))


class _Learned:
    """What the training observer hands an operand: ``split`` runs the differentiable quantizer."""

    __slots__ = ("fn", "idx")

    def __init__(self, fn: TimestepActQuant, idx: torch.Tensor) -> None:
        self.fn, self.idx = fn, idx

    def split(self, x: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, float | None]:
        return self.fn(x, self.idx), None


@dataclass
class BlockReport:
    """What reconstructing one block did (JSON-ready through :meth:`to_dict`)."""

    steps: int = 0
    samples: int = 0
    loss_before: float = float("nan")
    loss_soft: float = float("nan")
    loss_after: float = float("nan")
    reverted: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            k: ((None if v != v else round(v, 6)) if isinstance(v, float) else v)  # NaN (not measured): None
            for k, v in vars(self).items()
        }


class BlockReconstructor:
    """Reconstructs a session's configuration block by block; keeps AdaRound decisions between rounds (PAR).

    Args:
        session: the session (its weights and activation tables must be initialised, e.g. by range fitting).
        tib: reconstruct TFMQ-DM's temporal information block jointly first.
        align: gradient-aligned calibration (:mod:`~supernet.calibration.gradalign`): the loss weights each
            calibration sample, the weights learned while reconstructing (``None``: uniform, as without it).
    """

    def __init__(self, session: CalibrationSession, tib: bool = False, align: GradAlignOptions | None = None) -> None:
        self.session = session
        self.tib = tib
        #: The learned sample weights of this configuration (``None`` without ``align``).
        self.weights = SampleWeights(align, session.data.timesteps) if align is not None else None
        self._rounding: dict[str, torch.Tensor] = {}
        self._wparams: dict[str, UniformParams] = {}
        self._idx = torch.zeros(0, dtype=torch.long)
        self._learners: dict[ActQuantizer, TimestepActQuant] = {}
        self._blocks: list[Block] | None = None
        self._current = 0

    # --- model state ------------------------------------------------------------------------------------
    @property
    def _layers(self) -> dict[str, QuantWeightLayer]:
        return {s.name: s for s in self.session.weight_sites()}

    @contextmanager
    def quantized(self) -> Iterator[None]:
        """While open, the model runs quantized as the session has it so far (weights set, activation parameters
        recorded per grid timestep), e.g. to sample its own trajectories (PAR)."""
        session = self.session
        tables = set(session.act_quantizers())
        ctx = session.ctx

        def observer(q: ActQuantizer, _x: torch.Tensor) -> QParams | None:
            if q not in tables or ctx.index is None:
                return None
            return session.act_params(q, ctx.index)

        with self.session.observing(observer):
            yield

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """While open, every site runs in floating point (the session's weights are put back afterwards)."""
        layers = self._layers
        saved = {n: layer._w for n, layer in layers.items()}
        for layer in layers.values():
            layer.use_weight(None)
        try:
            yield
        finally:
            for n, layer in layers.items():
                layer.use_weight(saved[n])

    @contextmanager
    def _training(self, block: Block) -> Iterator[None]:
        modules = [block.module] if block.module is not None else [self.session.denoiser]
        procs = {
            id(m.processor): m.processor
            for mod in modules
            for m in mod.modules()
            if isinstance(getattr(m, "processor", None), QuantAttnProcessor)
        }
        params = [p for p in self.session.denoiser.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        for proc in procs.values():
            proc._attend = types.MethodType(_attend_autograd, proc)  # type: ignore[method-assign]
        learners = self._learners

        def observer(q: ActQuantizer, _x: torch.Tensor) -> _Learned | None:
            fn = learners.get(q)
            return None if fn is None else _Learned(fn, self._idx)

        try:
            with self.session.observing(observer):
                yield
        finally:
            for proc in procs.values():
                del proc._attend
            for p in params:
                p.requires_grad_(True)

    # --- blocks -------------------------------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        """The blocks in forward order (with the temporal block first when ``tib`` is on)."""
        if self._blocks is None:
            self._blocks = self._find_blocks()
        return self._blocks

    def _find_blocks(self) -> list[Block]:
        model = self.session.model
        denoiser = model.denoiser
        quantized = {s.name for s in self.session.weight_sites()} | {q.site for q in self.session.act_quantizers()}
        members: dict[str, list[str]] = {}
        for name in self.session.sites:
            if name in quantized:
                members.setdefault(model.block_of(name), []).append(name)
        order: list[str] = []
        handles = [
            denoiser.get_submodule(b).register_forward_pre_hook(
                lambda _m, _a, b=b: order.append(b) if b not in order else None
            )
            for b in members
        ]
        try:
            _, t, x = self.session.data.items()[0]
            with torch.no_grad(), self.full_precision():
                model.predict_noise(x[:1], t, model.condition_for(1))
        finally:
            for h in handles:
                h.remove()
        temporal = self._temporal_sites(members) if self.tib else ()
        blocks = []
        if temporal:
            blocks.append(Block(TIB, temporal, None, run=self._tib_forward))
        for b in order:
            sites = tuple(s for s in members[b] if s not in temporal)
            frozen = tuple(s for s in members[b] if s in temporal)
            if sites:
                blocks.append(Block(b, sites, denoiser.get_submodule(b), frozen))
        return blocks

    def _temporal_sites(self, members: dict[str, list[str]]) -> tuple[str, ...]:
        block = self.session.model.time_embedding_block
        projs = [n for n, _ in self._projections()]
        if block is None or block not in members or not projs:
            log.warning("no time-embedding block with embedding projections: the temporal block is skipped")
            return ()
        return tuple(members[block]) + tuple(projs)

    def _projections(self) -> list[tuple[str, nn.Module]]:
        """``(projection site, owning block)`` of every quantized time-embedding projection, in model order."""
        quantized = {s.name for s in self.session.weight_sites()}
        denoiser = self.session.denoiser
        return [
            (site, owner)
            for site, owner in self.session.model.temporal_projections().items()
            if site in quantized and isinstance(denoiser.get_submodule(site), QuantWeightLayer)
        ]

    def _time_embedding(self) -> nn.Module:
        block = self.session.model.time_embedding_block
        assert block is not None  # the temporal block exists only when the model has one
        return self.session.denoiser.get_submodule(block)

    def _tib_forward(self, inputs: Any) -> list[torch.Tensor]:
        model = self.session.model
        emb = self._time_embedding()(inputs)
        return [model.project_temporal(owner, emb) for _, owner in self._projections()]

    # --- capturing ------------------------------------------------------------------------------------------
    def _run_data(self, data: CalibrationData) -> None:
        """One pass over ``data`` (grid index set for the hooks); a hook may end a forward early with ``_Stop``."""
        for i, t, x in data.items():
            self._current = i
            for chunk, cond in self.session.model.batches(x, CAPTURE_BATCH):
                with suppress(_Stop):
                    self.session.model.predict_noise(chunk, t, cond)

    def _capture_outputs(self, modules: dict[str, nn.Module], data: CalibrationData) -> dict[str, Pool]:
        """The FP outputs of every module of ``modules`` on ``data``, in one pass."""
        builders = {name: _PoolBuilder() for name in modules}

        def post_for(name: str) -> Callable[..., None]:
            def post(_m: nn.Module, _args: tuple, output: Any) -> None:
                builders[name].add(output, self._current)

            return post

        handles = [m.register_forward_hook(post_for(name)) for name, m in modules.items()]
        try:
            with torch.no_grad(), self.full_precision():
                self._run_data(data)
        finally:
            for h in handles:
                h.remove()
        return {name: b.build() for name, b in builders.items()}

    def _capture_inputs(self, module: nn.Module, data: CalibrationData) -> Pool:
        """The inputs ``module`` receives in the model quantized as calibrated so far, on ``data``."""
        builder = _PoolBuilder()

        def pre(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            builder.add((args, kwargs), self._current)
            raise _Stop

        # prepend: see the input as the caller passes it, before any pre-scale hook of a reparameterized site
        handle = module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)
        try:
            with torch.no_grad(), self.quantized():
                self._run_data(data)
        finally:
            handle.remove()
        return builder.build()

    def _tib_pools(self) -> tuple[Pool, Pool]:
        builder = _PoolBuilder()

        def pre(_m: nn.Module, args: tuple) -> None:
            builder.add(args[0], self._current)
            raise _Stop

        handle = self._time_embedding().register_forward_pre_hook(pre, prepend=True)
        try:
            with torch.no_grad(), self.full_precision():
                self._run_data(self.session.data.subset(1))
        finally:
            handle.remove()
        inputs = builder.build()
        with torch.no_grad(), self.full_precision():
            target = self._tib_forward(inputs.leaves[0])
        targets = _PoolBuilder()
        targets.spec, targets.parts, targets.index = _flatten(target, []), [list(target)], [inputs.index]
        return inputs, targets.build()

    # --- training ----------------------------------------------------------------------------------------
    def run(
        self,
        opts: ReconOptions,
        targets_cache: dict[int, dict[str, Pool]] | None = None,
        on_block: Callable[[int, int], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Reconstruct every block once with ``opts`` on the session's data (its first ``opts.samples`` per
        timestep); returns a report per block.

        ``targets_cache`` keeps the FP block outputs per data set (by identity) for other sessions on the same
        data (the FP targets do not depend on the configuration). ``on_block(done, total)`` is called after each
        block.
        """
        data = self.session.data
        if opts.samples < data.samples:
            data = data.subset(opts.samples)
        blocks = self.blocks()
        key = id(self.session.data.inputs)
        fp_targets = targets_cache.get(key) if targets_cache is not None else None
        if fp_targets is None:
            fp_targets = self._capture_outputs({b.name: b.module for b in blocks if b.module is not None}, data)
            if targets_cache is not None:
                targets_cache.clear()
                targets_cache[key] = fp_targets
        report = {}
        for k, block in enumerate(blocks):
            start = time.perf_counter()
            if block.name == TIB:
                inputs, targets = self._tib_pools()
            else:
                assert block.module is not None
                targets = fp_targets[block.name]
                inputs = self._capture_inputs(block.module, data)
            rep = self._train(block, inputs, targets, opts, seed=opts.seed + k)
            rep.seconds = round(time.perf_counter() - start, 3)
            report[block.name] = rep.to_dict()
            log.debug("block %s: %s", block.name, report[block.name])
            if on_block is not None:
                on_block(k + 1, len(blocks))
        return report

    def _weight_params(self, name: str, layer: QuantWeightLayer) -> UniformParams:
        if name not in self._wparams:
            bits = self.session.w_bits[name]
            self._wparams[name] = self.session.weight_quantizer(bits).fit(layer.weight, bits)  # type: ignore[assignment]
        return self._wparams[name]

    def _train(self, block: Block, inputs: Pool, targets: Pool, opts: ReconOptions, seed: int) -> BlockReport:
        session = self.session
        layers = self._layers
        ada = {
            s: AdaRoundWeight(layers[s].weight, self._weight_params(s, layers[s]), self._rounding.get(s))
            for s in block.sites
            if s in layers and opts.round_weights
        }
        tables = set(session.act_quantizers())
        grid = len(session.ctx.grid)
        learners: dict[ActQuantizer, TimestepActQuant] = {}
        for s in block.sites + block.frozen:
            for q in session.sites[s].act_quantizers():
                if q in tables:
                    learners[q] = TimestepActQuant(
                        [session.act_params(q, i) for i in range(grid)],  # type: ignore
                        learn=s in block.sites,
                    ).to(session.model.device)
        self._learners = learners
        saved_w = {s: layers[s]._w for s in ada}
        n = len(inputs)
        gen = torch.Generator().manual_seed(seed)
        eval_sel = torch.randperm(n, generator=gen)[:EVAL_SAMPLES]
        weights = self.weights if self.weights is not None and block.name != TIB else None
        if weights is not None and not weights.bind(inputs.index):
            weights = None
        rep = BlockReport(samples=n)
        round_params = [a.v for a in ada.values()]
        act_params = [m.log_mult for m in learners.values() if m.log_mult.requires_grad]
        # The temporal block's pool is every distinct input it has (one per grid timestep): the epoch cap, which
        # keeps small pools of sampled data from overfitting, would leave it a handful of steps; it gets them all.
        pool_steps = opts.iters if block.name == TIB else opts.steps_for(n)
        steps = pool_steps if (round_params or act_params) and opts.iters > 0 else 0
        with self._training(block):
            rep.loss_before = self._loss(block, inputs, targets, eval_sel)
            if steps:
                groups = [
                    g
                    for g in ({"params": round_params, "lr": opts.lr_round}, {"params": act_params, "lr": opts.lr_act})
                    if g["params"]
                ]
                opt = torch.optim.Adam(groups)
                n_weights = max(1, sum(p.numel() for p in round_params))
                params = [*round_params, *act_params]
                lookahead = [opts.lr_round] * len(round_params) + [opts.lr_act] * len(act_params)
                heldout = functools.partial(self._pool_loss, block, inputs, targets)
                for step in range(steps):
                    if weights is None:
                        sel = torch.randint(n, (min(opts.batch, n),), generator=gen)
                    else:
                        sel = weights.draw(opts.batch, gen)
                    for s, a in ada.items():
                        layers[s].use_weight(a.soft())
                    outer = weights is not None and weights.due(step)
                    if weights is None:
                        rec = self._pool_loss(block, inputs, targets, sel)
                    else:
                        rec, batch_scores = weights.weighted_loss(self._errors(block, inputs, targets, sel), sel, outer)
                    beta = beta_at(step, steps, opts.warmup)
                    loss = rec
                    if beta is not None and ada and opts.round_weight > 0:
                        loss = rec + opts.round_weight * sum(a.regulariser(beta) for a in ada.values()) / n_weights
                    opt.zero_grad(set_to_none=True)
                    if outer:
                        assert weights is not None
                        shared = len(round_params)
                        grads = weights.outer_step(loss, batch_scores, sel, params, shared, lookahead, heldout)
                        for p, g in zip(params, grads, strict=True):
                            p.grad = g
                    else:
                        loss.backward()
                    opt.step()
                if weights is not None:
                    weights.end_block(block.name)
                with torch.no_grad():
                    for s, a in ada.items():
                        layers[s].use_weight(a.soft())
                rep.loss_soft = self._loss(block, inputs, targets, eval_sel)
            hard = {s: a.harden() for s, a in ada.items()}
            for s, qt in hard.items():
                layers[s].use_weight(qt.dequantize(layers[s].weight))
            rep.loss_after = self._loss(block, inputs, targets, eval_sel)
        rep.steps = steps
        if steps and not rep.loss_after <= rep.loss_before:
            rep.reverted = True
            for s, w in saved_w.items():
                layers[s].use_weight(w)
            return rep
        for s, qt in hard.items():
            session.set_weight(s, qt)
            self._rounding[s] = ada[s].rounding()
        for q, m in learners.items():
            if m.log_mult.requires_grad:
                for i, p in enumerate(m.table()):
                    session.set_act_params(q, i, p)
        return rep

    def _pool_loss(self, block: Block, inputs: Pool, targets: Pool, sel: torch.Tensor) -> torch.Tensor:
        """The (unweighted) relative MSE of the block on pool samples ``sel``, with a graph."""
        self._idx = inputs.index[sel]
        return _relative_mse(block.forward(inputs.take(sel)), targets.leaves_of(sel))

    def _errors(self, block: Block, inputs: Pool, targets: Pool, sel: torch.Tensor) -> torch.Tensor:
        """Each sample's share of :meth:`_pool_loss` (:func:`_sample_errors`), with a graph."""
        self._idx = inputs.index[sel]
        return _sample_errors(block.forward(inputs.take(sel)), targets.leaves_of(sel))

    def _loss(self, block: Block, inputs: Pool, targets: Pool, sel: torch.Tensor) -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for part in sel.split(CAPTURE_BATCH):
                self._idx = inputs.index[part]
                total += float(_relative_mse(block.forward(inputs.take(part)), targets.leaves_of(part))) * part.numel()
                count += part.numel()
        return total / max(1, count)


def _paired(output: Any, target: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(output tensor, captured target)`` pairs of a block's (nested) output."""
    leaves: list[torch.Tensor] = []
    _flatten(output, leaves)
    if len(leaves) != len(target):
        raise CalibrationError(f"a block returned {len(leaves)} tensors, {len(target)} were captured")
    return list(zip(leaves, target, strict=True))


def _relative_mse(output: Any, target: list[torch.Tensor]) -> torch.Tensor:
    terms = [(o - t).square().mean() / t.square().mean().clamp_min(1e-12) for o, t in _paired(output, target)]
    return torch.stack(terms).mean()


def _sample_errors(output: Any, target: list[torch.Tensor]) -> torch.Tensor:
    """Each sample's share of :func:`_relative_mse`: its mean squared error per output tensor over the batch's mean
    squared target, averaged over the tensors (their mean over the batch is the relative MSE)."""
    terms = [
        (o - t).square().reshape(o.shape[0], -1).mean(1) / t.square().mean().clamp_min(1e-12)
        for o, t in _paired(output, target)
    ]
    return torch.stack(terms).mean(0)
