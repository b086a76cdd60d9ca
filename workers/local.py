"""Running a search locally, without a server: results go to a directory instead of a database.

``tmpq search --config job.yaml`` uses :class:`DirectorySink`: every generation's candidates are appended to
``candidates.jsonl`` (flushed to disk) and the checkpoint is replaced atomically before the generation is
reported, so ``--resume`` continues a stopped search and ends with the same front.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.candidate import Candidate
from search.checkpoint import write_atomic
from search.evaluator import Evaluation

log = logging.getLogger(__name__)

CANDIDATES_FILE = "candidates.jsonl"
CHECKPOINT_FILE = "checkpoint.bin"
FRONT_FILE = "front.json"
PLOT_FILE = "pareto.png"
WARNINGS_FILE = "warnings.txt"
CALIBRATION_FILE = "calibration.json"


class DirectorySink:
    """A ``JobSink`` that writes a job's generations under ``out_dir``."""

    job_id = 0

    def __init__(
        self,
        out_dir: str | Path,
        on_stored: Callable[[Any], None] | None = None,
        on_activity: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``on_stored(record)`` is called after each generation was written; ``on_activity(activity)`` with what
        the job is doing (the driver's progress reports, see ``workers.protocol``)."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.on_stored = on_stored
        self.on_activity = on_activity
        self.evaluations: dict[str, Evaluation] = {}
        self.candidates: dict[str, Candidate] = {}
        self.hypervolumes: list[float] = []
        self.rescored: list[Evaluation] = []
        self.fp_references: list[dict[str, Any]] = []
        for candidate, evaluation, _ in read_candidates(self.out_dir):
            self.candidates[evaluation.key] = candidate
            self.evaluations[evaluation.key] = evaluation

    def on_samples(self, samples: dict[str, Any]) -> None:
        """Write the job's sample grids as ``samples_<name>.png`` (``workers.samples``) and their description."""
        for name, png in samples.get("images", {}).items():
            (self.out_dir / f"samples_{name}.png").write_bytes(png)
        meta = {k: v for k, v in samples.items() if k != "images"}
        (self.out_dir / "samples.json").write_text(json.dumps(meta, indent=2))

    def on_warning(self, message: str) -> None:
        """Append a line the job warned about (and went on after) to ``warnings.txt``."""
        with (self.out_dir / WARNINGS_FILE).open("a") as fh:
            fh.write(message + "\n")

    def on_calibration(self, summary: dict[str, Any]) -> None:
        """Write the summary of the job's calibrated supernet to ``calibration.json``."""
        (self.out_dir / CALIBRATION_FILE).write_text(json.dumps(summary, indent=1) + "\n")

    def on_progress(self, activity: dict[str, Any]) -> None:
        """What the job is doing (loading, calibrating, searching, re-scoring), passed to ``on_activity``."""
        if self.on_activity is not None:
            self.on_activity(activity)

    def on_generation(self, record: Any) -> None:
        """Append the generation's new evaluations, then replace the checkpoint; then report progress."""
        new = [e for e in record.evaluations if e.key not in self.evaluations]
        with (self.out_dir / CANDIDATES_FILE).open("a") as fh:
            for e in new:
                row = {
                    "generation": record.generation,
                    "candidate": record.candidates[e.key].to_dict(),
                    "evaluation": e.to_dict(),
                }
                fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for e in new:
            self.evaluations[e.key] = e
            self.candidates[e.key] = record.candidates[e.key]
        if record.checkpoint is not None:
            write_atomic(self.out_dir / CHECKPOINT_FILE, record.checkpoint)
        self.hypervolumes.append(record.hypervolume)
        if self.on_stored is not None:
            self.on_stored(record)

    def on_rescored(self, evaluations: Sequence[Evaluation]) -> None:
        """Keep the front's analysis and FDD re-scores (written with the front)."""
        self.rescored = list(evaluations)

    def on_fp_references(self, points: Sequence[dict[str, Any]]) -> None:
        """Keep the FP reference points of the front's schedules (written with the front and drawn on the plot)."""
        self.fp_references = [dict(p) for p in points]

    def raise_if_interrupted(self) -> None:
        """A local search is interrupted with Ctrl-C only."""

    def resume_state(self) -> Any:
        """A ``ResumeState`` from what this directory holds, or ``None`` if it holds no checkpoint."""
        from workers.protocol import ResumeState

        path = self.out_dir / CHECKPOINT_FILE
        if not path.exists():
            return None
        rows = read_candidates(self.out_dir)
        last = max((g for _, _, g in rows), default=-1)
        return ResumeState(
            last_generation=last,
            checkpoint=path.read_bytes(),
            checkpoint_generation=last,
            known=tuple((c, e) for c, e, _ in rows),
        )


def read_candidates(out_dir: str | Path) -> list[tuple[Candidate, Evaluation, int]]:
    """Every (candidate, evaluation, generation) stored in ``out_dir`` (a torn last line is ignored)."""
    path = Path(out_dir) / CANDIDATES_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("ignoring a torn line in %s", path)
            continue
        rows.append(
            (Candidate.from_dict(row["candidate"]), Evaluation.from_dict(row["evaluation"]), int(row["generation"]))
        )
    return rows
