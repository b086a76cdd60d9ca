"""A text-to-image job end to end against a real ``tmpq serve`` (uvicorn, runner, the real driver): a local Stable
Diffusion directory that is not the testbed, its prompts from the job, DPM-Solver++, the front, and the knee exported
over REST as a diffusers pipeline."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from supernet.testing import write_feature_program
from supernet.testing_sd import tiny_sd_pipeline
from tests.server.test_e2e import tmpq_serve
from tests.workers.test_driver import LATENT_SEARCH

REPO = Path(__file__).resolve().parents[2]

JOB = {
    "model": {"path": "tiny-sd", "prompts": ["a red square", "a blue circle"], "guidance_scale": 2.5},
    "search": LATENT_SEARCH,
    "calibration": {"strategy": "range", "grid_steps": 3, "samples": 4, "report_ranking": False},
    "evaluation": {"samples": 4, "reference_steps": 8, "batch_size": 4},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("e2e-sd")
    tiny_sd_pipeline(data / "models" / "tiny-sd", prompts=None)
    write_feature_program(data / "models" / "features.pt2", 3)
    with tmpq_serve(data / "data", data / "models") as url:
        yield url


def test_bad_text_to_image_jobs_are_422_naming_the_field(server: str) -> None:
    api = f"{server}/api/v1"
    for change, loc in (
        ({"prompts": []}, ["model", "prompts"]),
        ({"prompts": None, "guidance_scale": 2.0}, ["model", "prompts"]),  # no prompts and no prompts.txt
        ({"images_per_prompt": 0}, ["model", "images_per_prompt"]),
    ):
        body = {**JOB, "model": {**JOB["model"], **change}}
        body["model"] = {k: v for k, v in body["model"].items() if v is not None}
        response = httpx.post(f"{api}/jobs", json=body, timeout=10)
        assert response.status_code == 422, response.text
        assert json.dumps(loc)[1:-1] in json.dumps(response.json()), response.text
    for features, reason in (("missing.pt2", "does not exist"), ("tiny-sd/model_index.json", "not a torch.export")):
        body = {**JOB, "evaluation": {**JOB["evaluation"], "features": features}}
        response = httpx.post(f"{api}/jobs", json=body, timeout=10)
        assert response.status_code == 422, response.text
        assert '"evaluation", "features"' in json.dumps(response.json()) and reason in response.text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_text_to_image_job_searches_and_exports(server: str) -> None:
    api = f"{server}/api/v1"
    # the character tokenizer takes 16 tokens: the second prompt is cut, with a warning kept in the job
    prompts = ["a red square", "a blue circle on a white page"]
    body = {
        **JOB,
        "model": {**JOB["model"], "prompts": prompts},
        "evaluation": {**JOB["evaluation"], "features": "features.pt2"},  # a feature space of the user's
    }
    job = httpx.post(f"{api}/jobs", json=body, timeout=10).raise_for_status().json()
    deadline = time.monotonic() + 540
    state = job
    while time.monotonic() < deadline and state["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        time.sleep(1)
        state = httpx.get(f"{api}/jobs/{job['id']}", timeout=10).json()
    assert state["state"] == "SUCCEEDED", state
    assert state["spec"]["model"]["prompts"] == prompts
    assert len(state["warnings"]) == 1 and "'a blue circle on a white page'" in state["warnings"][0]
    assert "truncated" in state["warnings"][0]
    assert state["spec"]["search"]["solver"] == "dpmsolver++"
    front = httpx.get(f"{api}/jobs/{job['id']}/front", params={"knee": "true"}, timeout=10).json()
    assert front["items"] and front["knee"] is not None
    assert front["fp_components"] == ["text_encoder", "vae"]  # the front says what stays in floating point
    assert all(p["objectives"]["fd"] > 0 and p["objectives"]["mse"] == p["quality"] for p in front["items"])
    samples = httpx.get(f"{api}/jobs/{job['id']}/samples", timeout=10).json()
    assert samples["rows"] == prompts and samples["knee"] == front["knee"]["key"]
    assert samples["solver"] == "dpmsolver++" and set(samples["points"]) == {p["key"] for p in front["items"]}
    grids = {"fp", "knee"} | {g for p in samples["points"].values() for g in (p["grid"], p["fp_grid"])}
    assert sorted(samples["grids"]) == sorted(grids)  # per front point its grid and FP on its schedule
    # the FP references: one per schedule of the front, each with its error against the long FP reference
    schedules = {tuple(p["candidate"]["timesteps"]) for p in front["items"]}
    assert {tuple(r["timesteps"]) for r in front["fp_references"]} == schedules
    assert all(r["mse"] > 0 and r["ssim"] <= 1 and r["bitops"] > 0 for r in front["fp_references"])
    assert all(p["objectives"]["quant_mse"] >= 0 and "ssim" in p["objectives"] for p in front["items"])
    png = httpx.get(f"{api}/jobs/{job['id']}/samples/knee.png", timeout=10)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(f"{api}/jobs/{job['id']}/samples/other.png", timeout=10).status_code == 409
    export = f"{api}/jobs/{job['id']}/candidates/{front['knee']['key']}/export"
    built = httpx.post(export, timeout=300)
    assert built.status_code == 200, built.text
    with zipfile.ZipFile(io.BytesIO(built.content)) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read(next(n for n in names if n.endswith("manifest.json"))))
    assert {n.split("/")[1] for n in names} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    assert manifest["solver"] == "dpmsolver++" and manifest["conditioning"]["prompts"] == prompts
