"""FDD of the shipped testbed: the real-vs-real floor, FP at 100/20/10 DDIM steps, and FDD's noise across seeds.

Prints one JSON object as its last line. ``--quick``: one seed, 512 samples, under a minute or two.
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts bench/ first on sys.path, where benchmark names (supernet.py, search.py) shadow the
# packages they measure: drop it.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import json
import statistics

import torch

from supernet.metrics import FDDScorer, frechet_distance
from supernet.models import TESTBED_DIR, load_model
from supernet.sampling import uniform_schedule
from supernet.zoo.digits import load_digits_tensor


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 2),
        "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
        "values": [round(v, 2) for v in values],
    }


def real_floor(scorer: FDDScorer, seeds: list[int]) -> dict[str, dict[str, float]]:
    """Real digits against real digits: disjoint random subsets of 512, and the two halves."""
    real, _ = load_digits_tensor()
    feats = scorer.features(real)
    out: dict[str, list[float]] = {"512_vs_512": [], "halves": []}
    for seed in seeds:
        perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed)).numpy()
        out["512_vs_512"].append(frechet_distance(feats[perm[:512]], feats[perm[512:1024]]))
        half = len(real) // 2
        out["halves"].append(frechet_distance(feats[perm[:half]], feats[perm[half:]]))
    return {k: _stats(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else [0, 1, 2]
    sizes = [512] if args.quick else [512, 1024]
    steps_list = [10, 20] if args.quick else [100, 20, 10]
    model = load_model(TESTBED_DIR)
    sampler = model.sampler(batch_size=128)
    scorer = FDDScorer.for_testbed()
    fp: dict[str, dict[str, float]] = {}
    for steps in steps_list:
        per_size: dict[int, list[float]] = {n: [] for n in sizes}
        for seed in seeds:
            images = sampler.sample(uniform_schedule(steps, model.num_train_timesteps), max(sizes), seed=1000 + seed)
            for n in sizes:
                per_size[n].append(scorer.score(images[:n]))
        for n in sizes:
            fp[f"ddim{steps}_n{n}"] = _stats(per_size[n])
    print(
        json.dumps(
            {
                "bench": "quality",
                "quick": args.quick,
                "seeds": seeds,
                "real_vs_real": real_floor(scorer, seeds),
                "fp": fp,
            }
        )
    )


if __name__ == "__main__":
    main()
