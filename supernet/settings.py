"""Frozen, versioned, validated settings of a supernet's structure and quantizer format.

The canonical dict (``to_dict``) is part of the supernet cache key, next to
:class:`~supernet.calibration.settings.CalibrationSettings`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from search.errors import ConfigError, VersionMismatchError

SUPERNET_SETTINGS_VERSION = 1

#: How a quantizer's range is fitted, and the quantizer kinds of a post-softmax input (torch-free names; the
#: quantizers in :mod:`supernet.quant` implement them).
RANGE_METHODS: tuple[str, ...] = ("minmax", "mse")
QUANT_KINDS: tuple[str, ...] = ("uniform", "log2")
#: What computes an export's quantized sites at run time (torch-free names; :mod:`supernet.runtime` implements them):
#: ``reference`` fake-quantizes as the search evaluated, ``cpu-int8`` runs oneDNN's int8 kernels on x86 CPUs.
RUNTIME_BACKENDS: tuple[str, ...] = ("reference", "cpu-int8")
#: The backends a latency table can be measured on: those whose integer kernels make a site's cost depend on its
#: bits (``reference`` computes everything in float32 whatever the bits).
LATENCY_BACKENDS: tuple[str, ...] = ("cpu-int8",)


def check_backend(name: object, field: str = "backend") -> str:
    """``name`` if it is a run-time backend, else ConfigError naming ``field``."""
    if name not in RUNTIME_BACKENDS:
        raise ConfigError(field, f"must be one of {list(RUNTIME_BACKENDS)}, got {name!r}")
    return str(name)


def canonical_key(payload: Mapping[str, Any], length: int = 16) -> str:
    """Hex digest of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def excluded(name: str, exclude: Iterable[str]) -> bool:
    """Whether module ``name`` is left in FP by ``exclude`` (module names, or prefixes of them at a ``.``)."""
    return any(name == e or name.startswith(e + ".") for e in exclude)


@dataclass(frozen=True)
class SupernetSettings:
    """Which operations become sites and the integer format of their quantizers.

    Attributes:
        weight_symmetric: signed weight codes with zero-point 0 (else unsigned with a zero-point per channel).
        act_symmetric: signed activation codes (else unsigned with a zero-point per tensor).
        attention_matmuls: make the attention matmuls (``.qk``/``.pv``) sites.
        exclude: module names (or name prefixes) left in floating point, e.g. ``("conv_out",)``.
        version: format version of these settings.
    """

    weight_symmetric: bool = False
    act_symmetric: bool = False
    attention_matmuls: bool = True
    exclude: tuple[str, ...] = ()
    version: int = SUPERNET_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != SUPERNET_SETTINGS_VERSION:
            raise VersionMismatchError(
                f"supernet settings version {self.version} is not supported (expected {SUPERNET_SETTINGS_VERSION})"
            )
        for name in ("weight_symmetric", "act_symmetric", "attention_matmuls"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be a boolean")
        if isinstance(self.exclude, str) or not all(isinstance(e, str) and e for e in self.exclude):
            raise ConfigError("exclude", "must be a sequence of non-empty module names")
        object.__setattr__(self, "exclude", tuple(sorted(set(self.exclude))))

    def to_dict(self) -> dict[str, Any]:
        """Canonical, JSON-ready form."""
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SupernetSettings:
        """Inverse of :meth:`to_dict` (a job's ``quantization`` section); refuses another version or unknown fields
        (a ConfigError naming the first)."""
        for key in data:
            if key not in cls.__dataclass_fields__:
                fields = ", ".join(f for f in cls.__dataclass_fields__ if f != "version")
                raise ConfigError(str(key)[:64], f"unknown field (fields: {fields})")
        version = data.get("version", SUPERNET_SETTINGS_VERSION)
        if version != SUPERNET_SETTINGS_VERSION:
            raise ConfigError("version", f"{version!r} is not supported (expected {SUPERNET_SETTINGS_VERSION})")
        values = dict(data)
        if "exclude" in values:
            exclude = values["exclude"]
            if isinstance(exclude, str) or not isinstance(exclude, list | tuple):
                raise ConfigError("exclude", "must be a list of module names (or name prefixes)")
            values["exclude"] = tuple(exclude)
        return cls(**values)
