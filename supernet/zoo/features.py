"""The digits classifier whose penultimate layer is the feature space of the FDD quality metric.

Trained deterministically in a few seconds (``tmpq zoo train-features``) and shipped as safetensors + JSON config
under ``models/digits-features/``; the config records its test accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from search.errors import ModelLoadError
from supernet.zoo.determinism import deterministic_torch
from supernet.zoo.digits import load_digits_tensor, split_indices
from supernet.zoo.modeldir import FEATURES_DIR

log = logging.getLogger(__name__)

FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """Two convolutions → 64-d features → 10 classes, on 16x16 images in [-1, 1]."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, ``(N, feature_dim)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class FeatureTrainSettings:
    """Hyper-parameters of the classifier's reference run."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


def train_features(
    out_dir: str | Path = FEATURES_DIR, settings: FeatureTrainSettings = FeatureTrainSettings()
) -> tuple[Path, float]:
    """Train the classifier on a fixed 80/20 split and save it; returns (directory, test accuracy)."""
    with deterministic_torch():
        return _train_features(Path(out_dir), settings)


def _train_features(out: Path, settings: FeatureTrainSettings) -> tuple[Path, float]:
    torch.manual_seed(settings.seed)
    x, y = load_digits_tensor()
    train_idx, test_idx = split_indices(len(x), seed=settings.seed)
    net = DigitsClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    xtr, ytr = x[train_idx], y[train_idx]
    for _ in range(settings.epochs):
        net.train()
        for batch in torch.randperm(len(xtr), generator=gen).split(settings.batch_size):
            loss = F.cross_entropy(net(xtr[batch]), ytr[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[test_idx]).argmax(1) == y[test_idx]).float().mean())
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "model.safetensors"))
    config = {
        "class": "DigitsClassifier",
        "feature_dim": FEATURE_DIM,
        "width": 32,
        "image_size": 16,
        "test_accuracy": round(acc, 4),
        "train": asdict(settings),
        "split_seed": settings.seed,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    log.info("digits classifier: test accuracy %.4f, saved to %s", acc, out)
    return out, acc


def load_features(path: str | Path = FEATURES_DIR) -> DigitsClassifier:
    """Load the shipped classifier (eval mode, no gradients)."""
    root = Path(path)
    try:
        cfg = json.loads((root / "config.json").read_text())
        state = load_file(str(root / "model.safetensors"))
    except FileNotFoundError as exc:
        raise ModelLoadError(root, f"feature extractor file missing: {Path(exc.filename).name}") from None
    if cfg.get("class") != "DigitsClassifier":
        raise ModelLoadError(root, f"unsupported feature extractor class {cfg.get('class')!r}")
    net = DigitsClassifier(width=int(cfg["width"]), feature_dim=int(cfg["feature_dim"]))
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def digit_accuracies(
    draw: Callable[[Sequence[int]], torch.Tensor], n_per_digit: int, batch_size: int, digits: int = 10
) -> list[float]:
    """Per digit ``d``, the share of ``n_per_digit`` images drawn for it that the shipped digits classifier labels
    ``d``. ``draw(targets)`` returns one image in [0, 1] (``N×1×H×W``) per target digit; it is called on batches of
    at most ``batch_size`` targets, digit-major."""
    classifier = load_features(FEATURES_DIR)
    targets = [d for d in range(digits) for _ in range(n_per_digit)]
    predicted = [
        classifier(draw(targets[i : i + batch_size]).float() * 2.0 - 1.0).argmax(1)
        for i in range(0, len(targets), batch_size)
    ]
    correct = (torch.cat(predicted) == torch.tensor(targets)).float().view(digits, n_per_digit)
    return [float(c) for c in correct.mean(1)]
