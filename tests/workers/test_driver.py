"""The search driver in process on the shipped model: what it reports while it works, and a cancellation that
arrives while it calibrates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from search.errors import ConfigError
from supernet.identity import supernet_artifact_name
from supernet.testing import write_feature_program
from tests.torch_threads import one_torch_thread  # noqa: F401
from tests.workers.test_search_cli import TINY
from workers.driver import DriverOptions, run_job
from workers.jobspec import JobSpec
from workers.protocol import JobCancelled

REPO = Path(__file__).resolve().parents[2]

#: Calibrated here (not the shipped supernet's settings), so the driver really calibrates.
SPEC = {
    "model": {"path": str(REPO / "models" / "digits-ddpm-16")},
    "search": {"bit_options": [4, 8], "steps": 4, "granularity": "block", "population": 4, "generations": 1},
    "calibration": TINY["calibration"],
    "evaluation": {"samples": 8, "rescore_samples": 0, "reference_steps": 10},
}
#: The search and calibration of the tiny latent (text-to-image, DiT) jobs below.
LATENT_SEARCH = {
    "bit_options": [4, 8],
    "steps": 3,
    "granularity": "block",
    "population": 4,
    "generations": 1,
    "solver": "dpmsolver++",
}
LATENT_CALIBRATION = {"strategy": "range", "grid_steps": 3, "samples": 6, "report_ranking": False}


class Sink:
    """Records activity reports and generations; raises ``JobCancelled`` at the first calibration report when
    ``cancel_while_calibrating``."""

    def __init__(self, cancel_while_calibrating: bool = False) -> None:
        self.cancel = cancel_while_calibrating
        self.activities: list[dict[str, Any]] = []
        self.generations: list[int] = []
        self.calibrations: list[dict[str, Any]] = []
        self.rescored: list[Any] = []
        self.fp_references: list[dict[str, Any]] = []

    def on_rescored(self, evaluations: list[Any]) -> None:
        self.rescored = list(evaluations)

    def on_fp_references(self, points: list[dict[str, Any]]) -> None:
        self.fp_references = points

    def on_calibration(self, summary: dict[str, Any]) -> None:
        self.calibrations.append(summary)

    def on_progress(self, activity: dict[str, Any]) -> None:
        self.activities.append(activity)
        if self.cancel and activity["calibration"] is not None:
            raise JobCancelled("cancelled by the user")

    def on_generation(self, record: Any) -> None:
        self.generations.append(record.generation)


def _artifacts(cache: Path) -> list[Path]:
    """Calibrated supernets in the cache (the FP calibration trajectories under ``calibration/`` are kept: they are
    complete before the first calibration report)."""
    return sorted(p for p in cache.rglob("*.safetensors") if "calibration" not in p.relative_to(cache).parts)


@pytest.mark.slow
def test_reports_loading_calibration_phases_and_generations_in_order(tmp_path: Path) -> None:
    sink = Sink()
    spec = {**SPEC, "calibration": {**SPEC["calibration"], "report_ranking": True}}  # the summary's worst sites
    result = run_job(
        JobSpec.from_dict(spec), sink, options=DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path))
    )
    assert sink.generations == [0] and result.front
    stages = [a["stage"] for a in sink.activities]
    assert stages[0] == "loading" and stages[-1] == "analysing"
    assert stages.index("calibrating") < stages.index("searching") < stages.index("analysing")
    # the front analysis: FP on each of the front's schedules, and each point's error against FP on its own
    schedules = sorted({tuple(result.candidates[e.key].timesteps) for e in result.front}, key=lambda t: (len(t), t))
    assert [tuple(p["timesteps"]) for p in sink.fp_references] == schedules
    assert all(p["steps"] == 4 and p["quality"] == p["mse"] > 0 and p["bitops"] > 0 for p in sink.fp_references)
    assert [e.key for e in sink.rescored] == [e.key for e in result.front]
    for point in sink.rescored:
        assert point.extra["quant_mse"] >= 0 and point.extra["mse"] == point.quality
        fp = next(p for p in sink.fp_references if tuple(p["timesteps"]) == result.candidates[point.key].timesteps)
        assert fp["bitops"] > point.bitops  # W32A32 on the same steps costs more than any mix of 4 and 8 bits
    calibration = [a["calibration"] for a in sink.activities if a["calibration"] is not None]
    assert calibration and calibration[-1]["phase"] == "done", calibration
    assert {c["bits"] for c in calibration if c.get("bits")} <= {4, 8}
    assert _artifacts(tmp_path), "the calibrated supernet was not cached"
    (summary,) = sink.calibrations  # the calibrated supernet, summarised once for the job's status
    assert (
        summary["source"] == "calibrated" and summary["strategy"] == "range" and set(summary["seconds"]) == {"4", "8"}
    )
    report = summary["report"]
    assert set(report["bits"]) == {"4", "8"} and report["steps"] == 10 and report["range_check"] is None
    assert report["bits"]["8"]["psnr"] > report["bits"]["4"]["psnr"] and len(report["bits"]["4"]["worst"]) == 5


@pytest.mark.slow
def test_a_cancel_during_calibration_stops_the_job_and_caches_nothing(tmp_path: Path) -> None:
    sink = Sink(cancel_while_calibrating=True)
    with pytest.raises(JobCancelled):
        run_job(JobSpec.from_dict(SPEC), sink, options=DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path)))
    assert sink.generations == []
    assert [a for a in sink.activities if a["calibration"] is not None], "no calibration report reached the sink"
    assert _artifacts(tmp_path) == []


@pytest.mark.slow
def test_a_text_to_image_job_runs_on_any_local_sd_directory(tmp_path: Path) -> None:
    """A random Stable Diffusion directory (not the testbed): its prompts and guidance resolved from its files,
    calibrated on them, searched with DPM-Solver++ against the FP pipeline at the same solver."""
    from supernet.testing_sd import tiny_sd_pipeline
    from workers.jobspec import validate_job

    root = tmp_path / "models"
    tiny_sd_pipeline(root / "sd")
    write_feature_program(root / "features.pt2", 3)  # the user's feature space: 3x8x8 images -> 16 features
    spec = validate_job(
        {
            "model": "sd",
            "search": LATENT_SEARCH,
            "calibration": LATENT_CALIBRATION,
            "evaluation": {
                "samples": 6,
                "reference_steps": 8,
                "batch_size": 6,
                "objective": "fd",
                "features": "features.pt2",
            },
        },
        root,
    )
    sink = Sink()
    options = DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path / "cache"))
    prepared = {}
    result = run_job(spec, sink, options=options, on_prepared=lambda job: prepared.setdefault("job", job))
    job = prepared["job"]
    assert job.model.conditioning is not None and job.model.conditioning.prompts == spec.model.prompts
    assert job.supernet_path.name.startswith(f"{job.model.model_hash}.{spec.model.condition_key()}-")
    assert job.supernet_path.is_dir() and sink.generations == [0] and result.front
    assert all(e.ok and e.quality > 0 for e in result.front)
    assert all(e.quality == e.extra["fd"] and e.extra["mse"] > 0 for e in result.front)  # searched on the FD
    assert any("feature program features.pt2: 16 features" in a["message"] for a in sink.activities)


@pytest.mark.slow
def test_a_class_conditional_job_runs_on_any_local_dit_directory(tmp_path: Path) -> None:
    """A random DiT directory: the job names two classes (an id and a label), is calibrated on them and searched
    with one gene per kind of layer in each block; prompts are refused for it at validation."""
    from supernet.testing_dit import tiny_dit_pipeline
    from workers.jobspec import validate_job

    root = tmp_path / "models"
    tiny_dit_pipeline(root / "dit")
    job_spec: dict[str, Any] = {
        "model": {"path": "dit", "classes": [2, "square"]},
        "search": {**LATENT_SEARCH, "granularity": "kind"},
        "calibration": LATENT_CALIBRATION,
        "evaluation": {"samples": 6, "reference_steps": 8, "batch_size": 6},
    }
    with pytest.raises(ConfigError, match="class-conditional") as err:
        validate_job({**job_spec, "model": {"path": "dit", "prompts": ["a square"]}}, root)
    assert err.value.field == "model.prompts"
    spec = validate_job(job_spec, root)
    assert spec.model.classes == ("line", "square") and spec.model.guidance_scale == 3.0
    sink = Sink()
    options = DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path / "cache"))
    prepared = {}
    result = run_job(spec, sink, options=options, on_prepared=lambda job: prepared.setdefault("job", job))
    job = prepared["job"]
    assert job.model.condition_for(3).labels.tolist() == [2, 0, 2]
    assert job.supernet_path.name.startswith(f"{job.model.model_hash}.{spec.model.condition_key()}-")
    assert sink.generations == [0] and result.front and all(e.ok and e.quality > 0 for e in result.front)
    units = job.supernet.site_units("kind")
    for e in result.front:  # the sites of one kind of layer in one block share their genes
        w = result.candidates[e.key].w_map()
        for unit in set(units.values()):
            assert len({w[s] for s, u in units.items() if u == unit}) == 1, unit


def test_a_feature_program_that_does_not_fit_the_model_fails_before_calibration(tmp_path: Path) -> None:
    from search.errors import ConfigError
    from workers.jobspec import validate_job

    root = REPO / "models"
    write_feature_program(tmp_path / "rgb.pt2", 3)  # the testbed draws 1x16x16 images
    spec = validate_job({**SPEC, "model": "digits-ddpm-16"}, root).replace(
        evaluation=JobSpec.from_dict(SPEC).evaluation.replace(features=str(tmp_path / "rgb.pt2"))
    )
    sink = Sink()
    with pytest.raises(ConfigError, match="does not take this model's 1x16x16 images") as info:
        run_job(spec, sink, options=DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path / "cache")))
    assert info.value.field == "evaluation.features"
    assert not any(a["calibration"] for a in sink.activities) and _artifacts(tmp_path / "cache") == []


@pytest.mark.slow
def test_a_bfloat16_job_evaluates_in_bfloat16_on_the_float32_calibration(tmp_path: Path) -> None:
    """``model.dtype`` casts the calibrated supernet for evaluation; the calibration (float32) is the float32 job's,
    so a second job in float32 on the same cache loads it instead of calibrating again."""
    import torch

    spec = {**SPEC, "model": {**SPEC["model"], "dtype": "bfloat16"}}
    prepared: dict[str, Any] = {}
    options = DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path))
    result = run_job(JobSpec.from_dict(spec), Sink(), options=options, on_prepared=lambda j: prepared.update(job=j))
    assert prepared["job"].model.dtype == torch.bfloat16
    assert result.front and all(e.ok and 0 < e.quality < float("inf") for e in result.front)
    again = Sink()
    run_job(JobSpec.from_dict(SPEC), again, options=options, on_prepared=lambda j: prepared.update(job=j))
    assert prepared["job"].model.dtype == torch.float32
    sources = {a["calibration"].get("source") for a in again.activities if a["calibration"] is not None}
    assert sources == {"cache"}, sources


@pytest.mark.slow
def test_a_latency_job_measures_its_table_once_and_ranks_by_milliseconds(tmp_path: Path) -> None:
    """On the shipped supernet (default calibration, bits 4/6/8) at batch 16: the table's anchor export is the graph
    ``tests/supernet/test_runtime_latency.py`` compiles, both at one torch thread (this module's fixture: Inductor's
    code, and so its cache key, depends on the thread count), which Inductor's cache then serves (the compile is
    most of a table's cost; the table itself is still measured, and cached, by the job)."""
    spec = JobSpec.from_dict(
        {
            **{k: v for k, v in SPEC.items() if k != "calibration"},
            "search": {**SPEC["search"], "bit_options": [4, 6, 8], "cost": "latency"},
            "evaluation": {**SPEC["evaluation"], "latency_backend": "cpu-int8", "latency_batch_size": 16},
        }
    )
    sink = Sink()
    options = DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path))
    result = run_job(spec, sink, options=options)
    assert any("shipped" in a["message"] for a in sink.activities)  # no calibration
    assert result.axis == "latency" and result.front
    latencies = [e.latency_ms for e in result.front]
    assert all(ms > 0 for ms in latencies) and latencies == sorted(latencies)
    (table,) = (tmp_path / "latency").glob("*-cpu-int8-b16-*.json")
    assert any("latency table" in a["message"] for a in sink.activities)
    again = Sink()
    run_job(spec, again, options=options)  # the cached table: not measured again
    assert not any("latency table" in a["message"] for a in again.activities)
    assert list((tmp_path / "latency").glob("*.json")) == [table]


@pytest.mark.slow
def test_a_jobs_quantization_section_decides_the_supernets_integer_format(tmp_path: Path) -> None:
    options = DriverOptions(evaluator="inprocess", cache_dir=str(tmp_path))
    with pytest.raises(ConfigError) as info:  # a module name the model lacks: refused before any calibration
        run_job(JobSpec.from_dict({**SPEC, "quantization": {"exclude": ["no_such_block"]}}), Sink(), options=options)
    assert info.value.field == "quantization.exclude" and not _artifacts(tmp_path)
    prepared: dict[str, Any] = {}
    spec = JobSpec.from_dict({**SPEC, "quantization": {"weight_symmetric": True, "exclude": ["conv_out"]}})
    run_job(spec, Sink(), options=options, on_prepared=lambda job: prepared.setdefault("job", job))
    supernet = prepared["job"].supernet
    assert supernet.settings == spec.quantization and "conv_out" not in supernet.sites
    slots = [slot for name in supernet.sites for slot in getattr(supernet.site(name), "slots", {}).values()]
    assert slots and all(slot.params.symmetric for slot in slots)  # signed weight codes, zero-point 0
    job = prepared["job"]
    default = supernet_artifact_name(job.model.path, (4, 8), spec.calibration, known_hash=job.model.model_hash)
    assert job.supernet_path.is_dir() and job.supernet_path.name != default  # its own cache entry
