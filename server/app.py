"""The FastAPI application (:func:`create_app`) and ``tmpq serve`` (:func:`serve`: the API plus a job runner)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api.errors import install_error_handlers
from server.api.front_cache import FrontCache
from server.api.limits import BodySizeLimit
from server.api.routes import candidates, export, front, hypervolume, jobs, measure, meta, plots, samples, web
from server.baselines import TrainTimesteps
from server.execution import ExecuteFn
from server.runner import JobRunner
from server.settings import Settings
from server.store import Store
from server.version import API_PREFIX, package_version

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    run_runner: bool = False,
    execute: ExecuteFn | None = None,
) -> FastAPI:
    """The API app; every route under ``/api/v1``, OpenAPI docs at ``/docs``, the web page at ``/``.

    Request bodies over ``settings.max_body_bytes`` are answered 413 before they are read (:mod:`server.api.limits`).

    Args:
        settings: configuration (default: ``Settings()`` from the environment).
        store: the store to serve (default: opened, and migrated, from ``settings`` now; closed at shutdown).
        run_runner: also run a :class:`~server.runner.JobRunner` in this process while the app is up.
        execute: the runner's job function (default ``server.execution.execute_job``).
    """
    settings = settings if settings is not None else Settings()
    owns_store = store is None
    store = store if store is not None else Store.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner = JobRunner(store, settings, execute=execute) if run_runner else None
        app.state.runner = runner
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
            await app.state.front_cache.aclose()
            if owns_store:
                store.close()

    app = FastAPI(
        title="tmpq",
        version=package_version(),
        summary="Joint timestep and mixed-precision search for quantized diffusion models, as a service.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.runner = None
    app.state.train_timesteps = TrainTimesteps(store, settings.model_root)
    app.state.front_cache = FrontCache(store, train_timesteps=app.state.train_timesteps)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for module in (jobs, front, candidates, export, measure, hypervolume, plots, samples, meta):
        app.include_router(module.router, prefix=API_PREFIX)
    web.install(app)
    return app


def serve(
    settings: Settings | None = None,
    *,
    run_runner: bool = True,
    execute: ExecuteFn | None = None,
    log_level: str = "info",
) -> None:
    """``tmpq serve``: the API on ``settings.host:settings.port`` with a job runner in the same process (uvicorn).

    SIGINT/SIGTERM stop both; jobs still running go back to PENDING after their current generation.
    """
    import uvicorn

    settings = settings if settings is not None else Settings()
    app = create_app(settings, run_runner=run_runner, execute=execute)
    logger.info("serving on http://%s:%d (runner: %s)", settings.host, settings.port, run_runner)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)
