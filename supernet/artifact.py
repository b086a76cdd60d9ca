"""Saving, loading and caching calibrated supernets.

An artifact is a directory with ``supernet.safetensors`` (weight codes, scales and zero-points per (site, bits);
activation parameters per (operand, bits) and grid timestep) and ``supernet.json`` (format version, model hash,
bit options, settings, grid, sites, cost model). The cache keys artifacts by (model hash, bit options, supernet
settings, calibration settings), so a second job on the same model does not calibrate again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from search.errors import VersionMismatchError
from supernet.calibration.data import CalibrationData, collect_calibration_data
from supernet.calibration.settings import CalibrationSettings
from supernet.errors import CalibrationError
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import QParams
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams
from supernet.settings import SupernetSettings, canonical_key
from supernet.supernet import FORMAT_VERSION, QuantSupernet, module_hash

log = logging.getLogger(__name__)

TENSORS_FILE = "supernet.safetensors"
META_FILE = "supernet.json"
_KINDS = {UniformParams: 0.0, Log2Params: 1.0}


def model_identity(model: Any) -> str:
    """The hash artifacts are keyed by: a ``DiffusionModel``'s file hash, else the module's state-dict hash."""
    return getattr(model, "model_hash", None) or module_hash(getattr(model, "unet", model))


def _act_row(p: QParams) -> list[float]:
    if isinstance(p, Log2Params):
        return [1.0, p.scale, 0.0, 0.0]
    if isinstance(p, UniformParams):
        return [0.0, float(p.scale), float(p.zero_point), float(p.symmetric)]
    raise TypeError(f"cannot store activation parameters of type {type(p).__name__}")


def _act_params(row: torch.Tensor, bits: int) -> QParams:
    kind, scale, zp, sym = (float(v) for v in row)
    if kind == 1.0:
        return Log2Params(scale, bits)
    return UniformParams(torch.tensor(scale), torch.tensor(zp), bits, bool(sym))


def save_supernet(supernet: QuantSupernet, path: str | Path) -> Path:
    """Write ``supernet`` (calibrated) to the directory ``path``; returns it."""
    if not supernet.calibrated:
        raise CalibrationError("only a calibrated supernet can be saved")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name in supernet.sites:
        site = supernet.site(name)
        if isinstance(site, QuantWeightLayer):
            for bits, qt in sorted(site.slots.items()):
                tensors[f"w/{name}/{bits}/codes"] = qt.codes.contiguous()
                tensors[f"w/{name}/{bits}/scale"] = qt.params.scale.contiguous()
                tensors[f"w/{name}/{bits}/zero_point"] = qt.params.zero_point.contiguous()
        for q in site.act_quantizers():
            for bits, table in sorted(q.tables.items()):
                tensors[f"a/{name}/{q.role}/{bits}"] = torch.tensor([_act_row(p) for p in table], dtype=torch.float32)
    save_file(tensors, str(out / TENSORS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "model_hash": supernet.model_hash,
        "bit_options": list(supernet.bit_options),
        "settings": supernet.settings.to_dict(),
        "calibration": supernet.calib_settings.to_dict(),
        "calibration_source": supernet.calibration_source,
        "grid": list(supernet.grid),
        "sample_shape": list(supernet.sample_shape),
        "sites": list(supernet.sites),
        "site_blocks": supernet.site_blocks,
        "skipped": supernet.skipped,
        "cost_model": supernet.cost_model.to_dict(),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of the artifact at ``path``; refuses another format version."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: no supernet artifact ({META_FILE} is missing)") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise VersionMismatchError(f"{path}: supernet format version {meta.get('format_version')!r} is not "
                                   f"supported (expected {FORMAT_VERSION})")
    return meta


def load_supernet(path: str | Path, model: Any) -> QuantSupernet:
    """Wrap ``model`` and restore the artifact at ``path``.

    Raises :class:`VersionMismatchError` if the artifact has another format version or was calibrated for
    another model (by :func:`model_identity`) or another site list.
    """
    meta = read_metadata(path)
    identity = model_identity(model)
    if meta["model_hash"] != identity:
        raise VersionMismatchError(f"{path}: calibrated for model {meta['model_hash']}, not for this model "
                                   f"({identity})")
    supernet = QuantSupernet.build(model, meta["bit_options"], SupernetSettings.from_dict(meta["settings"]),
                                   CalibrationSettings.from_dict(meta["calibration"]), model_hash=identity,
                                   sample_shape=meta["sample_shape"])
    if list(supernet.sites) != meta["sites"]:
        supernet.detach()
        raise VersionMismatchError(f"{path}: the model's sites differ from the artifact's")
    tensors = load_file(str(Path(path) / TENSORS_FILE))
    supernet._ctx.set_grid(meta["grid"])
    for name in supernet.sites:
        site = supernet.site(name)
        if isinstance(site, QuantWeightLayer):
            dev = site.weight.device
            for bits in supernet.bit_options:
                codes = tensors[f"w/{name}/{bits}/codes"].to(dev)
                params = UniformParams(tensors[f"w/{name}/{bits}/scale"].to(dev),
                                       tensors[f"w/{name}/{bits}/zero_point"].to(dev), bits, codes.dtype == torch.int8)
                site.slots[bits] = QuantizedTensor(codes, params)
        for q in site.act_quantizers():
            for bits in supernet.bit_options:
                rows = tensors[f"a/{name}/{q.role}/{bits}"]
                q.tables[bits] = tuple(_act_params(r, bits) for r in rows)
    supernet.calibration_source = dict(meta.get("calibration_source", {}))
    supernet.calibrated = True
    return supernet


# --- the cache -------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$TMPQ_DATA_DIR/supernets``, or ``./data/supernets``."""
    return Path(os.environ.get("TMPQ_DATA_DIR", "data")) / "supernets"


def cache_key(model_hash: str, bit_options: Iterable[int], settings: SupernetSettings,
              calib_settings: CalibrationSettings) -> str:
    """The cache identity of a supernet artifact."""
    return canonical_key({"format_version": FORMAT_VERSION, "model_hash": model_hash,
                          "bit_options": sorted({int(b) for b in bit_options}),
                          "settings": settings.to_dict(), "calibration": calib_settings.to_dict()})


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get_calibration_data(model: Any, calib_settings: CalibrationSettings, cache_dir: str | Path | None = None,
                         batch_size: int = 64) -> CalibrationData:
    """The FP trajectories for ``calib_settings``, collected once per (model, data settings) and cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = model_identity(model)
    path = root / "calibration" / f"{identity}-{canonical_key(calib_settings.data_dict())}.safetensors"
    with _locked(path.with_suffix(".lock")):
        if path.exists():
            try:
                return CalibrationData.load(path)
            except (VersionMismatchError, OSError, KeyError, ValueError) as exc:
                log.warning("ignoring unreadable calibration data %s: %s", path, exc)
        data = collect_calibration_data(model.unet, model.alphas_cumprod, model.clip_sample, calib_settings,
                                        batch_size, source={"model_hash": identity})
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        data.save(tmp)
        os.replace(tmp, path)
        return data


def get_or_build_supernet(model: Any, bit_options: Iterable[int], settings: SupernetSettings | None = None,
                          calib_settings: CalibrationSettings | None = None, cache_dir: str | Path | None = None,
                          *, data: CalibrationData | None = None, batch_size: int = 64) -> QuantSupernet:
    """Load the cached supernet for (model, bits, settings) or build, calibrate and cache it.

    Args:
        model: a :class:`~supernet.zoo.loader.DiffusionModel` (a bare UNet works only with ``data``).
        bit_options: calibrated bit-widths.
        settings / calib_settings: defaults when omitted.
        cache_dir: defaults to :func:`default_cache_dir`.
        data: calibration data to use instead of collecting (or loading cached) FP trajectories.
        batch_size: sampler batch size when collecting.
    """
    settings = settings or SupernetSettings()
    calib_settings = calib_settings or CalibrationSettings()
    options = sorted({int(b) for b in bit_options})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = model_identity(model)
    final = root / f"{identity}-{cache_key(identity, options, settings, calib_settings)}"
    with _locked(final.with_name(final.name + ".lock")):
        if (final / META_FILE).exists():
            try:
                supernet = load_supernet(final, model)
                log.info("loaded cached supernet %s", final)
                return supernet
            except (VersionMismatchError, CalibrationError, OSError, KeyError, ValueError) as exc:
                log.warning("rebuilding unreadable cached supernet %s: %s", final, exc)
                shutil.rmtree(final, ignore_errors=True)
        if data is None:
            data = get_calibration_data(model, calib_settings, root, batch_size)
        supernet = QuantSupernet.build(model, options, settings, calib_settings, model_hash=identity,
                                       sample_shape=tuple(data.inputs.shape[2:]))
        supernet.calibrate(data)
        tmp = root / f".{final.name}.{uuid.uuid4().hex}"
        supernet.save(tmp)
        os.replace(tmp, final)
        log.info("cached supernet %s", final)
        return supernet
