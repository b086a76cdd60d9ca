"""TFMQ-DM's cache of quantized temporal features (journal version): the ``temporal_cache`` switch of ``"tcaq"``.

A block's *temporal feature* is the output of its time-embedding projection, e.g. a UNet ResBlock's
``time_emb_proj(act(h(t)))`` with ``h`` the time-embedding MLP over the sinusoidal projection of ``t`` (the model
adapter's time-embedding pieces: ``timestep_embedding``, ``temporal_projections``, ``project_temporal``); it
does not depend on ``x_t``. Since ``t`` comes from the finite set ``[0, T)``, the feature is computed here for every
training timestep from the FP weights (after any TCR/dilation reparameterization of them: exactly what the FP
model computes), and quantized **per timestep**: each row (one ``t``) gets its own uniform scale and zero-point at
the site's *activation* width, fitted like every activation range of the calibration (``act_method``: min-max, or
the MSE search over clipping ratios; ``act_symmetric`` codes). That is a :class:`~supernet.qlayers.temporal.
TemporalTable`, which the site reads at run time for the current ``t`` instead of computing.

Choice per module (TFMQ-DM: "by temporal-feature error"): at the end of each configuration's calibration (after
reconstruction and PAR, i.e. on the final quantizers), the computed path (quantized weights, quantized inputs,
quantized time-embedding MLP upstream) and the cache are both compared with the FP features on the calibration
grid's timesteps; the one with the lower MSE is used for that (projection, activation width), ties going to the
computed path. Within the session everything still runs the computed path (blocks downstream were reconstructed on
computed temporal features; the cache replaces them only where it is closer to FP). The choice is a table per
activation width on the site, so ``assemble`` stays a lookup; in a mixed candidate a site's activation gene picks
the table (its weight gene then does not change what runs).

Storage: a table is a deterministic function of the FP weights, the width and the settings, so artifacts do not
store it (``T × features × widths`` values): they store which (site, width) uses the cache, ``T``, and a digest of
the codes, and :func:`restore_tables` rebuilds them on load (a digest mismatch, e.g. another machine's float
arithmetic, is logged). An export stores the rows of its schedule's timesteps only (``K × features`` codes).

Cost: a cached projection does no work per step (its row is a table lookup, and the time-embedding MLP becomes
dead code once every projection is cached), but the analytic cost model (:class:`search.cost.CostModel`, torch-free
and keyed by site and genes only) still counts their MACs at ``b_w · b_a``; on the testbed they are tiny.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from supernet.calibration.data import CalibrationData
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError
from supernet.models.base import DiffusionAdapter
from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.registry import Site
from supernet.qlayers.temporal import TemporalTable
from supernet.qlayers.weighted import QLinear, QuantWeightLayer
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformQuantizer
from supernet.settings import SupernetSettings

log = logging.getLogger(__name__)

#: ``T`` when the calibration data carries no ``alphas_cumprod`` (the diffusers default).
DEFAULT_NUM_TIMESTEPS = 1000


def projections(model: DiffusionAdapter, sites: Mapping[str, Site]) -> dict[str, nn.Module]:
    """``{projection site: the block that owns it}`` for every time-embedding projection of ``model`` that is a
    linear site, in model order."""
    out = {}
    for site, owner in model.temporal_projections().items():
        proj = model.denoiser.get_submodule(site)
        if isinstance(proj, QLinear) and sites.get(site) is proj:
            out[site] = owner
    return out


def num_timesteps(data: CalibrationData) -> int:
    """``T``: the length of the data's ``alphas_cumprod``, else :data:`DEFAULT_NUM_TIMESTEPS`."""
    T = int(data.alphas_cumprod.shape[0]) if data.alphas_cumprod is not None else DEFAULT_NUM_TIMESTEPS
    if max(data.timesteps) >= T:
        raise CalibrationError(f"calibration timesteps reach {max(data.timesteps)}, beyond T = {T}")
    return T


def features(
    model: DiffusionAdapter, owners: Mapping[str, nn.Module], timesteps: Sequence[int]
) -> dict[str, torch.Tensor]:
    """``{projection site: (len(timesteps), features)}`` with the model's layers as they are set now."""
    with torch.no_grad():
        emb = model.timestep_embedding(torch.tensor(list(timesteps), dtype=torch.long, device=model.device))
        return {name: model.project_temporal(block, emb) for name, block in owners.items()}


def _passthrough(_q: ActQuantizer, _x: torch.Tensor) -> None:
    return None


@contextmanager
def floating_point(layers: Iterable[QuantWeightLayer]) -> Iterator[None]:
    """While open, ``layers`` compute in FP (weights, inputs, no table), whatever is assembled or set by a session."""
    layers = list(layers)
    if any(layer.act.observing for layer in layers):
        raise CalibrationError("temporal features cannot be computed while a calibration observes the layers")
    saved = [(layer._w, layer._table) for layer in layers]
    for layer in layers:
        layer._w, layer._table = None, None
        layer.act.set_observer(_passthrough)
    try:
        yield
    finally:
        for layer, (w, table) in zip(layers, saved, strict=True):
            layer._w, layer._table = w, table
            layer.act.set_observer(None)


def temporal_layers(model: DiffusionAdapter, owners: Mapping[str, nn.Module]) -> list[QuantWeightLayer]:
    """The sites temporal features pass through: the time-embedding block's and the projections."""
    block = model.time_embedding_block
    if block is None:
        raise CalibrationError(model.temporal_support() or "the model has no time-embedding block")
    denoiser = model.denoiser
    mlp = [m for m in denoiser.get_submodule(block).modules() if isinstance(m, QuantWeightLayer)]
    projs = [denoiser.get_submodule(site) for site in owners]
    return mlp + [p for p in projs if isinstance(p, QuantWeightLayer)]


def fp_features(model: DiffusionAdapter, owners: Mapping[str, nn.Module], steps: int) -> dict[str, torch.Tensor]:
    """The FP temporal feature of every projection of ``owners`` for every timestep of ``[0, steps)``."""
    with floating_point(temporal_layers(model, owners)):
        return features(model, owners, range(steps))


def table_quantizer(settings: CalibrationSettings, supernet_settings: SupernetSettings) -> UniformQuantizer:
    """One scale and zero-point per row (timestep), fitted as the calibration fits activation ranges."""
    return UniformQuantizer(
        symmetric=supernet_settings.act_symmetric,
        axis=0,
        method=settings.act_method,
        grid=settings.mse_grid,
        min_ratio=settings.mse_min_ratio,
        norm=settings.mse_norm,
    )


def build_table(feats: torch.Tensor, bits: int, quantizer: UniformQuantizer) -> TemporalTable:
    """Rows ``feats[t]`` for ``t`` in ``[0, len(feats))``, each quantized with its own parameters."""
    params = quantizer.fit(feats, bits)
    return TemporalTable(range(feats.shape[0]), QuantizedTensor.from_float(feats, params))  # type: ignore[arg-type]


def digest(table: TemporalTable) -> str:
    """SHA-256 (16 hex digits) of a table's codes and parameters."""
    h = hashlib.sha256()
    p = table.rows.params
    for t in (table.rows.codes, p.scale, p.zero_point):
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def describe_tables(sites: Mapping[str, Site]) -> dict[str, Any] | None:
    """What an artifact records of the tables: ``T``, and per site the widths that use one with their digests."""
    out: dict[str, dict[str, str]] = {}
    lengths = set()
    for name, site in sites.items():
        tables = getattr(site, "temporal", None)
        if tables:
            out[name] = {str(b): digest(tables[b]) for b in sorted(tables)}
            lengths |= {len(tables[b]) for b in tables}
    if not out:
        return None
    if len(lengths) != 1:
        raise CalibrationError(f"temporal tables of different lengths {sorted(lengths)} cannot be described")
    return {"num_train_timesteps": lengths.pop(), "sites": out}


def restore_tables(
    model: DiffusionAdapter,
    sites: Mapping[str, Site],
    record: Mapping[str, Any],
    settings: CalibrationSettings,
    supernet_settings: SupernetSettings,
) -> None:
    """Rebuild the tables :func:`describe_tables` recorded (sites in FP or not: they are computed in FP)."""
    T = int(record["num_train_timesteps"])
    wanted: Mapping[str, Mapping[str, str]] = record["sites"]
    owners = {n: b for n, b in projections(model, sites).items() if n in wanted}
    if set(owners) != set(wanted):
        raise CalibrationError(
            f"cached temporal features recorded for sites that are not projections: {sorted(set(wanted) - set(owners))}"
        )
    fp = fp_features(model, owners, T)
    quantizer = table_quantizer(settings, supernet_settings)
    for name, widths in wanted.items():
        layer = sites[name]
        assert isinstance(layer, QuantWeightLayer)
        for bits, expected in widths.items():
            table = build_table(fp[name], int(bits), quantizer)
            if digest(table) != expected:
                log.warning(
                    "%s: the rebuilt %s-bit temporal table differs from the calibrated one (another "
                    "machine's float arithmetic?); using the rebuilt one",
                    name,
                    bits,
                )
            layer.temporal[int(bits)] = table
