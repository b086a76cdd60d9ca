"""A cache that cannot be written is a StorageError naming the directory and the OS reason, raised before any
calibration work where it can be: never a silent recalibration. Only an artifact that cannot be *read* is rebuilt.

Tests run as root, where permission bits do not stop writes, so an unwritable cache is a path under a regular file
(which really fails), and a full disk is the OS error injected into the one call that writes.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

import supernet.artifact as artifact
from search.errors import StorageError
from supernet.artifact import META_FILE, SHIPPED_DIR, get_or_build_supernet
from supernet.calibration import CalibrationData
from supernet.models import ModuleAdapter
from supernet.qlayers.weighted import QuantWeightLayer
from supernet.supernet import QuantSupernet
from supernet.testing import TINY_CALIB, TOY_SHAPE, random_data, toy_net
from supernet.zoo.testbed import random_testbed

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def no_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything is calibrated or any trajectory collected."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        pytest.fail("calibration work started although the cache cannot be written")

    monkeypatch.setattr(QuantSupernet, "calibrate", refuse)
    monkeypatch.setattr(artifact, "collect_calibration_data", refuse)


def _unwrapped(module: torch.nn.Module) -> bool:
    return not any(isinstance(m, QuantWeightLayer) for m in module.modules())


def test_a_cache_directory_that_cannot_be_created_fails_before_calibrating(tmp_path: Path, no_calibration) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data directory should be")
    cache = blocker / "supernets"
    model = random_testbed(0)
    with pytest.raises(StorageError) as err:
        get_or_build_supernet(model, (4,), None, TINY_CALIB, cache)
    assert err.value.path == str(cache) and "not a directory" in err.value.reason
    assert "cannot be written" in str(err.value) and _unwrapped(model.denoiser)


def test_a_full_disk_fails_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_calibration) -> None:
    def full(_fd: int) -> None:
        raise ENOSPC

    monkeypatch.setattr(artifact.os, "fsync", full)  # the write check's flush is where a full disk shows
    with pytest.raises(StorageError, match="no space left on device") as err:
        get_or_build_supernet(random_testbed(0), (4,), None, TINY_CALIB, tmp_path / "cache")
    assert err.value.path == str(tmp_path / "cache")


def test_calibration_data_that_cannot_be_cached_fails_before_collecting(tmp_path: Path, no_calibration) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "calibration").write_text("in the way")
    with pytest.raises(StorageError, match="calibration data cache cannot be written") as err:
        get_or_build_supernet(random_testbed(0), (4,), None, TINY_CALIB, cache)
    assert err.value.path == str(cache / "calibration")


def test_a_shipped_artifact_that_cannot_be_copied_is_not_recalibrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = random_data(TOY_SHAPE, n=8)
    get_or_build_supernet(toy_net(), (4,), None, TINY_CALIB, tmp_path / "build", data=data).detach()
    entry = next(p for p in (tmp_path / "build").iterdir() if (p / META_FILE).is_file())
    model_dir = tmp_path / "model"
    shutil.copytree(entry, model_dir / SHIPPED_DIR / entry.name)

    def disk_full(src: object, dst: Path, **_kwargs: object) -> None:
        Path(dst).mkdir()
        (Path(dst) / "partial").write_bytes(b"x")
        raise shutil.Error([(str(src), str(dst), "[Errno 28] No space left on device")])

    monkeypatch.setattr(artifact.shutil, "copytree", disk_full)
    calls: list[CalibrationData] = []
    monkeypatch.setattr(QuantSupernet, "calibrate", lambda self, d, progress=None, estimate=None: calls.append(d))
    model = ModuleAdapter(toy_net(), sample_shape=TOY_SHAPE, path=model_dir)
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="No space left on device") as err:
        get_or_build_supernet(model, (4,), None, TINY_CALIB, cache, data=data)
    assert err.value.path == str(cache) and "shipped supernet" in err.value.reason
    assert calls == [] and _unwrapped(model.denoiser)  # not calibrated, and the model is as it was
    assert sorted(p.name for p in cache.iterdir()) == [f"{entry.name}.lock"]  # the partial copy was removed


def test_a_calibrated_artifact_that_cannot_be_saved_raises_and_leaves_no_partial_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_args: object, **_kwargs: object) -> None:
        raise ENOSPC

    monkeypatch.setattr(artifact, "save_file", full)
    model = toy_net()
    cache = tmp_path / "cache"
    with pytest.raises(StorageError, match="cannot write the calibrated supernet: no space left on device"):
        get_or_build_supernet(model, (4,), None, TINY_CALIB, cache, data=random_data(TOY_SHAPE, n=8))
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [] and _unwrapped(model)


def test_a_lock_that_cannot_be_taken_is_a_storage_error(tmp_path: Path, no_calibration) -> None:
    cache = tmp_path / "cache"
    model = toy_net()
    name = artifact.artifact_name(artifact.model_identity(model), [4], artifact.SupernetSettings(), TINY_CALIB)
    (cache / f"{name}.lock").mkdir(parents=True)  # a directory cannot be opened for appending
    with pytest.raises(StorageError, match="cannot take the lock") as err:
        get_or_build_supernet(model, (4,), None, TINY_CALIB, cache, data=random_data(TOY_SHAPE, n=8))
    assert err.value.path == str(cache) and "is a directory" in err.value.reason
