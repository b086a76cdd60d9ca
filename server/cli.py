"""The ``tmpq`` command line: a thin face over the library.

Exit codes: 0 ok, 1 the command failed, 2 bad usage or bad input (one line on stderr naming the field).
Heavy modules (torch, ray, fastapi) are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.errors import ConfigError, InvalidCandidate, ModelLoadError, ScheduleError, TmpqError
from search.spec import SOLVERS
from supernet.model_settings import ModelSettings
from supernet.models.directory import check_model_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
USAGE_ERRORS = (ConfigError, ModelLoadError, ScheduleError, InvalidCandidate)

Handler = Callable[[argparse.Namespace], int]


def _cmd_zoo_train_digits(args: argparse.Namespace) -> int:
    from supernet.zoo.testbed import TrainSettings, train_digits_ddpm

    start = time.perf_counter()
    out = train_digits_ddpm(args.out, TrainSettings(steps=args.steps, seed=args.seed, threads=args.threads))
    print(f"trained the digits DDPM in {time.perf_counter() - start:.0f} s -> {out}")
    return EXIT_OK


def _cmd_zoo_train_digits_sd(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from supernet.zoo.digits_sd import SDTrainSettings, record_prompt_accuracy, train_digits_sd

    steps = {k: v for k, v in (("vae_steps", args.vae_steps), ("unet_steps", args.unet_steps)) if v is not None}
    settings = replace(SDTrainSettings(seed=args.seed, threads=args.threads), **steps)
    start = time.perf_counter()
    out = train_digits_sd(args.out, settings)
    print(f"trained the digits text-to-image pipeline in {time.perf_counter() - start:.0f} s -> {out}")
    if args.eval_per_prompt > 0:
        acc = record_prompt_accuracy(out, n_per_prompt=args.eval_per_prompt, seed=args.seed)
        print(f"prompt accuracy {acc:.4f} ({10 * args.eval_per_prompt} samples), recorded in {out}/tmpq.json")
    return EXIT_OK


def _cmd_zoo_train_digits_dit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from supernet.zoo.digits_dit import DITTrainSettings, record_class_accuracy, train_digits_dit

    steps = {"steps": args.steps} if args.steps is not None else {}
    settings = replace(DITTrainSettings(seed=args.seed, threads=args.threads), **steps)
    start = time.perf_counter()
    out = train_digits_dit(args.out, settings)
    print(f"trained the digits DiT in {time.perf_counter() - start:.0f} s -> {out}")
    if args.eval_per_class > 0:
        acc = record_class_accuracy(out, n_per_class=args.eval_per_class, seed=args.seed)
        print(f"class accuracy {acc:.4f} ({10 * args.eval_per_class} samples), recorded in {out}/tmpq.json")
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
    path = ship_supernet(load_model(model_path(args.model)), bits)
    print(f"stored the calibrated supernet for bits {bits} in {path} ({time.perf_counter() - start:.0f} s)")
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from supernet.images import save_grid
    from supernet.metrics import FDDScorer, psnr
    from supernet.models import features_for, load_model
    from supernet.sampling import uniform_schedule

    torch.set_num_threads(args.threads)
    path = model_path(args.model)
    settings = ModelSettings(
        path=str(path),
        prompts=tuple(args.prompt) if args.prompt else None,
        guidance_scale=args.guidance_scale,
        classes=tuple(args.class_label) if args.class_label else None,
    )
    info = check_model_dir(path)
    settings = settings.resolved_for_model(path, info.condition)  # prompts for an unconditional model: refused
    model = load_model(path, conditioning=settings.conditioning(path))
    sampler = model.sampler(batch_size=64, solver=args.solver)
    features = features_for(model.path)
    scorer = FDDScorer.for_testbed(features) if features is not None else None
    n_params = sum(p.numel() for p in model.denoiser.parameters())
    print(f"model {model.path} (hash {model.model_hash}), {n_params:,} parameters, T={model.num_train_timesteps}")
    results = {}
    for steps in sorted(set(args.steps), reverse=True):
        start = time.perf_counter()
        images = sampler.sample(uniform_schedule(steps, model.num_train_timesteps), args.samples, seed=args.seed)
        results[steps] = images
        fdd = f", FDD {scorer.score(images):7.2f}" if scorer is not None else ""
        print(f"{args.solver} {steps:>3} steps: {args.samples} samples in {time.perf_counter() - start:5.1f} s{fdd}")
        print(f"wrote {save_grid(images[:64], Path(args.out) / f'samples_{steps}_steps.png', ncol=8)}")
    longest = max(results)
    for steps, images in results.items():
        if steps != longest:
            print(f"PSNR of {steps} steps vs {longest} steps (same noise): {psnr(images, results[longest]):.2f} dB")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from server.cli_remote import fp_bitops, print_front, wait_for_job
    from server.client import TmpqClient
    from server.demo import DEMO_JOBS, export_and_sample_knee, start_server, supernet_source

    out, data = Path(args.out), Path(args.data_dir)
    started = time.perf_counter()
    print(f"1/6 starting tmpq serve (SQLite in {data}, a local Ray for evaluations; log {out / 'server.log'})")
    proc, url = start_server(data, out / "server.log")
    try:
        client = TmpqClient(url)
        print(f"    serving on {url} (web page: {url}/, API docs: {url}/docs)")
        base = DEMO_JOBS[args.model]
        generations = args.generations or base["search"]["generations"]
        spec = {**base, "search": {**base["search"], "generations": generations}}
        job = client.submit(spec)
        print(
            f"2/6 submitted job {job['id']}: NSGA-II over K in {spec['search']['steps']} x "
            f"{spec['search'].get('granularity', 'site')} bit-widths "
            f"{spec['search']['bit_options']} on the shipped {args.model} ({spec['search'].get('solver', 'ddim')})"
        )
        print(f"    {supernet_source(spec, data)}")
        code = wait_for_job(client, job, poll_s=1.0, as_json=False)
        if code != EXIT_OK:
            return code
        job = client.job(job["id"])
        front = client.front(job["id"], knee=True)
        ref = spec["evaluation"]["reference_steps"]
        print(f"3/6 the Pareto front (quality = MSE vs the FP model at {ref} steps, same noise and prompts):")
        print_front(front, job, fp_cost=fp_bitops(client, job))
        knee = front["knee"]
        plot = out / "front.png"
        plot.write_bytes(client.front_png(job["id"]))
        print(f"4/6 wrote the Pareto plot: {plot}")
        result = export_and_sample_knee(client, job, knee, out, data)
        sizes = result.manifest["sizes"]
        print(
            f"5/6 exported the knee candidate ({result.manifest['bits']}, K={knee['steps']}) through the API to "
            f"{result.directory}: weights {sizes['weights_file_bytes'] / 1e6:.2f} MB, "
            f"{sizes['ratio_to_fp32']:.3f} of FP32 ({sizes['fp32_weights_bytes'] / 1e6:.2f} MB)"
        )
        same = "bit-identical to" if result.identical else "DIFFERENT from"
        print(
            f"6/6 sampled 64 images from the export (supernet.export.load): {result.grid} (PSNR {result.psnr_db:.1f} "
            f"dB vs FP at 100 steps, same noise; {same} the supernet's assembled knee)"
        )
        if result.pipeline_grid is not None:
            print(
                f"    and as a diffusers {result.pipeline_class} (export.pipeline): {result.pipeline_grid}, one column "
                f"per prompt (class); max |difference| to tmpq's sampler {result.pipeline_max_diff:.1e}"
            )
        print(f"done in {time.perf_counter() - started:.0f} s. Try: tmpq front {job['id']} --url {url} --knee")
        return EXIT_OK
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _print_front(
    rows: Sequence, knee: str | None, quality: str, fp_references: Sequence[Mapping[str, Any]] = ()
) -> None:
    from rich.console import Console
    from rich.table import Table

    from server.cli_remote import fp_reference_table

    def num(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, int | float) else "-"

    table = Table(title=f"Pareto front ({len(rows)} points; quality = {quality}, lower is better)")
    columns = ("", "K", "timesteps", "bits", quality, "PSNR dB", "quant. PSNR dB", "SSIM", "FDD@rescore", "GBitOps")
    for col in (*columns, "rel. cost"):
        table.add_column(col, justify="right" if col not in ("timesteps", "bits") else "left")
    for r in rows:
        ts = ",".join(str(t) for t in r.timesteps)
        table.add_row(
            "knee" if r.key == knee else "",
            str(len(r.timesteps)),
            ts if len(ts) < 40 else ts[:37] + "...",
            r.bits,
            f"{r.quality:.4g}",
            num(r.extra.get("psnr"), ".1f"),
            num(r.extra.get("quant_psnr"), ".1f"),
            num(r.extra.get("ssim"), ".3f"),
            num(r.extra.get("fdd_rescored"), ".1f"),
            f"{r.bitops / 1e9:.2f}",
            f"{r.relative_cost:.3f}",
        )
    console = Console()
    console.print(table)
    if fp_references:
        console.print(fp_reference_table(fp_references, quality))


def _cmd_search(args: argparse.Namespace) -> int:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from search.runner import resolve_budget
    from server.settings import Settings
    from workers.driver import DriverOptions, describe_calibration, run_job
    from workers.jobspec import JobSpec, latency_label
    from workers.local import FRONT_FILE, PLOT_FILE, DirectorySink
    from workers.report import front_rows, plot_search, write_front_json

    spec = JobSpec.from_yaml(args.config).resolved(Settings().model_root)  # the server's checks, before any work
    torch.set_num_threads(args.threads)
    out = Path(args.out)
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
        task = progress.add_task("loading", total=spec.search.generations, info="")

        def on_activity(activity: dict[str, Any]) -> None:
            calibration = activity.get("calibration")
            info = describe_calibration(calibration) if calibration else activity.get("message", "")
            progress.update(task, description=str(activity.get("stage", "")), info=info)

        def on_progress(record: Any) -> None:
            progress.update(
                task,
                completed=record.generation + 1,
                description="searching",
                info=f"evaluated {record.evaluated}, failed {record.failed}, HV {record.hypervolume:.4f}",
            )

        sink = DirectorySink(out, on_progress, on_activity)
        resume = sink.resume_state() if args.resume else None
        result = run_job(
            spec,
            sink,
            resume,
            options=DriverOptions(evaluator=args.evaluator),
            on_prepared=lambda job: prepared.setdefault("job", job),
        )
    job = prepared["job"]
    spec = job.spec  # with the model-dependent defaults resolved
    fp = job.cost_model.uniform_cost(32, 32, spec.search.max_steps).bitops
    candidates = {**sink.candidates, **dict(result.candidates)}
    rows = front_rows(result.front, candidates, fp)
    knee_point = result.knee()  # on the search's cost axis
    knee = knee_point.key if knee_point is not None else None
    budget = resolve_budget(spec.search.budget, job.cost_model, job.space, spec.search.algorithm)
    write_front_json(
        out / FRONT_FILE,
        rows,
        fp_references=sink.fp_references,
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
        quality=spec.evaluation.objective,
        budget=budget,
        title=f"{Path(spec.model.path).name}: {spec.search.algorithm}",
        num_train_timesteps=job.space.num_train_timesteps,
        latency=latency_label(spec.to_dict()),
        fp_references=sink.fp_references,
    )
    _print_front(rows, knee, spec.evaluation.objective, sink.fp_references)
    print(
        f"{result.evaluated} candidates evaluated ({result.failed} failed) over {result.generations} generations; "
        f"wrote {out / FRONT_FILE}, {out / 'candidates.jsonl'}, {out / PLOT_FILE}"
    )
    return EXIT_OK


def _add_search(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run a search locally (no server) and write its front, candidates and plot")
    p.add_argument("--config", required=True, help="the job spec (YAML)")
    p.add_argument("--out", default="out/search", help="output directory (default: out/search)")
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

    overrides = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("database_url", getattr(args, "database_url", None)),
            ("ray_address", getattr(args, "ray_address", None)),
            ("runner_concurrency", getattr(args, "concurrency", None)),
            ("evaluator", getattr(args, "evaluator", None)),
        )
        if v is not None
    }
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
    p.add_argument(
        "--evaluator",
        choices=("ray", "inprocess"),
        help="where candidates are evaluated ($TMPQ_EVALUATOR, default ray: a local Ray unless an address)",
    )


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
    p = zsub.add_parser("train-digits-sd", help="train the digits text-to-image pipeline (models/digits-sd)")
    p.add_argument("--out", default="models/digits-sd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-steps", type=int, default=None, help="VAE training steps (default: SDTrainSettings)")
    p.add_argument("--unet-steps", type=int, default=None, help="UNet training steps (default: SDTrainSettings)")
    p.add_argument(
        "--eval-per-prompt", type=int, default=50, help="samples per prompt for the prompt accuracy (0: skip)"
    )
    p.set_defaults(handler=_cmd_zoo_train_digits_sd)
    p = zsub.add_parser("train-digits-dit", help="train the class-conditional digits DiT (models/digits-dit)")
    p.add_argument("--out", default="models/digits-dit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="transformer training steps (default: DITTrainSettings)")
    p.add_argument("--eval-per-class", type=int, default=50, help="samples per class for the class accuracy (0: skip)")
    p.set_defaults(handler=_cmd_zoo_train_digits_dit)
    p = zsub.add_parser("train-features", help="train the digits classifier (models/digits-features)")
    p.add_argument("--out", default="models/digits-features")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_zoo_train_features)
    p = zsub.add_parser(
        "ship-supernet",
        help="calibrate a supernet and store it in the model directory",
        description="Calibrate (or take from the cache) the supernet of a model for these bit "
        "options with the default calibration settings, and store a copy in "
        "<model>/tmpq-supernets/ so that jobs elsewhere (a fresh clone, a cluster "
        "node) use it instead of calibrating.",
    )
    p.add_argument("--model", default=TESTBED, help=MODEL_HELP)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 6, 8], help="bit options (default: 4 6 8)")
    p.set_defaults(handler=_cmd_zoo_ship_supernet)


#: The shipped testbed's name under the default model root.
TESTBED = "digits-ddpm-16"
MODEL_HELP = "a diffusers model directory, absolute or under TMPQ_MODEL_ROOT (default: the shipped testbed)"


def model_path(model: str) -> Path:
    """A model named on the command line, resolved as the server resolves a job's: under ``TMPQ_MODEL_ROOT``."""
    from server.settings import Settings
    from supernet.model_settings import resolve_model_path

    return resolve_model_path(model, Settings().model_root)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job end to end: serve, search, watch, front, plot, export, sample")
    p.add_argument("--data-dir", default="data", help="SQLite database and supernet cache (default: data)")
    p.add_argument("--out", default="out/demo", help="where the plot, export, samples and server log go")
    p.add_argument("--generations", type=int, default=None, help="search generations (default: the demo job's)")
    p.add_argument(
        "--model",
        choices=("digits-ddpm-16", "digits-sd", "digits-dit"),
        default="digits-ddpm-16",
        help="the shipped testbed to run: the pixel-space DDPM (default), the text-to-image digits-sd or the "
        "class-conditional transformer digits-dit",
    )
    p.set_defaults(handler=_cmd_demo)
    p = sub.add_parser("sample", help="sample a model at uniform schedules and score it (FDD on the testbed)")
    p.add_argument("--model", default=TESTBED, help=MODEL_HELP)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 10])
    p.add_argument("--solver", choices=SOLVERS, default="ddim", help="the sampler (default: ddim)")
    p.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a text-to-image model's prompt (repeat for several; default: the model's prompts.txt)",
    )
    p.add_argument(
        "--class",
        dest="class_label",
        action="append",
        default=None,
        help="a class-conditional (DiT) model's class, id or label (repeat for several; default: every class)",
    )
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="out/sample")
    p.set_defaults(handler=_cmd_sample)


def _cmd_supernets(args: argparse.Namespace) -> int:
    from server.settings import Settings
    from supernet.catalog import SupernetEntry, list_supernets

    settings = Settings()
    cache = Path(args.data_dir) / "supernets" if args.data_dir else Path(settings.data_dir) / "supernets"
    root = Path(settings.model_root)
    if args.model:
        models = [model_path(m) for m in args.model]
    else:
        models = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    entries = list_supernets(cache, models)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=1))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    def where(e: SupernetEntry) -> str:
        return e.path.parent.parent.name if e.source == "shipped" else "cache"

    def format_of(e: SupernetEntry) -> str:
        flags = [k for k in ("weight_symmetric", "act_symmetric") if e.settings.get(k)]
        flags += [f"exclude {','.join(e.settings['exclude'])}"] if e.settings.get("exclude") else []
        flags += ["no attention sites"] if e.settings.get("attention_matmuls") is False else []
        return "; ".join(flags) or "default"

    table = Table(title=f"{len(entries)} calibrated supernets ({cache}; shipped in {len(models)} model dirs)")
    columns = ("name", "where", "model hash", "bits", "strategy", "format", "MB", "calibration s", "PSNR dB", "written")
    for col in columns:
        table.add_column(col, justify="right" if col in ("MB", "calibration s", "PSNR dB") else "left")
    for e in entries:
        seconds = ", ".join(f"W{b}A{b} {s:.0f}" for b, s in sorted(e.seconds.items())) or "-"
        quality = ", ".join(f"W{b}A{b} {v:.1f}" for b, v in sorted(e.quality().items()))
        written = e.modified.strftime("%Y-%m-%d %H:%M") if e.modified else "-"
        bits = ",".join(map(str, e.bits)) or "-"
        table.add_row(
            e.name, where(e), e.model_hash or "-", bits, e.strategy or e.problem or "-", format_of(e),
            f"{e.size_bytes / 1e6:.1f}", seconds, quality or e.report.get("skipped", "-")[:40], written,
        )  # fmt: skip
    Console(width=200).print(table)
    steps = next((len(e.report["schedule"]) for e in entries if e.report.get("schedule")), None)
    if steps is not None:
        print(f"PSNR dB: each uniform bit option's samples against FP's at {steps} DDIM steps, held-out noise.")
    return EXIT_OK


def _estimate_text(estimate: dict[str, Any]) -> str:
    from server.cli_remote import eta_text

    widths = ", ".join(f"W{b} {eta_text(v)}" for b, v in estimate["per_bits"].items())
    phases = ", ".join(f"{k} {eta_text(v)}" for k, v in estimate["phases"].items() if v >= 0.5)
    workers = estimate.get("workers")
    where = ""
    if workers:
        groups = " | ".join(", ".join(f"W{b}" for b in g) for g in workers["bit_options"])
        threads = workers["threads_each"]
        where = f"in {workers['processes']} processes of {threads} thread{'s' * (threads != 1)} ({groups}); "
    return (
        f"estimated {eta_text(estimate['seconds'])} ({where}{widths}; by phase: {phases}; from the model's forward "
        f"time here, {estimate['forward_ms_per_sample']:.2f} ms per sample)"
    )


def _cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from server.cli_remote import activity_text
    from server.settings import Settings
    from workers.driver import DriverOptions, ProgressReporter, calibration_plan, prepare_job
    from workers.jobspec import JobSpec

    spec = JobSpec.from_yaml(args.config).resolved(Settings().model_root)  # the server's checks, before any work
    torch.set_num_threads(args.threads)
    options = DriverOptions(cache_dir=args.cache_dir)
    plan = calibration_plan(spec, options)
    if args.dry_run:
        if args.json:
            print(json.dumps(plan))
        elif plan["source"] == "calibrate":
            print(f"would calibrate {plan['supernet']} (bits {plan['bits']}): {_estimate_text(plan['estimate'])}")
        else:
            print(f"no calibration needed: {plan['supernet']} is {plan['source']} at {plan['path']}")
        return EXIT_OK
    if plan["source"] == "calibrate":
        print(f"calibrating {plan['supernet']}: {_estimate_text(plan['estimate'])}", file=sys.stderr)

    class _Lines:  # progress as tmpq status writes it, a line per report
        def on_progress(self, activity: dict[str, Any]) -> None:
            print(activity_text(activity) or "", file=sys.stderr, flush=True)

    start = time.perf_counter()
    job = prepare_job(spec, options, ProgressReporter(_Lines()))
    meta = job.supernet.calibration_metadata
    result = {
        **plan,
        "seconds": round(time.perf_counter() - start, 1),
        "calibration_seconds": {str(b): round(v, 1) for b, v in job.supernet.calibration_seconds.items()},
        "phase_seconds": meta.get("phase_seconds"),
    }
    job.supernet.detach()
    if args.json:
        print(json.dumps(result))
    else:
        per_bits = ", ".join(f"W{b}A{b} {v} s" for b, v in result["calibration_seconds"].items())
        print(f"{plan['supernet']} ({plan['source']}): {per_bits or 'no calibration'}; {job.supernet_path}")
    return EXIT_OK


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="calibrate (or find) a job's supernet; --dry-run says whether it is cached and how long it would take",
        description="Get the calibrated supernet a job spec needs, as a search would: from the cache, shipped with "
        "the model, or calibrated now (and cached). --dry-run only checks the spec and the model, says where the "
        "supernet would come from and, when it must be calibrated, the estimated time from the model's forward "
        "time on this machine.",
    )
    p.add_argument("--config", required=True, help="the job spec (YAML)")
    p.add_argument("--dry-run", action="store_true", help="check and estimate only; calibrate nothing")
    p.add_argument("--cache-dir", default=None, help="the supernet cache (default: TMPQ_DATA_DIR/supernets)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_cmd_calibrate)


def _add_supernets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "supernets",
        help="list the calibrated supernets: the data directory's cache and those shipped with models",
        description="List the calibrated supernets in the data directory's cache (TMPQ_DATA_DIR/supernets) and "
        "in the model directories' tmpq-supernets/ folders, newest first: bits, calibration strategy, the "
        "codes' format, size and calibration seconds per bit option. Reads only their metadata.",
    )
    p.add_argument("--data-dir", default=None, help="the data directory (default: TMPQ_DATA_DIR, else ./data)")
    p.add_argument(
        "--model", action="append", default=[], help="a model whose shipped supernets to list (repeatable; "
        "default: every directory under TMPQ_MODEL_ROOT)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_supernets)


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
    _add_calibrate(sub)
    _add_serve(sub)
    _add_supernets(sub)
    from server.cli_remote import add_remote_commands  # submit, jobs, status, cancel, front, export, measure

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
