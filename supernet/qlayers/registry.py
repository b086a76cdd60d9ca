"""A registry from module types to the installers that make them quantizable sites.

Each installer wraps one module in place (replacing it in its parent, or installing an attention processor) and
returns the sites it created plus how to undo it, or a reason why it cannot. Modules of other types that carry a
weight matrix are left in floating point and listed, never crashed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from torch import nn

from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.attention import QMatMul, QuantAttnProcessor
from supernet.qlayers.context import TimestepContext
from supernet.qlayers.weighted import QConv2d, QLinear, QuantWeightLayer
from supernet.settings import excluded

log = logging.getLogger(__name__)


class Site(Protocol):
    """A quantizable operation: one weight gene and one activation gene."""

    name: str
    kind: str

    @property
    def w_bits(self) -> int: ...

    @property
    def a_bits(self) -> int: ...

    def activate(self, w_bits: int, a_bits: int) -> None: ...

    def act_quantizers(self) -> tuple[ActQuantizer, ...]: ...


@dataclass
class Installed:
    """What an installer did: the new sites and a callable that restores the original module."""

    sites: list[Site]
    undo: Callable[[], None]


#: ``installer(root, name, module, ctx)`` → :class:`Installed`, or a string saying why it is not supported.
Installer = Callable[[nn.Module, str, nn.Module, TimestepContext], "Installed | str"]

_REGISTRY: dict[type[nn.Module], Installer] = {}


def register(module_type: type[nn.Module]) -> Callable[[Installer], Installer]:
    """Decorator: make ``installer`` handle modules whose type is exactly ``module_type``."""

    def deco(installer: Installer) -> Installer:
        _REGISTRY[module_type] = installer
        return installer

    return deco


def registered_types() -> tuple[type[nn.Module], ...]:
    """The module types with an installer."""
    _ensure_attention_registered()
    return tuple(_REGISTRY)


def _replace_child(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _weight_installer(cls: type[QuantWeightLayer]) -> Installer:
    def install(root: nn.Module, name: str, module: nn.Module, ctx: TimestepContext) -> Installed | str:
        wrapped = cls.wrap(module, name, ctx)
        _replace_child(root, name, wrapped)
        return Installed([wrapped], lambda: _replace_child(root, name, module))

    return install


register(nn.Conv2d)(_weight_installer(QConv2d))
register(nn.Linear)(_weight_installer(QLinear))


def _install_attention(root: nn.Module, name: str, attn: nn.Module, ctx: TimestepContext) -> Installed | str:
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    fp_processor = attn.get_processor()
    if type(fp_processor) not in (AttnProcessor, AttnProcessor2_0):
        return f"attention processor {type(fp_processor).__name__} is not supported"
    if getattr(attn, "added_kv_proj_dim", None) is not None:
        return "attention with added key/value projections is not supported"
    if attn.norm_q is not None or attn.norm_k is not None:
        return "attention with q/k normalisation is not supported"
    qk, pv = QMatMul(f"{name}.qk", "qk", attn, ctx), QMatMul(f"{name}.pv", "pv", attn, ctx)
    attn.set_processor(QuantAttnProcessor(fp_processor, qk, pv))
    return Installed([qk, pv], lambda: attn.set_processor(fp_processor))


def _ensure_attention_registered() -> None:
    """diffusers is imported on first use only."""
    from diffusers.models.attention_processor import Attention

    _REGISTRY.setdefault(Attention, _install_attention)


@dataclass
class Installation:
    """Every site installed on a model (sorted by name), what was skipped and why, and how to undo it all."""

    sites: dict[str, Site] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def uninstall(self) -> None:
        """Restore the original modules and processors."""
        for fn in reversed(self.undo):
            fn()
        self.undo.clear()


def _has_weight_matrix(module: nn.Module) -> bool:
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def install_sites(
    root: nn.Module, ctx: TimestepContext, *, attention: bool = True, exclude: Iterable[str] = ()
) -> Installation:
    """Make every supported module of ``root`` a site, in place.

    Args:
        root: the model (modified in place; :meth:`Installation.uninstall` restores it).
        ctx: the timestep context the activation quantizers read.
        attention: also make the attention matmuls sites.
        exclude: module names (or prefixes of them) to leave in floating point.
    """
    _ensure_attention_registered()
    exclude = tuple(exclude)
    found = Installation()
    for name, module in list(root.named_modules()):
        if not name:
            continue
        installer = _REGISTRY.get(type(module))
        if installer is None or (installer is _install_attention and not attention):
            if _has_weight_matrix(module):
                found.skipped[name] = f"unsupported layer type {type(module).__name__}"
            continue
        if excluded(name, exclude):
            found.skipped[name] = "excluded by settings"
            continue
        result = installer(root, name, module, ctx)
        if isinstance(result, str):
            found.skipped[name] = result
            continue
        found.undo.append(result.undo)
        for site in result.sites:
            found.sites[site.name] = site
    found.sites = dict(sorted(found.sites.items()))
    if found.skipped:
        log.info("left in floating point: %s", found.skipped)
    return found
