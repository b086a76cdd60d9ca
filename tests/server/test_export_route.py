"""Export through the service: ``POST /jobs/{id}/candidates/{key}/export`` (builds), ``GET`` (downloads a built
one), ``TmpqClient.export`` and ``tmpq export`` against a real uvicorn server in a subprocess, on the shipped model
with a small calibrated supernet in the server's cache. The exported model samples exactly like the supernet's
assembled candidate. (That building needs the write token is checked in ``test_hygiene.py``, without torch.)"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from search.candidate import Candidate
from search.errors import ConfigError
from search.evaluator import Evaluation
from search.pareto import pareto_front
from search.space import ddim_uniform_schedule
from server.cli import main
from server.client import ApiError, TmpqClient
from server.models import JobState
from server.store import Store
from tests.server.cli_run import isolate_env, one_line, run_main
from tests.server.live import app_server
from tests.torch_threads import one_torch_thread  # noqa: F401  (autouse)
from workers.jobspec import JobSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL_ROOT = REPO / "models"
MODEL = MODEL_ROOT / "digits-ddpm-16"
OWNER = "test-runner"

#: Plain ranges on a 3-point grid: calibrates in seconds. ANOTHER is never calibrated (its supernet is missing).
CALIBRATION = {
    "strategy": "range",
    "grid_steps": 3,
    "samples": 4,
    "mse_grid": 12,
    "act_max_elems": 4096,
    "report_ranking": False,
}
ANOTHER = {**CALIBRATION, "grid_steps": 4}
BITS = (4, 8)


@dataclass
class Service:
    url: str
    store: Store
    tmp: Path
    supernet: Any  # the calibrated supernet the server's cache holds (loaded in this process)
    job: int  # a SUCCEEDED job on that supernet
    candidates: dict[str, Candidate]
    knee: str
    orphan: int  # a job whose supernet is not in the cache


def _calibrated_supernet(cache: Path) -> Any:
    """The supernet a job with CALIBRATION finds in ``cache`` (built on random inputs: only the export is tested)."""
    from supernet.artifact import get_or_build_supernet
    from supernet.calibration import CalibrationSettings
    from supernet.testing import TESTBED_SHAPE, random_data
    from supernet.zoo.loader import load_model

    model = load_model(MODEL)
    return get_or_build_supernet(
        model,
        BITS,
        calib_settings=CalibrationSettings.from_dict(CALIBRATION),
        cache_dir=cache,
        data=random_data(TESTBED_SHAPE, grid=(999, 500, 0)),
    )


def _candidates(sites: tuple[str, ...]) -> list[Candidate]:
    schedule = list(ddim_uniform_schedule(5, 1000))
    mixed_w = {s: BITS[i % 2] for i, s in enumerate(sites)}
    mixed_a = {s: BITS[(i // 3) % 2] for i, s in enumerate(sites)}
    return [
        Candidate.uniform(schedule, sites, 8, 8),
        Candidate.uniform(schedule, sites, 4, 8),
        Candidate.uniform([900, 520, 260, 90], sites, 4, 4),
        Candidate.from_maps([950, 610, 330, 140, 30, 2], mixed_w, mixed_a),
    ]


def _scored(supernet: Any, candidates: list[Candidate]) -> list[tuple[Candidate, Evaluation]]:
    """Each candidate with a made-up quality (ascending) and its real cost on ``supernet``."""
    pairs = []
    for i, c in enumerate(candidates):
        cost = supernet.cost(c)
        pairs.append((c, Evaluation(c.key(), 0.01 * (i + 1), cost.bitops, cost.weight_bytes, {"psnr": 30.0 - i})))
    return pairs


def _finished_job(
    store: Store,
    calibration: dict[str, Any],
    pairs: list[tuple[Candidate, Evaluation]],
    evaluation: dict[str, Any] | None = None,
) -> int:
    spec = JobSpec.from_dict(
        {
            "model": {"path": str(MODEL)},
            "search": {"bit_options": list(BITS), "steps": [4, 5, 6], "seed": 9},
            "calibration": calibration,
            **({"evaluation": evaluation} if evaluation else {}),
        }
    )
    job_id = store.create_job(spec.to_dict())[0].id
    claimed = store.claim_job(OWNER, 60)
    assert claimed is not None and claimed.id == job_id
    front = [e.key for e in pareto_front(e for _, e in pairs)]
    store.record_generation(job_id, 0, pairs, front, 1.0, owner=OWNER)
    store.finish_job(job_id, OWNER, JobState.SUCCEEDED)
    return job_id


@dataclass
class FinishedJobs:
    """A calibrated supernet in a data directory's cache, its scored candidates, and in a fresh store a finished job
    on it and one (``orphan``) whose supernet is not cached."""

    data: Path
    db_url: str
    store: Store
    supernet: Any
    candidates: list[Candidate]
    pairs: list[tuple[Candidate, Evaluation]]
    job: int
    orphan: int


def finished_jobs(tmp: Path, evaluation: dict[str, Any] | None = None) -> FinishedJobs:
    """:class:`FinishedJobs` under ``tmp`` (the jobs' ``evaluation`` section as given)."""
    data = tmp / "data"
    supernet = _calibrated_supernet(data / "supernets")
    db_url = f"sqlite:///{tmp / 'tmpq.db'}"
    store = Store(db_url)
    candidates = _candidates(supernet.sites)
    pairs = _scored(supernet, candidates)
    job = _finished_job(store, CALIBRATION, pairs, evaluation)
    orphan = _finished_job(store, ANOTHER, pairs[:1], evaluation)
    return FinishedJobs(data, db_url, store, supernet, candidates, pairs, job, orphan)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("export_route")
    jobs = finished_jobs(tmp)
    data = jobs.data
    # the runner's cache (supernet.artifact.default_cache_dir) is the server's data directory
    try:
        with app_server(
            tmp / "server.log",
            {"TMPQ_DATA_DIR": str(data)},
            database_url=jobs.db_url,
            model_root=MODEL_ROOT,
            data_dir=data,
        ) as url:
            with TmpqClient(url) as client:
                knee = client.front(jobs.job, knee=True)["knee"]["key"]
            candidates = {c.key(): c for c in jobs.candidates}
            yield Service(url, jobs.store, tmp, jobs.supernet, jobs.job, candidates, knee, jobs.orphan)
    finally:
        jobs.store.close()


def supernet_samples(service: Service, candidate: Candidate, n: int, seed: int) -> torch.Tensor:
    sampler = service.supernet.model.sampler()
    with service.supernet.assembled(candidate):
        return sampler.sample(candidate.timesteps, n, seed)


@pytest.fixture
def cli(
    service: Service, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``tmpq`` in this process against the service."""
    isolate_env(monkeypatch, service.url)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_main(capsys, argv)

    return run


# -- the route --------------------------------------------------------------------------------------------------
def test_the_route_sends_a_zip_whose_model_samples_like_the_supernet(service: Service, tmp_path: Path) -> None:
    from supernet.export import load

    key = next(k for k, c in service.candidates.items() if len(set(c.w_map().values())) > 1)  # the mixed one
    url = f"{service.url}/api/v1/jobs/{service.job}/candidates/{key}/export"
    assert httpx.get(url, timeout=30).status_code == 409  # not built yet: GET never builds
    response = httpx.post(url, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="tmpq-job{service.job}-{key}.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path)
    top = f"tmpq-job{service.job}-{key}"
    assert {
        f"{top}/manifest.json",
        f"{top}/unet/quantized.safetensors",
        f"{top}/quant_config.json",
        f"{top}/scheduler/scheduler_config.json",
        f"{top}/unet/config.json",
    } <= names
    pipe = load(tmp_path / top)
    candidate = service.candidates[key]
    assert pipe.candidate == candidate
    assert torch.equal(pipe.sample(4, seed=5), supernet_samples(service, candidate, 4, seed=5))
    manifest = pipe.manifest
    assert manifest["job"]["id"] == service.job and manifest["seed"] == 9
    assert manifest["model_hash"] == service.supernet.model_hash
    assert manifest["objectives"]["psnr"] == 27.0 and manifest["objectives"]["bitops"] == pytest.approx(
        service.supernet.cost(candidate).bitops
    )
    # built once: the second request, and a GET, answer the same file, from the server's data directory
    again = httpx.post(url, timeout=60)
    assert again.status_code == 200 and again.content == response.content
    download = httpx.get(url, timeout=60)
    assert download.status_code == 200 and download.content == response.content
    assert f'filename="tmpq-job{service.job}-{key}.zip"' in download.headers["content-disposition"]
    assert (service.tmp / "data" / "exports" / f"job-{service.job}" / f"{top}.zip").is_file()


def test_unknown_jobs_and_candidates_are_404_and_a_missing_supernet_409(service: Service) -> None:
    api = f"{service.url}/api/v1"
    missing = httpx.post(f"{api}/jobs/{service.job}/candidates/{'0' * 20}/export", timeout=30)
    assert missing.status_code == 404 and "has no candidate" in missing.json()["detail"]
    assert httpx.post(f"{api}/jobs/999/candidates/{service.knee}/export", timeout=30).status_code == 404
    assert httpx.get(f"{api}/jobs/999/candidates/{service.knee}/export", timeout=30).status_code == 404
    key = next(iter(service.candidates))
    orphan = httpx.post(f"{api}/jobs/{service.orphan}/candidates/{key}/export", timeout=60)
    assert orphan.status_code == 409
    assert orphan.json()["detail"].startswith(f"job {service.orphan}: its calibrated supernet")
    assert not (service.tmp / "data" / "exports" / f"job-{service.orphan}" / key).exists()


def test_deleting_a_job_removes_its_built_exports(service: Service) -> None:
    c = next(iter(service.candidates.values()))
    cost = service.supernet.cost(c)
    job = _finished_job(service.store, CALIBRATION, [(c, Evaluation(c.key(), 0.5, cost.bitops, cost.weight_bytes))])
    api = f"{service.url}/api/v1"
    for owner in (job, service.job):
        assert httpx.post(f"{api}/jobs/{owner}/candidates/{c.key()}/export", timeout=120).status_code == 200
    built = service.tmp / "data" / "exports" / f"job-{job}"
    assert (built / c.key() / "manifest.json").is_file()
    assert httpx.delete(f"{api}/jobs/{job}", timeout=30).status_code == 204
    assert not built.exists()
    assert (service.tmp / "data" / "exports" / f"job-{service.job}").is_dir(), "another job's exports went too"


# -- the client and the CLI -------------------------------------------------------------------------------------
def test_client_exports_the_knee_into_a_directory(service: Service, tmp_path: Path) -> None:
    from supernet.export import load

    with TmpqClient(service.url) as client:
        out = client.export(service.job, "knee", tmp_path / "knee")
        assert out == tmp_path / "knee"
        assert json.loads((out / "manifest.json").read_text())["candidate_key"] == service.knee
        assert load(out).candidate == service.candidates[service.knee]
        with pytest.raises(ApiError) as exc:
            client.export(service.job, "f" * 20, tmp_path / "nothing")
        assert exc.value.status == 404
    assert not (tmp_path / "nothing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee"], "a temporary download was left behind"


def test_an_export_records_its_run_time_backend_and_load_uses_it(service: Service, tmp_path: Path) -> None:
    from supernet.export import load

    with TmpqClient(service.url) as client:
        out = client.export(service.job, service.knee, tmp_path / "int8", backend="cpu-int8")
        with pytest.raises(ConfigError, match="backend"):
            client.export(service.job, service.knee, tmp_path / "bad", backend="tensorrt")
    assert json.loads((out / "manifest.json").read_text())["backend"] == "cpu-int8"
    assert load(out, compile=False).backend == "cpu-int8"  # what the manifest records...
    assert load(out, backend="reference").backend == "reference"  # ...unless the caller names another
    api = f"{service.url}/api/v1/jobs/{service.job}/candidates/{service.knee}/export"
    bad = httpx.post(api, params={"backend": "tensorrt"}, timeout=60)
    assert bad.status_code == 422 and "backend" in json.dumps(bad.json()["detail"])
    built = httpx.get(api, params={"backend": "cpu-int8"}, timeout=60)
    assert built.status_code == 200
    with zipfile.ZipFile(io.BytesIO(built.content)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("manifest.json"))
        assert json.loads(zf.read(name))["backend"] == "cpu-int8"


def test_tmpq_export(service: Service, cli: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    key = next(k for k, c in service.candidates.items() if c.bits_summary() == "W4A8")
    out = tmp_path / "w4a8"
    ran = cli("export", str(service.job), key, "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    line = one_line(ran.stdout)
    assert line.startswith(f"exported candidate {key} of job {service.job} (W4A8, K=5) to {out}: weights ")
    assert "of FP32" in line and f"supernet.export.load('{out}')" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert 0.12 < manifest["sizes"]["ratio_to_fp32"] < 0.16  # 4-bit weights: about an eighth, plus the FP rest

    again = cli("export", str(service.job), key, "--out", str(out))
    assert again.returncode == 2
    expected = f"tmpq: error: out: {out} is not empty (choose another directory, or overwrite: --force)"
    assert one_line(again.stderr) == expected
    forced = cli("export", str(service.job), "knee", "--out", str(out), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["candidate_key"] == service.knee

    unknown = cli("export", str(service.job), "0" * 20, "--out", str(tmp_path / "x"))
    assert unknown.returncode == 1 and "has no candidate" in one_line(unknown.stderr)
    orphan = cli("export", str(service.orphan), next(iter(service.candidates)), "--out", str(tmp_path / "y"))
    assert orphan.returncode == 1
    assert "its calibrated supernet" in one_line(orphan.stderr) and not (tmp_path / "y").exists()


def test_the_job_page_offers_the_export(service: Service) -> None:
    page = httpx.get(f"{service.url}/jobs/{service.job}", timeout=10).text
    assert 'id="export-button"' in page and "<th>Export</th>" in page
    script = httpx.get(f"{service.url}/static/app.js", timeout=10).text
    assert "/candidates/${encodeURIComponent(key)}/export" in script
    assert 'authorizedFetch("POST", exportUrl(jobId, key)' in script  # building is a POST, with the stored token


def test_export_is_in_the_openapi_schema(service: Service) -> None:
    schema = httpx.get(f"{service.url}/api/v1/openapi.json", timeout=10).json()
    path = schema["paths"]["/api/v1/jobs/{job_id}/candidates/{key}/export"]
    for method in ("post", "get"):
        assert "application/zip" in path[method]["responses"]["200"]["content"]
        assert {"404", "409"} <= set(path[method]["responses"])
    assert path["post"].get("security"), "building an export is guarded by the token"


def test_export_help_and_bad_usage_exit_without_contacting_anyone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tmpq export") and all(f in out for f in ("--out", "--force", "--url", "--backend"))
    with pytest.raises(SystemExit) as exc:
        main(["export", "1", "knee", "--out", str(tmp_path / "o"), "--backend", "tensorrt"])
    assert exc.value.code == 2 and "--backend" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["export", "1", "knee", "--url", "http://127.0.0.1:9"])  # no --out
    assert exc.value.code == 2 and "--out" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    assert main(["export", "1", "knee", "--out", str(tmp_path / "full"), "--url", "http://127.0.0.1:9"]) == 2
    assert "is not empty" in capsys.readouterr().err  # refused before the (unreachable) server is asked
