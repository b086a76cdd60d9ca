"""A limit on the size of request bodies: a pure ASGI middleware (:class:`BodySizeLimit`).

A request that declares a ``Content-Length`` over the limit is answered 413 at once, without calling the app (its
body is never read). A body without a declared length (``Transfer-Encoding: chunked``) is counted as it streams in:
the moment it passes the limit, the app's ``receive`` raises :class:`BodyTooLarge` (an ``HTTPException(413)``:
FastAPI lets it through body parsing and renders it as ``{"detail": ...}``), so the body is never parsed whole, let
alone stored. Only the ``http.request`` messages the app asks for are read: nothing is buffered here.
"""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.status import HTTP_413_CONTENT_TOO_LARGE
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class BodyTooLarge(HTTPException):
    """The request body is over the server's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(HTTP_413_CONTENT_TOO_LARGE, too_large_detail(limit))
        self.limit = limit


def too_large_detail(limit: int) -> str:
    """The ``detail`` of a 413 answer."""
    return f"the request body is larger than this server's limit of {limit} bytes (TMPQ_MAX_BODY_BYTES)"


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None when it has none (or an unreadable one: the server rejects it)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodySizeLimit:
    """Answer 413 to any HTTP request whose body is larger than ``max_bytes``, before the app reads it.

    Args:
        app: the ASGI app to wrap.
        max_bytes: the largest body accepted, in bytes.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be at least 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            logger.info("%s %s: refused a %d-byte body (413)", scope.get("method"), scope.get("path"), declared)
            await self._reject(send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    logger.info("%s %s: refused a streamed body over the limit (413)", scope["method"], scope["path"])
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:  # the app had already answered; nothing more can be said
                raise
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_detail(self.max_bytes)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
