"""The torch-free directory check, re-exported from the model seam (:mod:`supernet.models.directory`), where it
lives with the per-kind rules; kept so that older imports keep working."""

from __future__ import annotations

from supernet.models.directory import (
    FEATURES_DIR,
    SHIPPED_MODELS,
    TESTBED_DIR,
    ModelDir,
    check_model_dir,
    features_for,
    model_hash,
    read_json_object,
)

__all__ = [
    "FEATURES_DIR",
    "SHIPPED_MODELS",
    "TESTBED_DIR",
    "ModelDir",
    "check_model_dir",
    "features_for",
    "model_hash",
    "read_json_object",
]
