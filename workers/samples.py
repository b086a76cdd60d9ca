"""The sample grids a finished job shows: the FP model and the chosen candidate (the front's knee), per prompt.

Drawn by the driver at the end of a job from the same noise for both, one row per prompt (a text-to-image model's
first :data:`MAX_GRID_ROWS` prompts, :data:`GRID_COLUMNS` images each; an unconditional model fills the rows with
images), and handed to the sink's optional ``on_samples`` (:func:`workers.protocol.report_samples`): the server
stores them for ``GET /jobs/{id}/samples`` and the web page, ``tmpq search`` writes them beside the front.
"""

from __future__ import annotations

import dataclasses
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


def sample_grids(job: Any, front: Sequence[Evaluation], candidates: Mapping[str, Candidate]) -> dict[str, Any]:
    """The FP and knee grids of a prepared job (``workers.driver.PreparedJob``) as a ``workers.protocol.Samples``
    mapping: ``{"images": {"fp": png, "knee": png}, "rows": [...], "columns": 4, "knee": key, "fp_steps": n,
    "solver": ...}``; empty ``images`` when the front is empty."""
    from supernet.images import save_grid
    from supernet.sampling import uniform_schedule

    usable = [e for e in front if e.ok]
    if not usable:
        return {"images": {}, "rows": [], "columns": GRID_COLUMNS}
    knee = candidates[knee_point(usable).key]
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
    try:
        with supernet.assembled(supernet.uniform(32, 32, fp_schedule)):
            fp = sampler.sample(fp_schedule, n, GRID_SEED)
        with supernet.assembled(knee):
            quantized = sampler.sample(knee.timesteps, n, GRID_SEED)
    finally:
        if conditioning is not None:
            model.configure(conditioning)
    images: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="tmpq-grid-") as tmp:
        for name, batch in (("fp", fp), ("knee", quantized)):
            images[name] = save_grid(batch, Path(tmp) / f"{name}.png", ncol=GRID_COLUMNS).read_bytes()
    return {
        "images": images,
        "rows": rows,
        "columns": GRID_COLUMNS,
        "knee": knee.key(),
        "knee_bits": knee.bits_summary(),
        "knee_steps": knee.steps,
        "fp_steps": spec.evaluation.reference_steps,
        "solver": spec.search.solver,
        "seed": GRID_SEED,
    }
