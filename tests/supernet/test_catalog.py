"""Listing calibrated supernets from their metadata (``supernet.catalog``, ``tmpq supernets``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main
from supernet.catalog import META_FILE, SHIPPED_DIR, TENSORS_FILE, list_supernets
from supernet.zoo.modeldir import TESTBED_DIR

SHIPPED = next((TESTBED_DIR / SHIPPED_DIR).iterdir())


def _cache_with_entries(tmp_path: Path) -> Path:
    """A cache holding a copy of the shipped testbed supernet, one with symmetric weights (edited metadata), a
    damaged one (no metadata) and the FP trajectories' ``calibration/`` folder."""
    cache = tmp_path / "data" / "supernets"
    shutil.copytree(SHIPPED, cache / SHIPPED.name)
    meta = json.loads((SHIPPED / META_FILE).read_text())
    meta["settings"]["weight_symmetric"] = True
    meta["calibration_seconds"] = {"8": 12.5}
    meta["bit_options"] = [8]
    (cache / "sym").mkdir()
    (cache / "sym" / META_FILE).write_text(json.dumps(meta))
    (cache / "damaged").mkdir()
    (cache / "damaged" / TENSORS_FILE).write_bytes(b"\0" * 10)
    (cache / "calibration").mkdir()
    (cache / "calibration" / "trajectories.safetensors").write_bytes(b"\0")
    return cache


def test_the_catalog_lists_cached_and_shipped_artifacts_from_metadata(tmp_path: Path) -> None:
    cache = _cache_with_entries(tmp_path)
    entries = list_supernets(cache, [TESTBED_DIR])
    by = {(e.name, e.source): e for e in entries}
    assert set(by) == {(SHIPPED.name, "cache"), ("sym", "cache"), ("damaged", "cache"), (SHIPPED.name, "shipped")}
    shipped = by[SHIPPED.name, "shipped"]
    assert shipped.bits == (4, 6, 8) and shipped.strategy == "tcaq" and set(shipped.seconds) == {4, 6, 8}
    assert shipped.size_bytes == sum(p.stat().st_size for p in SHIPPED.iterdir()) and shipped.problem is None
    assert by["sym", "cache"].settings["weight_symmetric"] is True and by["sym", "cache"].seconds == {8: 12.5}
    damaged = by["damaged", "cache"]
    assert damaged.problem is not None and "unreadable metadata" in damaged.problem and damaged.size_bytes == 10
    assert json.loads(json.dumps([e.to_dict() for e in entries]))  # JSON-ready
    assert list_supernets(tmp_path / "nowhere", []) == []


def test_the_catalog_imports_no_torch() -> None:
    code = "import sys, supernet.catalog; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tmpq_supernets_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _cache_with_entries(tmp_path)
    monkeypatch.setenv("TMPQ_MODEL_ROOT", str(TESTBED_DIR.parent))
    assert main(["supernets", "--data-dir", str(tmp_path / "data"), "--model", TESTBED_DIR.name, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(e["name"], e["source"]) for e in listed} >= {("sym", "cache"), (SHIPPED.name, "shipped")}
    assert main(["supernets", "--data-dir", str(tmp_path / "data"), "--model", TESTBED_DIR.name]) == 0
    out = capsys.readouterr().out
    assert "4 calibrated supernets" in out and "weight_symmetric" in out and "W8A8 12" in out
    assert main(["supernets", "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err
