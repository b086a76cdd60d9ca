"""Benchmark of conditional models: the shipped text-to-image and class-conditional testbeds (digits-sd and the DiT
digits-dit), or any local StableDiffusionPipeline or DiTPipeline directories (``--model``, repeatable).

Under each model's key (its directory name: ``"digits-sd"``, ``"digits-dit"``) it reports:

- ``fp_prompt_accuracy`` (a text-to-image model) or ``fp_class_accuracy`` (a class-conditional one), ``fp_fdd``: the
  FP pipeline at its default steps and guidance (the model's ``tmpq.json``) with DPM-Solver++: the share of samples
  the shipped digits classifier labels as the digit their prompt (class) names, and FDD against the real digits (the
  testbeds only; ``null`` for a model without a feature extractor);
- ``eval_seconds_64``: one candidate evaluated on 64 samples (the search's unit of work);
- ``overhead_ratio``: a random mixed candidate's sampling time over FP's, side by side, at one torch thread;
- ``rows``: uniform W8A8, W6A6 and W4A8 at the default steps with the default calibration (the shipped supernet when
  there is one): MSE against the FP pipeline's images from the same noise and prompts (classes), prompt (class)
  accuracy, FDD;
- ``export_bit_identical``: a mixed candidate exported and loaded back samples bit-identically to the supernet.

Prints progress to stderr and one JSON object as the last stdout line. ``--quick`` (under a minute once the
supernet is calibrated or shipped) uses fewer samples; its figures are a smoke test, not the reference.
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
import statistics
import tempfile
import time
from typing import Any

import torch

from supernet.artifact import get_or_build_supernet
from supernet.calibration import CalibrationSettings
from supernet.conditioning import model_defaults
from supernet.export import export_candidate, load
from supernet.metrics import FDDScorer, mse
from supernet.models import DIGITS_SD_DIR, features_for, load_model, prompt_labels_for
from supernet.models.directory import DIGITS_DIT_DIR
from supernet.models.kinds import kind_named
from supernet.sampling import uniform_schedule

ROWS = (("W8A8", 8, 8), ("W6A6", 6, 6), ("W4A8", 4, 8))
SOLVER = "dpmsolver++"


def _log(msg: str) -> None:
    print(f"[bench/conditional] {msg}", file=sys.stderr, flush=True)


def _accuracy(scorer: FDDScorer | None, labels: dict[str, int] | None, images: torch.Tensor, prompts: list[str]):
    if scorer is None or not labels:
        return None
    target = torch.tensor([labels[p] for p in prompts])
    return round(float((scorer.classes(images) == target).float().mean()), 4)


def _fdd(scorer: FDDScorer | None, images: torch.Tensor) -> float | None:
    return round(scorer.score(images), 3) if scorer is not None else None


def run(args: argparse.Namespace, path: str) -> dict[str, Any]:
    model = load_model(path)
    conditioning = model.conditioning
    if conditioning is None:
        raise SystemExit(f"{path}: the model ships no prompts.txt; give it prompts first")
    accuracy = "class_accuracy" if kind_named(model.kind).condition == "classes" else "prompt_accuracy"
    defaults = model_defaults(path)
    steps = int(defaults.get("default_steps", 25))
    schedule = uniform_schedule(steps, model.num_train_timesteps)
    features = features_for(model.path)
    scorer = FDDScorer.for_testbed(features) if features is not None else None
    labels = prompt_labels_for(model.path)
    n = args.samples
    prompts = [conditioning.prompts[i] for i in conditioning.prompt_index(n)]
    _log(f"{model!r}: {len(conditioning.prompts)} prompts, guidance {conditioning.guidance_scale}, {steps} steps")

    start = time.perf_counter()
    calib = CalibrationSettings.from_dict({"strategy": args.strategy} if args.strategy else {})
    supernet = get_or_build_supernet(model, [4, 6, 8], calib_settings=calib, batch_size=64)
    calib_s = time.perf_counter() - start
    _log(f"supernet ready in {calib_s:.0f} s ({supernet.calibration_source or 'calibrated'})")
    sampler = model.sampler(batch_size=64, solver=SOLVER)
    fp = sampler.sample(schedule, n, args.seed)
    out: dict[str, Any] = {
        "samples": n,
        "steps": steps,
        "guidance_scale": conditioning.guidance_scale,
        "solver": SOLVER,
        f"fp_{accuracy}": _accuracy(scorer, labels, fp, prompts),
        "fp_fdd": _fdd(scorer, fp),
        "supernet_seconds": round(calib_s, 1),
    }
    _log(f"FP: {accuracy.replace('_', ' ')} {out[f'fp_{accuracy}']}, FDD {out['fp_fdd']}")

    rows = {}
    for name, w, a in ROWS:
        with supernet.assembled(supernet.uniform(w, a, schedule)):
            images = sampler.sample(schedule, n, args.seed)
        rows[name] = {
            "mse": round(mse(images, fp), 6),
            accuracy: _accuracy(scorer, labels, images, prompts),
            "fdd": _fdd(scorer, images),
        }
        _log(f"{name}: {rows[name]}")
    out["rows"] = rows

    mixed = supernet.random_candidate(random.Random(7), schedule)
    with supernet.assembled(mixed):
        start = time.perf_counter()
        searched = sampler.sample(schedule, 64, args.seed)
        out["eval_seconds_64"] = round(time.perf_counter() - start, 3)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp_times, q_times = [], []
        batch = 16 if args.quick else 64
        for r in range(args.repeats):
            for kind in ("fp", "q") if r % 2 == 0 else ("q", "fp"):
                cand = mixed if kind == "q" else supernet.uniform(32, 32, schedule)
                with supernet.assembled(cand):
                    t0 = time.perf_counter()
                    sampler.sample(schedule, batch, r)
                    (q_times if kind == "q" else fp_times).append(time.perf_counter() - t0)
        out["overhead_ratio"] = round(statistics.median(q_times) / statistics.median(fp_times), 4)
        out["overhead_candidate"] = mixed.bits_summary()
    finally:
        torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as tmp:
        path = export_candidate(supernet, mixed, Path(tmp) / "export", solver=SOLVER)
        exported = load(path)
        out["export_bit_identical"] = bool(torch.equal(exported.sample(64, args.seed), searched))
    supernet.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a StableDiffusionPipeline or DiTPipeline directory (repeatable; default: digits-sd and digits-dit)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples and repeats (a smoke run)")
    parser.add_argument("--samples", type=int, default=None, help="samples per measurement (default 500; quick 64)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", default=None, help="calibration strategy (default: the default calibration)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.samples = args.samples or (64 if args.quick else 500)
    args.repeats = args.repeats or (2 if args.quick else 6)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    models = args.model or [str(DIGITS_SD_DIR), str(DIGITS_DIT_DIR)]
    start = time.perf_counter()
    result: dict[str, Any] = {Path(m).resolve().name: run(args, m) for m in models}
    result.update(quick=args.quick, seconds=None)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
