"""Loading a model directory, re-exported from the model seam (:func:`supernet.models.registry.load_model`, which
picks the adapter of the directory's kind); kept so that older imports keep working."""

from __future__ import annotations

from supernet.models.registry import load_model

__all__ = ["load_model"]
