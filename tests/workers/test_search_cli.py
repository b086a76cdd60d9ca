"""``tmpq search --config job.yaml``: bad configs get one line naming the field; a small search writes its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "version": 2,
    "model": {"path": str(REPO / "models" / "digits-ddpm-16")},
    "search": {
        "bit_options": [4, 8],
        "steps": 4,
        "granularity": "block",
        "population": 4,
        "generations": 2,
        "seed": 1,
    },
    "calibration": {
        "strategy": "range",
        "grid_steps": 3,
        "samples": 4,
        "act_method": "minmax",
        "report_ranking": False,
    },
    "evaluation": {"samples": 8, "rescore_samples": 0, "reference_steps": 10},
}


def _with(section: str, change: dict) -> dict:
    """TINY with ``change`` merged into one section."""
    return {**TINY, section: {**TINY[section], **change}}


def _run(tmp_path: Path, config: dict, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "search", "--config", str(path), "--out", str(tmp_path / "out"), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"TMPQ_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (_with("search", {"populaton": 8}), "search.populaton"),
        (_with("search", {"bit_options": [4, 9]}), "search.bit_options"),
        (_with("search", {"steps": 2000}), "search.steps"),
        (_with("search", {"budget": 1.0}), "search.budget"),
        (_with("calibration", {"samples": -1}), "calibration.samples"),
        (_with("evaluation", {"reference_steps": 100_000}), "evaluation.reference_steps"),
        ({**TINY, "bogus": {}}, "bogus"),
        ({**TINY, "model": {"path": "/nonexistent"}}, "/nonexistent"),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, config: dict, field: str) -> None:
    result = _run(tmp_path, config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tmpq: error: ") and field in lines[0], lines[0]


@pytest.mark.slow
def test_small_search_writes_front_candidates_and_plot(tmp_path: Path) -> None:
    result = _run(tmp_path, TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out"
    front = json.loads((out / "front.json").read_text())
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert front["front"] and front["knee"] in {p["key"] for p in front["front"]}
    assert len({r["evaluation"]["key"] for r in rows}) == len(rows) == front["meta"]["evaluated"]
    assert {p["key"] for p in front["front"]} <= {r["evaluation"]["key"] for r in rows}
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "samples.json").read_text())["knee"] == front["knee"]  # the FP and knee grids
    assert (
        (out / "samples_fp.png").read_bytes()[:8] == (out / "samples_knee.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )
    again = _run(tmp_path, TINY)
    assert again.returncode == 2 and "--resume" in again.stderr
