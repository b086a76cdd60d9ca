"""Saving, loading and caching calibrated supernets.

An artifact is a directory with ``supernet.safetensors`` (weight codes, scales and zero-points per (site, bits);
activation parameters per (operand, bits) and grid timestep; per-input-channel reparameterization factors, if the
calibration applied any) and ``supernet.json`` (format version, model hash, bit options, settings, grid, sites,
cost model, what the calibration strategy decided, which (site, bits) read cached temporal features). The cache
keys artifacts by (model hash, bit options, supernet settings, calibration settings), so a second job on the same
model does not calibrate again.

Writing the cache never fails silently: a directory, lock, calibration data file or artifact that cannot be written
(a full disk, a read-only or unwritable directory) raises :class:`~search.errors.StorageError` naming the directory
and the OS reason, checked before any calibration work where possible. Only an artifact or calibration data that
cannot be *read* (damaged, foreign, another format) is rebuilt.

Cached temporal features (the ``temporal_cache`` switch) are not stored: they are a deterministic function of the
(reparameterized) FP weights, the width and the settings, and are rebuilt on load from the recorded choices
(:func:`supernet.calibration.temporal.restore_tables`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from search.errors import StorageError, VersionMismatchError
from search.filelock import file_lock
from supernet.calibration.data import CalibrationData, collect_calibration_data
from supernet.calibration.estimate import estimate_calibration
from supernet.calibration.report import CHECK_BITS, calibration_report, range_w8a8_check, report_unavailable
from supernet.calibration.settings import CalibrationSettings
from supernet.calibration.temporal import describe_tables, restore_tables
from supernet.catalog import META_FILE, SHIPPED_DIR, TENSORS_FILE, default_cache_dir
from supernet.errors import CalibrationError
from supernet.identity import FORMAT_VERSION, artifact_name
from supernet.models.base import DiffusionAdapter, as_adapter, module_hash
from supernet.progress import ProgressCallback, ProgressTracker
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import QParams
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams
from supernet.settings import SupernetSettings, canonical_key
from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)

_KINDS = {UniformParams: 0.0, Log2Params: 1.0}
#: Bytes written to check a cache directory can take a file (one filesystem block).
_PROBE_BYTES = 4096


def model_identity(model: DiffusionAdapter | nn.Module) -> str:
    """The hash artifacts are keyed by: a loaded model's file hash, else the denoiser's state-dict hash."""
    if isinstance(model, DiffusionAdapter):
        return model.identity()
    if isinstance(model, nn.Module):
        return module_hash(model)
    raise TypeError(f"expected a DiffusionAdapter or an nn.Module, got {type(model).__name__}")


# --- writing the cache: every failure is a StorageError naming the directory --------------------------------
def os_reason(exc: BaseException) -> str:
    """What the OS said about a failed write, e.g. ``no space left on device``."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        first = exc.args[0][0]  # copytree: [(source, destination, why), ...]
        return str(first[-1]) if isinstance(first, tuple) else str(first)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def ensure_writable(directory: Path, what: str = "the supernet cache") -> None:
    """Create ``directory`` and write (and remove) one block in it; :class:`StorageError` naming the directory and
    the OS reason when either fails (a full disk, a read-only or unwritable directory, a file in the way)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmpq-write-check-", dir=directory)
        try:
            os.write(fd, b"\0" * _PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StorageError(directory, f"{what} cannot be written: {os_reason(exc)}") from exc


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """:func:`search.filelock.file_lock` on ``path``; :class:`StorageError` when the lock cannot be taken."""
    with ExitStack() as stack:
        try:
            stack.enter_context(file_lock(path))
        except OSError as exc:
            raise StorageError(path.parent, f"cannot take the lock {path.name}: {os_reason(exc)}") from exc
        yield


def _write_atomically(final: Path, write: Callable[[Path], Any], what: str) -> None:
    """``write(tmp)`` to a temporary sibling of ``final``, then rename it to ``final``; :class:`StorageError`
    naming the directory when writing or renaming fails (the temporary is removed)."""
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
    try:
        write(tmp)
        os.replace(tmp, final)
    except (OSError, SafetensorError) as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise StorageError(final.parent, f"cannot write {what}: {os_reason(exc)}") from exc


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
                tensors[f"w/{name}/{bits}/codes"] = qt.codes.cpu().contiguous()
                tensors[f"w/{name}/{bits}/scale"] = qt.params.scale.cpu().contiguous()
                tensors[f"w/{name}/{bits}/zero_point"] = qt.params.zero_point.cpu().contiguous()
        for q in site.act_quantizers():
            for bits, table in sorted(q.tables.items()):
                tensors[f"a/{name}/{q.role}/{bits}"] = torch.tensor([_act_row(p) for p in table], dtype=torch.float32)
    if supernet.reparam is not None:
        for name, r in supernet.reparam.factors.items():
            tensors[f"r/{name}"] = r.cpu().contiguous()
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
        raise VersionMismatchError(
            f"{path}: supernet format version {meta.get('format_version')!r} is not "
            f"supported (expected {FORMAT_VERSION})"
        )
    return meta


def load_supernet(path: str | Path, model: DiffusionAdapter | nn.Module, *, restorable: bool = True) -> QuantSupernet:
    """Wrap ``model`` (an adapter, or a bare denoiser module) and restore the artifact at ``path``.

    ``restorable=False`` (see :meth:`QuantSupernet.build`) keeps no copy of the weights the reparameterization
    changes: for a process that owns ``model`` and never detaches (an evaluation worker). On an error the model is
    then left to the caller to discard.

    Raises :class:`VersionMismatchError` if the artifact has another format version or was calibrated for
    another model (by :func:`model_identity`), another sample shape or another site list.
    """
    meta = read_metadata(path)
    identity = model_identity(model)
    if meta["model_hash"] != identity:
        raise VersionMismatchError(
            f"{path}: calibrated for model {meta['model_hash']}, not for this model ({identity})"
        )
    adapter = as_adapter(model, meta["sample_shape"])
    if list(adapter.sample_shape) != list(meta["sample_shape"]):
        raise VersionMismatchError(
            f"{path}: calibrated for samples of shape {meta['sample_shape']}, not {list(adapter.sample_shape)}"
        )
    supernet = QuantSupernet.build(
        adapter,
        meta["bit_options"],
        SupernetSettings.from_dict(meta["settings"]),
        CalibrationSettings.from_stored(meta["calibration"]),
        model_hash=identity,
        restorable=restorable,
    )
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
                    params = UniformParams(
                        tensors[f"w/{name}/{bits}/scale"].to(dev),
                        tensors[f"w/{name}/{bits}/zero_point"].to(dev),
                        bits,
                        codes.dtype == torch.int8,
                    )
                    site.slots[bits] = QuantizedTensor(codes, params)
            for q in site.act_quantizers():
                for bits in supernet.bit_options:
                    rows = tensors[f"a/{name}/{q.role}/{bits}"]
                    q.tables[bits] = tuple(_act_params(r, bits) for r in rows)
        if meta.get("temporal_cache"):
            restore_tables(
                supernet.model,
                {n: supernet.site(n) for n in supernet.sites},
                meta["temporal_cache"],
                supernet.calib_settings,
                supernet.settings,
            )
    except BaseException:
        if restorable or supernet.reparam is None:
            supernet.detach()  # leave the caller's model as it was
        raise
    supernet.calibration_source = dict(meta.get("calibration_source", {}))
    supernet.calibration_metadata = dict(meta.get("calibration_metadata", {}))
    supernet.calibration_seconds = {int(b): float(v) for b, v in meta.get("calibration_seconds", {}).items()}
    supernet.calibrated = True
    return supernet


# --- the cache -------------------------------------------------------------------------------------------------
def get_calibration_data(
    model: DiffusionAdapter,
    calib_settings: CalibrationSettings,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    progress: ProgressTracker | None = None,
) -> CalibrationData:
    """The FP trajectories for ``calib_settings``, collected once per (model, data settings) and cached.

    Cached data that cannot be read is collected again; data that cannot be written raises
    :class:`~search.errors.StorageError` (checked before collecting where possible).
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = model_identity(model)
    path = root / "calibration" / f"{identity}-{canonical_key(calib_settings.data_dict())}.safetensors"
    ensure_writable(path.parent, "the calibration data cache")
    with cache_lock(path.with_suffix(".lock")):
        if path.exists():
            try:
                return CalibrationData.load(path)
            except (VersionMismatchError, OSError, KeyError, ValueError, SafetensorError) as exc:
                log.warning("ignoring unreadable calibration data %s: %s", path, exc)
        if progress is not None:
            progress.report("trajectories", 0, 1)
        data = collect_calibration_data(model, calib_settings, batch_size, source={"model_hash": identity})
        if progress is not None:
            progress.report("trajectories", 1, 1)
        _write_atomically(path, data.save, "the calibration data")
        return data


#: What *reading* a damaged or foreign artifact raises: such an artifact is skipped (and calibrated anew), not fatal.
#: Failures to write the cache are :class:`StorageError` instead.
UNREADABLE = (VersionMismatchError, CalibrationError, SafetensorError, OSError, KeyError, ValueError)


def shipped_supernet(model: DiffusionAdapter, name: str) -> Path | None:
    """``<model dir>/tmpq-supernets/<name>`` when the model ships that artifact, else ``None``.

    Diffusers ignores the folder and the model hash covers only ``unet/``, so shipping one changes neither.
    """
    if model.path is None:
        return None
    candidate = model.path / SHIPPED_DIR / name
    return candidate if (candidate / META_FILE).is_file() else None


def find_supernet(model: DiffusionAdapter, name: str, cache_dir: str | Path | None = None) -> tuple[str, Path] | None:
    """Where artifact ``name`` would be loaded from without calibrating: ``("cache", path)``, ``("shipped", path)``
    or ``None`` (it must be calibrated). Looks for its metadata file only (a damaged artifact is found here and
    rebuilt when loaded)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if (root / name / META_FILE).is_file():
        return "cache", root / name
    shipped = shipped_supernet(model, name)
    return None if shipped is None else ("shipped", shipped)


def _adopt_shipped(shipped: Path, final: Path, model: DiffusionAdapter) -> QuantSupernet | None:
    """Load a shipped artifact and copy it into the cache (where Ray actors and exports look); ``None`` if it does
    not load (then the caller calibrates). A copy that cannot be written raises :class:`StorageError`."""
    free = shutil.disk_usage(final.parent).free
    need = _tree_size(shipped)
    if need > free:
        raise StorageError(
            final.parent,
            f"no space left on device for the shipped supernet {shipped.name} ({need} bytes needed, {free} free)",
        )
    try:
        supernet = load_supernet(shipped, model)
    except UNREADABLE as exc:
        log.warning("not using the shipped supernet %s: %s", shipped, exc)
        return None
    try:
        _write_atomically(final, lambda tmp: shutil.copytree(shipped, tmp), f"the shipped supernet {shipped.name}")
    except BaseException:
        supernet.detach()  # leave the caller's model as it was
        raise
    log.info("using the pre-calibrated supernet shipped with the model: %s", shipped)
    return supernet


def get_or_build_supernet(
    model: DiffusionAdapter | nn.Module,
    bit_options: Iterable[int],
    settings: SupernetSettings | None = None,
    calib_settings: CalibrationSettings | None = None,
    cache_dir: str | Path | None = None,
    *,
    data: CalibrationData | None = None,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
) -> QuantSupernet:
    """Load the cached supernet for (model, bits, settings) or build, calibrate and cache it.

    A pre-calibrated artifact shipped with the model (:func:`shipped_supernet`) is copied into the cache instead of
    calibrating.

    Args:
        model: the model adapter (a bare denoiser module works only with ``data``).
        bit_options: calibrated bit-widths.
        settings / calib_settings: defaults when omitted.
        cache_dir: defaults to :func:`default_cache_dir`.
        data: calibration data to use instead of collecting (or loading cached) FP trajectories.
        batch_size: sampler batch size when collecting.
        progress: called at every phase and block boundary of the calibration (:mod:`supernet.progress`), or
            once with source ``cache`` / ``shipped`` when the artifact is loaded instead. An exception it raises
            propagates: nothing is cached and the model is left unwrapped, as it was.

    Raises:
        StorageError: the cache cannot be written (directory, lock, calibration data, artifact, shipped copy),
            naming the directory and the OS reason; checked before any calibration work where possible. Only an
            artifact or calibration data that cannot be *read* is rebuilt.
    """
    settings = settings or SupernetSettings()
    calib_settings = calib_settings or CalibrationSettings()
    options = sorted({int(b) for b in bit_options})
    adapter = as_adapter(model, tuple(data.inputs.shape[2:]) if data is not None else None)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    identity = model_identity(adapter)
    final = root / artifact_name(identity, options, settings, calib_settings)
    tracker = ProgressTracker(progress, options)
    ensure_writable(root)
    with cache_lock(final.with_name(final.name + ".lock")):
        if (final / META_FILE).exists():
            try:
                supernet = load_supernet(final, adapter)
            except UNREADABLE as exc:
                log.warning("rebuilding unreadable cached supernet %s: %s", final, exc)
                shutil.rmtree(final, ignore_errors=True)
            else:
                log.info("loaded cached supernet %s", final)
                return _loaded(supernet, tracker, "cache")
        shipped = shipped_supernet(adapter, final.name)
        if shipped is not None:
            adopted = _adopt_shipped(shipped, final, adapter)
            if adopted is not None:
                return _loaded(adopted, tracker, "shipped")
        timestep = data.timesteps[0] if data is not None else None
        estimate = estimate_calibration(adapter, options, calib_settings, timestep=timestep)
        log.info("calibrating %s: estimated %.0f s (%s)", final.name, estimate.seconds, estimate.to_dict()["phases"])
        tracker.expect(estimate.seconds)
        if data is None:
            data = get_calibration_data(adapter, calib_settings, root, batch_size, tracker)
        range_check = None
        if CHECK_BITS in options and calib_settings.strategy != "range" and report_unavailable(adapter) is None:
            range_check = range_w8a8_check(adapter, data, settings, calib_settings)
        supernet = QuantSupernet.build(adapter, options, settings, calib_settings, model_hash=identity)
        try:
            supernet.calibrate(data, tracker, estimate)
            supernet.calibration_metadata["estimate"] = estimate.to_dict()
            supernet.calibration_metadata["report"] = calibration_report(supernet, data, range_check)
            _write_atomically(final, supernet.save, "the calibrated supernet")
        except BaseException:
            supernet.detach()  # leave the caller's model as it was
            raise
        log.info("cached supernet %s", final)
        return supernet


def _loaded(supernet: QuantSupernet, tracker: ProgressTracker, source: str) -> QuantSupernet:
    try:
        tracker.loaded(source)
    except BaseException:
        supernet.detach()
        raise
    return supernet


def ship_supernet(
    model: DiffusionAdapter,
    bit_options: Iterable[int],
    calib_settings: CalibrationSettings | None = None,
    settings: SupernetSettings | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Calibrate (or take from the cache) the supernet for these settings and store a copy in the model directory's
    :data:`SHIPPED_DIR`, so that a fresh clone or another machine finds it without calibrating; returns the copy.

    Raises :class:`StorageError` when the cache or the model directory cannot be written."""
    settings = settings or SupernetSettings()
    calib_settings = calib_settings or CalibrationSettings()
    if model.path is None:
        raise CalibrationError(f"{model!r} has no model directory to ship the supernet in")
    supernet = get_or_build_supernet(model, bit_options, settings, calib_settings, cache_dir)
    supernet.detach()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = artifact_name(model_identity(model), bit_options, settings, calib_settings)
    target = model.path / SHIPPED_DIR / name
    ensure_writable(target.parent, "the model's shipped supernets")

    def copy(tmp: Path) -> None:
        shutil.copytree(root / name, tmp)
        shutil.rmtree(target, ignore_errors=True)

    _write_atomically(target, copy, f"the shipped supernet {name}")
    return target
