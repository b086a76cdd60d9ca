"""The web page end to end: a real ``uvicorn`` process on a free loopback port serving a pre-filled SQLite store,
driven by a real headless Chromium (Debian's ``chromium`` through the ``playwright`` package; nothing is installed
by the test). Without Chromium or playwright the browser tests skip, except when ``CI=true``: then they fail.

Also the data contract the page relies on: ``is_baseline`` in every candidate response, computed with the T of the
job's model.
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from search.candidate import Candidate
from search.evaluator import Evaluation
from search.pareto import ObjectiveScale, pareto_front
from search.space import ddim_uniform_schedule
from server.app import create_app
from server.baselines import budget_bitops, is_uniform_baseline
from server.models import JobState
from server.samples import samples_dir, write_samples
from server.settings import Settings
from server.store import Store
from tests.server.conftest import in_ci, write_fake_model
from tests.server.fakes import fake_measurement
from tests.server.live import API, app_server
from workers.samples import point_grid_name, schedule_grid_name

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# -- a realistic finished job ------------------------------------------------------------------------------

#: Quantisable sites of a small diffusers UNet2DModel, with their multiply-accumulates per forward pass.
SITES = {
    "conv_in": 73_728,
    "time_embedding.linear_1": 4_096,
    "down_blocks.0.resnets.0.conv1": 2_359_296,
    "down_blocks.0.resnets.0.conv2": 2_359_296,
    "down_blocks.1.attentions.0.to_q": 262_144,
    "down_blocks.1.attentions.0.to_k": 262_144,
    "down_blocks.1.attentions.0.to_v": 262_144,
    "down_blocks.1.attentions.0.to_out.0": 262_144,
    "mid_block.resnets.0.conv1": 589_824,
    "up_blocks.0.resnets.0.conv1": 1_769_472,
    "up_blocks.1.resnets.0.conv2": 4_718_592,
    "conv_out": 73_728,
}
#: How much each site's rounding error shows in the output (attention and the outer convolutions matter most).
SENSITIVITY = {s: 6.0 if "attentions" in s or s in ("conv_in", "conv_out") else 1.0 for s in SITES}
T = 1000
STEPS = (8, 10)
BITS = (4, 6, 8)
#: A job spec as stored before specs had sections (version 1, flat): every reader takes it as well as a version-2 one
#: (``workers.jobspec.spec_field``; the API answers it in sections).
SPEC = {
    "version": 1,
    "model": "digits-ddpm-16",
    "bit_options": list(BITS),
    "steps": list(STEPS),
    "objective": "mse",
    "budget": "W6A6@10",
    "algorithm": "nsga2",
    "population": 12,
    "generations": 4,
    "samples": 64,
    "seed": 7,
}


def evaluate(candidate: Candidate, rng: random.Random) -> Evaluation:
    """Plausible metrics: BitOps from the MACs, MSE falling with bits and steps, about one in twenty failing."""
    w, a = candidate.w_map(), candidate.a_map()
    bitops = float(sum(SITES[s] * w[s] * a[s] for s in SITES) * candidate.steps)
    weight_bytes = float(sum(SITES[s] // 16 * w[s] / 8 for s in SITES))
    if rng.random() < 0.05:
        return Evaluation.failure(candidate.key(), "CUDA error: an illegal memory access was encountered", bitops)
    noise = sum(SENSITIVITY[s] * 2.0 ** -(w[s] + a[s] / 2) for s in SITES) / sum(SENSITIVITY.values())
    quality = 0.004 + 0.9 * noise + 0.02 / candidate.steps**1.5 + rng.uniform(0, 0.0008)
    return Evaluation(candidate.key(), quality, bitops, weight_bytes, {"psnr": 10 * math.log10(1 / quality)})


def fp_references(front: list[Candidate]) -> list[dict[str, Any]]:
    """The FP model on each schedule of ``front``, as the driver's front analysis stores it (the error of the steps
    alone, in :func:`evaluate`'s terms)."""
    schedules = sorted({c.timesteps for c in front}, key=lambda t: (len(t), t))
    points = []
    for timesteps in schedules:
        quality = 0.004 + 0.02 / len(timesteps) ** 1.5
        bitops = float(sum(SITES.values()) * 32 * 32 * len(timesteps))
        points.append(
            {"steps": len(timesteps), "timesteps": list(timesteps), "bitops": bitops, "quality": quality,
             "mse": quality, "psnr": 10 * math.log10(1 / quality)}
        )  # fmt: skip
    return points


def random_candidate(rng: random.Random) -> Candidate:
    steps = rng.choice(STEPS)
    timesteps = sorted(rng.sample(range(T), steps), reverse=True)
    return Candidate.from_maps(timesteps, {s: rng.choice(BITS) for s in SITES}, {s: rng.choice(BITS) for s in SITES})


@dataclass(frozen=True)
class FilledJob:
    """What :func:`fill_finished_job` stored."""

    job_id: int
    evaluations: dict[str, Evaluation]
    candidates: dict[str, Candidate]
    front: list[str]
    baselines: list[str]
    generations: int

    @property
    def plottable(self) -> list[Evaluation]:
        return [e for e in self.evaluations.values() if e.ok]


#: What the finished job warned about.
#: A job's calibrated-supernet summary and the line the page shows for it (the CLI's ``supernet_text``).
SUPERNET = {"source": "shipped", "seconds": {"6": 30.0}, "report": {"steps": 10, "bits": {"6": {"psnr": 30.44}}}}
SUPERNET_LINE = "Supernet: from the shipped · W6A6 30.4 dB against FP at 10 steps"
WARNING = "prompt 'a handwritten digit seven on lined paper' is longer than the tokenizer's 16 tokens: truncated"
#: The finished job's sample grids as the driver describes them (``workers.samples``), less the images.
SAMPLES = {
    "rows": ["a handwritten digit seven", "a handwritten digit one"],
    "columns": 4,
    "fp_steps": 100,
    "solver": "dpmsolver++",
    "knee_bits": "W6A6",
    "knee_steps": 8,
    "seed": 0,
}


def grid_png(shade: int, width: int = 64) -> bytes:
    """A ``width`` x 32 grey PNG (a stand-in for a grid of two rows of samples)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, 32), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def fill_finished_job(store: Store, spec: dict[str, Any] = SPEC, owner: str = "runner-web") -> FilledJob:
    """A SUCCEEDED job of four generations: the uniform baselines and random candidates, with some failures."""
    rng = random.Random(7)
    job, _ = store.create_job(spec)
    claimed = store.claim_job(owner, 3600)
    assert claimed is not None and claimed.id == job.id
    baselines = [Candidate.uniform(ddim_uniform_schedule(k, T), SITES, b, b) for k in STEPS for b in BITS]
    evaluations: dict[str, Evaluation] = {}
    candidates: dict[str, Candidate] = {}
    dearest = max(sum(SITES.values()) * 64 * max(STEPS), 1)
    scale = ObjectiveScale(sum(SITES.values()) * 16 * min(STEPS), dearest, quality_ref=0.1)
    for generation in range(spec["generations"]):
        batch = baselines + [random_candidate(rng) for _ in range(6)] if generation == 0 else []
        batch += [random_candidate(rng) for _ in range(10)] if generation else []
        pairs = [(c, evaluate(c, rng)) for c in batch if c.key() not in candidates]
        for c, e in pairs:
            candidates[c.key()], evaluations[c.key()] = c, e
        front = pareto_front(evaluations.values())
        store.record_generation(
            job.id, generation, pairs, [e.key for e in front], scale.hypervolume(front), owner=owner
        )
    front = pareto_front(evaluations.values())
    references = fp_references([candidates[e.key] for e in front])
    fp_quality = {tuple(r["timesteps"]): r["quality"] for r in references}
    analysed = []
    for e in front:  # as the driver's front analysis: each point's error against FP on its own schedule
        quant_mse = max(e.quality - fp_quality[candidates[e.key].timesteps], 1e-6)
        quant = {"quant_mse": quant_mse, "quant_psnr": -10 * math.log10(quant_mse)}
        analysed.append(replace(e, extra={**e.extra, **quant}))
    store.record_rescored(job.id, analysed, owner=owner)
    store.set_fp_references(job.id, references, owner=owner)
    store.add_warning(job.id, WARNING, owner=owner)
    store.set_calibration(job.id, SUPERNET, owner=owner)
    store.finish_job(job.id, owner, JobState.SUCCEEDED)
    return FilledJob(
        job.id,
        evaluations,
        candidates,
        [e.key for e in pareto_front(evaluations.values())],
        [b.key() for b in baselines],
        spec["generations"],
    )


#: What the RUNNING job of :func:`fill_other_jobs` reports it is doing, and the line the page shows for it.
ACTIVITY = {
    "stage": "calibrating",
    "message": "W6 (2/3): reconstruction 7/12, round 1",
    "calibration": {"source": "calibrating", "bits": 6, "bit_index": 1, "bit_count": 3, "phase": "reconstruction",
                    "round": 1, "step": 7, "total": 12, "elapsed_s": 80.0, "eta_s": 180.0},
}  # fmt: skip
ACTIVITY_LINE = "calibrating W6 (2/3): reconstruction 7/12, round 1, 1m20s elapsed, ~3m left"


def fill_other_jobs(store: Store) -> tuple[int, int]:
    """A RUNNING job with one stored generation (a long lease) and an activity, and a PENDING one; returns their
    ids."""
    rng = random.Random(3)
    running, _ = store.create_job({**SPEC, "seed": 8, "generations": 10})
    claimed = store.claim_job("runner-busy", 3600)
    assert claimed is not None and claimed.id == running.id
    pairs = [(c, evaluate(c, rng)) for c in (random_candidate(rng) for _ in range(8))]
    store.record_generation(running.id, 0, pairs, [e.key for e in pareto_front(e for _, e in pairs)], 0.4)
    assert store.set_activity(running.id, ACTIVITY, owner="runner-busy")
    pending, _ = store.create_job({**SPEC, "seed": 9, "algorithm": "random"})
    return running.id, pending.id


def model_root(root: Path) -> Path:
    """A model root holding a diffusers-shaped ``digits-ddpm-16`` (T = 1000; fake weights)."""
    write_fake_model(root / "digits-ddpm-16", num_train_timesteps=T)
    return root


# -- is_baseline -------------------------------------------------------------------------------------------


def test_is_uniform_baseline_rules() -> None:
    sites = ("a.conv", "b.attn.qk")
    uniform = Candidate.uniform(ddim_uniform_schedule(4, 100), sites, 4, 8).to_dict()
    assert uniform["timesteps"] == [75, 50, 25, 0]
    assert is_uniform_baseline(uniform, 100)
    assert not is_uniform_baseline(uniform, 1000)  # the schedule of another T
    mixed = Candidate.from_maps([75, 50, 25, 0], {"a.conv": 4, "b.attn.qk": 6}, {"a.conv": 8, "b.attn.qk": 8})
    assert not is_uniform_baseline(mixed.to_dict(), 100)
    shifted = Candidate.uniform((76, 50, 25, 0), sites, 6, 6)
    assert not is_uniform_baseline(shifted.to_dict(), 100)
    assert not is_uniform_baseline({"timesteps": [], "weight_bits": {}, "act_bits": {}}, 100)


def test_candidate_responses_flag_baselines_with_the_models_timesteps(tmp_path: Path) -> None:
    """The job's model has T = 1000: exactly the six stored uniform DDIM candidates are baselines, in the
    candidate list, a single candidate and the front; and the "W6A6@10" budget resolves to that baseline's cost."""
    root = model_root(tmp_path / "models")
    settings = Settings(data_dir=tmp_path / "data", model_root=root)
    store = Store.from_settings(settings)
    try:
        filled = fill_finished_job(store)  # the relative model path resolves under the root, as a submission's
        job, _ = store.create_job({**SPEC, "seed": 1})
        with TestClient(create_app(settings, store=store)) as client:
            items = client.get(f"{API}/jobs/{filled.job_id}/candidates", params={"limit": 1000}).json()["items"]
            assert len(items) == len(filled.evaluations)
            assert sorted(c["key"] for c in items if c["is_baseline"]) == sorted(filled.baselines)
            one = client.get(f"{API}/jobs/{filled.job_id}/candidates/{filled.baselines[0]}").json()
            assert one["is_baseline"] is True and one["bits"] == "W4A4"
            front = client.get(f"{API}/jobs/{filled.job_id}/front").json()["items"]
            assert {c["key"] for c in front} == set(filled.front)
            assert all(c["is_baseline"] == (c["key"] in filled.baselines) for c in front)
            assert client.get(f"{API}/jobs/{job.id}/candidates").json()["items"] == []
            assert client.get(f"{API}/jobs/999/candidates").status_code == 404
        records = store.list_candidates(filled.job_id, limit=1000).items
        w6a6 = next(r for r in records if r.key in filled.baselines and r.bits == "W6A6" and r.steps == 10)
        assert budget_bitops(SPEC, records) == w6a6.bitops
        assert budget_bitops({**SPEC, "budget": 2.5e9}, records) == 2.5e9
        assert budget_bitops({**SPEC, "budget": "W5A5@10"}, records) is None
        assert budget_bitops({**SPEC, "budget": None}, records) is None
    finally:
        store.close()


# -- a live server and a browser ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer:
    url: str
    finished: FilledJob
    running_id: int
    pending_id: int
    log: Path
    measured: str  # a front point of the finished job with stored run-time measurements (MEASURED)


def measurements(steps: int) -> dict[str, dict[str, Any]]:
    """What ``tmpq measure`` stores for a candidate of K ``steps`` on two backends: cpu-int8 and a slower
    reference (stored first, shown second)."""
    reference = {**fake_measurement("reference", steps=steps, step_ms=30.0), "speedup_per_step": 0.9}
    return {"reference": {**reference, "speedup_vs_reference": 8.2}, "cpu-int8": fake_measurement(steps=steps)}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``uvicorn server.app:create_app --factory`` in its own process, on a store filled beforehand."""
    base = tmp_path_factory.mktemp("web")
    root = model_root(base / "models")
    settings = Settings(data_dir=base / "data", model_root=root)
    store = Store.from_settings(settings)
    try:
        finished = fill_finished_job(store)
        running_id, pending_id = fill_other_jobs(store)
        measured = finished.front[0]
        for backend, measurement in measurements(finished.candidates[measured].steps).items():
            store.set_runtime(finished.job_id, measured, backend, measurement)
        created = store.get_job(finished.job_id).created_at.isoformat()
        knee = {"knee": finished.front[len(finished.front) // 2]}
        grids = {"images": {"fp": grid_png(40), "knee": grid_png(200)}, **SAMPLES, **knee, "points": {}}
        for i, key in enumerate(finished.front):  # as workers.samples draws them: each point, FP on its schedule
            c = finished.candidates[key]
            point = {"grid": point_grid_name(key), "fp_grid": schedule_grid_name(c.timesteps), "bits": c.bits_summary()}
            grids["points"][key] = {**point, "steps": c.steps}
            grids["images"][point["grid"]] = grid_png(60 + 5 * i, width=64 + 2 * i)
            grids["images"][point["fp_grid"]] = grid_png(30, width=60)
        write_samples(samples_dir(settings.data_dir, finished.job_id), grids, created)
    finally:
        store.close()
    with app_server(base / "uvicorn.log", data_dir=settings.data_dir, model_root=root) as url:
        yield LiveServer(url, finished, running_id, pending_id, base / "uvicorn.log", measured)


def require_browser() -> Any:
    """The ``playwright.sync_api`` module, once Chromium and playwright are known to be there."""
    reasons = []
    try:
        from playwright import sync_api
    except ImportError:
        sync_api, _ = None, reasons.append("the playwright package is not installed (pip install playwright)")
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        reasons.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    if reasons:
        reason = "; ".join(reasons)
        if in_ci():
            pytest.fail(f"{reason}: the browser tests are mandatory when CI=true")
        pytest.skip(reason)
    return sync_api


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = require_browser()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1440, "height": 1300}, device_scale_factor=1)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.set_default_timeout(10_000)
    try:
        yield page
        assert errors == [], f"errors in the page: {errors}"
    finally:
        context.close()


def open_page(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]")


def chart_state(page: Any, canvas: str) -> dict[str, Any]:
    """What Chart.js holds for a canvas: the datasets' labels and lengths and the scale types."""
    return page.evaluate(
        """(id) => {
            const chart = Chart.getChart(document.getElementById(id));
            return {
                labels: chart.data.datasets.map((d) => d.label),
                lengths: chart.data.datasets.map((d) => d.data.length),
                x: chart.options.scales.x.type,
                y: chart.options.scales.y.type,
                budget: chart.options.plugins.budgetLine ? chart.options.plugins.budgetLine.value : null,
                xTitle: chart.options.scales.x.title.text,
            };
        }""",
        canvas,
    )


def test_job_list_shows_states_and_progress(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    open_page(page, f"{live_server.url}/")
    rows = page.locator("#jobs-body tr")
    assert rows.count() == 3
    page.screenshot(path=str(tmp_path / "job-list.png"))
    states = {int(r.get_attribute("data-job-id")): r.get_attribute("data-state") for r in rows.all()}
    assert states == {
        live_server.finished.job_id: "SUCCEEDED",
        live_server.running_id: "RUNNING",
        live_server.pending_id: "PENDING",
    }
    finished = page.locator(f"#jobs-body tr[data-job-id='{live_server.finished.job_id}']")
    assert finished.locator(".badge").inner_text() == "SUCCEEDED"
    assert "4/4 generations" in finished.inner_text()
    assert str(len(live_server.finished.evaluations)) in finished.inner_text()
    running = page.locator(f"#jobs-body tr[data-job-id='{live_server.running_id}']")
    assert "1/10 generations" in running.inner_text()
    assert running.locator(".progress .bar").get_attribute("style") == "width:10.0%"
    page.locator("#state-filter .chip[data-state=RUNNING]").click()
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length === 1")
    assert page.locator("#jobs-body tr").get_attribute("data-job-id") == str(live_server.running_id)
    finished_link = f"/jobs/{live_server.finished.job_id}"
    page.locator("#state-filter .chip[data-state='']").click()
    page.wait_for_function("document.querySelectorAll('#jobs-body tr').length === 3")
    page.locator(f"#jobs-body a[href='{finished_link}']").click()
    page.wait_for_url(f"**{finished_link}")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#job-state").inner_text() == "SUCCEEDED"


def test_job_page_draws_the_front(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    job = live_server.finished
    open_page(page, f"{live_server.url}/jobs/{job.job_id}")
    plotted = job.plottable
    on_front = [e for e in plotted if e.key in job.front]
    baselines = [e for e in plotted if e.key in job.baselines]
    others = [e for e in plotted if e.key not in job.front and e.key not in job.baselines]
    box = page.locator("#pareto")
    assert int(box.get_attribute("data-points")) == len(plotted) > 30
    assert int(box.get_attribute("data-front-points")) == len(on_front) > 2
    assert int(box.get_attribute("data-baseline-points")) == len(baselines) == 6
    state = chart_state(page, "pareto-canvas")
    assert state["labels"] == [
        "Pareto front",
        "Uniform baselines",
        "Evaluated",
        "Selected",
        "FP at the front's schedules",
    ]
    schedules = {job.candidates[k].timesteps for k in job.front}
    assert state["lengths"] == [len(on_front), len(baselines), len(others), 1, len(schedules)]
    assert state["x"] == "logarithmic" and state["y"] == "logarithmic" and "GBitOps" in state["xTitle"]
    # the drawn front is the stored one, at the stored coordinates
    drawn = page.evaluate(
        "() => Chart.getChart(document.getElementById('pareto-canvas')).data.datasets[0].data"
        ".map((p) => [p.key, p.x, p.y])"
    )
    expected = sorted(on_front, key=lambda e: e.bitops)
    assert [k for k, _, _ in drawn] == [e.key for e in expected]
    assert all(
        math.isclose(x, e.bitops / 1e9) and math.isclose(y, e.quality)
        for (_, x, y), e in zip(drawn, expected, strict=True)
    )
    # the W6A6@10 budget of the spec is that baseline's cost, marked on the chart
    w6a6 = next(e for e in plotted if e.key in job.baselines and job.candidates[e.key].bits_summary() == "W6A6"
                and job.candidates[e.key].steps == 10)  # fmt: skip
    assert math.isclose(state["budget"], w6a6.bitops)
    assert int(page.locator("#hypervolume").get_attribute("data-points")) == job.generations
    assert chart_state(page, "hypervolume-canvas")["lengths"] == [job.generations]
    assert int(page.locator("#cand-table").get_attribute("data-rows")) == len(job.evaluations)
    assert page.locator("#cand-body tr").count() == len(job.evaluations)
    failed = len(job.evaluations) - len(plotted)
    assert failed > 0 and f"{failed} failed or unmeasured not shown" in page.locator("#pareto-caption").inner_text()
    # the page opens with the best candidate within the budget selected, and its export command
    best = min((e for e in plotted if e.bitops <= w6a6.bitops), key=lambda e: e.quality)
    assert box.get_attribute("data-selected") == best.key
    assert (
        page.locator("#export-command").inner_text()
        == f"tmpq export {job.job_id} {best.key} --out out/job-{job.job_id}/{best.key}"
    )
    shot = tmp_path / "job-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def point_position(page: Any, dataset: int, index: int) -> tuple[float, float]:
    """Page coordinates of a drawn point."""
    x, y = page.evaluate(
        """([dataset, index]) => {
            const chart = Chart.getChart(document.getElementById('pareto-canvas'));
            const el = chart.getDatasetMeta(dataset).data[index];
            const box = chart.canvas.getBoundingClientRect();
            return [box.left + el.x, box.top + el.y];
        }""",
        [dataset, index],
    )
    return x, y


def test_hover_shows_the_candidate_and_click_selects_it(page: Any, live_server: LiveServer) -> None:
    job = live_server.finished
    open_page(page, f"{live_server.url}/jobs/{job.job_id}")
    baseline = page.evaluate(
        "() => Chart.getChart(document.getElementById('pareto-canvas')).data.datasets[1].data[0].key"
    )
    candidate = job.candidates[baseline]
    page.mouse.move(*point_position(page, 1, 0))
    page.wait_for_function(
        "() => Chart.getChart(document.getElementById('pareto-canvas')).tooltip.getActiveElements().length > 0"
    )
    tooltip = page.evaluate(
        """() => { const t = Chart.getChart(document.getElementById('pareto-canvas')).tooltip;
                   return {title: t.title, body: t.body.flatMap((b) => b.lines), footer: t.footer}; }"""
    )
    assert tooltip["title"] == [f"{candidate.bits_summary()} · K={candidate.steps} · uniform baseline"]
    assert any(line.startswith("mse: ") for line in tooltip["body"])
    assert any(line.startswith("cost: ") and "BitOps" in line for line in tooltip["body"])
    assert f"key {baseline}" in " ".join(tooltip["footer"])
    page.mouse.click(*point_position(page, 1, 0))
    page.wait_for_function(f"document.getElementById('pareto').dataset.selected === '{baseline}'")
    assert page.locator("#sel-key").inner_text() == baseline
    assert "baseline" in page.locator("#sel-tags").inner_text()
    assert page.locator("#sel-timesteps .ts").count() == candidate.steps
    assert page.locator("#cand-body tr.selected").get_attribute("data-key") == baseline
    command = f"tmpq export {job.job_id} {baseline} --out out/job-{job.job_id}/{baseline}"
    assert page.locator("#export-command").inner_text() == command
    page.locator("#copy-button").click()
    page.wait_for_function("document.getElementById('copy-status').textContent.startsWith('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == command
    assert f"candidate={baseline}" in page.url  # a shareable link to the selection


def selection_metrics(page: Any) -> list[tuple[str, str, str | None]]:
    """The selected candidate's detail rows: (name, value, the value's title)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#sel-metrics dt')].map((dt) =>
                   [dt.textContent, dt.nextElementSibling.textContent, dt.nextElementSibling.getAttribute('title')])"""
    )


def test_the_selected_candidate_shows_its_measured_speed_up_and_memory_next_to_its_cost(
    page: Any, live_server: LiveServer
) -> None:
    """Per measured backend (the fastest end to end first), right after the BitOps: the speed-up per step and
    against FP at R steps, and the peak memory against FP; the timings in the row's title. Unmeasured: none."""
    job, key = live_server.finished, live_server.measured
    open_page(page, f"{live_server.url}/jobs/{job.job_id}?candidate={key}")
    assert page.locator("#sel-key").inner_text() == key
    rows = selection_metrics(page)
    names = [name for name, _, _ in rows]
    cost = names.index("Cost")
    assert names[cost + 1 : cost + 5] == [
        "Speed-up (cpu-int8)",
        "Memory (cpu-int8)",
        "Speed-up (reference)",
        "Memory (reference)",
    ]
    shown = {name: (value, title) for name, value, title in rows}
    steps = job.candidates[key].steps
    int8 = measurements(steps)["cpu-int8"]
    speedup = f"{int8['speedup_vs_reference']:.3g}×"  # 150 / K: the fake's 100 FP steps of 18 ms over K of 12 ms
    assert shown["Speed-up (cpu-int8)"][0] == f"1.5× per step · {speedup} vs FP at 100 steps"
    assert shown["Speed-up (cpu-int8)"][1].startswith("batch 64: a step 12 ms vs FP32 18 ms; sampling ")
    assert "measured 2026-12-06T12:00:00+00:00 on fake-machine" in shown["Speed-up (cpu-int8)"][1]
    assert shown["Memory (cpu-int8)"][0] == "0.8× FP peak (96 MiB vs 120 MiB)"
    assert "weights 1 MiB vs FP32 4 MiB" in shown["Memory (cpu-int8)"][1]
    assert shown["Speed-up (reference)"][0] == "0.9× per step · 8.2× vs FP at 100 steps"
    other = next(k for k in job.front if k != key)
    page.locator("#cand-filter .chip[data-filter=front]").click()
    page.locator(f"#cand-body tr[data-key='{other}']").click()
    page.wait_for_function(f"document.getElementById('sel-key').textContent === '{other}'")
    assert not [name for name, _, _ in selection_metrics(page) if name.startswith(("Speed-up", "Memory"))]


def test_budget_filter(page: Any, live_server: LiveServer) -> None:
    job = live_server.finished
    open_page(page, f"{live_server.url}/jobs/{job.job_id}")
    plotted = job.plottable
    budget = sorted(e.bitops for e in plotted)[len(plotted) // 3]
    page.locator("#budget-input").fill(f"{budget / 1e9:.6f}")
    page.locator("#budget-input").press("Enter")
    page.locator("#budget-input").blur()
    within = [e for e in plotted if e.bitops <= budget * (1 + 1e-6)]
    page.wait_for_function(
        f"document.getElementById('budget-note').textContent.startsWith('{len(within)} of {len(plotted)}')"
    )
    assert math.isclose(chart_state(page, "pareto-canvas")["budget"], budget, rel_tol=1e-6)
    best = min(within, key=lambda e: e.quality)
    assert job.candidates[best.key].bits_summary() in page.locator("#budget-note").inner_text()
    faded = page.evaluate(
        """() => { const chart = Chart.getChart(document.getElementById('pareto-canvas'));
                   const meta = chart.getDatasetMeta(2);
                   return meta.data.map((el) => el.options.backgroundColor); }"""
    )
    others = [e for e in plotted if e.key not in job.front and e.key not in job.baselines]
    assert len({c for c in faded}) == 2 and len(faded) == len(others)  # points over the budget are drawn faded
    page.locator("#cand-budget").check()
    over = [e for e in job.evaluations.values() if math.isfinite(e.bitops) and e.bitops > budget * (1 + 1e-6)]
    assert int(page.locator("#cand-table").get_attribute("data-rows")) == len(job.evaluations) - len(over)
    page.locator("#cand-filter .chip[data-filter=front]").click()
    front_within = [k for k in job.front if job.evaluations[k].bitops <= budget * (1 + 1e-6)]
    assert int(page.locator("#cand-table").get_attribute("data-rows")) == len(front_within)
    page.locator("#budget-clear").click()
    page.wait_for_function("document.getElementById('budget-note').textContent.startsWith('job budget: ')")
    assert chart_state(page, "pareto-canvas")["budget"] is None
    assert int(page.locator("#cand-table").get_attribute("data-rows")) == len(job.front)


def test_unknown_job_page(browser: Any, live_server: LiveServer) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/jobs/424242")
        page.wait_for_selector(".alert.error")
        assert page.locator(".alert.error").inner_text() == "Job 424242 does not exist."
        assert page.locator("a[href='/']").count() >= 1
    finally:
        context.close()


def test_static_assets_are_served(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as client:
        index = client.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js">' in index.text
        assert client.get("/jobs/1").text == index.text
        vendor = client.get("/static/vendor/chart.umd.min.js")
        assert vendor.status_code == 200 and vendor.text.startswith("/*!\n * Chart.js v4")
        assert client.get("/static/vendor/chart.js.LICENSE.md").text.startswith("The MIT License")
        assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/static/nope.js").status_code == 404
        assert client.get("/jobs/abc").status_code == 422


def test_a_running_job_shows_what_it_is_doing(page: Any, live_server: LiveServer) -> None:
    """The activity line of the CLI (``tmpq status``) on the job list and the job page, for RUNNING jobs only."""
    from server.cli_remote import activity_text

    assert activity_text(ACTIVITY) == ACTIVITY_LINE
    open_page(page, f"{live_server.url}/")
    running = page.locator(f"#jobs-body tr[data-job-id='{live_server.running_id}']")
    assert running.locator(".activity").inner_text() == ACTIVITY_LINE
    assert page.locator("#jobs-body .activity").count() == 1
    open_page(page, f"{live_server.url}/jobs/{live_server.running_id}")
    assert page.locator("#job-activity").is_visible()
    assert page.locator("#job-activity").inner_text() == ACTIVITY_LINE
    open_page(page, f"{live_server.url}/jobs/{live_server.finished.job_id}")
    assert page.locator("#job-activity").is_hidden()


def test_a_finished_job_shows_its_warnings_and_sample_grids(page: Any, live_server: LiveServer, tmp_path: Path) -> None:
    """The warnings the job kept, and for the selected front point three grids from the same noise (FP at the
    reference schedule, FP on the point's schedule, the point), fetched as images, with one caption line per prompt;
    selecting another point shows its grids; a job without grids shows no Samples card and no warnings."""
    finished = live_server.finished
    open_page(page, f"{live_server.url}/jobs/{finished.job_id}?candidate={finished.front[0]}")
    assert page.locator("#job-warnings").inner_text() == f"Warning: {WARNING}"
    assert page.locator("#job-supernet").inner_text() == SUPERNET_LINE
    page.wait_for_selector("#samples:not([hidden])")
    page.wait_for_function("document.getElementById('samples-point').naturalWidth === 64")  # front[0]'s grid
    sizes = page.evaluate(
        "['fp', 'schedule', 'point'].map((n) => document.getElementById(`samples-${n}`).naturalWidth)"
    )
    assert sizes == [64, 60, 64]
    assert page.locator("#samples-rows li").all_inner_texts() == SAMPLES["rows"]
    assert page.locator("#samples-fp-caption").inner_text() == "FP, 100 steps (dpmsolver++): the reference"
    first = finished.candidates[finished.front[0]]
    caption = page.locator("#samples-schedule-caption").inner_text()
    assert caption == f"FP on the point's {first.steps} steps (no quantization)"
    caption = page.locator("#samples-point-caption").inner_text()
    assert caption == f"{first.bits_summary()}, K={first.steps} ({first.key()})"
    assert page.locator("#samples-which").inner_text() == ""
    last = finished.front[-1]
    page.locator(f"#cand-table tr[data-key='{last}']").click()
    width = 64 + 2 * (len(finished.front) - 1)
    page.wait_for_function(f"document.getElementById('samples-point').naturalWidth === {width}")
    assert page.locator("#samples-point-caption").inner_text().endswith(f"({last})")
    off_front = next(k for k, e in finished.evaluations.items() if e.ok and k not in finished.front)
    page.locator(f"#cand-table tr[data-key='{off_front}']").click()  # no grids of its own: the knee's
    page.wait_for_function("document.getElementById('samples-which').textContent.startsWith('The selected')")
    knee = finished.front[len(finished.front) // 2]
    assert page.locator("#samples-point-caption").inner_text().endswith(f"({knee})")
    page.screenshot(path=str(tmp_path / "samples.png"), full_page=True)
    open_page(page, f"{live_server.url}/jobs/{live_server.running_id}")
    assert page.locator("#samples").is_hidden() and page.locator("#job-warnings").is_hidden()
    assert page.locator("#job-supernet").is_hidden()


def test_the_front_carries_fp_at_each_schedule_and_splits_a_points_error(page: Any, live_server: LiveServer) -> None:
    """The chart draws the FP reference points (one per schedule of the front) and the selected point's panel says
    how much of its error its bits add (against FP on its own steps) and how much its steps (FP at K)."""
    finished = live_server.finished
    key = finished.front[0]
    open_page(page, f"{live_server.url}/jobs/{finished.job_id}?candidate={key}")
    state = chart_state(page, "pareto-canvas")
    schedules = {finished.candidates[k].timesteps for k in finished.front}
    assert state["labels"][4] == "FP at the front's schedules" and state["lengths"][4] == len(schedules)
    terms = page.locator("#sel-metrics dt").all_inner_texts()
    values = dict(zip(terms, page.locator("#sel-metrics dd").all_inner_texts(), strict=True))
    c = finished.candidates[key]
    assert values["Error of its bits"].endswith(f"dB PSNR vs FP on its own {c.steps} steps")
    assert values["Error of its steps"].endswith("dB (FP at K vs reference)")
    assert values["Total error"].endswith("dB PSNR vs the FP reference")


def test_the_export_button_posts_with_the_stored_token(browser: Any, tmp_path: Path) -> None:
    """On a server with a token, the page's export is a POST carrying the token the page stores (the one it sends
    on every call): without one it is refused, the token bar opens and nothing is built."""
    root = model_root(tmp_path / "models")
    settings = Settings(data_dir=tmp_path / "data", model_root=root)
    store = Store.from_settings(settings)
    try:
        job = fill_finished_job(store)
    finally:
        store.close()
    log = tmp_path / "uvicorn.log"
    with app_server(log, data_dir=settings.data_dir, model_root=root, api_token="page-token") as url:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(10_000)
            sent: list[tuple[str, str | None]] = []
            measuring: list[tuple[str, str, str | None]] = []

            def record(request: Any) -> None:
                if request.url.endswith("/export"):
                    sent.append((request.method, request.headers.get("authorization")))
                if "/measure?" in request.url:
                    measuring.append((request.method, request.url, request.headers.get("authorization")))

            page.on("request", record)
            open_page(page, f"{url}/jobs/{job.job_id}")
            assert page.locator("#authbar").is_hidden()  # reads need no token here
            page.locator("#export-button").click()
            page.wait_for_function("document.getElementById('export-status').textContent.startsWith('Export failed')")
            assert "HTTP 401" in page.locator("#export-status").inner_text()
            assert page.locator("#authbar").is_visible()
            page.evaluate("localStorage.setItem('tmpq.token', 'not-the-token')")
            page.locator("#export-button").click()
            page.wait_for_function("document.getElementById('export-status').textContent.includes('HTTP 403')")
            assert sent == [("POST", None), ("POST", "Bearer not-the-token")]
            # measuring is a POST with the stored token as well, of the backend and batch chosen
            page.select_option("#measure-backend", "reference")
            page.locator("#measure-batch").fill("4")
            page.locator("#measure-button").click()
            page.wait_for_function("document.getElementById('measure-status').textContent.includes('HTTP 403')")
            key = page.locator("#sel-key").inner_text()
            path = f"/api/v1/jobs/{job.job_id}/candidates/{key}/measure?backend=reference&batch_size=4"
            assert measuring == [("POST", f"{url}{path}", "Bearer not-the-token")]
            page.locator("#measure-batch").fill("5000")
            page.locator("#measure-button").click()
            assert page.locator("#measure-status").inner_text() == "The batch must be a whole number from 1 to 1024."
            assert len(measuring) == 1  # refused on the page, nothing sent
        finally:
            context.close()
    assert not (settings.data_dir / "exports").exists() and not (settings.data_dir / "measure.lock").exists()
