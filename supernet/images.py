"""Write a batch of images in [-1, 1] as one PNG grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None, scale: int = 4) -> Path:
    """Tile ``(N, C, H, W)`` images into a grid PNG, each pixel repeated ``scale`` times."""
    from PIL import Image

    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    n, c, h, w = x.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i].transpose(1, 2, 0)
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
