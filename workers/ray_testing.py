"""Deterministic evaluator factories for testing and benchmarking the Ray pool (like Optuna's ``testing``).

- :class:`ProbeFactory`: a tiny torch computation per candidate with fault hooks — sleep, raise, NaN, or kill
  the worker process on given keys — cheap enough for many Ray tests.
- :class:`SamplingFactory`: full-precision DDIM sampling on a candidate's schedule with a real diffusers UNet
  (the testbed's architecture or the public CIFAR-10 DDPM's, random weights from a seed) against a reference
  schedule — the compute profile of a real evaluation, for the scaling benchmark.

Both live in an importable package so Ray workers (local or on a joined cluster, via ``py_modules``) can
unpickle them.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from search.candidate import Candidate
from search.cost import CostModel
from search.evaluator import Evaluation, Evaluator
from workers.actor import Payload, WorkerContext

#: Architecture of the shipped digits testbed (``supernet.zoo.testbed.testbed_unet``).
DIGITS_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}

#: ``UNet2DModel`` configuration of the public google/ddpm-cifar10-32 checkpoint (~35.7M parameters).
CIFAR10_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 256, 256),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": None,
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "time_embedding_type": "positional",
}

UNET_CONFIGS: dict[str, dict[str, Any]] = {"digits": DIGITS_UNET, "cifar10": CIFAR10_UNET}


def _mean_bits(pairs: Sequence[tuple[str, int]]) -> float:
    return sum(b for _, b in pairs) / len(pairs) if pairs else 32.0


def proxy_cost(candidate: Candidate, macs_per_site: float) -> tuple[float, float]:
    """(BitOps, weight bytes) of a candidate when every site has ``macs_per_site`` MACs and as many weights."""
    bitops = sum(w * a for (_, w), (_, a) in zip(candidate.weight_bits, candidate.act_bits, strict=True))
    weight_bits = sum(w for _, w in candidate.weight_bits)
    return float(bitops * macs_per_site * candidate.steps), weight_bits * macs_per_site / 8


@dataclass(frozen=True)
class ProbeFactory:
    """Builds :class:`ProbeEvaluator` (see the module docstring).

    Attributes:
        seed: weights and input of the computation.
        width: features of the computation.
        samples: rows of the input.
        sleep_s: extra seconds per candidate (to make a batch long enough to interrupt).
        crash_keys: the worker process exits (``os._exit``) when it evaluates one of these.
        crash_once_dir: when set, a worker exits the first time any candidate is evaluated anywhere (a marker
            file per key under this directory records it): every candidate dies once, then succeeds.
        raise_keys: evaluating one of these raises.
        hang_keys: evaluating one of these sleeps for an hour (a hung evaluation).
        nan_keys: these get a NaN quality.
        payload_size: bytes of the payload shipped in object-store mode.
        site_costs: ``(site, MACs, params)`` per site: price candidates with :class:`search.cost.CostModel`
            (empty: a proxy cost). A ``CostModel`` itself does not pickle.
        fp_params: the cost model's ``fp_params``.
    """

    seed: int = 0
    width: int = 64
    samples: int = 32
    sleep_s: float = 0.0
    crash_keys: frozenset[str] = frozenset()
    crash_once_dir: str | None = None
    raise_keys: frozenset[str] = frozenset()
    hang_keys: frozenset[str] = frozenset()
    nan_keys: frozenset[str] = frozenset()
    payload_size: int = 1 << 20
    site_costs: tuple[tuple[str, int, int], ...] = ()
    fp_params: int = 0

    def priced_by(self, cost_model: CostModel) -> ProbeFactory:
        """This factory, pricing candidates with ``cost_model``."""
        costs = tuple((s, int(cost_model.macs[s]), int(cost_model.params.get(s, 0))) for s in cost_model.sites)
        return replace(self, site_costs=costs, fp_params=cost_model.fp_params)

    def cost_model(self) -> CostModel | None:
        """The cost model of ``site_costs`` (None when empty)."""
        if not self.site_costs:
            return None
        return CostModel({s: m for s, m, _ in self.site_costs}, {s: p for s, _, p in self.site_costs}, self.fp_params)

    def payload(self) -> Payload:
        """Deterministic bytes (their digest ends up in every evaluation's ``extra``)."""
        block = hashlib.sha256(str(self.seed).encode()).digest()
        return {"blob": (block * (self.payload_size // len(block) + 1))[: self.payload_size]}

    def build(self, context: WorkerContext, payload: Payload | None) -> Evaluator:
        """A :class:`ProbeEvaluator` on ``context.device``."""
        return ProbeEvaluator(self, context, payload)


class ProbeEvaluator:
    """Per candidate: K tanh layers with weights and activations rounded to the candidate's mean bits."""

    def __init__(self, spec: ProbeFactory, context: WorkerContext, payload: Payload | None) -> None:
        import torch

        self.spec = spec
        self.device = context.device
        gen = torch.Generator().manual_seed(spec.seed)
        self.weight = (torch.randn(spec.width, spec.width, generator=gen) / math.sqrt(spec.width)).to(self.device)
        self.input = torch.randn(spec.samples, spec.width, generator=gen).to(self.device)
        blob = (payload or {}).get("blob", b"")
        self.payload_digest = hashlib.sha256(blob).hexdigest()[:16] if blob else None
        self.cost_model = spec.cost_model()

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate (raising for ``raise_keys``; exiting the process for crash keys)."""
        return [self._evaluate_one(c) for c in candidates]

    def _evaluate_one(self, candidate: Candidate) -> Evaluation:
        key = candidate.key()
        self._maybe_crash(key)
        if key in self.spec.raise_keys:
            raise RuntimeError(f"probe: asked to fail on {key}")
        if key in self.spec.hang_keys:
            time.sleep(3600)
        if self.spec.sleep_s:
            time.sleep(self.spec.sleep_s)
        quality = math.nan if key in self.spec.nan_keys else self._quality(candidate)
        if self.cost_model is not None:
            cost = self.cost_model.cost(candidate)
            bitops, weight_bytes = cost.bitops, cost.weight_bytes
        else:
            bitops, weight_bytes = proxy_cost(candidate, self.spec.width**2)
        extra = {"steps": candidate.steps, "payload": self.payload_digest}
        return Evaluation(key, quality, bitops, weight_bytes, extra)

    def _maybe_crash(self, key: str) -> None:
        if key in self.spec.crash_keys:
            os._exit(3)
        if self.spec.crash_once_dir is not None:
            marker = Path(self.spec.crash_once_dir) / key
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                return
            os._exit(3)

    def _quality(self, candidate: Candidate) -> float:
        import torch

        w_bits, a_bits = _mean_bits(candidate.weight_bits), _mean_bits(candidate.act_bits)
        weight = _round_to_bits(self.weight, w_bits)
        x, ref = self.input, self.input
        for t in candidate.timesteps:
            shift = t / 1000.0
            x = _round_to_bits(torch.tanh(x @ weight + shift), a_bits)
            ref = torch.tanh(ref @ self.weight + shift)
        return float(((x - ref) ** 2).mean())


def _round_to_bits(x: Any, bits: float) -> Any:
    levels = 2.0 ** round(bits) - 1
    scale = float(x.abs().max()) or 1.0
    return (x / scale * levels).round() / levels * scale


@dataclass(frozen=True)
class SamplingFactory:
    """Builds :class:`SamplingEvaluator`: FP DDIM sampling with a real UNet (random weights from ``seed``).

    Attributes:
        model: ``"digits"`` (the testbed's architecture, 16x16) or ``"cifar10"`` (google/ddpm-cifar10-32's).
        samples: images per candidate.
        seed: the weights' and the noise's seed.
        reference_steps: uniform DDIM steps of the reference.
        batch_size: images per forward.
    """

    model: str = "digits"
    samples: int = 8
    seed: int = 0
    reference_steps: int = 20
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.model not in UNET_CONFIGS:
            raise ValueError(f"model must be one of {list(UNET_CONFIGS)}, got {self.model!r}")

    def payload(self) -> Payload:
        """Nothing to ship: the weights come from the seed."""
        return {}

    def build(self, context: WorkerContext, payload: Payload | None) -> Evaluator:
        """A :class:`SamplingEvaluator` on ``context.device``."""
        return SamplingEvaluator(self, context)


#: The training scheduler of both architectures (diffusers' DDPM, linear betas, x0 clipped).
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "clip_sample": True,
}


def build_model(model: str, seed: int) -> Any:
    """A model adapter (:class:`supernet.models.UNet2DAdapter`) of the named architecture with weights initialised
    from ``seed`` and the DDPM training schedule."""
    import torch

    from supernet.models import UNet2DAdapter

    torch.manual_seed(seed)
    return UNet2DAdapter.from_config(UNET_CONFIGS[model], SCHEDULER_CONFIG)


class SamplingEvaluator:
    """Quality = MSE between the candidate's samples and the reference's, from the same noise."""

    def __init__(self, spec: SamplingFactory, context: WorkerContext) -> None:
        from supernet.sampling import uniform_schedule

        self.spec = spec
        model = build_model(spec.model, spec.seed)
        model.denoiser.to(context.device)
        self.params = sum(p.numel() for p in model.denoiser.parameters())
        self.sampler = model.sampler(spec.batch_size)
        self.reference = self.sampler.sample(uniform_schedule(spec.reference_steps, 1000), spec.samples, spec.seed)

    def evaluate(self, candidates: Sequence[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate (its bits are ignored: full precision)."""
        return [self._evaluate_one(c) for c in candidates]

    def _evaluate_one(self, candidate: Candidate) -> Evaluation:
        start = time.perf_counter()
        images = self.sampler.sample(candidate.timesteps, self.spec.samples, self.spec.seed)
        quality = float(((images - self.reference) ** 2).mean())
        bitops, weight_bytes = proxy_cost(candidate, self.params / max(1, len(candidate.weight_bits)))
        extra = {"seconds": round(time.perf_counter() - start, 4)}
        return Evaluation(candidate.key(), quality, bitops, weight_bytes, extra)


def candidates_for(n: int, sites: Sequence[str] = ("a", "b", "c"), seed: int = 0) -> list[Candidate]:
    """``n`` distinct, deterministic candidates (schedules of 3–6 steps, bits 4–8) for tests and benchmarks."""
    import random

    rng = random.Random(seed)
    out: dict[str, Candidate] = {}
    while len(out) < n:
        steps = rng.randint(3, 6)
        timesteps = sorted(rng.sample(range(1000), steps), reverse=True)
        w = {s: rng.randint(4, 8) for s in sites}
        a = {s: rng.randint(4, 8) for s in sites}
        c = Candidate.from_maps(timesteps, w, a)
        out.setdefault(c.key(), c)
    return list(out.values())
