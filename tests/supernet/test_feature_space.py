"""A feature space the user supplies as a torch.export program file (a job's ``evaluation.features``)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from search.errors import ConfigError
from supernet.feature_space import FIELD, FeatureSpace
from supernet.metrics import frechet_distance
from supernet.testing import write_feature_program


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    return {
        "dynamic": write_feature_program(root / "dynamic.pt2", 3),
        "fixed": write_feature_program(root / "fixed.pt2", 3, batch=4, dynamic=False),
    }


def test_a_program_maps_images_to_feature_vectors(programs):
    space = FeatureSpace.load(programs["dynamic"])
    assert space.fixed_batch is None
    assert space.check((3, 8, 8)) == 16
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    feats = space.features(images)
    assert feats.shape == (10, 16) and feats.dtype == np.float64
    # the same network run eagerly gives the same vectors: nothing is lost in the program
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    with torch.no_grad():
        np.testing.assert_allclose(feats, net(images).double().numpy(), rtol=1e-6, atol=1e-7)


def test_a_fixed_batch_program_gets_padded_batches_of_its_size(programs):
    fixed, free = FeatureSpace.load(programs["fixed"]), FeatureSpace.load(programs["dynamic"])
    assert fixed.fixed_batch == 4
    images = torch.rand(7, 3, 8, 8) * 2 - 1  # 4 + 3: the last batch is padded, the padding dropped
    np.testing.assert_array_equal(fixed.features(images), free.features(images))


def test_the_fd_of_a_set_with_itself_is_zero_and_grows_with_a_shift(programs):
    space = FeatureSpace.load(programs["dynamic"])
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8, generator=gen) * 2 - 1
    ref = space.features(images)
    assert frechet_distance(space.features(images), ref) == pytest.approx(0.0, abs=1e-9)
    near = frechet_distance(space.features((images + 0.05).clamp(-1, 1)), ref)
    far = frechet_distance(space.features((images + 0.5).clamp(-1, 1)), ref)
    assert 0.0 < near < far


def test_images_the_program_does_not_take_are_a_config_error(programs):
    space = FeatureSpace.load(programs["dynamic"])
    with pytest.raises(ConfigError, match="does not take this model's 1x8x8 images") as info:
        space.check((1, 8, 8))
    assert info.value.field == FIELD


def test_files_that_are_not_programs_are_refused_naming_the_field(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a program")
    with pytest.raises(ConfigError, match=r"not a torch\.export program") as info:
        FeatureSpace.load(text)
    assert info.value.field == FIELD
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data.txt", "a zip, but not a program")
    with pytest.raises(ConfigError, match=r"cannot be loaded as a torch\.export program"):
        FeatureSpace.load(archive)
    with pytest.raises(ConfigError, match="is not a file"):
        FeatureSpace.load(tmp_path / "missing.pt2")


def test_a_program_with_two_inputs_is_refused(tmp_path):
    class Pair(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b).flatten(1)

    path = tmp_path / "pair.pt2"
    torch.export.save(torch.export.export(Pair(), (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))), str(path))
    with pytest.raises(ConfigError, match="takes 2 inputs"):
        FeatureSpace.load(path)
