"""Sampling speed on the shipped testbed: UNet forward ms and DDIM sampling seconds at batch 64.

Prints one JSON object as its last line. ``--quick`` keeps it under a minute.
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
import time

import torch

from supernet.models import TESTBED_DIR, load_model
from supernet.sampling import uniform_schedule


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (under 60 s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(TESTBED_DIR)
    sampler = model.sampler(batch_size=args.batch)
    x = torch.randn(args.batch, 1, 16, 16)
    with torch.no_grad():
        model.predict_noise(x, 500)  # warm-up
        forward_ms = 1000 * _median_seconds(lambda: model.predict_noise(x, 500), 10 if args.quick else 30)
    result = {
        "bench": "sampling",
        "batch": args.batch,
        "threads": args.threads,
        "quick": args.quick,
        "unet_forward_ms": round(forward_ms, 2),
    }
    for steps in (10, 20, 100):
        sched = uniform_schedule(steps, model.num_train_timesteps)
        repeats = 1 if (args.quick and steps == 100) else (2 if args.quick else 3)
        secs = _median_seconds(lambda s=sched: sampler.sample(s, args.batch, seed=0), repeats)
        result[f"sample_{steps}_steps_s"] = round(secs, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
