"""The REST API through FastAPI's TestClient, on a real store (SQLite file and PostgreSQL)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from search.candidate import Candidate
from search.errors import StoreError
from search.evaluator import Evaluation
from search.pareto import knee_point
from server.api.routes.front import knee_of
from server.app import create_app
from server.models import JobState
from server.schemas import CandidateOut, FrontOut
from server.settings import Settings
from server.store import Store
from tests.server.conftest import fresh_pg_database, require_postgres
from tests.server.test_store import front_of, generation_pairs

API = "/api/v1"


def make_client(store: Store, model_root: Path, tmp_path: Path, **settings: object) -> TestClient:
    app = create_app(Settings(data_dir=tmp_path / "data", model_root=model_root, **settings), store=store)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(store: Store, model_root: Path, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(store, model_root, tmp_path) as c:
        yield c


def spec(**overrides: object) -> dict:
    """A job submission in sections (version 2); a mapping override is merged into its section, anything else
    replaces the field (``spec(search={"seed": 3}, submission_id="x")``)."""
    body: dict = {
        "model": "tiny-ddpm",
        "search": {"bit_options": [4, 6, 8], "steps": [4, 8], "population": 8, "generations": 3},
        "evaluation": {"samples": 16},
    }
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(body.get(name), dict):
            body[name] = {**body[name], **value}
        else:
            body[name] = value
    return body


def submit(client: TestClient, **overrides: object) -> dict:
    response = client.post(f"{API}/jobs", json=spec(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


def job_with_results(store: Store, client: TestClient, n: int = 40) -> tuple[int, list]:
    job_id = submit(client)["id"]
    store.claim_job("runner-x", 60)
    g0, g1 = generation_pairs(0, n=n // 2), generation_pairs(1, n=n // 2)
    store.record_generation(job_id, 0, g0, front_of(g0), 0.25, owner="runner-x")
    store.record_generation(job_id, 1, g1, front_of(g0 + g1), 0.5, owner="runner-x")
    return job_id, g0 + g1


# -- submission ---------------------------------------------------------------------------------------------


def test_submit_valid_job(client: TestClient, model_root: Path) -> None:
    job = submit(client, search={"budget": "W6A6@8"}, execution={"ray": {"num_actors": 2}})
    assert job["state"] == "PENDING" and job["progress"]["generation"] is None
    assert job["progress"]["generations"] == 3 and job["created_at"].endswith("Z")
    assert job["progress"]["activity"] is None
    assert job["spec"]["version"] == 2 and job["spec"]["model"]["path"] == str((model_root / "tiny-ddpm").resolve())
    assert job["spec"]["search"]["steps"] == [4, 8] and job["spec"]["execution"]["ray"]["num_actors"] == 2
    fetched = client.get(f"{API}/jobs/{job['id']}").json()
    assert fetched == job


def test_a_jobs_quantization_section_is_kept_with_its_spec(client: TestClient) -> None:
    job = submit(client, quantization={"weight_symmetric": True, "exclude": ["conv_out"]})
    assert job["spec"]["quantization"]["weight_symmetric"] is True and job["spec"]["quantization"]["exclude"] == [
        "conv_out"
    ]
    assert submit(client)["spec"]["quantization"]["weight_symmetric"] is False  # the default, written out


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"search": {"population": "ten"}}, ["body", "search", "population"]),
        ({"search": {"population": 1}}, ["body", "search", "population"]),
        ({"search": {"steps": [4, 0]}}, ["body", "search", "steps", 1]),
        ({"search": {"steps": 500}}, ["body", "search", "steps"]),  # more than the model's 100 timesteps
        ({"search": {"bit_options": [3, 9]}}, ["body", "search", "bit_options", 1]),
        ({"search": {"budget": "lots"}}, ["body", "search", "budget"]),
        ({"execution": {"ray": {"num_actors": 0}}}, ["body", "execution", "ray", "num_actors"]),
        ({"execution": {"ray": {"gpus": 1}}}, ["body", "execution", "ray", "gpus"]),
        ({"search": {"grouping": "zigzag"}}, ["body", "search", "grouping"]),
        ({"search": {"algorithm": None}}, ["body", "search", "algorithm"]),
        ({"search": {"seed": 1.5}}, ["body", "search", "seed"]),
        ({"unknown_field": 1}, ["body", "unknown_field"]),
        ({"output": "/tmp/x"}, ["body", "output"]),
        ({"submission_id": ""}, ["body", "submission_id"]),
        ({"version": 3}, ["body", "version"]),
        ({"quantization": {"weight_symmetric": "yes"}}, ["body", "quantization", "weight_symmetric"]),
        ({"quantization": {"exclude": "conv_out"}}, ["body", "quantization", "exclude"]),
    ],
)
def test_bad_field_is_422_naming_it(client: TestClient, body: dict, loc: list) -> None:
    response = client.post(f"{API}/jobs", json=spec(**body))
    assert response.status_code == 422, response.text
    assert loc in [d["loc"] for d in response.json()["detail"]]
    assert client.get(f"{API}/jobs").json()["total"] == 0


def test_missing_model_and_non_object_bodies_are_422(client: TestClient) -> None:
    response = client.post(f"{API}/jobs", json={"search": {"population": 4}})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "model"]
    for body in ([], "x", 3, None):
        assert client.post(f"{API}/jobs", json=body).status_code == 422
    bad_json = client.post(f"{API}/jobs", content=b'{"model": ', headers={"content-type": "application/json"})
    assert bad_json.status_code == 422


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("/etc", "outside the model root"),
        ("../outside", "outside the model root"),
        ("escape-link", "outside the model root"),
        ("missing-dir", "does not exist"),
        ("not-a-model", "model_index.json is missing"),
        ("no-weights", "safetensors"),
        ("wrong-class", "UNet2DConditionModel"),
        ("wrong-scheduler", "unsupported scheduler 'EulerDiscreteScheduler'"),
        ("v-prediction", "prediction_type 'v_prediction' is not supported"),
        ("tiny-ddpm/unet/config.json", "not a directory"),
    ],
)
def test_bad_model_path_is_400_naming_it(client: TestClient, model_root: Path, model: str, reason: str) -> None:
    (model_root.parent / "outside").mkdir(exist_ok=True)
    (model_root / "escape-link").symlink_to(model_root.parent / "outside")
    response = client.post(f"{API}/jobs", json=spec(model=model))
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["path"] == model and reason in body["reason"] and model in body["detail"]


def test_submission_id_same_payload_same_job_other_payload_409(client: TestClient, model_root: Path) -> None:
    first = client.post(f"{API}/jobs", json=spec(submission_id="sub-1"))
    assert first.status_code == 201
    # the same spec spelled differently (absolute model path, default written out) is the same payload
    same = client.post(
        f"{API}/jobs",
        json=spec(submission_id="sub-1", model=str(model_root / "tiny-ddpm"), search={"grouping": "nonuniform"}),
    )
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = client.post(f"{API}/jobs", json=spec(submission_id="sub-1", search={"population": 9}))
    assert other.status_code == 409 and "sub-1" in other.json()["detail"]
    assert client.get(f"{API}/jobs").json()["total"] == 1


# -- reads --------------------------------------------------------------------------------------------------


def test_unknown_ids_are_404(client: TestClient) -> None:
    for method, path in [
        ("get", "/jobs/77"),
        ("get", "/jobs/77/front"),
        ("get", "/jobs/77/candidates"),
        ("get", "/jobs/77/candidates/abc"),
        ("get", "/jobs/77/hypervolume"),
        ("post", "/jobs/77/cancel"),
        ("delete", "/jobs/77"),
    ]:
        response = getattr(client, method)(f"{API}{path}")
        assert response.status_code == 404, (method, path)
        assert "77" in response.json()["detail"]
    job_id = submit(client)["id"]
    assert client.get(f"{API}/jobs/{job_id}/candidates/nokey").status_code == 404
    assert client.get(f"{API}/jobs/not-a-number").status_code == 422


def test_job_list_pagination_and_state_filter(client: TestClient) -> None:
    ids = [submit(client, search={"seed": i})["id"] for i in range(5)]
    client.post(f"{API}/jobs/{ids[0]}/cancel")
    page = client.get(f"{API}/jobs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == [ids[3], ids[2]]
    pending = client.get(f"{API}/jobs", params={"state": "PENDING"}).json()
    assert pending["total"] == 4 and ids[0] not in [j["id"] for j in pending["items"]]
    both = client.get(f"{API}/jobs", params=[("state", "PENDING"), ("state", "CANCELLED")]).json()
    assert both["total"] == 5
    assert client.get(f"{API}/jobs", params={"state": "SLEEPING"}).status_code == 422
    assert client.get(f"{API}/jobs", params={"limit": 0}).status_code == 422
    assert client.get(f"{API}/jobs", params={"limit": 501}).status_code == 422


def test_front_filters_sort_and_knee(client: TestClient, store: Store) -> None:
    job_id, pairs = job_with_results(store, client)
    body = client.get(f"{API}/jobs/{job_id}/front").json()
    expected = front_of(pairs)
    assert body["generation"] == 1 and body["count"] == len(expected) >= 3 and body["knee"] is None
    assert [p["key"] for p in body["items"]] == expected  # pareto_front sorts by BitOps too
    point = body["items"][0]
    assert point["non_dominated"] and point["feasible"] and set(point["objectives"]) >= {"quality", "fdd", "psnr"}
    limit = body["items"][len(expected) // 2]["bitops"]
    cheap = client.get(f"{API}/jobs/{job_id}/front", params={"max_bitops": limit}).json()
    assert [p["key"] for p in cheap["items"]] == [p["key"] for p in body["items"] if p["bitops"] <= limit]
    by_quality = client.get(f"{API}/jobs/{job_id}/front", params={"sort": "quality", "order": "desc"}).json()
    qualities = [p["quality"] for p in by_quality["items"]]
    assert qualities == sorted(qualities, reverse=True)
    for param, field in [("max_steps", "steps"), ("max_weight_bytes", "weight_bytes"), ("max_quality", "quality")]:
        bound = sorted(p[field] for p in body["items"])[1]
        got = client.get(f"{API}/jobs/{job_id}/front", params={param: bound}).json()["items"]
        assert got and [p["key"] for p in got] == [p["key"] for p in body["items"] if p[field] <= bound]
    knee = client.get(f"{API}/jobs/{job_id}/front", params={"knee": "true"}).json()["knee"]
    evaluations = [Evaluation(p["key"], p["quality"], p["bitops"], p["weight_bytes"]) for p in body["items"]]
    assert knee["key"] == knee_point(evaluations).key
    assert client.get(f"{API}/jobs/{job_id}/front", params={"knee": "true", "max_bitops": 0}).json() == {
        "job_id": job_id,
        "generation": 1,
        "count": 0,
        "items": [],
        "knee": None,
        "fp_components": [],  # an unconditional UNet: nothing besides the denoiser
        "fp_references": [],  # the job's front analysis has not run
    }
    for bad in ({"sort": "color"}, {"max_bitops": -1}, {"max_steps": "many"}, {"order": "up"}, {"knee": "maybe"}):
        response = client.get(f"{API}/jobs/{job_id}/front", params=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", *bad]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"max_bitops": 3e9},
        {"max_steps": 6, "sort": "quality"},
        {"max_weight_bytes": 8e3, "order": "desc"},
        {"max_quality": 2.0, "sort": "steps", "knee": "true"},
        {"sort": "weight_bytes", "order": "desc", "knee": True},
    ],
)
def test_cached_front_is_exactly_the_stores_front(client: TestClient, store: Store, params: dict) -> None:
    job_id, _ = job_with_results(store, client)
    client.get(f"{API}/jobs/{job_id}/front")  # cached before the FP references come: they bump the version
    references = [{"steps": 4, "timesteps": [750, 500, 250, 0], "mse": 1e-05, "psnr": 0.1 + 0.2, "ssim": None}]
    store.set_fp_references(job_id, references, owner="runner-x")
    for _ in range(2):  # the first request fills the cache, the second is served from it
        response = client.get(f"{API}/jobs/{job_id}/front", params=params)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        front = store.front(
            job_id,
            max_bitops=params.get("max_bitops"),
            max_steps=params.get("max_steps"),
            max_weight_bytes=params.get("max_weight_bytes"),
            max_quality=params.get("max_quality"),
            sort=params.get("sort", "bitops"),
            descending=params.get("order") == "desc",
        )
        knee = knee_of(list(front.points)) if params.get("knee") in ("true", True) else None
        expected = FrontOut(
            job_id=job_id,
            generation=front.generation,
            count=len(front.points),
            items=[CandidateOut.from_record(p) for p in front.points],
            knee=CandidateOut.from_record(knee) if knee is not None else None,
            fp_references=list(front.fp_references),
        )
        assert response.content == expected.model_dump_json().encode()
        assert response.json()["fp_references"] == references


def test_missing_values_sort_last_in_store_and_api(client: TestClient, store: Store) -> None:
    job_id = submit(client)["id"]
    store.claim_job("runner-x", 60)
    sites = ("down.0.conv", "mid.attn.qk", "up.1.conv")
    a, b, c = (Candidate.uniform((90, 10), sites, bits, bits) for bits in (4, 6, 8))
    pairs = [
        (a, Evaluation(a.key(), 3.0, 1.0, math.nan)),
        (b, Evaluation(b.key(), 2.0, 2.0, 5.0)),
        (c, Evaluation(c.key(), 1.0, 3.0, 7.0)),
    ]
    store.record_generation(job_id, 0, pairs, [a.key(), b.key(), c.key()], 0.1, owner="runner-x")
    for order, expected in (("asc", [b, c, a]), ("desc", [c, b, a])):
        api = client.get(f"{API}/jobs/{job_id}/front", params={"sort": "weight_bytes", "order": order}).json()
        stored = store.front(job_id, sort="weight_bytes", descending=order == "desc").points
        assert [p["key"] for p in api["items"]] == [p.key for p in stored] == [x.key() for x in expected]
    capped = client.get(f"{API}/jobs/{job_id}/front", params={"max_weight_bytes": 100}).json()
    assert [p["key"] for p in capped["items"]] == [b.key(), c.key()]  # an unknown size is never within a limit


def test_front_by_measured_latency(client: TestClient, store: Store) -> None:
    """A latency job's points carry ``latency_ms``: the front filters and sorts by it, its knee is in milliseconds,
    and a point without a latency is never within a latency limit."""
    job_id = submit(client)["id"]
    store.claim_job("runner-x", 60)
    sites = ("down.0.conv", "mid.attn.qk", "up.1.conv")
    a, b, c, d = (Candidate.uniform((90, 10), sites, bits, bits) for bits in (4, 5, 6, 8))
    pairs = [
        (a, Evaluation(a.key(), 4.0, 1.0, 1.0, latency_ms=30.0)),
        (b, Evaluation(b.key(), 2.0, 2.0, 2.0, latency_ms=31.0)),
        (c, Evaluation(c.key(), 1.9, 3.0, 3.0, latency_ms=60.0)),
        (d, Evaluation(d.key(), 1.0, 4.0, 4.0)),
    ]
    store.record_generation(job_id, 0, pairs, [a.key(), b.key(), c.key(), d.key()], 0.1, owner="runner-x")
    url = f"{API}/jobs/{job_id}/front"
    body = client.get(url, params={"sort": "latency_ms", "knee": "true"}).json()
    assert [p["key"] for p in body["items"]] == [a.key(), b.key(), c.key(), d.key()]  # no latency: last
    assert [p["latency_ms"] for p in body["items"]] == [30.0, 31.0, 60.0, None]
    assert body["items"][0]["objectives"]["latency_ms"] == 30.0
    fast = client.get(url, params={"max_latency_ms": 45, "knee": "true"}).json()
    assert [p["key"] for p in fast["items"]] == [a.key(), b.key()]
    assert [p.key for p in store.front(job_id, max_latency_ms=45).points] == [a.key(), b.key()]
    priced = client.get(url, params={"max_latency_ms": 100, "knee": "true"}).json()
    assert priced["knee"]["key"] == b.key()  # in ms, b is the bend: as fast as a, nearly as good as c
    bad = client.get(url, params={"max_latency_ms": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "max_latency_ms"]


def test_front_is_never_stale(client: TestClient, store: Store) -> None:
    job_id, _ = job_with_results(store, client)
    before = client.get(f"{API}/jobs/{job_id}/front").json()
    assert before["generation"] == 1 and before["count"] > 1
    best = Candidate.uniform((90, 10), ("down.0.conv", "mid.attn.qk", "up.1.conv"), 2, 2)
    store.record_generation(
        job_id, 2, [(best, Evaluation(best.key(), 0.0, 1.0, 1.0))], [best.key()], 0.9, owner="runner-x"
    )
    after = client.get(f"{API}/jobs/{job_id}/front").json()
    assert after["generation"] == 2 and [p["key"] for p in after["items"]] == [best.key()]
    store.finish_job(job_id, "runner-x", JobState.SUCCEEDED)
    assert client.delete(f"{API}/jobs/{job_id}").status_code == 204
    assert client.get(f"{API}/jobs/{job_id}/front").status_code == 404
    fresh = submit(client)["id"]
    assert fresh != job_id  # ids are never reused, so no cache entry can be mistaken for another job's
    assert client.get(f"{API}/jobs/{fresh}/front").json()["count"] == 0


def test_candidates_paginate_with_after_and_by_key(client: TestClient, store: Store) -> None:
    job_id, pairs = job_with_results(store, client)
    keys, after = [], 0
    while True:
        page = client.get(f"{API}/jobs/{job_id}/candidates", params={"after": after, "limit": 7}).json()
        assert page["total"] == len(pairs)
        keys += [c["key"] for c in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert keys == list(dict.fromkeys(c.key() for c, _ in pairs))
    gen1 = client.get(f"{API}/jobs/{job_id}/candidates", params={"generation": 1}).json()
    assert {c["generation"] for c in gen1["items"]} == {1}
    c, e = pairs[0]
    one = client.get(f"{API}/jobs/{job_id}/candidates/{c.key()}").json()
    assert one["candidate"] == c.to_dict() and one["bits"] == c.bits_summary() and one["steps"] == c.steps
    assert one["error"] == e.error and (one["quality"] is None) == (not e.ok)
    hv = client.get(f"{API}/jobs/{job_id}/hypervolume").json()
    assert [(p["generation"], p["hypervolume"]) for p in hv["items"]] == [(0, 0.25), (1, 0.5)]
    job = client.get(f"{API}/jobs/{job_id}").json()
    assert job["progress"]["evaluated"] == len(keys) and job["progress"]["hypervolume"] == 0.5
    assert job["state"] == "RUNNING" and job["runner"] == "runner-x"


# -- cancel and delete ----------------------------------------------------------------------------------------


def test_cancel_and_delete_rules(client: TestClient, store: Store) -> None:
    pending = submit(client)["id"]
    assert client.delete(f"{API}/jobs/{pending}").status_code == 409
    cancelled = client.post(f"{API}/jobs/{pending}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
    assert client.post(f"{API}/jobs/{pending}/cancel").json()["state"] == "CANCELLED"
    running, _ = job_with_results(store, client)
    flagged = client.post(f"{API}/jobs/{running}/cancel")
    assert flagged.status_code == 202 and flagged.json()["state"] == "RUNNING" and flagged.json()["cancel_requested"]
    assert client.delete(f"{API}/jobs/{running}").status_code == 409
    store.finish_job(running, "runner-x", JobState.SUCCEEDED)
    refused = client.post(f"{API}/jobs/{running}/cancel")
    assert refused.status_code == 409 and client.get(f"{API}/jobs/{running}").json()["state"] == "SUCCEEDED"
    for job_id in (pending, running):
        assert client.delete(f"{API}/jobs/{job_id}").status_code == 204
        assert client.get(f"{API}/jobs/{job_id}").status_code == 404
    assert client.get(f"{API}/jobs").json()["total"] == 0


# -- auth, meta, errors -------------------------------------------------------------------------------------------


def test_token_guards_mutations(store: Store, model_root: Path, tmp_path: Path) -> None:
    with make_client(store, model_root, tmp_path, api_token="s3cret") as c:
        missing = c.post(f"{API}/jobs", json=spec())
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert c.post(f"{API}/jobs", json=spec(), headers={"Authorization": "Bearer nope"}).status_code == 403
        assert c.post(f"{API}/jobs", json=spec(), headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        ok = c.post(f"{API}/jobs", json=spec(), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        job_id = ok.json()["id"]
        assert c.get(f"{API}/jobs/{job_id}").status_code == 200  # reads open by default
        assert c.post(f"{API}/jobs/{job_id}/cancel").status_code == 401
        assert c.delete(f"{API}/jobs/{job_id}").status_code == 401
        assert c.get(f"{API}/jobs/{job_id}").json()["state"] == "PENDING"


def test_token_can_guard_reads(store: Store, model_root: Path, tmp_path: Path) -> None:
    with make_client(store, model_root, tmp_path, api_token="s3cret", read_token_required=True) as c:
        assert c.get(f"{API}/jobs").status_code == 401
        assert c.get(f"{API}/jobs/1/front", headers={"Authorization": "Bearer bad"}).status_code == 403
        assert c.get(f"{API}/jobs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get(f"{API}/healthz").status_code == 200 and c.get(f"{API}/version").status_code == 200
    with pytest.raises(ValueError, match="api_token"):
        Settings(read_token_required=True)


def test_meta_and_docs(client: TestClient, backend: str) -> None:
    assert client.get(f"{API}/healthz").json() == {"status": "ok", "database": backend}
    version = client.get(f"{API}/version").json()
    assert version["api"] == "v1" and version["schema_revision"] == "0007" and version["version"]
    assert client.get("/docs").status_code == 200
    paths = client.get(f"{API}/openapi.json").json()["paths"]
    assert all(p.startswith(API) for p in paths)
    assert {f"{API}/jobs", f"{API}/jobs/{{job_id}}/front", f"{API}/jobs/{{job_id}}/candidates/{{key}}"} <= set(paths)
    front_params = {p["name"] for p in paths[f"{API}/jobs/{{job_id}}/front"]["get"]["parameters"]}
    assert front_params >= {
        "job_id",
        "max_bitops",
        "max_steps",
        "max_weight_bytes",
        "max_quality",
        "sort",
        "order",
        "knee",
    }


@pytest.fixture
def isolated_store(backend: str, tmp_path: Path) -> Iterator[Store]:
    """A store in a database of its own (the test breaks it)."""
    if backend == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'own.db'}")
        yield store
        store.close()
        return
    require_postgres()
    with fresh_pg_database() as url:
        store = Store(url)
        yield store
        store.close()


def test_database_failure_is_503_not_500(isolated_store: Store, model_root: Path, tmp_path: Path) -> None:
    store = isolated_store
    with make_client(store, model_root, tmp_path) as client:
        job_id = submit(client)["id"]
        store.claim_job("r", 60)
        with store.engine.begin() as conn:
            conn.execute(text("DROP TABLE objective_values"))
        c, e = generation_pairs(0, n=1)[0]
        with pytest.raises(StoreError, match="database error"):
            store.record_generation(job_id, 0, [(c, e)], [], 0.0, owner="r")
        assert store.get_job(job_id).generation is None  # rolled back
        broken = client.get(f"{API}/jobs/{job_id}/candidates/{c.key()}")
        assert broken.status_code == 404  # the candidate row was rolled back too
        with store.engine.begin() as conn:
            conn.execute(
                text("DROP TABLE candidates CASCADE" if store.dialect == "postgresql" else "DROP TABLE candidates")
            )
        broken = client.get(f"{API}/jobs/{job_id}/front")
        assert broken.status_code == 503 and broken.headers["retry-after"] == "1"
        assert "database" in broken.json()["detail"]
        assert client.get(f"{API}/jobs/{job_id}").status_code == 200


def test_garbage_never_gives_500(client: TestClient) -> None:
    weird = [
        None,
        True,
        -1,
        0,
        2**70,
        1e308,
        math.pi,
        "",
        "x" * 5000,
        [],
        [None],
        {},
        {"a": {"b": []}},
        "W99A1@1",
        "../" * 20,
        "\x00",
        [2**63],
    ]
    fields = [
        "model",
        "model.path",
        "search",
        "search.bit_options",
        "search.steps",
        "search.grouping",
        "search.granularity",
        "search.budget",
        "search.algorithm",
        "search.population",
        "search.generations",
        "search.seed",
        "evaluation",
        "evaluation.objective",
        "evaluation.samples",
        "evaluation.rescore_samples",
        "evaluation.reference_steps",
        "calibration",
        "calibration.strategy",
        "execution",
        "execution.ray",
        "submission_id",
        "version",
    ]
    for field, value in itertools.product(fields, weird):
        section, _, name = field.partition(".")
        body = spec(**{section: {name: value} if name else value})
        response = client.post(f"{API}/jobs", json=body)
        assert response.status_code in (200, 201, 400, 409, 422), (field, value, response.text)
        assert "Traceback" not in response.text


def test_sample_grids_are_served_once_stored_for_this_job(client: TestClient, store: Store, tmp_path: Path) -> None:
    from server.samples import samples_dir, write_samples

    job = client.post(f"{API}/jobs", json=spec()).json()
    assert client.get(f"{API}/jobs/{job['id']}/samples").status_code == 409  # not drawn yet
    assert client.get(f"{API}/jobs/{job['id']}/samples/fp.png").status_code == 409
    assert client.get(f"{API}/jobs/{job['id']}/samples/..%2Fx.png").status_code in (404, 422)
    assert client.get(f"{API}/jobs/999999/samples").status_code == 404
    png = b"\x89PNG\r\n\x1a\n-a-grid"
    directory = samples_dir(tmp_path / "data", job["id"])
    write_samples(directory, {"images": {"fp": png}, "rows": ["a"], "columns": 4}, "another job's creation")
    assert client.get(f"{API}/jobs/{job['id']}/samples").status_code == 409  # a deleted job's grids, id reused
    created = store.get_job(job["id"]).created_at.isoformat()
    write_samples(directory, {"images": {"fp": png, "knee": png}, "rows": ["a"], "columns": 4}, created)
    meta = client.get(f"{API}/jobs/{job['id']}/samples").json()
    assert meta == {"rows": ["a"], "columns": 4, "grids": ["fp", "knee"]}
    got = client.get(f"{API}/jobs/{job['id']}/samples/knee.png")
    assert got.status_code == 200 and got.content == png and got.headers["content-type"] == "image/png"
    assert client.get(f"{API}/jobs/{job['id']}/samples/mid.png").status_code == 409
    with pytest.raises(ValueError, match="invalid sample grid names"):
        write_samples(directory, {"images": {"../x": png}}, created)
