"""The tmpq service: REST API, SQL store and job runner. Never imports torch or ray at module level.

- :mod:`server.settings`: ``Settings`` (``TMPQ_*`` environment variables).
- :mod:`server.store`: ``Store`` (SQLite or PostgreSQL; Alembic migrations in ``server/migrations``).
- :mod:`server.app`: ``create_app(settings)`` (FastAPI, all routes under ``/api/v1``) and ``serve(settings)``
  (``tmpq serve``: uvicorn with a job runner in the same process).
- :mod:`server.runner`: ``JobRunner`` and ``run_forever(settings)`` (``tmpq runner``).
- :mod:`workers.protocol`: what the runner hands ``workers.driver.run_job(spec, sink, resume)``: ``JobSink``,
  ``GenerationRecord``, ``ResumeState`` and the ``JobInterrupted`` exceptions.
- :mod:`server.execution`: ``execute_job``, the runner's one (lazy) call into ``workers.driver``.
"""
