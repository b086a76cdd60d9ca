"""Server hygiene against a real ``uvicorn`` (``tests.server.live.app_server``), on SQLite and PostgreSQL:

- every integer query (and path) parameter is bounded, so a huge one is FastAPI's 422, never a database overflow
  (500 on SQLite, 503 on PostgreSQL); float queries are finite and bounded too;
- a request body over ``TMPQ_MAX_BODY_BYTES`` is a 413 with a JSON ``detail`` before it is parsed or stored, a
  chunked one (no ``Content-Length``) as well;
- building an export is a mutating call: without the write token it is 401/403 and builds nothing, and ``GET`` of
  an export never builds one; measuring one too, and its bad ``backend`` or ``batch_size`` is a 422 naming it
  before anything is built or measured.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from search.candidate import Candidate
from search.evaluator import Evaluation
from server.api.deps import MAX_ID, MAX_INT64, MAX_QUERY_FLOAT
from server.models import JobState
from server.store import Store
from tests.server.conftest import BACKENDS, empty_tables, write_fake_model
from tests.server.live import API, app_server

TOKEN = "hygiene-token"
OWNER = "runner-hygiene"
#: A valid submission for the ``tiny-ddpm`` model of the module's model root (T = 100).
SUBMISSION = {"model": "tiny-ddpm", "search": {"steps": [4, 8], "population": 5, "generations": 3}}

HUGE_INTS = [str(MAX_INT64 + 1), str(2**64), str(10**30)]
BAD_FLOATS = ["inf", "-inf", "nan", "1e309", str(MAX_QUERY_FLOAT * 10)]


@dataclass(frozen=True)
class Live:
    url: str
    store: Store
    job: int  # a SUCCEEDED job with two stored candidates
    key: str  # one of its candidates
    data_dir: Path


def _finished_job(store: Store) -> tuple[int, str]:
    job, _ = store.create_job({"version": 2, "model": {"path": "tiny-ddpm"}})
    claimed = store.claim_job(OWNER, 600)
    assert claimed is not None and claimed.id == job.id
    sites = ("a.conv", "b.attn.qk")
    pairs = [
        (c, Evaluation(c.key(), q, b, 100.0))
        for c, q, b in (
            (Candidate.uniform((75, 50, 25, 0), sites, 8, 8), 0.01, 4e9),
            (Candidate.uniform((80, 40, 10, 0), sites, 4, 4), 0.05, 1e9),
        )
    ]
    store.record_generation(job.id, 0, pairs, [c.key() for c, _ in pairs], 1.0, owner=OWNER)
    store.finish_job(job.id, OWNER, JobState.SUCCEEDED)
    return job.id, pairs[0][0].key()


@pytest.fixture(scope="module", params=BACKENDS)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One real server per backend, with a token (mutations need it), a model root and one finished job."""
    tmp = tmp_path_factory.mktemp(f"hygiene-{request.param}")
    write_fake_model(tmp / "models" / "tiny-ddpm", num_train_timesteps=100)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'tmpq.db'}"
    else:
        url = request.getfixturevalue("pg_session_url")
        empty_tables(url)
    store = Store(url)
    try:
        job, key = _finished_job(store)
        with app_server(
            tmp / "server.log", database_url=url, model_root=tmp / "models", data_dir=tmp / "data", api_token=TOKEN
        ) as base:
            yield Live(base, store, job, key, tmp / "data")
    finally:
        store.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


# -- bounded query parameters ---------------------------------------------------------------------------------


def _query_cases(live: Live) -> list[tuple[str, str, int]]:
    """(path, query parameter, its largest value) of every integer query parameter of every route: MAX_ID where
    the value is compared with an INTEGER column (32-bit on PostgreSQL)."""
    job = f"{API}/jobs/{live.job}"
    return [
        (f"{API}/jobs", "offset", MAX_INT64),
        (f"{API}/jobs", "limit", 500),
        (f"{job}/candidates", "after", MAX_ID),
        (f"{job}/candidates", "limit", 1000),
        (f"{job}/candidates", "generation", MAX_ID),
        (f"{job}/front", "max_steps", MAX_ID),
    ]


def _float_cases(live: Live) -> list[tuple[str, str]]:
    job = f"{API}/jobs/{live.job}"
    return [
        (f"{job}/front", "max_bitops"),
        (f"{job}/front", "max_weight_bytes"),
        (f"{job}/front", "max_quality"),
        (f"{job}/front.png", "budget"),
    ]


def test_huge_integer_queries_are_422_never_a_database_error(live: Live) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for path, name, largest in _query_cases(live):
            for value in [str(largest + 1), *HUGE_INTS]:
                response = client.get(path, params={name: value})
                assert response.status_code == 422, (path, name, value, response.status_code, response.text)
                assert response.json()["detail"][0]["loc"] == ["query", name]
            # the largest value allowed is one the database copes with
            response = client.get(path, params={name: str(largest)})
            assert response.status_code == 200, (path, name, response.status_code, response.text)
        assert client.get(f"{API}/jobs/{live.job}/candidates", params={"generation": MAX_ID}).json()["total"] == 0
        for value in (MAX_ID + 1, MAX_INT64, MAX_INT64 + 1):
            for method, suffix in (("GET", ""), ("GET", "/front"), ("GET", "/candidates"), ("POST", "/cancel")):
                response = client.request(method, f"{API}/jobs/{value}{suffix}", headers=_auth())
                assert response.status_code == 422, (method, value, suffix, response.text)
                assert response.json()["detail"][0]["loc"] == ["path", "job_id"]
        assert client.get(f"{API}/jobs/{MAX_ID}").status_code == 404
        assert client.get(f"{API}/jobs/{MAX_ID}/front").status_code == 404


def test_float_queries_must_be_finite_and_bounded(live: Live) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for path, name in _float_cases(live):
            for value in BAD_FLOATS:
                response = client.get(path, params={name: value})
                assert response.status_code == 422, (path, name, value, response.status_code, response.text)
                assert response.json()["detail"][0]["loc"] == ["query", name]
            ok = client.get(path, params={name: "2.5e9"})
            assert ok.status_code == 200, (path, name, ok.text)


def test_every_numeric_query_parameter_of_the_schema_is_bounded(live: Live) -> None:
    """Any route added later is held to the same rule: its integers have a maximum within 64 bits, its floats
    finite bounds."""
    schema = httpx.get(f"{live.url}{API}/openapi.json", timeout=10).json()
    seen = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("query", "path"):
                    continue
                options = parameter["schema"].get("anyOf", [parameter["schema"]])
                for option in options:
                    kind = option.get("type")
                    if kind not in ("integer", "number"):
                        continue
                    where = (method, path, parameter["name"])
                    seen.append(where)
                    assert "maximum" in option or "exclusiveMaximum" in option, where
                    highest = option.get("maximum", option.get("exclusiveMaximum"))
                    assert highest <= (MAX_INT64 if kind == "integer" else MAX_QUERY_FLOAT), where
                    if kind == "number":
                        assert option.get("minimum", option.get("exclusiveMinimum")) >= -MAX_QUERY_FLOAT, where
    names = {name for _, _, name in seen}
    assert {"offset", "limit", "after", "generation", "max_steps", "max_bitops", "budget", "job_id"} <= names


# -- request body limit ---------------------------------------------------------------------------------------


def _jobs_total(client: httpx.Client) -> int:
    return client.get(f"{API}/jobs").json()["total"]


def _big_submission(size: int) -> bytes:
    """A JSON job submission of about ``size`` bytes (a long submission_id would be refused later: never reached)."""
    padding = "x" * size
    return json.dumps({**SUBMISSION, "submission_id": padding}).encode()


def test_a_body_over_the_limit_is_413_before_it_is_read_or_stored(live: Live) -> None:
    body = _big_submission(2 * 1024 * 1024)
    headers = {**_auth(), "Content-Type": "application/json"}
    with httpx.Client(base_url=live.url, timeout=60) as client:
        before = _jobs_total(client)
        declared = client.post(f"{API}/jobs", content=body, headers=headers)
        assert declared.status_code == 413, declared.text
        assert "1048576 bytes" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        chunked = client.post(f"{API}/jobs", content=chunks(), headers=headers)
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in chunked.request.headers
        assert chunked.status_code == 413, chunked.text
        assert chunked.json() == declared.json()
        assert _jobs_total(client) == before  # nothing was stored
        # the connection is still good, and a normal submission still works
        created = client.post(f"{API}/jobs", json=SUBMISSION, headers=_auth())
        assert created.status_code == 201, created.text
        assert _jobs_total(client) == before + 1
        assert client.post(f"{API}/jobs/{created.json()['id']}/cancel", headers=_auth()).status_code == 200


def test_the_body_limit_comes_from_tmpq_max_body_bytes(tmp_path: Path) -> None:
    write_fake_model(tmp_path / "models" / "tiny-ddpm", num_train_timesteps=100)
    env = {"TMPQ_MAX_BODY_BYTES": "4096"}
    with (
        app_server(tmp_path / "server.log", env, data_dir=tmp_path / "data", model_root=tmp_path / "models") as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        json_type = {"Content-Type": "application/json"}
        small = json.dumps({**SUBMISSION, "submission_id": "ok"}).encode()
        assert client.post(f"{API}/jobs", content=small, headers=json_type).status_code == 201
        at_limit = _big_submission(4096)[:4096]  # exactly the limit: read, then refused as bad JSON (not 413)
        response = client.post(f"{API}/jobs", content=at_limit, headers=json_type)
        assert response.status_code == 422, response.text
        over = client.post(f"{API}/jobs", content=_big_submission(4097), headers=json_type)
        assert over.status_code == 413 and "4096 bytes" in over.json()["detail"]
        assert client.get(f"{API}/jobs").json()["total"] == 1


def test_settings_default_body_limit_is_one_mebibyte(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.settings import Settings

    monkeypatch.delenv("TMPQ_MAX_BODY_BYTES", raising=False)
    assert Settings().max_body_bytes == 1048576
    monkeypatch.setenv("TMPQ_MAX_BODY_BYTES", "2048")
    assert Settings().max_body_bytes == 2048


# -- building an export needs the write token --------------------------------------------------------------


def test_building_an_export_needs_the_write_token_and_get_never_builds(live: Live) -> None:
    export = f"{API}/jobs/{live.job}/candidates/{live.key}/export"
    with httpx.Client(base_url=live.url, timeout=30) as client:
        missing = client.post(export)
        assert missing.status_code == 401 and missing.json()["detail"] == "a bearer token is required"
        wrong = client.post(export, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        never_built = client.get(export)
        assert never_built.status_code == 409
        assert "not built yet" in never_built.json()["detail"] and "POST" in never_built.json()["detail"]
        assert client.get(f"{API}/jobs/{live.job}/candidates/{'0' * 20}/export").status_code == 404
    assert not (live.data_dir / "exports").exists(), "a refused export built something"


def test_measuring_needs_the_write_token_and_checks_its_query_before_building(live: Live) -> None:
    measure = f"{API}/jobs/{live.job}/candidates/{live.key}/measure"
    with httpx.Client(base_url=live.url, timeout=30) as client:
        assert client.post(measure).status_code == 401
        assert client.post(measure, headers={"Authorization": "Bearer nope"}).status_code == 403
        assert client.get(measure, headers=_auth()).status_code == 405  # a POST only
        bad_backend = client.post(measure, params={"backend": "tensorrt"}, headers=_auth())
        assert bad_backend.status_code == 422, bad_backend.text
        (error,) = bad_backend.json()["detail"]
        assert error["loc"][-1] == "backend" and "reference" in error["msg"] and "tensorrt" in error["msg"]
        for batch in ("0", "1025", "-3", "many", "2.5"):
            bad_batch = client.post(measure, params={"backend": "reference", "batch_size": batch}, headers=_auth())
            assert bad_batch.status_code == 422, (batch, bad_batch.text)
            assert bad_batch.json()["detail"][0]["loc"] == ["query", "batch_size"], batch
        unknown = client.post(f"{API}/jobs/{live.job}/candidates/{'0' * 20}/measure", headers=_auth())
        assert unknown.status_code == 404 and "has no candidate" in unknown.json()["detail"]
        assert client.post(f"{API}/jobs/{MAX_ID}/candidates/{live.key}/measure", headers=_auth()).status_code == 404
    assert not (live.data_dir / "exports").exists() and not (live.data_dir / "measure.lock").exists()
    assert live.store.get_candidate(live.job, live.key).runtime is None
