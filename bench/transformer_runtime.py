"""Run time of the DiT testbed's exports against its FP32 transformer, per step, measured side by side.

For uniform W8A8 and a mixed candidate (site bit-widths drawn from {4, 6, 8} with seed 7) of ``models/digits-dit``
at 10 steps, each exported with the ``reference`` (fake-quant) and the ``cpu-int8`` backend, it times one denoiser
call of the export and of the FP32 model interleaved in one process (:func:`supernet.runtime.measure.measure_export`,
one torch thread, fastest of the repeats) and reports ``step_ms``, ``fp_step_ms``, ``speedup_per_step`` and the
denoiser's bytes. ``cpu-int8`` compiles with Inductor on its first call (about 40 s per export on 2 cores).

Prints progress to stderr and one JSON object as the last stdout line; ``--quick`` (batch 16, 3 repeats) is a smoke
run.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Keep bench/ off the import path so `supernet` is the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import logging
import random
import tempfile
import time
from typing import Any

import torch

from supernet.artifact import get_or_build_supernet
from supernet.export import export_candidate
from supernet.models import load_model
from supernet.models.directory import DIGITS_DIT_DIR
from supernet.runtime.measure import measure_export
from supernet.sampling import uniform_schedule


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = load_model(args.model)
    supernet = get_or_build_supernet(model, [4, 6, 8])
    schedule = uniform_schedule(10, model.num_train_timesteps)
    candidates = {
        "w8a8": supernet.uniform(8, 8, schedule),
        "mixed": supernet.random_candidate(random.Random(7), schedule),
    }
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cand in candidates.items():
            for backend in ("reference", "cpu-int8"):
                path = export_candidate(supernet, cand, Path(tmp) / f"{name}-{backend}", backend=backend)
                start = time.perf_counter()
                m = measure_export(path, args.model, batch_size=args.batch, repeats=args.repeats, memory=False)
                out[f"{name}/{backend}"] = {
                    "bits": cand.bits_summary(),
                    "step_ms": m.step_ms,
                    "fp_step_ms": m.fp_step_ms,
                    "speedup_per_step": round(m.fp_step_ms / m.step_ms, 3),
                    "weight_bytes": m.weight_bytes,
                    "fp_weight_bytes": m.fp_weight_bytes,
                    "seconds": round(time.perf_counter() - start, 1),
                }
                print(f"[bench/transformer_runtime] {name} {backend}: {out[f'{name}/{backend}']}", file=sys.stderr)
    supernet.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DIGITS_DIT_DIR), help="a DiTPipeline directory (default: digits-dit)")
    parser.add_argument("--quick", action="store_true", help="batch 16, 3 repeats (a smoke run)")
    parser.add_argument("--batch", type=int, default=None, help="batch of the timed calls (default 64; quick 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 9; quick 3)")
    args = parser.parse_args()
    args.batch = args.batch or (16 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 9)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    start = time.perf_counter()
    result: dict[str, Any] = {Path(args.model).resolve().name: run(args), "batch": args.batch, "threads": 1}
    result.update(quick=args.quick, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
