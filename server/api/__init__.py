"""The REST API: dependencies, the error handler and one router per resource, all under ``/api/v1``."""
