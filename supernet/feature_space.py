"""A feature space the user supplies as a file: a ``torch.export`` program mapping images to feature vectors.

A job's ``evaluation.features`` names such a file; every evaluation then records ``fd``, the Fréchet distance
between the candidate's decoded samples and the FP reference's (same noise, prompts and solver) in that space, and
``objective: fd`` searches on it. A user makes the file from any image network they trust (an Inception or CLIP
image tower, a domain classifier), once, where its weights live::

    batch = torch.export.Dim("batch")
    program = torch.export.export(net.eval(), (torch.zeros(4, 3, 64, 64),), dynamic_shapes=({0: batch},))
    torch.export.save(program, "features.pt2")

Images go in as the pipeline decodes them: ``(N, C, H, W)`` float32 in [-1, 1], at the model's resolution (resize
inside the network if it wants another). A 2-D output ``(N, D)`` is the feature vector; a higher-dimensional one is
flattened per image. A program exported with a fixed batch size is fed batches of exactly that size, the last one
padded. The file is a program and weights, no pickled Python code, so it is loaded without running user code.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.errors import ConfigError

log = logging.getLogger(__name__)

#: The job field that names the file, for error messages.
FIELD = "evaluation.features"


@dataclass
class FeatureSpace:
    """A loaded feature program: :meth:`features` maps images to ``(N, D)`` float64 feature vectors.

    Attributes:
        module: the program's callable module.
        fixed_batch: the batch size the program was exported with when it is static (``None``: any batch size).
        batch_size: images per call when the batch size is free.
    """

    module: torch.nn.Module
    fixed_batch: int | None = None
    batch_size: int = 256

    @classmethod
    def load(cls, path: str | Path) -> FeatureSpace:
        """Load a ``torch.export`` program file; ConfigError naming :data:`FIELD` when it is not one."""
        file = Path(path)
        if not file.is_file():
            raise ConfigError(FIELD, f"{file} is not a file")
        if not zipfile.is_zipfile(file):
            raise ConfigError(FIELD, f"{file} is not a torch.export program (torch.export.save writes a zip archive)")
        try:
            program = torch.export.load(str(file))
        except Exception as exc:  # torch raises many types for a foreign or damaged archive
            raise ConfigError(FIELD, f"{file} cannot be loaded as a torch.export program: {exc}") from None
        inputs = [
            node
            for node in program.graph.nodes
            if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs)
        ]
        if len(inputs) != 1:
            raise ConfigError(FIELD, f"the program takes {len(inputs)} inputs; it must take one batch of images")
        shape = inputs[0].meta["val"].shape
        if len(shape) != 4:
            raise ConfigError(FIELD, f"the program takes a {len(shape)}-D input; it must take images (N, C, H, W)")
        fixed = int(shape[0]) if isinstance(shape[0], int) else None
        return cls(program.module(), fixed)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """Feature vectors ``(N, D)`` (float64) of images in [-1, 1] ``(N, C, H, W)``."""
        images = images.detach().float().cpu()
        size = self.fixed_batch or self.batch_size
        parts = []
        for chunk in images.split(size):
            n = chunk.shape[0]
            if self.fixed_batch is not None and n < size:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - n, *chunk.shape[1:])])
            out = self.module(chunk)
            if isinstance(out, tuple | list):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != chunk.shape[0]:
                raise ConfigError(FIELD, "the program must return one tensor with a row per image")
            parts.append(out[:n].reshape(n, -1).double().numpy())
        return np.concatenate(parts)

    def check(self, image_shape: tuple[int, ...]) -> int:
        """Run the program on two blank images of ``image_shape`` ``(C, H, W)``; returns the feature dimension.

        ConfigError naming :data:`FIELD` when the program does not take such images or returns no feature vectors.
        """
        try:
            feats = self.features(torch.zeros(2, *image_shape))
        except ConfigError:
            raise
        except Exception as exc:  # the program's own shape guards raise assorted errors
            shown = "x".join(str(s) for s in image_shape)
            raise ConfigError(FIELD, f"the program does not take this model's {shown} images: {exc}") from None
        return int(feats.shape[1])
