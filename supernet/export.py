"""Export one candidate of a calibrated supernet as a runnable quantized model, and load it back.

An export is a directory in diffusers' layout::

    model_index.json                  the components (unet, scheduler), diffusers-style: its denoiser class picks
                                      the model adapter (:mod:`supernet.models`) that rebuilds the architecture
    unet/config.json                  the denoiser's diffusers config (the adapter's ``from_config`` builds it);
                                      the denoiser's component is ``transformer/`` for a DiT
    unet/quantized.safetensors        quantized weights as packed integer codes + scale + zero-point per output
                                      channel; every other tensor (biases, norms, layers left in FP) as stored
    quant_config.json                 per site: kind, weight and activation bit-widths, packing, and the
                                      activation quantizer (uniform or log2, scale, zero-point) per timestep;
                                      which sites divide their input by a reparameterization factor (TCR);
                                      which sites read cached temporal features, and for which timesteps
    scheduler/scheduler_config.json   a DDIMScheduler config (the model's betas) plus the candidate's ``timesteps``
    manifest.json                     candidate, objectives, model hash, tmpq version, seed, file checksums

Weight codes are stored as a little-endian bit stream: code ``i`` of a ``b``-bit tensor (as the unsigned offset
``code - qmin``) occupies bits ``[i·b, (i+1)·b)``, so 4-bit codes take two per byte and the file shrinks with the
bits; each output channel adds a float32 scale and a one-byte zero-point. A site that reads cached temporal
features (calibration switch ``temporal_cache``) stores the table rows of the candidate's timesteps only, packed the
same way at its activation width with a scale and zero-point per row. :func:`load` rebuilds the model through its
adapter from the config, installs the same quantized layers the supernet uses with exactly the stored codes and
parameters, and returns an :class:`ExportedPipeline` (exposing the same adapter for sampling) whose samples equal
the supernet's assembled candidate's for the same noise, bit for bit.

diffusers' own ``DDIMScheduler`` cannot run the searched schedule (its step assumes uniform spacing), so the
pipeline samples with :class:`~supernet.sampling.Sampler` on the stored timesteps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from search.candidate import Candidate
from search.errors import ConfigError, InvalidCandidate, ModelLoadError, ScheduleError
from supernet.errors import CalibrationError
from supernet.models.base import DiffusionAdapter, NoiseSchedule
from supernet.models.directory import kind_of_index
from supernet.models.kinds import denoiser_components, kind_named
from supernet.models.registry import adapter_class
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.registry import install_sites
from supernet.qlayers.temporal import TemporalTable
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.quant.log2 import Log2Params
from supernet.quant.protocol import QParams, is_fp
from supernet.quant.qtensor import QuantizedTensor
from supernet.quant.uniform import UniformParams, code_range
from supernet.sampling import Sampler, validate_schedule
from supernet.settings import SupernetSettings, check_backend
from supernet.supernet import QuantSupernet

log = logging.getLogger(__name__)

#: Identifies an export directory; bumped when the layout changes incompatibly.
EXPORT_FORMAT = "tmpq-export"
EXPORT_FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
QUANT_CONFIG_FILE = "quant_config.json"
MODEL_INDEX_FILE = "model_index.json"
UNET_CONFIG_FILE = "unet/config.json"
UNET_WEIGHTS_FILE = "unet/quantized.safetensors"
SCHEDULER_CONFIG_FILE = "scheduler/scheduler_config.json"


def denoiser_files(component: str = "unet") -> tuple[str, str]:
    """The denoiser's config and quantized weights in an export, under its ``model_index.json`` component."""
    return f"{component}/config.json", f"{component}/quantized.safetensors"


def checked_files(component: str = "unet") -> tuple[str, ...]:
    """Files the manifest checksums besides the FP components' (every file of an export but the manifest)."""
    return (MODEL_INDEX_FILE, *denoiser_files(component), QUANT_CONFIG_FILE, SCHEDULER_CONFIG_FILE)


#: :func:`checked_files` of a UNet export.
CHECKED_FILES = checked_files("unet")

#: Keys of a training scheduler's config that the DDIM scheduler config keeps.
_SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "clip_sample_range",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "rescale_betas_zero_snr",
    "timestep_spacing",
    "steps_offset",
)

_CODES, _SCALE, _ZERO = ".weight.codes", ".weight.scale", ".weight.zero_point"
_FACTOR = ".input_factor"  # a reparameterized site's per-input-channel factor r: its input is divided by r
_TCODES, _TSCALE, _TZERO = ".temporal.codes", ".temporal.scale", ".temporal.zero_point"  # cached temporal features


def tmpq_version() -> str:
    """The installed ``tmpq`` distribution's version (``0+unknown`` from an uninstalled tree)."""
    try:
        return metadata.version("tmpq")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# --- bit packing ---------------------------------------------------------------------------------------------
def packed_size(numel: int, bits: int) -> int:
    """Bytes of ``numel`` codes of ``bits`` bits packed as one bit stream."""
    return (numel * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """Integer ``codes`` (int8 if ``symmetric`` else uint8) as a flat uint8 bit stream of ``bits`` per code.

    Each code is stored as its offset from the smallest code (``code - qmin``, in ``[0, 2^bits)``), least
    significant bit first; code ``i`` occupies bits ``[i·bits, (i+1)·bits)`` of the stream.
    """
    qmin, qmax = code_range(bits, symmetric)
    flat = codes.detach().reshape(-1).to("cpu", torch.int16)
    if flat.numel() and (int(flat.min()) < qmin or int(flat.max()) > qmax):
        raise ValueError(f"codes outside [{qmin}, {qmax}] cannot be packed in {bits} bits")
    offsets = (flat - qmin).to(torch.uint8).numpy()
    planes = np.unpackbits(offsets[:, None], axis=1, count=bits, bitorder="little")
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_codes(packed: torch.Tensor, bits: int, symmetric: bool, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: codes of ``shape`` (int8 if ``symmetric`` else uint8)."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel, bits):
        raise ValueError(
            f"expected {packed_size(numel, bits)} packed bytes for {numel} codes of {bits} bits, got "
            f"{packed.numel()} ({packed.dtype})"
        )
    qmin, _ = code_range(bits, symmetric)
    planes = np.unpackbits(packed.numpy(), count=numel * bits, bitorder="little").reshape(numel, bits)
    offsets = np.packbits(planes, axis=1, bitorder="little")[:, 0] if numel else np.zeros(0, np.uint8)
    codes = torch.from_numpy(offsets.astype(np.int16)) + qmin
    return codes.to(torch.int8 if symmetric else torch.uint8).reshape(tuple(shape))


# --- activation parameters as JSON -----------------------------------------------------------------------------
def _act_entry(t: int, p: QParams) -> dict[str, Any]:
    if isinstance(p, Log2Params):
        return {"t": t, "kind": "log2", "scale": float(p.scale)}
    if isinstance(p, UniformParams):
        if p.scale.numel() != 1:
            raise CalibrationError("activation parameters must be per tensor to be exported")
        return {
            "t": t,
            "kind": "uniform",
            "scale": float(p.scale),
            "zero_point": float(p.zero_point),
            "symmetric": bool(p.symmetric),
        }
    raise TypeError(f"cannot export activation parameters of type {type(p).__name__}")


def _act_params(entry: Mapping[str, Any], bits: int) -> QParams:
    """Rebuild parameters exactly as :mod:`supernet.artifact` does (0-d float32 tensors, or a log2 scale)."""
    if entry["kind"] == "log2":
        return Log2Params(float(entry["scale"]), bits)
    if entry["kind"] == "uniform":
        return UniformParams(
            torch.tensor(float(entry["scale"])),
            torch.tensor(float(entry["zero_point"])),
            bits,
            bool(entry["symmetric"]),
        )
    raise ValueError(f"unknown activation quantizer kind {entry['kind']!r}")


# --- writing -----------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n")


def _json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    """Objectives as JSON: non-finite floats become ``None``."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v
    return out


def ddim_scheduler_config(training_config: Mapping[str, Any], timesteps: Sequence[int]) -> dict[str, Any]:
    """A diffusers ``DDIMScheduler`` config with the training scheduler's betas, plus the schedule to run.

    ``timesteps`` is not a DDIMScheduler setting (diffusers' DDIM assumes uniform spacing); :func:`load` reads it and
    samples deterministically (eta = 0). ``set_alpha_to_one`` matches the last step of
    :class:`~supernet.sampling.Sampler` (ᾱ_prev = 1).
    """
    cfg: dict[str, Any] = {k: training_config[k] for k in _SCHEDULER_KEYS if k in training_config}
    cfg.update({"_class_name": "DDIMScheduler", "set_alpha_to_one": True, "timesteps": [int(t) for t in timesteps]})
    return cfg


def solver_scheduler_config(
    training_config: Mapping[str, Any], timesteps: Sequence[int], solver: str = "ddim"
) -> dict[str, Any]:
    """The export's scheduler config: the training betas, the schedule (``timesteps``) and the diffusers scheduler
    of the job's ``solver``: ``DDIMScheduler`` (which cannot take custom timesteps: tmpq's sampler runs it) or
    ``DPMSolverMultistepScheduler`` set up as :class:`~supernet.sampling.Sampler`'s DPM-Solver++(2M) (second
    order, first-order final step to σ = 0), which diffusers runs on the searched timesteps."""
    cfg = ddim_scheduler_config(training_config, timesteps)
    if solver == "ddim":
        return cfg
    if solver != "dpmsolver++":
        raise ConfigError("solver", f"no scheduler for solver {solver!r}")
    for key in ("clip_sample", "clip_sample_range", "set_alpha_to_one"):
        cfg.pop(key, None)
    cfg.update(
        {
            "_class_name": "DPMSolverMultistepScheduler",
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "lower_order_final": True,
            "final_sigmas_type": "zero",
        }
    )
    return cfg


def _needed_grid(supernet: QuantSupernet, timesteps: Sequence[int]) -> tuple[list[int], list[int]]:
    """The grid timesteps (descending) the candidate's timesteps use, and their indices in the supernet's grid."""
    ctx = TimestepContext()
    ctx.set_grid(supernet.grid)
    indices = sorted({ctx.nearest(int(t)) for t in timesteps}, key=lambda i: -supernet.grid[i])
    return [supernet.grid[i] for i in indices], indices


def _explicit_factors(supernet: QuantSupernet) -> dict[str, torch.Tensor]:
    """``{site: r}`` of the sites whose input the reparameterization (TCR, dilation) divides by ``r`` explicitly
    (a forward pre-hook); folded factors are already in the FP parameters."""
    reparam = getattr(supernet, "reparam", None)
    if reparam is None:
        return {}
    return {name: reparam.factors[name] for name in reparam.explicit}


def _check_hooks(supernet: QuantSupernet, explicit: Mapping[str, torch.Tensor]) -> None:
    """Refuse sites with forward hooks other than the reparameterization's pre-scale: the format cannot carry them."""
    for name in supernet.sites:
        site = supernet.site(name)
        if not isinstance(site, nn.Module):
            continue
        if len(site._forward_pre_hooks) != (1 if name in explicit else 0) or site._forward_hooks:
            raise CalibrationError(
                f"{name}: the site has forward hooks that export format {EXPORT_FORMAT_VERSION} cannot carry"
            )


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError("out", f"{out} is not empty (choose another directory, or pass overwrite=True)")


def _site_tensors(
    supernet: QuantSupernet,
    candidate: Candidate,
    grid: Sequence[int],
    grid_idx: Sequence[int],
    explicit: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors of the weights file and the per-site entries of ``quant_config.json`` for ``candidate``."""
    w_map, a_map = candidate.w_map(), candidate.a_map()
    tensors: dict[str, torch.Tensor] = {}
    sites: dict[str, Any] = {}
    quantized: set[str] = set()
    for name in supernet.sites:
        site = supernet.site(name)
        w_bits, a_bits = w_map[name], a_map[name]
        entry: dict[str, Any] = {"kind": site.kind, "w_bits": w_bits, "a_bits": a_bits, "act": {}}
        if isinstance(site, QuantWeightLayer) and not is_fp(w_bits):
            slot = site.slots.get(w_bits)
            if slot is None:
                raise CalibrationError(f"{name}: no weights quantized to {w_bits} bits")
            p = slot.params
            tensors[name + _CODES] = pack_codes(slot.codes, w_bits, p.symmetric)
            tensors[name + _SCALE] = p.scale.detach().to("cpu", torch.float32).contiguous()
            tensors[name + _ZERO] = p.zero_point.detach().to("cpu").to(p.code_dtype).contiguous()  # integral
            entry["weight"] = {
                "bits": w_bits,
                "shape": list(slot.codes.shape),
                "symmetric": bool(p.symmetric),
                "packing": "bitstream-lsb-first",
                "scale_shape": list(p.scale.shape),
            }
            quantized.add(f"{name}.weight")
        if name in explicit:
            tensors[name + _FACTOR] = explicit[name].detach().to("cpu", torch.float32).contiguous()
            entry["input_prescale"] = True
        cache = getattr(site, "temporal", {}).get(a_bits) if not is_fp(a_bits) else None
        if cache is not None:
            rows = cache.subset(candidate.timesteps).rows
            p = rows.params
            tensors[name + _TCODES] = pack_codes(rows.codes, a_bits, p.symmetric)
            tensors[name + _TSCALE] = p.scale.detach().to("cpu", torch.float32).contiguous()
            tensors[name + _TZERO] = p.zero_point.detach().to("cpu").to(p.code_dtype).contiguous()
            entry["temporal_cache"] = {
                "bits": a_bits,
                "timesteps": list(candidate.timesteps),
                "shape": list(rows.codes.shape),
                "symmetric": bool(p.symmetric),
                "packing": "bitstream-lsb-first",
            }
        for q in site.act_quantizers():
            bits = a_bits if q.gene == "a" else w_bits
            if is_fp(bits):
                continue
            table = q.tables.get(bits)
            if table is None:
                raise CalibrationError(f"{q.key}: no activation parameters calibrated for {bits} bits")
            entry["act"][q.role] = {
                "gene": q.gene,
                "bits": bits,
                "params": [_act_entry(t, table[i]) for t, i in zip(grid, grid_idx, strict=True)],
            }
        sites[name] = entry
    for key, value in supernet.denoiser.state_dict().items():
        if key not in quantized:
            tensors[key] = value.detach().to("cpu").clone().contiguous()
    return tensors, sites


def export_candidate(
    supernet: QuantSupernet,
    candidate: Candidate,
    out_dir: str | Path,
    *,
    scheduler_config: Mapping[str, Any] | None = None,
    objectives: Mapping[str, Any] | None = None,
    seed: int | None = None,
    job: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    solver: str = "ddim",
    backend: str = "reference",
) -> Path:
    """Write ``candidate`` of a calibrated ``supernet`` as a runnable quantized model directory.

    Args:
        supernet: a calibrated supernet over a diffusers model (its adapter supplies the config and layout).
        candidate: what to export (it must fit the supernet: its sites and calibrated bit-widths).
        out_dir: the directory to create (written to a temporary sibling and renamed, so it is never half-written).
        scheduler_config: the model's training scheduler config (betas, ``clip_sample``); default the model
            adapter's ``scheduler_config`` (a model built in code without one must pass it).
        objectives: measured objectives to record (quality, psnr, fdd...); BitOps, weight bytes and steps from the
            cost model are always recorded.
        seed: the noise seed the objectives were measured with.
        job: where the candidate comes from (e.g. ``{"id": 3, "objective": "mse"}``), recorded as is.
        overwrite: replace a non-empty ``out_dir`` (else :class:`ConfigError`).
        solver: what samples the schedule (``ddim`` or ``dpmsolver++``): the search's, recorded with its
            diffusers scheduler config.
        backend: the run-time backend :func:`load` uses by default (:data:`supernet.settings.RUNTIME_BACKENDS`);
            the files are the same for every backend.

    Returns:
        ``out_dir``.

    Raises:
        InvalidCandidate: the candidate does not fit the supernet.
        CalibrationError: the supernet is not calibrated (for a width the candidate uses), or a site carries a
            forward hook the format cannot represent.
        ConfigError: the model cannot be exported (not a diffusers model), it has no scheduler config, or
            ``out_dir`` is not empty.
    """
    check_backend(backend)
    if not supernet.calibrated:
        raise CalibrationError("only a calibrated supernet can be exported")
    explicit = _explicit_factors(supernet)
    _check_hooks(supernet, explicit)
    cost = supernet.cost(candidate)  # checks the candidate against the supernet's sites and widths
    model = supernet.model
    component = kind_named(model.kind).component if model.kind else "unet"
    config_file, weights_file = denoiser_files(component)
    if scheduler_config is None:
        scheduler_config = model.scheduler_config
    if not scheduler_config:
        raise ConfigError("scheduler_config", "the model has no training scheduler config: pass scheduler_config")
    validate_schedule(candidate.timesteps, int(scheduler_config.get("num_train_timesteps", 1000)))
    unet_cfg = model.config
    sched_cfg = solver_scheduler_config(scheduler_config, candidate.timesteps, solver)
    model_index = {**model.export_index(), "scheduler": ["diffusers", sched_cfg["_class_name"]]}
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    grid, grid_idx = _needed_grid(supernet, candidate.timesteps)
    tensors, sites = _site_tensors(supernet, candidate, grid, grid_idx, explicit)
    reparam = getattr(supernet, "reparam", None)
    quant_config = {
        "format_version": EXPORT_FORMAT_VERSION,
        "settings": supernet.settings.to_dict(),
        "grid": grid,
        "timesteps": list(candidate.timesteps),
        "sample_shape": list(supernet.sample_shape),
        "sites": sites,
        "skipped": dict(supernet.skipped),
        "reparameterization": reparam.report() if reparam is not None else None,
    }
    fp_bytes = sum(v.numel() * 4 for v in supernet.denoiser.state_dict().values())
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write_json(tmp / MODEL_INDEX_FILE, model_index)
        _write_json(tmp / config_file, unet_cfg)
        save_file(
            tensors,
            str(tmp / weights_file),
            metadata={"format": EXPORT_FORMAT, "format_version": str(EXPORT_FORMAT_VERSION)},
        )
        _write_json(tmp / QUANT_CONFIG_FILE, quant_config)
        _write_json(tmp / SCHEDULER_CONFIG_FILE, sched_cfg)
        components = model.export_components(tmp)  # the FP parts of the pipeline (a VAE, a text encoder...)
        weights_bytes = (tmp / weights_file).stat().st_size
        checked = [*checked_files(component), *components]
        manifest = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "tmpq_version": tmpq_version(),
            "candidate": candidate.to_dict(),
            "candidate_key": candidate.key(),
            "bits": candidate.bits_summary(),
            "objectives": _json_ready(
                {**(objectives or {}), "bitops": cost.bitops, "weight_bytes": cost.weight_bytes, "steps": cost.steps}
            ),
            "model_hash": supernet.model_hash,
            "denoiser": component,
            "solver": solver,
            "backend": backend,
            "conditioning": model.conditioning.to_dict() if getattr(model, "conditioning", None) else None,
            "fp_components": sorted({c.split("/")[0] for c in components}),
            "seed": seed,
            "job": dict(job) if job is not None else None,
            "supernet": {
                "bit_options": list(supernet.bit_options),
                "settings": supernet.settings.to_dict(),
                "calibration": supernet.calib_settings.to_dict(),
            },
            "sizes": {
                "weights_file_bytes": weights_bytes,
                "fp32_weights_bytes": fp_bytes,
                "ratio_to_fp32": weights_bytes / fp_bytes if fp_bytes else None,
            },
            "files": {rel: {"bytes": (tmp / rel).stat().st_size, "sha256": _sha256(tmp / rel)} for rel in checked},
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        if out.exists():
            shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "exported candidate %s (%s, K=%d) to %s: %d bytes of weights (%.3f of FP32)",
        candidate.key(),
        candidate.bits_summary(),
        candidate.steps,
        out,
        weights_bytes,
        weights_bytes / max(fp_bytes, 1),
    )
    return out


# --- loading -----------------------------------------------------------------------------------------------------
def _read_json(root: Path, rel: str) -> dict[str, Any]:
    path = root / rel
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(path, "missing: not a tmpq export directory (or an incomplete one)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(path, f"unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(path, "does not hold a JSON object")
    return data


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the export at ``path``; refuses another format or version (:class:`ModelLoadError`)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelLoadError(root, "not a directory" if root.exists() else "path does not exist")
    manifest = _read_json(root, MANIFEST_FILE)
    if manifest.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(root / MANIFEST_FILE, f"not a tmpq export (format {manifest.get('format')!r})")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ModelLoadError(
            root / MANIFEST_FILE,
            f"export format version {manifest.get('format_version')!r} is "
            f"not supported (expected {EXPORT_FORMAT_VERSION})",
        )
    return manifest


def manifest_denoiser(root: Path, manifest: Mapping[str, Any]) -> str:
    """The denoiser's component of an export (``unet`` for exports that do not name it); ModelLoadError for one no
    model kind has."""
    component = manifest.get("denoiser", "unet")
    if component not in denoiser_components():
        raise ModelLoadError(root / MANIFEST_FILE, f"unknown denoiser component {component!r}")
    return str(component)


def verify(path: str | Path, manifest: Mapping[str, Any] | None = None) -> None:
    """Check every file against the manifest's size and SHA-256; :class:`ModelLoadError` names the first bad one."""
    root = Path(path)
    manifest = manifest if manifest is not None else read_manifest(root)
    files = manifest.get("files")
    components = manifest.get("fp_components") or []
    component = manifest_denoiser(root, manifest)
    checked = checked_files(component)
    if (
        not isinstance(files, Mapping)
        or not set(checked) <= set(files)
        or any(str(rel).split("/")[0] not in components for rel in set(files) - set(checked))
        or any(".." in Path(str(rel)).parts or Path(str(rel)).is_absolute() for rel in files)
    ):
        raise ModelLoadError(
            root / MANIFEST_FILE, f"the file list must name exactly {list(checked)} and the FP components' files"
        )
    for rel in files:
        f = root / rel
        if not f.is_file():
            raise ModelLoadError(f, "missing")
        expected = files[rel]
        if f.stat().st_size != expected.get("bytes") or _sha256(f) != expected.get("sha256"):
            raise ModelLoadError(f, "corrupt: its size or SHA-256 differs from the manifest's")


@dataclass
class ExportedPipeline:
    """A loaded export: the model (an adapter over the quantized denoiser), its schedule, and its solver.

    Attributes:
        model: the :class:`~supernet.models.base.DiffusionAdapter` whose denoiser has the candidate's quantized
            layers installed (eval mode); sample it like any model (``model.sampler()``).
        timesteps: the candidate's schedule, descending.
        manifest / quant_config / scheduler_config: the export's JSON files.
        path: the export directory.
        backend: what computes the quantized sites (:mod:`supernet.runtime`): ``reference`` (fake quantization, what
            the search scored) or ``cpu-int8``.
        backend_report: per conv/linear site (and fused attention), how the backend runs it (empty for ``reference``).
    """

    model: DiffusionAdapter
    timesteps: tuple[int, ...]
    manifest: dict[str, Any]
    quant_config: dict[str, Any]
    scheduler_config: dict[str, Any]
    path: Path
    _hooks: list[Any] = field(default_factory=list, repr=False)
    backend: str = "reference"
    backend_report: dict[str, str] = field(default_factory=dict)

    @property
    def denoiser(self) -> nn.Module:
        """The quantized denoiser (``model.denoiser``)."""
        return self.model.denoiser

    @property
    def candidate(self) -> Candidate:
        """The exported candidate."""
        return Candidate.from_dict(self.manifest["candidate"])

    @property
    def objectives(self) -> dict[str, Any]:
        """The objectives recorded at export time."""
        return dict(self.manifest.get("objectives") or {})

    @property
    def solver(self) -> str:
        """The solver the search evaluated the candidate with (``ddim`` or ``dpmsolver++``)."""
        return str(self.manifest.get("solver") or "ddim")

    def sampler(self, batch_size: int = 64) -> Sampler:
        """A :class:`~supernet.sampling.Sampler` over the quantized model, with the search's solver."""
        return self.model.sampler(batch_size, solver=self.solver)

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline object of the class the model came with (a ``StableDiffusionPipeline``), whose
        denoiser is this quantized one; called like any diffusers pipeline, it runs the searched timesteps through
        diffusers' own scheduler. ConfigError for a model kind without one (sample it with :meth:`sample`)."""
        return self.model.diffusers_pipeline(self.timesteps, self.scheduler_config)

    def sample(self, n: int, seed: int, batch_size: int = 64) -> torch.Tensor:
        """``n`` images in [-1, 1] (CPU float32) from the noise of ``seed``, on the candidate's schedule."""
        return self.sampler(batch_size).sample(self.timesteps, n, seed)

    def denoise(self, noise: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Run the candidate's schedule from the given starting noise."""
        return self.sampler(batch_size).denoise(noise, self.timesteps)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ExportedPipeline:
        """Move the model (and its quantized weights) to ``device`` and/or cast the denoiser to the compute
        ``dtype`` (the codes and quantizer parameters are unchanged; weights are dequantized in float32 and cast)."""
        dev = torch.device(device) if device is not None else None
        off_cpu = dev is not None and dev.type != "cpu"
        if self.backend != "reference" and (off_cpu or dtype not in (None, torch.float32)):
            raise ConfigError("backend", f"{self.backend} runs in float32 on the CPU; load with backend='reference'")
        self.model.to(dev, dtype)
        for module in self.denoiser.modules():
            if isinstance(module, QuantWeightLayer):
                module.follow(dev)
        return self


def _tensor(tensors: Mapping[str, torch.Tensor], key: str, where: Path) -> torch.Tensor:
    try:
        return tensors[key]
    except KeyError:
        raise ModelLoadError(where, f"corrupt: tensor {key!r} is missing") from None


def _install(
    denoiser: nn.Module, qcfg: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], root: Path, component: str
) -> list[Any]:
    """Rebuild the state dict (dequantized weights), install the quantized sites (and the reparameterization's
    explicit input pre-scales) and select the candidate; returns the hooks installed on the denoiser."""
    from supernet.calibration.reparam import _prescale_hook, channel_dim  # the supernet's own pre-scale, exactly

    config_name, weights_name = denoiser_files(component)
    weights_file, qcfg_file = root / weights_name, root / QUANT_CONFIG_FILE
    sites_cfg: Mapping[str, Any] = qcfg["sites"]
    slots: dict[str, QuantizedTensor] = {}
    state = {
        k: v for k, v in tensors.items() if not k.endswith((_CODES, _SCALE, _ZERO, _FACTOR, _TCODES, _TSCALE, _TZERO))
    }
    for name, entry in sites_cfg.items():
        w = entry.get("weight")
        if w is None:
            continue
        qt = _packed(name, w, (_CODES, _SCALE, _ZERO), tensors, weights_file, "codes")
        slots[name] = qt
        state[f"{name}.weight"] = qt.dequantize()
    try:
        denoiser.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(weights_file, f"does not match {config_name}: {str(exc).splitlines()[0]}") from None
    settings = SupernetSettings.from_dict(qcfg["settings"])
    ctx = TimestepContext()
    installation = install_sites(denoiser, ctx, attention=settings.attention_matmuls, exclude=settings.exclude)
    if list(installation.sites) != sorted(sites_cfg):
        installation.uninstall()
        raise ModelLoadError(qcfg_file, "its sites differ from the ones the model's layers give")
    ctx.set_grid(qcfg["grid"])
    hooks = []
    for name, site in installation.sites.items():
        entry = sites_cfg[name]
        if entry.get("input_prescale"):
            if not isinstance(site, QuantWeightLayer):
                raise ModelLoadError(qcfg_file, f"{name}: only a conv/linear site can have an input pre-scale")
            r = _tensor(tensors, name + _FACTOR, weights_file)
            hooks.append(site.register_forward_pre_hook(_prescale_hook(r, channel_dim(site), site.weight)))
        w_bits, a_bits = int(entry["w_bits"]), int(entry["a_bits"])
        if isinstance(site, QuantWeightLayer) and name in slots:
            site.slots[w_bits] = slots[name]
        for q in site.act_quantizers():
            act = entry["act"].get(q.role)
            if act is None:
                continue
            params = act["params"]
            if [int(p["t"]) for p in params] != list(ctx.grid):
                raise ModelLoadError(qcfg_file, f"{q.key}: activation parameters do not cover the grid {ctx.grid}")
            q.tables[int(act["bits"])] = tuple(_act_params(p, int(act["bits"])) for p in params)
        cache = entry.get("temporal_cache")
        if cache is not None:
            if not isinstance(site, QuantWeightLayer):
                raise ModelLoadError(qcfg_file, f"{name}: only a linear site can read cached temporal features")
            site.temporal[int(cache["bits"])] = _temporal_table(name, cache, tensors, weights_file)
        site.activate(w_bits, a_bits)
        if isinstance(site, QuantWeightLayer) and name in slots:
            site.adopt_parameter()  # its parameter is this slot, dequantized above: no second copy
    return hooks + ctx.install(denoiser)


def _packed(
    name: str,
    entry: Mapping[str, Any],
    suffixes: tuple[str, str, str],
    tensors: Mapping[str, torch.Tensor],
    weights_file: Path,
    what: str,
) -> QuantizedTensor:
    """The quantized tensor ``entry`` (bits, symmetric, shape) describes, from its packed codes, scales and
    zero-points (the tensors ``name`` + ``suffixes``)."""
    codes_key, scale_key, zero_key = (name + suffix for suffix in suffixes)
    bits, sym, shape = int(entry["bits"]), bool(entry["symmetric"]), [int(s) for s in entry["shape"]]
    try:
        codes = unpack_codes(_tensor(tensors, codes_key, weights_file), bits, sym, shape)
    except ValueError as exc:
        raise ModelLoadError(weights_file, f"corrupt {what} of {name!r}: {exc}") from None
    params = UniformParams(
        _tensor(tensors, scale_key, weights_file), _tensor(tensors, zero_key, weights_file).to(torch.float32), bits, sym
    )
    return QuantizedTensor(codes, params)


def _temporal_table(
    name: str, cache: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], weights_file: Path
) -> TemporalTable:
    qt = _packed(name, cache, (_TCODES, _TSCALE, _TZERO), tensors, weights_file, "temporal codes")
    return TemporalTable([int(t) for t in cache["timesteps"]], qt)


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    check: bool = True,
    dtype: torch.dtype | None = None,
    backend: str | None = None,
    compile: bool = True,
) -> ExportedPipeline:
    """Load the export at ``path`` as a pipeline that samples on the candidate's schedule.

    Args:
        path: the export directory (:func:`export_candidate`).
        device: where the model runs.
        dtype: the denoiser's compute dtype (``None``: float32, what the search scored by default).
        backend: ``reference`` (fake quantization, bit-identical to what the search evaluated) or ``cpu-int8``
            (the conv and linear sites on oneDNN's int8 kernels, float32 on the CPU; :mod:`supernet.runtime`);
            ``None``: the one the export was made for (its manifest's ``backend``, ``reference`` if none).
        compile: ``cpu-int8`` only: compile the denoiser with ``torch.compile`` (the first call at each batch size
            compiles; needs a C++ compiler). ``False`` calls the int8 kernels eagerly: no compiler, less speed.
        check: verify every file's size and SHA-256 against the manifest first.

    Raises:
        ModelLoadError: naming the file that is missing, corrupt or of another format version.
    """
    from supernet.runtime import CPU_INT8, install_cpu_int8

    if backend is not None:
        check_backend(backend)
    root = Path(path)
    manifest = read_manifest(root)
    if backend is None:
        backend = check_backend(manifest.get("backend", "reference"), f"{MANIFEST_FILE}: backend")
    if backend == CPU_INT8 and (torch.device(device).type != "cpu" or dtype not in (None, torch.float32)):
        raise ConfigError("backend", f"{CPU_INT8} runs in float32 on the CPU (device {device}, dtype {dtype})")
    if check:
        verify(root, manifest)
    index = _read_json(root, MODEL_INDEX_FILE)
    component = manifest_denoiser(root, manifest)
    config_file, weights_file = denoiser_files(component)
    unet_cfg = _read_json(root, config_file)
    qcfg = _read_json(root, QUANT_CONFIG_FILE)
    sched_cfg = _read_json(root, SCHEDULER_CONFIG_FILE)
    if qcfg.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ModelLoadError(
            root / QUANT_CONFIG_FILE,
            f"format version {qcfg.get('format_version')!r} is not supported (expected {EXPORT_FORMAT_VERSION})",
        )
    kind = kind_of_index(index, root / MODEL_INDEX_FILE)
    if kind.component != component:
        raise ModelLoadError(root / MODEL_INDEX_FILE, f"a {kind.name} model's denoiser is not under {component}/")
    if unet_cfg.get("_class_name") not in kind.classes:
        raise ModelLoadError(root / config_file, f"unsupported model class {unet_cfg.get('_class_name')!r}")
    if sched_cfg.get("prediction_type", "epsilon") not in kind.prediction_types:
        raise ModelLoadError(
            root / SCHEDULER_CONFIG_FILE, f"prediction_type {sched_cfg.get('prediction_type')!r} is not supported"
        )
    try:
        candidate = Candidate.from_dict(manifest["candidate"])
        timesteps = validate_schedule(sched_cfg["timesteps"], int(sched_cfg.get("num_train_timesteps", 1000)))
        if tuple(timesteps) != candidate.timesteps:
            raise ScheduleError(f"the scheduler's timesteps {timesteps} are not the candidate's")
        NoiseSchedule.from_config(sched_cfg)  # its betas must make a schedule
    except (KeyError, InvalidCandidate, ScheduleError, ValueError) as exc:
        raise ModelLoadError(root / SCHEDULER_CONFIG_FILE, f"inconsistent with the manifest: {exc}") from None
    try:
        tensors = load_file(str(root / weights_file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(root / weights_file, f"unreadable: {exc}") from None
    try:
        model = adapter_class(kind).from_export(root, unet_cfg, sched_cfg, manifest)
    except ModelLoadError:
        raise
    except Exception as exc:  # diffusers raises many types for a bad config
        raise ModelLoadError(root / config_file, f"the model cannot be built: {exc}") from None
    try:
        hooks = _install(model.denoiser, qcfg, tensors, root, component)
    except (KeyError, TypeError, ValueError, CalibrationError) as exc:
        raise ModelLoadError(root / QUANT_CONFIG_FILE, f"corrupt: {type(exc).__name__}: {exc}") from None
    pipe = ExportedPipeline(model, tuple(timesteps), manifest, qcfg, sched_cfg, root, hooks)
    if torch.device(device) != torch.device("cpu") or dtype not in (None, torch.float32):
        pipe.to(device, dtype)
    if backend == CPU_INT8:
        try:
            pipe.backend_report = install_cpu_int8(pipe.denoiser, compile=compile)
        except RuntimeError as exc:
            raise ConfigError("backend", str(exc)) from None
        pipe.backend = backend
    log.info(
        "loaded export %s: candidate %s (%s, K=%d)",
        root,
        manifest.get("candidate_key"),
        manifest.get("bits"),
        len(timesteps),
    )
    return pipe
