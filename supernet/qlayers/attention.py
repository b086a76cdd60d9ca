"""The two activation-activation matmuls of diffusers' ``Attention`` as quantizable sites.

:class:`QuantAttnProcessor` is an attention processor of ours (diffusers is not edited): while both matmul sites
are in floating point it delegates to the processor it replaced (SDPA by default), so FP outputs are unchanged;
otherwise it computes the probabilities explicitly, ``P = softmax(α · Q Kᵀ)`` and ``P V``, with Q, K, P, V
fake-quantized and the scales folded into the matmuls' ``alpha`` (same integer codes, no extra pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from supernet.qlayers.act import ActQuantizer
from supernet.qlayers.context import TimestepContext

#: Score elements per chunk of heads in the quantized attention path (1 MiB of float32: stays in cache).
SCORE_CHUNK_ELEMS = 1 << 18


class QMatMul:
    """An attention matmul site: operand A at the candidate's activation width, B at its weight width.

    For ``.qk``: A = Q, B = K. For ``.pv``: A = the post-softmax probabilities, B = V. The arithmetic lives
    in :class:`QuantAttnProcessor`.
    """

    kind: ClassVar[str] = "matmul"

    def __init__(self, site: str, which: Literal["qk", "pv"], owner: nn.Module, ctx: TimestepContext) -> None:
        self.name = site
        self.which = which
        self.owner = owner
        self.a = ActQuantizer(site, "a", "a", ctx)
        self.b = ActQuantizer(site, "b", "w", ctx)

    @property
    def w_bits(self) -> int:
        return self.b.bits

    @property
    def a_bits(self) -> int:
        return self.a.bits

    @property
    def passthrough(self) -> bool:
        return self.a.passthrough and self.b.passthrough

    def act_quantizers(self) -> tuple[ActQuantizer, ...]:
        return (self.a, self.b)

    def activate(self, w_bits: int, a_bits: int) -> None:
        """Select the parameters for ``a_bits`` (first operand) and ``w_bits`` (second operand)."""
        self.a.activate(a_bits)
        self.b.activate(w_bits)

    def macs_per_sample(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> int:
        """MACs of this matmul for one sample, from the attention module's inputs."""
        n_q = hidden_states.shape[-1] * hidden_states.shape[-2] if hidden_states.ndim == 4 else hidden_states.shape[1]
        n_kv = n_q if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        inner = self.owner.to_q.out_features if self.which == "qk" else self.owner.to_v.out_features
        return int(n_q * n_kv * inner)


class QuantAttnProcessor:
    """Attention processor with quantizable ``.qk`` and ``.pv`` matmuls; FP falls back to ``fp_processor``."""

    def __init__(self, fp_processor: Any, qk: QMatMul, pv: QMatMul) -> None:
        self.fp_processor = fp_processor
        self.qk = qk
        self.pv = pv
        self._kernel: Any = None

    def use_kernel(self, kernel: Any) -> None:
        """A run-time backend's computation of the quantized attention (:mod:`supernet.runtime`): called as
        ``kernel(query, key, value, scale, mask)`` in place of :meth:`_attend`; its ``None`` means compute as usual.
        ``None`` removes it."""
        self._kernel = kernel

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.qk.passthrough and self.pv.passthrough:
            return self.fp_processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self._explicit(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _explicit(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], context.shape[0])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        # every operand below is a fresh tensor of this method: the quantizers may work in place
        out = None if self._kernel is None else self._kernel(query, key, value, attn.scale, attention_mask)
        if out is None:
            out = self._attend(query, key, value, attn.scale, attention_mask)
        hidden_states = attn.batch_to_head_dim(out)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        scale: float,
        mask: torch.Tensor | None,
        probs: Callable[[torch.Tensor], torch.Tensor] | None = None,
        inplace: bool = True,
    ) -> torch.Tensor:
        """``softmax(scale · Q̂ K̂ᵀ + mask)`` quantized, times V̂, on ``(batch·heads, tokens, head_dim)`` inputs.

        Q, K, V are quantized whole (in place unless ``inplace=False``: the processor's caller hands over fresh
        tensors). The scores are computed in chunks of heads that fit in cache (per-tensor parameters make chunking
        exact), except while a calibration observes the probabilities, which must see them whole. ``probs`` (a
        run-time backend's) maps a chunk of scores to its quantized probabilities, as values, in place of the softmax
        and the ``.pv`` site's quantizer.
        """
        qq, sq = self.qk.a.split(query, inplace=inplace)
        kk, sk = self.qk.b.split(key, inplace=inplace)
        vv, sv = self.pv.b.split(value, inplace=inplace)
        alpha_qk = scale * (sq or 1.0) * (sk or 1.0)
        n, n_q, n_kv = qq.shape[0], qq.shape[1], kk.shape[1]
        step = n if self.pv.a.observing or mask is not None else max(1, SCORE_CHUNK_ELEMS // (n_q * n_kv))
        out = torch.empty((n, n_q, vv.shape[2]), dtype=vv.dtype, device=vv.device)
        kt = kk.transpose(-1, -2)
        for i in range(0, n, step):
            j = min(i + step, n)
            scores = torch.baddbmm(
                torch.empty((j - i, n_q, n_kv), dtype=qq.dtype, device=qq.device),
                qq[i:j],
                kt[i:j],
                beta=0.0,
                alpha=alpha_qk,
            )
            if mask is not None:
                scores += mask
            if probs is None:
                p, sp = self.pv.a.split(scores.softmax(dim=-1), inplace=True)
            else:
                p, sp = probs(scores), None
            torch.baddbmm(out[i:j], p, vv[i:j], beta=0.0, alpha=(sp or 1.0) * (sv or 1.0), out=out[i:j])
        return out
