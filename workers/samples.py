"""The sample grids a finished job shows: the FP model, and for each front point the point and the FP model on the
point's own schedule, per prompt.

Drawn by the driver at the end of a job, all from the same noise, one row per prompt (a text-to-image model's
first :data:`MAX_GRID_ROWS` prompts, :data:`GRID_COLUMNS` images each; an unconditional model fills the rows with
images), and handed to the sink's optional ``on_samples`` (:func:`workers.protocol.report_samples`): the server
stores them for ``GET /jobs/{id}/samples`` and the web page (which shows, for the selected point, FP at the reference
schedule, FP at the point's schedule and the point side by side), ``tmpq search`` writes them beside the front.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.candidate import Candidate
from search.evaluator import Evaluation
from search.pareto import knee_point

#: Images per row of a grid, and at most this many rows (prompts).
GRID_COLUMNS = 4
MAX_GRID_ROWS = 8
#: The noise seed of the grids (the same for the FP model and the candidate).
GRID_SEED = 0
#: At most this many front points get grids (the knee and points spread evenly over the front's cost range).
MAX_GRID_POINTS = 24


def point_grid_name(key: str) -> str:
    """The grid name of a front point's samples."""
    return f"p-{key}"


def schedule_grid_name(timesteps: Sequence[int]) -> str:
    """The grid name of the FP model's samples on ``timesteps``."""
    digest = hashlib.sha256(",".join(str(t) for t in timesteps).encode()).hexdigest()[:12]
    return f"s-{digest}"


def grid_points(front: Sequence[Evaluation], knee: str) -> list[Evaluation]:
    """The front points that get grids: all of them up to :data:`MAX_GRID_POINTS`, else the knee and points evenly
    spaced in BitOps order."""
    ordered = sorted(front, key=lambda e: (e.bitops, e.key))
    if len(ordered) <= MAX_GRID_POINTS:
        return ordered
    step = (len(ordered) - 1) / (MAX_GRID_POINTS - 2)
    chosen = {ordered[round(i * step)].key for i in range(MAX_GRID_POINTS - 1)} | {knee}
    return [e for e in ordered if e.key in chosen]


def sample_grids(job: Any, front: Sequence[Evaluation], candidates: Mapping[str, Candidate]) -> dict[str, Any]:
    """The grids of a prepared job (``workers.driver.PreparedJob``) as a ``workers.protocol.Samples`` mapping:
    ``{"images": {name: png}, "rows": [...], "columns": 4, "knee": key, "points": {key: {"grid", "fp_grid",
    "bits", "steps"}}, "fp_steps": n, "solver": ..., "seed": 0}``. ``images`` holds ``fp`` (FP at the reference
    schedule), ``knee`` (the knee point), and per point of :func:`grid_points` its grid and the FP model's on its
    schedule (:func:`point_grid_name`, :func:`schedule_grid_name`); empty when the front is."""
    from supernet.images import save_grid
    from supernet.sampling import uniform_schedule

    usable = [e for e in front if e.ok]
    if not usable:
        return {"images": {}, "rows": [], "columns": GRID_COLUMNS}
    knee = candidates[knee_point(usable).key]
    points = [candidates[e.key] for e in grid_points(usable, knee.key())]
    model, supernet, spec = job.model, job.supernet, job.spec
    conditioning = getattr(model, "conditioning", None)
    if conditioning is not None:
        prompts = conditioning.prompts[:MAX_GRID_ROWS]
        rows = list(prompts)
        model.configure(dataclasses.replace(conditioning, prompts=prompts, images_per_prompt=GRID_COLUMNS))
    else:
        rows = [""] * min(MAX_GRID_ROWS, 4)
    n = len(rows) * GRID_COLUMNS
    sampler = model.sampler(batch_size=spec.evaluation.batch_size, solver=spec.search.solver)
    fp_schedule = uniform_schedule(spec.evaluation.reference_steps, model.num_train_timesteps)
    batches: dict[str, Any] = {}
    try:
        with supernet.assembled(supernet.uniform(32, 32, fp_schedule)):
            batches["fp"] = sampler.sample(fp_schedule, n, GRID_SEED)
        for c in points:
            name = schedule_grid_name(c.timesteps)
            if name not in batches:
                with supernet.assembled(supernet.uniform(32, 32, c.timesteps)):
                    batches[name] = sampler.sample(c.timesteps, n, GRID_SEED)
            with supernet.assembled(c):
                batches[point_grid_name(c.key())] = sampler.sample(c.timesteps, n, GRID_SEED)
    finally:
        if conditioning is not None:
            model.configure(conditioning)
    batches["knee"] = batches[point_grid_name(knee.key())]
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="tmpq-grid-") as tmp:
        for name, batch in batches.items():
            images[name] = save_grid(batch, Path(tmp) / f"{name}.png", ncol=GRID_COLUMNS).read_bytes()
    return {
        "images": images,
        "rows": rows,
        "columns": GRID_COLUMNS,
        "knee": knee.key(),
        "knee_bits": knee.bits_summary(),
        "knee_steps": knee.steps,
        "points": {
            c.key(): {
                "grid": point_grid_name(c.key()),
                "fp_grid": schedule_grid_name(c.timesteps),
                "bits": c.bits_summary(),
                "steps": c.steps,
            }
            for c in points
        },
        "fp_steps": spec.evaluation.reference_steps,
        "solver": spec.search.solver,
        "seed": GRID_SEED,
    }
