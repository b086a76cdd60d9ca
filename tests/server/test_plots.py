"""Pareto plots: ``workers.plots.plot_front`` (to a path or a file object) and ``GET /jobs/{id}/front.png``."""

from __future__ import annotations

import io
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import search.baselines as search_baselines
import server.baselines as server_baselines
from search.candidate import Candidate
from search.evaluator import Evaluation
from search.pareto import pareto_front
from search.space import SearchSpace
from server.app import create_app
from server.settings import Settings
from server.store import Store
from tests.server.test_web import SITES as WEB_SITES
from tests.server.test_web import SPEC, FilledJob, evaluate, fill_finished_job, model_root
from workers.plots import PlotPoint, plot_front
from workers.report import baseline_keys, plot_search, reference_points

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASELINE_RED = (0xD6, 0x27, 0x28)
NOTE_GREY = (0x77, 0x77, 0x77)
FRONT_BLUE = (0x1F, 0x77, 0xB4)


def decode(png: bytes) -> np.ndarray:
    """RGB pixels (0-255) of a PNG."""
    import matplotlib.image

    return (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(int)


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    return np.all(np.abs(image - np.array(rgb)) <= tolerance, axis=-1)


FRONT = [PlotPoint(2e9, 0.02), PlotPoint(3e9, 0.01), PlotPoint(6e9, 0.006)]
OTHERS = [PlotPoint(4e9, 0.015), PlotPoint(5e9, 0.012), PlotPoint(float("nan"), 0.1), PlotPoint(7e9, float("inf"))]
BASELINES = [PlotPoint(2.5e9, 0.03, "W4A4 K=8"), PlotPoint(7e9, 0.007, "W8A8 K=8")]


def test_plot_front_to_a_path_and_to_a_file_object(tmp_path: Path) -> None:
    kwargs = {"others": OTHERS, "baselines": BASELINES, "quality": "fdd", "title": "t", "budget": 4e9}
    out = plot_front(tmp_path / "deep" / "front.png", FRONT, **kwargs)
    assert out == tmp_path / "deep" / "front.png" and out.read_bytes().startswith(PNG_SIGNATURE)
    buffer = io.BytesIO()
    assert plot_front(buffer, FRONT, **kwargs) is buffer
    assert buffer.getvalue() == out.read_bytes()  # the same drawing either way
    image = decode(buffer.getvalue())
    assert image.shape == (550, 825, 3)  # 7.5 x 5 inches at 110 dpi
    assert pixels_near(image, BASELINE_RED).sum() > 50  # the baselines' squares and labels


def test_a_latency_plot_draws_milliseconds_without_a_bitops_budget() -> None:
    """The same points read as milliseconds draw the same front; the BitOps budget line (dashed grey) is not drawn
    on a latency axis, and the axis label differs."""
    ms = [PlotPoint(p.cost / 1e8, p.quality) for p in FRONT]  # 20, 30, 60 ms
    latency = decode(plot_front(io.BytesIO(), ms, budget=40.0, latency="cpu-int8 at batch 16").getvalue())
    plain = decode(plot_front(io.BytesIO(), ms).getvalue())
    with_budget = decode(plot_front(io.BytesIO(), ms, budget=40.0).getvalue())
    assert pixels_near(latency, FRONT_BLUE).sum() == pixels_near(plain, FRONT_BLUE).sum() > 100
    assert not np.array_equal(latency, plain)  # the x label
    assert not np.array_equal(with_budget, plain)  # a BitOps plot draws the budget line


def test_fp_references_are_drawn_as_labelled_diamonds_on_a_bitops_plot_only() -> None:
    """The FP model on the front's schedules: dark diamonds with their K (more near-black pixels than the same plot
    without them); a reference without a measured quality is left out, and a latency plot draws none."""
    references = [PlotPoint(3e10, 0.004, "FP K=4"), PlotPoint(4.5e10, 0.002, "FP K=6")]
    dark = (0x11, 0x11, 0x11)
    plain = decode(plot_front(io.BytesIO(), FRONT).getvalue())
    drawn = decode(plot_front(io.BytesIO(), FRONT, references=references).getvalue())
    assert pixels_near(drawn, dark, 30).sum() > pixels_near(plain, dark, 30).sum() + 60
    points = [{"bitops": 3e10, "quality": 0.004, "steps": 4}, {"bitops": 4.5e10, "quality": None, "steps": 6}]
    assert reference_points(points) == [PlotPoint(3e10, 0.004, "FP K=4")]


def test_plot_search_still_writes_its_file(tmp_path: Path) -> None:
    """``workers.report.plot_search`` (the CLI's plot) calls ``plot_front`` with a path, as before."""
    sites = ("a.conv", "b.attn.qk")
    base = Candidate.uniform((750, 500, 250, 0), sites, 4, 4)
    mixed = Candidate.from_maps((700, 400, 90, 0), {"a.conv": 4, "b.attn.qk": 8}, {"a.conv": 6, "b.attn.qk": 8})
    evaluations = [Evaluation(base.key(), 0.02, 1e9, 10.0), Evaluation(mixed.key(), 0.01, 2e9, 12.0)]
    candidates = {c.key(): c for c in (base, mixed)}
    out = plot_search(tmp_path / "pareto.png", evaluations, evaluations[1:], candidates, [base], quality="mse")
    assert out == tmp_path / "pareto.png" and out.read_bytes().startswith(PNG_SIGNATURE)


def test_an_empty_plot_says_no_points_yet() -> None:
    empty = decode(plot_front(io.BytesIO(), [], others=[PlotPoint(float("nan"), 1.0)]).getvalue())
    drawn = decode(plot_front(io.BytesIO(), FRONT).getvalue())
    middle = (slice(200, 350), slice(250, 600))
    assert pixels_near(empty[middle], NOTE_GREY, 40).sum() > 100  # the note, in grey, in the middle
    assert pixels_near(drawn[middle], NOTE_GREY, 40).sum() < pixels_near(empty[middle], NOTE_GREY, 40).sum()


# -- the route ---------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, Store, FilledJob]]:
    settings = Settings(data_dir=tmp_path / "data", model_root=model_root(tmp_path / "models"))
    store = Store.from_settings(settings)
    try:
        filled = fill_finished_job(store)
        with TestClient(create_app(settings, store=store)) as client:
            yield client, store, filled
    finally:
        store.close()


def test_front_png(served: tuple[TestClient, Store, FilledJob]) -> None:
    client, _, job = served
    response = client.get(f"{API}/jobs/{job.job_id}/front.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = decode(response.content)
    assert image.shape == (550, 825, 3)
    assert pixels_near(image, BASELINE_RED).sum() > 100  # six labelled uniform baselines
    etag = response.headers["etag"]
    again = client.get(f"{API}/jobs/{job.job_id}/front.png", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = client.get(f"{API}/jobs/{job.job_id}/front.png", params={"budget": 3e9})
    assert other.status_code == 200 and other.headers["etag"] != etag and other.content != response.content
    assert client.get(f"{API}/jobs/{job.job_id}/front.png", params={"budget": 0}).status_code == 422


def test_front_png_of_unknown_and_empty_jobs(served: tuple[TestClient, Store, FilledJob]) -> None:
    client, store, _ = served
    missing = client.get(f"{API}/jobs/4242/front.png")
    assert missing.status_code == 404 and missing.json() == {"detail": "job 4242 does not exist"}
    pending, _ = store.create_job({**SPEC, "seed": 99})
    empty = client.get(f"{API}/jobs/{pending.id}/front.png")
    assert empty.status_code == 200 and empty.content.startswith(PNG_SIGNATURE)
    image = decode(empty.content)
    assert pixels_near(image[200:350, 250:600], NOTE_GREY, 40).sum() > 100  # "no points yet"
    assert pixels_near(image, BASELINE_RED).sum() == 0


def test_front_png_needs_the_token_when_reads_do(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_token="s3cret", read_token_required=True)
    store = Store.from_settings(settings)
    try:
        job, _ = store.create_job(SPEC)
        with TestClient(create_app(settings, store=store)) as client:
            assert client.get(f"{API}/jobs/{job.id}/front.png").status_code == 401
            ok = client.get(f"{API}/jobs/{job.id}/front.png", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200 and ok.content.startswith(PNG_SIGNATURE)
    finally:
        store.close()


def test_the_route_imports_neither_torch_nor_ray(tmp_path: Path) -> None:
    """In a fresh interpreter: build the app and draw a plot; torch and ray must stay unimported."""
    script = f"""
import sys
from pathlib import Path
from fastapi.testclient import TestClient
from server.app import create_app
from server.settings import Settings
from server.store import Store
from tests.server.test_web import fill_finished_job, model_root

tmp = Path({str(tmp_path)!r})
settings = Settings(data_dir=tmp / "data", model_root=model_root(tmp / "models"))
store = Store.from_settings(settings)
job = fill_finished_job(store)
with TestClient(create_app(settings, store=store)) as client:
    response = client.get(f"/api/v1/jobs/{{job.job_id}}/front.png")
    assert response.status_code == 200, response.text
    assert client.get("/").status_code == 200
heavy = sorted(m for m in ("torch", "ray", "diffusers") if m in sys.modules)
assert "matplotlib" in sys.modules
print("heavy:", heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "heavy: []"


# -- one rule for the uniform baselines ----------------------------------------------------------------------


def initial_population(space: SearchSpace, size: int, seed: int = 3) -> list[Candidate]:
    """What a search's first generation holds: the seeded uniform baselines (diagonal WbAb), the mixed uniform
    ones while there is room (W4A8, ...), then random members of the space."""
    rng = random.Random(seed)
    population = [*space.seed_candidates(), *space.mixed_uniform_candidates()[:2]]
    while len(population) < size:
        steps = rng.choice(space.steps)
        timesteps = [rng.choice(group) for group in space.descending_groups(steps)]
        bits = {s: rng.choice(space.bit_options) for s in space.sites}
        population.append(Candidate.from_maps(timesteps, bits, {s: rng.choice(space.bit_options) for s in space.sites}))
    return population


def test_the_local_plot_and_the_server_mark_the_same_uniform_baselines(tmp_path: Path) -> None:
    """24 candidates of a first generation: 6 seeded diagonal baselines and 2 mixed uniform ones (W4A6, W4A8).
    ``tmpq search``'s plot (``workers.report``) used to mark the 6 seeds only, the server 8; both now ask
    ``search.baselines.is_uniform_baseline``, and mark the same 8 (also when the local plot is given the seeds
    instead of T)."""
    space = SearchSpace(1000, (8, 10), tuple(WEB_SITES), (4, 6, 8), "nonuniform")
    population = initial_population(space, 24)
    candidates = {c.key(): c for c in population}
    assert len(candidates) == 24
    rng = random.Random(5)
    evaluations = [evaluate(c, rng) for c in population]
    evaluations = [e if e.ok else Evaluation(e.key, 0.5, e.bitops, 1.0) for e in evaluations]
    front = pareto_front(evaluations)

    local = baseline_keys(candidates, num_train_timesteps=1000)
    assert local == baseline_keys(candidates, seeds=space.seed_candidates())  # cli.py's call before it passes T
    assert len(local) == 8 and {c.key() for c in space.seed_candidates()} < local

    settings = Settings(data_dir=tmp_path / "data", model_root=model_root(tmp_path / "models"))  # T = 1000
    store = Store.from_settings(settings)
    try:
        job, _ = store.create_job({"version": 2, "model": {"path": "digits-ddpm-16"}, "search": {"steps": [8, 10]}})
        store.claim_job("runner-plots", 60)
        store.record_generation(
            job.id, 0, [(c, e) for c, e in zip(population, evaluations, strict=True)], [e.key for e in front], 1.0
        )
        with TestClient(create_app(settings, store=store)) as client:
            items = client.get(f"{API}/jobs/{job.id}/candidates", params={"limit": 1000}).json()["items"]
    finally:
        store.close()
    assert len(items) == 24
    assert {c["key"] for c in items if c["is_baseline"]} == local
    assert server_baselines.is_uniform_baseline is search_baselines.is_uniform_baseline  # the plot route's too

    # and the local plot draws exactly those as its red squares
    drawn = plot_search(tmp_path / "local.png", evaluations, front, candidates, num_train_timesteps=1000, quality="mse")
    front_keys = {e.key for e in front}
    expected = plot_front(
        io.BytesIO(),
        [PlotPoint(e.bitops, e.quality) for e in front],
        others=[PlotPoint(e.bitops, e.quality) for e in evaluations if e.key not in front_keys | local],
        baselines=[
            PlotPoint(e.bitops, e.quality, f"{candidates[e.key].bits_summary()} K={candidates[e.key].steps}")
            for e in evaluations
            if e.key in local
        ],
        quality="mse",
    )
    assert drawn.read_bytes() == expected.getvalue()
