"""Saving, loading and caching calibrated supernets.

An artifact is a directory with ``supernet.safetensors`` (weight codes, scales and zero-points per (site, bits);
activation parameters per (operand, bits) and grid timestep; per-input-channel reparameterization factors, if the
calibration applied any) and ``supernet.json`` (format version, model hash, bit options, settings, grid, sites,
cost model, what the calibration strategy decided, which (site, bits) read cached temporal features). The cache
keys artifacts by (model hash, bit options, supernet settings, calibration settings), so a second job on the same
model does not calibrate again.

Cached temporal features (the ``temporal_cache`` switch) are not stored: they are a deterministic function of the
(reparameterized) FP weights, the width and the settings, and are rebuilt on load from the recorded choices
(:func:`supernet.calibration.temporal.restore_tables`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from search.errors import VersionMismatchError
from search.filelock import file_lock
from supernet.calibration.data import CalibrationData, collect_calibration_data
from supernet.calibration.settings import CalibrationSettings
from supernet.calibration.temporal import describe_tables, restore_tables
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
    if supernet.reparam is not None:
        for name, r in supernet.reparam.factors.items():
            tensors[f"r/{name}"] = r.contiguous()
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
        "calibration_metadata": supernet.calibration_metadata,
        "calibration_seconds": {str(b): v for b, v in supernet.calibration_seconds.items()},
        "reparameterization": supernet.reparam.report() if supernet.reparam is not None else None,
        "temporal_cache": describe_tables({n: supernet.site(n) for n in supernet.sites}),
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
    try:
        tensors = load_file(str(Path(path) / TENSORS_FILE))
        factors = {k[2:]: v for k, v in tensors.items() if k.startswith("r/")}
        if factors:
            rep = supernet.reparameterize(factors)
            if meta.get("reparameterization") not in (None, rep.report()):
                supernet.detach()
                raise VersionMismatchError(f"{path}: the reparameterization does not apply to this model as recorded")
        supernet._ctx.set_grid(meta["grid"])
        for name in supernet.sites:
            site = supernet.site(name)
            if isinstance(site, QuantWeightLayer):
                dev = site.weight.device
                for bits in supernet.bit_options:
                    codes = tensors[f"w/{name}/{bits}/codes"].to(dev)
                    params = UniformParams(tensors[f"w/{name}/{bits}/scale"].to(dev),
                                           tensors[f"w/{name}/{bits}/zero_point"].to(dev), bits,
                                           codes.dtype == torch.int8)
                    site.slots[bits] = QuantizedTensor(codes, params)
            for q in site.act_quantizers():
                for bits in supernet.bit_options:
                    rows = tensors[f"a/{name}/{q.role}/{bits}"]
                    q.tables[bits] = tuple(_act_params(r, bits) for r in rows)
        if meta.get("temporal_cache"):
            restore_tables(supernet.unet, {n: supernet.site(n) for n in supernet.sites}, meta["temporal_cache"],
                           supernet.calib_settings, supernet.settings)
    except BaseException:
        supernet.detach()  # leave the caller's model as it was
        raise
    supernet.calibration_source = dict(meta.get("calibration_source", {}))
    supernet.calibration_metadata = dict(meta.get("calibration_metadata", {}))
    supernet.calibration_seconds = {int(b): float(v) for b, v in meta.get("calibration_seconds", {}).items()}
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


def artifact_name(model_hash: str, bit_options: Iterable[int], settings: SupernetSettings,
                  calib_settings: CalibrationSettings) -> str:
    """The directory name of an artifact in the cache (and in a model's :data:`SHIPPED_DIR`)."""
    return f"{model_hash}-{cache_key(model_hash, bit_options, settings, calib_settings)}"


def get_calibration_data(model: Any, calib_settings: CalibrationSettings, cache_dir: str | Path | None = None,
                         batch_size: int = 64) -> CalibrationData:
    """The FP trajectories for ``calib_settings``, collected once per (model, data settings) and cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = model_identity(model)
    path = root / "calibration" / f"{identity}-{canonical_key(calib_settings.data_dict())}.safetensors"
    with file_lock(path.with_suffix(".lock")):
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


#: What loading a damaged or foreign artifact raises: such an artifact is skipped (and calibrated anew), not fatal.
UNREADABLE = (VersionMismatchError, CalibrationError, SafetensorError, OSError, KeyError, ValueError)

#: A model directory may ship pre-calibrated artifacts here, named like the cache's entries.
SHIPPED_DIR = "tmpq-supernets"


def shipped_supernet(model: Any, name: str) -> Path | None:
    """``<model dir>/tmpq-supernets/<name>`` when the model ships that artifact, else ``None``.

    Diffusers ignores the folder and the model hash covers only ``unet/``, so shipping one changes neither.
    """
    model_path = getattr(model, "path", None)
    if model_path is None:
        return None
    candidate = Path(model_path) / SHIPPED_DIR / name
    return candidate if (candidate / META_FILE).is_file() else None


def _adopt_shipped(shipped: Path, final: Path, model: Any) -> QuantSupernet | None:
    """Copy a shipped artifact into the cache (where Ray actors and exports look) and load it; ``None`` if it
    does not load (then the caller calibrates)."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
    try:
        shutil.copytree(shipped, tmp)
        os.replace(tmp, final)
        supernet = load_supernet(final, model)
    except UNREADABLE as exc:
        log.warning("not using the shipped supernet %s: %s", shipped, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        return None
    log.info("using the pre-calibrated supernet shipped with the model: %s", shipped)
    return supernet


def get_or_build_supernet(model: Any, bit_options: Iterable[int], settings: SupernetSettings | None = None,
                          calib_settings: CalibrationSettings | None = None, cache_dir: str | Path | None = None,
                          *, data: CalibrationData | None = None, batch_size: int = 64) -> QuantSupernet:
    """Load the cached supernet for (model, bits, settings) or build, calibrate and cache it.

    A pre-calibrated artifact shipped with the model (:func:`shipped_supernet`) is copied into the cache instead of
    calibrating.

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
    final = root / artifact_name(identity, options, settings, calib_settings)
    with file_lock(final.with_name(final.name + ".lock")):
        if (final / META_FILE).exists():
            try:
                supernet = load_supernet(final, model)
                log.info("loaded cached supernet %s", final)
                return supernet
            except UNREADABLE as exc:
                log.warning("rebuilding unreadable cached supernet %s: %s", final, exc)
                shutil.rmtree(final, ignore_errors=True)
        shipped = shipped_supernet(model, final.name)
        if shipped is not None:
            supernet = _adopt_shipped(shipped, final, model)
            if supernet is not None:
                return supernet
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


def ship_supernet(model: Any, bit_options: Iterable[int], calib_settings: CalibrationSettings | None = None,
                  settings: SupernetSettings | None = None, cache_dir: str | Path | None = None) -> Path:
    """Calibrate (or take from the cache) the supernet for these settings and store a copy in the model directory's
    :data:`SHIPPED_DIR`, so that a fresh clone or another machine finds it without calibrating; returns the copy."""
    settings = settings or SupernetSettings()
    calib_settings = calib_settings or CalibrationSettings()
    supernet = get_or_build_supernet(model, bit_options, settings, calib_settings, cache_dir)
    supernet.detach()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = artifact_name(model_identity(model), bit_options, settings, calib_settings)
    target = Path(model.path) / SHIPPED_DIR / name
    tmp = target.with_name(f".{name}.{uuid.uuid4().hex}")
    shutil.copytree(root / name, tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
