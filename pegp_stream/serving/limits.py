"""Bounds on what one HTTP client can cost the server, so that no request or connection can exhaust the
memory or the file descriptors the learner shares with it:

- `BodyLimit` counts a request body while it arrives (Content-Length, chunked, JSON or multipart alike) and
  bounds each wait for more of it;
- `HeaderDeadline` closes a connection that does not finish a request's headers in time (uvicorn itself
  times out only idle keep-alive connections, not a silent new one or a slow one);
- `PixelBudget` bounds the decoded pixels of one prediction request, checked on each image's declared size
  before it is decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import h11
import numpy as np
from fastapi import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from pegp_stream.inputs.decode import DecodeError, DecodeLimits


class BodyLimit:
    """ASGI middleware. A request body over `max_bytes` fails with 413 as soon as the count passes it (a
    declared Content-Length over it fails before any byte is read); a wait of more than `timeout_s` for the
    next part of an unfinished body fails with 408. Both are raised as HTTPException from `receive`, which
    FastAPI passes through its body parsing, so they are answered like any other 4xx with a `detail`."""

    def __init__(self, app: Any, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            receive = _BodyReader(receive, self.max_bytes, self.timeout_s, _declared_length(scope))
        await self.app(scope, receive, send)


def _declared_length(scope: dict) -> int:
    """The Content-Length header's value, 0 without one (h11 has already refused a malformed one)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value)
    return 0


class _BodyReader:
    """`receive` for one request, counting its body bytes."""

    def __init__(self, receive: Callable, max_bytes: int, timeout_s: float, declared: int) -> None:
        self.receive, self.max_bytes, self.timeout_s, self.declared = receive, max_bytes, timeout_s, declared
        self.received = 0
        self.complete = False

    async def __call__(self) -> dict:
        if self.complete:  # after the body only a disconnect can come: no deadline on waiting for it
            return await self.receive()
        if self.declared > self.max_bytes:
            raise self.too_large()
        try:
            message = await asyncio.wait_for(self.receive(), self.timeout_s)
        except TimeoutError:
            raise HTTPException(408, f"no more of the body arrived within {self.timeout_s} s") from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.max_bytes:
                raise self.too_large()
        return message

    def too_large(self) -> HTTPException:
        return HTTPException(413, f"body larger than {self.max_bytes} bytes (http.max_body_bytes)")


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers: `timeout_s` from the
    connection's start, or from the previous response on a kept-alive connection. A connection that misses it
    (silent, or sending headers byte by byte) is closed, so idle sockets cannot pile up. Beyond `max_open`
    connections a new one is dropped at once: the rest of the process's file descriptors (checkpoints, Kafka)
    stay free whatever clients do. Pass `functools.partial(HeaderDeadline, timeout_s=..., max_open=...)` as
    uvicorn's `http`."""

    def __init__(self, *args: Any, timeout_s: float, max_open: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_s, self.max_open = timeout_s, max_open
        self.deadline: asyncio.TimerHandle | None = None

    # typeshed's BaseProtocol takes a BaseTransport; a stream protocol is handed a Transport, and uvicorn's own
    # H11Protocol narrows the argument the same way
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_open:
            transport.abort()
            return
        self.arm()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a whole request line and headers arrived
            self.disarm()

    def on_response_complete(self) -> None:
        self.arm()  # before the parent, which handles a pipelined next request (and disarms for it)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def arm(self) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(self.timeout_s, self.transport.close)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class PixelBudget:
    """The decoded pixels (H * W) one prediction request may still use. Each image is decoded under limits
    whose `max_pixels` is what is left, so decode.py checks the image's declared size (PNG/JPEG header, or
    `shape`) against the budget before decoding it: an image over it costs no memory."""

    def __init__(self, limits: DecodeLimits, max_pixels: int) -> None:
        self.limits, self.max_pixels, self.used = limits, max_pixels, 0

    def decode(self, decode: Callable[[Any, DecodeLimits], np.ndarray], data: Any, where: str) -> np.ndarray:
        """`decode(data, limits)` within the budget; its DecodeError becomes a 400, or a 413 when the image
        is over what the earlier images left. `where` prefixes the message (e.g. "instances[2].")."""
        left = self.max_pixels - self.used
        squeezed = left < self.limits.max_pixels
        try:
            image = decode(data, self.limits.model_copy(update={"max_pixels": max(left, 0)}) if squeezed
                           else self.limits)
        except DecodeError as exc:
            if squeezed and exc.reason == "too_many_pixels":
                raise HTTPException(413, f"{where}{exc}; the request's images may have {self.max_pixels} pixels "
                                         f"in all (http.max_request_pixels), {self.used} are used by earlier "
                                         "images") from None
            raise HTTPException(400, f"{where}{exc}") from None
        self.used += image.shape[0] * image.shape[1]
        return image
