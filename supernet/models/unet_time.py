"""The time embedding of diffusers' UNets, as TFMQ-DM's temporal block and cache use it: shared by the adapters of
``UNet2DModel`` and ``UNet2DConditionModel`` (both embed ``t`` with ``time_proj`` then the ``time_embedding`` MLP and
project it into every ResBlock through ``time_emb_proj``)."""

from __future__ import annotations

import torch
from torch import nn


class UNetTimeEmbedding:
    """Mixin for adapters whose ``denoiser`` is a diffusers UNet (``time_proj``, ``time_embedding``, ResBlocks with
    ``time_emb_proj``)."""

    denoiser: nn.Module
    time_embedding_block = "time_embedding"

    def temporal_support(self) -> str | None:
        unet = self.denoiser
        if not isinstance(getattr(unet, "time_embedding", None), nn.Module) or getattr(unet, "time_proj", None) is None:
            return "the model has no time_proj/time_embedding"
        for extra in ("class_embedding", "add_embedding", "encoder_hid_proj"):
            if getattr(unet, extra, None) is not None:
                return f"the model's time embedding also depends on its {extra}"
        if getattr(unet.time_embedding, "cond_proj", None) is not None:
            return "the model's time embedding takes a condition"
        return None

    def timestep_embedding(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``h(t)`` as the UNet's forward computes it (sinusoidal projection, then the MLP)."""
        unet = self.denoiser
        dtype = next(unet.time_embedding.parameters()).dtype
        return unet.time_embedding(unet.time_proj(timesteps).to(dtype))  # type: ignore[no-any-return]

    def temporal_projections(self) -> dict[str, nn.Module]:
        return {
            f"{name}.time_emb_proj": module
            for name, module in self.denoiser.named_modules()
            if isinstance(getattr(module, "time_emb_proj", None), nn.Module)
        }

    def project_temporal(self, owner: nn.Module, emb: torch.Tensor) -> torch.Tensor:
        """A ResBlock's temporal feature, as ``ResnetBlock2D.forward`` computes it."""
        e = emb if getattr(owner, "skip_time_act", False) else owner.nonlinearity(emb)
        return owner.time_emb_proj(e)  # type: ignore[no-any-return]
