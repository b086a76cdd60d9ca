"""``tmpq calibrate --config job.yaml``: ``--dry-run`` says where the supernet would come from and, when it must be
calibrated, the estimated time; without it the supernet is calibrated and cached (and then found there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from supernet.catalog import META_FILE
from tests.workers.test_search_cli import REPO, TINY


def _calibrate(tmp_path: Path, config: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "calibrate", "--config", str(path), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"TMPQ_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )


def test_dry_run_estimates_then_calibrating_caches_and_a_second_dry_run_finds_it(tmp_path: Path) -> None:
    dry = _calibrate(tmp_path, TINY, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["source"] == "calibrate" and plan["bits"] == [4, 8]
    estimate = plan["estimate"]
    assert set(estimate["per_bits"]) == {"4", "8"} and estimate["forward_ms_per_sample"] > 0
    assert estimate["seconds"] > 0 and set(estimate["phases"]) >= {"trajectories", "ranges"}
    assert not (tmp_path / "data" / "supernets" / plan["supernet"]).exists()  # a dry run calibrates nothing

    text = _calibrate(tmp_path, TINY, "--dry-run")
    assert text.returncode == 0 and text.stdout.startswith(f"would calibrate {plan['supernet']}"), text.stdout
    assert "estimated ~" in text.stdout

    done = _calibrate(tmp_path, TINY, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert set(result["calibration_seconds"]) == {"4", "8"}
    assert "(2/2): done" in done.stderr  # progress lines while it runs (at most one a second per stage)
    assert (tmp_path / "data" / "supernets" / plan["supernet"] / META_FILE).is_file()

    again = _calibrate(tmp_path, TINY, "--dry-run")
    assert again.returncode == 0 and "no calibration needed" in again.stdout and "cache" in again.stdout


def test_the_shipped_supernet_needs_no_calibration(tmp_path: Path) -> None:
    config = {**TINY, "search": {**TINY["search"], "bit_options": [4, 6, 8]}, "calibration": {}}
    result = _calibrate(tmp_path, config, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "shipped"


def test_a_bad_spec_is_one_line_naming_the_field(tmp_path: Path) -> None:
    result = _calibrate(tmp_path, {**TINY, "calibration": {"recon_iters": -1}}, "--dry-run")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "calibration.recon_iters" in lines[0], result.stderr


def test_the_estimate_says_which_worker_processes_calibrate_which_bit_options() -> None:
    from server.cli import _estimate_text

    estimate = {
        "seconds": 160.0,
        "per_bits": {"4": 150.0, "6": 60.0, "8": 58.0},
        "phases": {"trajectories": 2.0, "reconstruction": 230.0},
        "forward_ms_per_sample": 1.5,
        "workers": {"processes": 2, "threads_each": 1, "bit_options": [[4], [6, 8]], "automatic": True},
    }
    text = _estimate_text(estimate)
    assert text.startswith("estimated ~3m (in 2 processes of 1 thread (W4 | W6, W8); W4 ~3m, W6 ~1m"), text
    assert "in 2 processes" not in _estimate_text({k: v for k, v in estimate.items() if k != "workers"})
