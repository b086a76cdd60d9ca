"""The ``tmpq`` command line: a thin face over the library.

Exit codes: 0 ok, 1 the command failed, 2 bad usage or bad input (one line on stderr naming the field).
Heavy modules (torch, ray, fastapi) are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from search.errors import ConfigError, InvalidCandidate, ModelLoadError, ScheduleError, TmpqError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
USAGE_ERRORS = (ConfigError, ModelLoadError, ScheduleError, InvalidCandidate)

Handler = Callable[[argparse.Namespace], int]


def _cmd_zoo_train_digits(args: argparse.Namespace) -> int:
    from supernet.zoo.testbed import TrainSettings, train_digits_ddpm

    start = time.perf_counter()
    out = train_digits_ddpm(args.out, TrainSettings(steps=args.steps, seed=args.seed, threads=args.threads))
    print(f"trained the digits DDPM in {time.perf_counter() - start:.0f} s -> {out}")
    return EXIT_OK


def _cmd_zoo_train_features(args: argparse.Namespace) -> int:
    from supernet.zoo.features import FeatureTrainSettings, train_features

    out, acc = train_features(args.out, FeatureTrainSettings(seed=args.seed))
    print(f"trained the digits classifier: test accuracy {acc:.4f} -> {out}")
    return EXIT_OK


def _cmd_zoo_ship_supernet(args: argparse.Namespace) -> int:
    from supernet.artifact import ship_supernet
    from supernet.zoo.loader import load_model

    bits = sorted(set(args.bits))
    if not bits or any(not 2 <= b <= 8 for b in bits):
        raise ConfigError("bits", "every bit option must be in 2..8")
    start = time.perf_counter()
    path = ship_supernet(load_model(args.model), bits)
    print(f"stored the calibrated supernet for bits {bits} in {path} ({time.perf_counter() - start:.0f} s)")
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from supernet.images import save_grid
    from supernet.metrics import FDDScorer, psnr
    from supernet.sampling import uniform_schedule
    from supernet.zoo.loader import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    sampler = model.sampler(batch_size=64)
    scorer = FDDScorer.for_testbed() if Path(args.model).resolve() == TESTBED_DIR.resolve() else None
    n_params = sum(p.numel() for p in model.unet.parameters())
    print(f"model {model.path} (hash {model.model_hash}), {n_params:,} parameters, T={model.num_train_timesteps}")
    results = {}
    for steps in sorted(set(args.steps), reverse=True):
        start = time.perf_counter()
        images = sampler.sample(uniform_schedule(steps, model.num_train_timesteps), args.samples, seed=args.seed)
        results[steps] = images
        fdd = f", FDD {scorer.score(images):7.2f}" if scorer is not None else ""
        print(f"DDIM {steps:>3} steps: {args.samples} samples in {time.perf_counter() - start:5.1f} s{fdd}")
        print(f"wrote {save_grid(images[:64], Path(args.out) / f'samples_{steps}_steps.png', ncol=8)}")
    longest = max(results)
    for steps, images in results.items():
        if steps != longest:
            print(f"PSNR of {steps} steps vs {longest} steps (same noise): {psnr(images, results[longest]):.2f} dB")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from server.cli_remote import fp_bitops, print_front, wait_for_job
    from server.client import TmpqClient
    from server.demo import DEMO_JOB, export_and_sample_knee, start_server, supernet_source

    out, data = Path(args.out), Path(args.data_dir)
    started = time.perf_counter()
    print(f"1/6 starting tmpq serve (SQLite in {data}, a local Ray for evaluations; log {out / 'server.log'})")
    proc, url = start_server(data, out / "server.log")
    try:
        client = TmpqClient(url)
        print(f"    serving on {url} (web page: {url}/, API docs: {url}/docs)")
        job = client.submit({**DEMO_JOB, "generations": args.generations})
        print(f"2/6 submitted job {job['id']}: NSGA-II over K in {DEMO_JOB['steps']} x block bit-widths "
              f"{DEMO_JOB['bit_options']} on the shipped digits DDPM")
        print(f"    {supernet_source(DEMO_JOB, data)}")
        code = wait_for_job(client, job, poll_s=1.0, as_json=False)
        if code != EXIT_OK:
            return code
        job = client.job(job["id"])
        front = client.front(job["id"], knee=True)
        print("3/6 the Pareto front (quality = MSE vs the FP model at 50 steps, same noise):")
        print_front(front, job, fp_cost=fp_bitops(client, job))
        knee = front["knee"]
        plot = out / "front.png"
        plot.write_bytes(client.front_png(job["id"]))
        print(f"4/6 wrote the Pareto plot: {plot}")
        result = export_and_sample_knee(client, job, knee, out, data)
        sizes = result.manifest["sizes"]
        print(f"5/6 exported the knee candidate ({result.manifest['bits']}, K={knee['steps']}) through the API to "
              f"{result.directory}: weights {sizes['weights_file_bytes'] / 1e6:.2f} MB, "
              f"{sizes['ratio_to_fp32']:.3f} of FP32 ({sizes['fp32_weights_bytes'] / 1e6:.2f} MB)")
        same = "bit-identical to" if result.identical else "DIFFERENT from"
        print(f"6/6 sampled 64 images from the export (supernet.export.load): {result.grid} (PSNR {result.psnr_db:.1f} "
              f"dB vs FP at 100 steps, same noise; {same} the supernet's assembled knee)")
        print(f"done in {time.perf_counter() - started:.0f} s. Try: tmpq front {job['id']} --url {url} --knee")
        return EXIT_OK
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _print_front(rows: Sequence, knee: str | None, quality: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pareto front ({len(rows)} points; quality = {quality}, lower is better)")
    for col in ("", "K", "timesteps", "bits", quality, "PSNR dB", "FDD@rescore", "GBitOps", "rel. cost"):
        table.add_column(col, justify="right" if col not in ("timesteps", "bits") else "left")
    for r in rows:
        ts = ",".join(str(t) for t in r.timesteps)
        fdd = r.extra.get("fdd_rescored")
        psnr_db = r.extra.get("psnr")
        table.add_row(
            "knee" if r.key == knee else "",
            str(len(r.timesteps)),
            ts if len(ts) < 40 else ts[:37] + "...",
            r.bits,
            f"{r.quality:.4g}",
            f"{psnr_db:.1f}" if psnr_db is not None else "-",
            f"{fdd:.1f}" if fdd is not None else "-",
            f"{r.bitops / 1e9:.2f}",
            f"{r.relative_cost:.3f}",
        )
    Console().print(table)


def _cmd_search(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from search.runner import resolve_budget
    from search.spec import SearchSpec
    from workers.driver import DriverOptions, run_job
    from workers.local import FRONT_FILE, PLOT_FILE, DirectorySink
    from workers.report import front_rows, knee_key, plot_search, write_front_json

    torch.set_num_threads(args.threads)
    spec = SearchSpec.from_yaml(args.config)
    out = Path(args.out or spec.output or "out/search")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ConfigError("--out", f"{out} is not empty (use --resume to continue the search stored there)")
    prepared = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("calibrating / loading the supernet", total=spec.generations, info="")

        def on_progress(record: Any) -> None:
            progress.update(
                task,
                completed=record.generation + 1,
                description="searching",
                info=f"evaluated {record.evaluated}, failed {record.failed}, HV {record.hypervolume:.4f}",
            )

        sink = DirectorySink(out, on_progress)
        resume = sink.resume_state() if args.resume else None
        result = run_job(
            spec,
            sink,
            resume,
            options=DriverOptions(evaluator=args.evaluator),
            on_prepared=lambda job: prepared.setdefault("job", job),
        )
    job = prepared["job"]
    fp = job.cost_model.uniform_cost(32, 32, max(spec.steps)).bitops
    candidates = {**sink.candidates, **dict(result.candidates)}
    rows = front_rows(result.front, candidates, fp)
    knee = knee_key(result.front)
    budget = resolve_budget(spec.budget, job.cost_model, job.space, spec.algorithm)
    write_front_json(
        out / FRONT_FILE,
        rows,
        knee_key=knee,
        meta={
            "spec": spec.to_dict(),
            "evaluated": result.evaluated,
            "failed": result.failed,
            "generations": result.generations,
            "stopped": result.stopped,
            "hypervolumes": list(result.hypervolumes),
            "supernet": str(job.supernet_path),
        },
    )
    plot_search(
        out / PLOT_FILE,
        list(sink.evaluations.values()),
        result.front,
        candidates,
        job.baselines(),
        quality=spec.objective,
        budget=budget,
        title=f"{Path(spec.model).name}: {spec.algorithm}",
    )
    _print_front(rows, knee, spec.objective)
    print(
        f"{result.evaluated} candidates evaluated ({result.failed} failed) over {result.generations} generations; "
        f"wrote {out / FRONT_FILE}, {out / 'candidates.jsonl'}, {out / PLOT_FILE}"
    )
    return EXIT_OK


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run a search locally (no server) and write its front, candidates and plot")
    p.add_argument("--config", required=True, help="the job spec (YAML)")
    p.add_argument("--out", help="output directory (default: the spec's output, else out/search)")
    p.add_argument("--resume", action="store_true", help="continue the search stored in --out")
    p.add_argument(
        "--evaluator",
        choices=("inprocess", "ray"),
        default=None,
        help="where candidates are evaluated (default: ray if the spec has a ray section)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads for in-process evaluation")
    p.set_defaults(handler=_cmd_search)


def _settings(args: argparse.Namespace) -> Any:
    """``Settings`` from the environment, overridden by the flags that were given."""
    from server.settings import Settings

    overrides = {k: v for k, v in (("host", getattr(args, "host", None)), ("port", getattr(args, "port", None)),
                                   ("database_url", getattr(args, "database_url", None)),
                                   ("ray_address", getattr(args, "ray_address", None)),
                                   ("runner_concurrency", getattr(args, "concurrency", None)),
                                   ("evaluator", getattr(args, "evaluator", None))) if v is not None}
    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError("settings", str(exc).splitlines()[0]) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    from server.app import serve

    serve(_settings(args), run_runner=not args.no_runner, log_level="debug" if args.verbose else "info")
    return EXIT_OK


def _cmd_runner(args: argparse.Namespace) -> int:
    from server.runner import run_forever

    run_forever(_settings(args))
    return EXIT_OK


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="SQLAlchemy URL (default: $TMPQ_DATABASE_URL, else SQLite in the data dir)")
    p.add_argument("--ray-address", help="Ray cluster for jobs that name none (default: $TMPQ_RAY_ADDRESS, else local)")
    p.add_argument("--concurrency", type=int, help="jobs a runner runs at once ($TMPQ_RUNNER_CONCURRENCY)")
    p.add_argument("--evaluator", choices=("ray", "inprocess"),
                   help="where candidates are evaluated ($TMPQ_EVALUATOR, default ray: a local Ray unless an address)")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the REST API (and a job runner, unless --no-runner)")
    p.add_argument("--host", help="listen address (default: $TMPQ_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: $TMPQ_PORT or 8000)")
    p.add_argument("--no-runner", action="store_true", help="serve the API only (run `tmpq runner` separately)")
    _add_server_flags(p)
    p.set_defaults(handler=_cmd_serve)
    p = sub.add_parser("runner", help="run a job runner alone (claims PENDING jobs from the database)")
    _add_server_flags(p)
    p.set_defaults(handler=_cmd_runner)


def _add_zoo(sub: argparse._SubParsersAction) -> None:
    zoo = sub.add_parser("zoo", help="train the shipped testbed models")
    zsub = zoo.add_subparsers(dest="zoo_cmd", required=True, metavar="COMMAND")
    p = zsub.add_parser("train-digits", help="train the digits DDPM (models/digits-ddpm-16)")
    p.add_argument("--out", default="models/digits-ddpm-16")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(handler=_cmd_zoo_train_digits)
    p = zsub.add_parser("train-features", help="train the digits classifier (models/digits-features)")
    p.add_argument("--out", default="models/digits-features")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_zoo_train_features)
    p = zsub.add_parser("ship-supernet", help="calibrate a supernet and store it in the model directory",
                        description="Calibrate (or take from the cache) the supernet of a model for these bit "
                                    "options with the default calibration settings, and store a copy in "
                                    "<model>/tmpq-supernets/ so that jobs elsewhere (a fresh clone, a cluster "
                                    "node) use it instead of calibrating.")
    p.add_argument("--model", default=str(TESTBED_DIR), help="a diffusers model directory (default: the testbed)")
    p.add_argument("--bits", type=int, nargs="+", default=[4, 6, 8], help="bit options (default: 4 6 8)")
    p.set_defaults(handler=_cmd_zoo_ship_supernet)


#: The shipped testbed (kept torch-free here: building the parser must not import torch).
TESTBED_DIR = Path(__file__).resolve().parents[1] / "models" / "digits-ddpm-16"


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end: serve, search, watch, front, plot, export, sample")
    p.add_argument("--data-dir", default="data", help="SQLite database and supernet cache (default: data)")
    p.add_argument("--out", default="out/demo", help="where the plot, export, samples and server log go")
    p.add_argument("--generations", type=int, default=4)
    p.set_defaults(handler=_cmd_demo)
    p = sub.add_parser("sample", help="sample a model at uniform DDIM schedules and score it (FDD on the testbed)")
    p.add_argument("--model", default=str(TESTBED_DIR))
    p.add_argument("--steps", type=int, nargs="+", default=[100, 10])
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/sample")
    p.set_defaults(handler=_cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="tmpq", description="Joint timestep + mixed-precision search for quantized diffusion models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_zoo(sub)
    _add_demo(sub)
    _add_search(sub)
    _add_serve(sub)
    from server.cli_remote import add_remote_commands  # submit, jobs, status, cancel, front, export (a server)
    add_remote_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tmpq`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except USAGE_ERRORS as exc:
        print(f"tmpq: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TmpqError as exc:
        print(f"tmpq: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("tmpq: interrupted", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
