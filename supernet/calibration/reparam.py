"""Per-input-channel reparameterization of weight sites: ``Y = (W·diag(r))·(diag(r)⁻¹·X)``.

TCR and DilateQuant's weight dilation both choose a factor ``r_j`` per input channel ``j`` of a conv/linear site;
this module applies it. The weight's input columns are multiplied by ``r`` in place (the FP parameters are shared
with the original model) and ``1/r`` is applied to the input:

- **folded** exactly into the preceding op where that op is per-channel linear: the ``group_norm`` affine of an
  attention block for ``to_q``/``to_k``/``to_v`` (one shared factor: they read the same tensor), and the output rows
  (weight and bias) of ``to_v`` for ``to_out.0`` (``softmax(QKᵀ)·V`` is linear per channel of ``V``);
- **explicit** otherwise: a forward pre-hook on the site multiplies its input by ``1/r`` before the activation
  quantizer sees it (one elementwise multiply per call; SiLU, residual sums and the sinusoidal time projection are
  not per-channel linear, so nothing can absorb it).

Everything is undone exactly by restoring copies of the original parameters (never by dividing back).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from supernet.errors import CalibrationError
from supernet.qlayers.registry import Site
from supernet.qlayers.weighted import QConv2d, QuantWeightLayer

log = logging.getLogger(__name__)

NORM, ROWS, EXPLICIT = "norm", "rows", "explicit"


@dataclass(frozen=True)
class ReparamGroup:
    """Weight sites that share one factor vector and where its inverse goes.

    Attributes:
        sites: the sites (more than one only when they read the same tensor).
        kind: ``"norm"`` (fold into a GroupNorm affine), ``"rows"`` (fold into a linear site's output rows) or
            ``"explicit"`` (a pre-scale on each site's input).
        target: the module (``"norm"``) or site (``"rows"``) absorbing ``1/r``; empty for ``"explicit"``.
    """

    sites: tuple[str, ...]
    kind: str
    target: str = ""


def channel_dim(layer: QuantWeightLayer) -> int:
    """The input-channel dimension of the layer's *input* tensor (1 for conv, -1 for linear)."""
    return 1 if isinstance(layer, QConv2d) else -1


def in_channels(layer: QuantWeightLayer) -> int:
    """Number of input channels of a weight site."""
    return int(layer.weight.shape[1])


def _attention_modules(unet: nn.Module) -> dict[str, nn.Module]:
    from diffusers.models.attention_processor import Attention

    return {name: m for name, m in unet.named_modules() if isinstance(m, Attention)}


def plan_groups(unet: nn.Module, sites: Mapping[str, Site]) -> list[ReparamGroup]:
    """How every weight site of ``sites`` can take a per-input-channel factor (sorted, deterministic)."""
    layers = {n: s for n, s in sites.items() if isinstance(s, QuantWeightLayer)}
    taken: set[str] = set()
    groups: list[ReparamGroup] = []
    for name, attn in sorted(_attention_modules(unet).items()):
        qkv = tuple(f"{name}.{p}" for p in ("to_q", "to_k", "to_v"))
        gn = getattr(attn, "group_norm", None)
        if (
            all(s in layers for s in qkv)
            and isinstance(gn, nn.GroupNorm)
            and gn.affine
            and getattr(attn, "spatial_norm", None) is None
            and not getattr(attn, "is_cross_attention", False)
        ):
            groups.append(ReparamGroup(qkv, NORM, f"{name}.group_norm"))
            taken.update(qkv)
        out, v = f"{name}.to_out.0", f"{name}.to_v"
        if out in layers and v in layers and layers[v].weight.shape[0] == in_channels(layers[out]):
            groups.append(ReparamGroup((out,), ROWS, v))
            taken.add(out)
    groups += [ReparamGroup((n,), EXPLICIT) for n in sorted(layers) if n not in taken]
    return sorted(groups, key=lambda g: g.sites)


def _col_shape(w: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (w.dim() - 2)


@dataclass
class Reparameterization:
    """Per-input-channel factors applied to a wrapped model; :meth:`undo` restores it exactly.

    Attributes:
        factors: ``{site: r}`` (1-d, one entry per input channel), as applied.
        folded: ``{site: module or site absorbing 1/r}``.
        explicit: sites with an explicit input pre-scale (factors all 1 need none and are left out).
    """

    factors: dict[str, torch.Tensor]
    folded: dict[str, str] = field(default_factory=dict)
    explicit: list[str] = field(default_factory=list)
    restorable: bool = True
    _originals: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list, repr=False)
    _hooks: list[RemovableHandle] = field(default_factory=list, repr=False)
    _modified: bool = field(default=False, repr=False)

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: which layers are folded (and into what) and which are explicit."""
        top = max((float(r.max()) for r in self.factors.values() if r.numel()), default=1.0)
        return {
            "folded": dict(sorted(self.folded.items())),
            "explicit": sorted(self.explicit),
            "identity": sorted(s for s in self.factors if s not in self.folded and s not in self.explicit),
            "max_factor": round(top, 4),
        }

    @property
    def saved_bytes(self) -> int:
        """Bytes held to restore the modified parameters exactly (a copy of each)."""
        return sum(o.numel() * o.element_size() for _, o in self._originals)

    def undo(self) -> None:
        """Remove the pre-scales and restore every modified parameter bit for bit; :class:`CalibrationError`
        (and nothing changed) when parameters were modified without keeping copies (``restorable=False``)."""
        if self._modified and not self.restorable:
            raise CalibrationError(
                "the model was reparameterized without restore copies (restorable=False): it cannot be restored; "
                "load it again"
            )
        for h in self._hooks:
            h.remove()
        with torch.no_grad():
            for param, original in reversed(self._originals):
                param.copy_(original)
        self._hooks.clear()
        self._originals.clear()

    def _save(self, t: torch.Tensor) -> None:
        self._modified = True
        if self.restorable and not any(t is p for p, _ in self._originals):
            self._originals.append((t, t.detach().clone()))


def apply_reparameterization(
    unet: nn.Module, sites: Mapping[str, Site], factors: Mapping[str, torch.Tensor], *, restorable: bool = True
) -> Reparameterization:
    """Multiply each site's input columns by ``factors[site]`` and put ``1/r`` where :func:`plan_groups` says.

    ``restorable=False`` keeps no copy of the parameters it changes (saving their size in memory); the model then
    cannot be restored (:meth:`Reparameterization.undo` refuses), which suits a process that owns its model.

    Sites of one group must have equal factors (they share one fold). Raises :class:`CalibrationError` on a
    factor of the wrong length, a non-positive factor, or unequal factors within a group.
    """
    rep = Reparameterization(
        {n: f.detach().to(torch.float32).clone() for n, f in factors.items()}, restorable=restorable
    )
    modules = dict(unet.named_modules())
    try:
        with torch.no_grad():
            for group in plan_groups(unet, sites):
                present = [s for s in group.sites if s in rep.factors]
                if not present:
                    continue
                r = rep.factors[present[0]]
                for s in group.sites:
                    layer = sites[s]
                    assert isinstance(layer, QuantWeightLayer)
                    f = rep.factors.get(s)
                    if f is None or f.shape != (in_channels(layer),) or not bool((f > 0).all()):
                        raise CalibrationError(
                            f"{s}: needs {in_channels(layer)} positive factors "
                            f"(every site of {list(group.sites)} alike)"
                        )
                    if not torch.equal(f, r):
                        raise CalibrationError(f"{s}: factors differ within the group {list(group.sites)}")
                if bool((r == 1).all()):
                    continue
                for s in group.sites:
                    w = sites[s].weight  # type: ignore[union-attr]
                    rep._save(w)
                    w.mul_(r.to(w).view(_col_shape(w)))
                _fold_or_hook(rep, group, r, sites, modules)
    except BaseException:
        if rep.restorable or not rep._modified:
            rep.undo()
        raise
    log.info(
        "reparameterized %d sites (%d folded, %d explicit)",
        len(rep.folded) + len(rep.explicit),
        len(rep.folded),
        len(rep.explicit),
    )
    return rep


def _fold_or_hook(
    rep: Reparameterization,
    group: ReparamGroup,
    r: torch.Tensor,
    sites: Mapping[str, Site],
    modules: Mapping[str, nn.Module],
) -> None:
    if group.kind == NORM:
        gn = modules[group.target]
        for p in (gn.weight, gn.bias):
            rep._save(p)
            p.div_(r.to(p))
        rep.folded.update(dict.fromkeys(group.sites, group.target))
    elif group.kind == ROWS:
        v = sites[group.target]
        assert isinstance(v, QuantWeightLayer)
        rep._save(v.weight)
        v.weight.div_(r.to(v.weight).view(-1, *([1] * (v.weight.dim() - 1))))
        if v.bias is not None:
            rep._save(v.bias)
            v.bias.div_(r.to(v.bias))
        rep.folded.update(dict.fromkeys(group.sites, group.target))
    else:
        for s in group.sites:
            layer = sites[s]
            assert isinstance(layer, QuantWeightLayer)
            rep._hooks.append(layer.register_forward_pre_hook(_prescale_hook(r, channel_dim(layer), layer.weight)))
            rep.explicit.append(s)


def _prescale_hook(r: torch.Tensor, dim: int, like: torch.Tensor) -> Any:
    inv = torch.reciprocal(r).to(like)
    shaped = {(inv.device, inv.dtype): inv.view(-1, 1, 1) if dim == 1 else inv}

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        scale = shaped.get((x.device, x.dtype))
        if scale is None:  # the model was moved or cast after the reparameterization
            first = next(iter(shaped.values()))
            scale = shaped[(x.device, x.dtype)] = first.to(device=x.device, dtype=x.dtype)
        return (x * scale, *args[1:])

    return hook
