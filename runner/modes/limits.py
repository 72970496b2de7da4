"""How long a client may take and how many may connect, as nginx and llama-server bound
them (uvicorn has none of these itself: a connection that sends half a request, or
nothing, stays open forever).

- header timeout (nginx's client_header_timeout): a request's head (request line and
  headers) must arrive within `timeout` seconds of the connection opening, or of the
  previous response; a partial head is answered 408, a silent connection just closed.
- body timeout (nginx's client_body_timeout): the body may pause at most `timeout`
  seconds between two reads; then 408 in the API's error shape, and the connection closes.
- keep-alive (uvicorn's timeout_keep_alive; llama-server's httplib has 5 s too): an idle
  connection between requests closes after `keep_alive` seconds.
- a cap on connections: at `max_connections`, a new connection closes the one idle the
  longest (nginx frees connections the same way when it runs out); only when none is idle
  is the new one answered 503. why not uvicorn's limit_concurrency: it answers 503 to the
  newcomer, so a thousand idle connections would lock every new client out.
- a request body is at most `max_body` bytes (413).

    config = uvicorn_config(app, options, log_level="info")
"""
from __future__ import annotations

import asyncio
import json
import resource
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .api_common import APIError, error_body

FD_RESERVE = 64              # descriptors kept for the model file, logs, the listening socket
MAX_HEAD_BYTES = 16 * 1024   # a request line and headers (h11's default, nginx's is 8-32 KiB)


def _raw_response(status: int, reason: str, message: str, type: str) -> bytes:
    """A complete HTTP/1.1 error response with the API's error body, closing the connection
    (written straight to the socket: no request was parsed, so no ASGI app runs)."""
    body = json.dumps(error_body(message, type, None, status)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


HEAD_TIMEOUT = _raw_response(408, "Request Timeout", "the request's headers did not arrive in time",
                             "invalid_request_error")
BUSY = _raw_response(503, "Service Unavailable", "too many connections are busy; try again shortly",
                     "unavailable_error")


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a connection cap (the class is
    specialised per server by `protocol_class`)."""

    header_timeout: float = 10.0
    max_connections: int = 512

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.waiting:
            self._head_started = True
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:                  # a request's head arrived
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_head()                       # before: a pipelined request stops it again
        super().on_response_complete()

    @property
    def waiting(self) -> bool:
        """Between requests: no request, or the last one answered."""
        return self.cycle is None or self.cycle.response_complete

    def _await_head(self) -> None:
        self._stop_head_timer()
        self.idle_since = self.loop.time()
        self._head_started = False
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self.waiting:
            return
        if self._head_started:                       # half a request: say why it ends
            self.transport.write(HEAD_TIMEOUT)
        self.transport.close()

    def _make_room(self) -> None:
        # why skip closing ones: a closed connection leaves the set only at connection_lost
        live = [p for p in self.connections if p.transport is not None and not p.transport.is_closing()]
        if len(live) <= self.max_connections:
            return
        idle = [p for p in live if p is not self and isinstance(p, LimitedH11Protocol) and p.waiting]
        if idle:
            min(idle, key=lambda p: p.idle_since).transport.close()
        else:
            self.transport.write(BUSY)
            self.transport.close()


def protocol_class(header_timeout: float, max_connections: int) -> type[LimitedH11Protocol]:
    """LimitedH11Protocol with these bounds (uvicorn builds one instance per connection)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,),
                {"header_timeout": header_timeout, "max_connections": max_connections})


def fit_fd_limit(max_connections: int) -> int:
    """Raise the soft limit on open files toward the hard one so that `max_connections`
    fit (each needs a descriptor); the cap that fits, if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return max_connections if soft == resource.RLIM_INFINITY else max(16, min(max_connections, soft - FD_RESERVE))


def uvicorn_config(app, options, **kw: Any) -> uvicorn.Config:
    """The server's uvicorn configuration: the limits above, no `server: uvicorn` header
    (it only tells a scanner what runs here), no websockets (no route uses them)."""
    cap = fit_fd_limit(options.max_connections)
    return uvicorn.Config(app, http=protocol_class(options.timeout, cap), timeout_keep_alive=options.keep_alive,
                          h11_max_incomplete_event_size=MAX_HEAD_BYTES, server_header=False, ws="none", **kw)


class BodyReader:
    """An ASGI `receive` that bounds the request body: each wait for more of it at most
    `timeout` seconds (408), all of it at most `max_body` bytes (413). Once the body is
    complete it passes messages through untouched (a stream waits on it for a disconnect).
    `failed` says the request was cut off: its response must close the connection."""

    def __init__(self, receive, timeout: float, max_body: int):
        self.receive, self.timeout, self.max_body = receive, timeout, max_body
        self.done, self.size, self.failed = False, 0, False

    async def __call__(self) -> dict:
        if self.done:
            return await self.receive()
        try:
            message = await asyncio.wait_for(self.receive(), self.timeout)
        except asyncio.TimeoutError:
            self.failed = True
            raise APIError(408, f"the request body stopped arriving (nothing for {self.timeout:g} s)") from None
        if message["type"] != "http.request":
            self.done = True
            return message
        self.size += len(message.get("body", b""))
        if self.size > self.max_body:
            self.failed = True
            raise APIError(413, f"the request body is larger than {self.max_body >> 20} MiB")
        self.done = not message.get("more_body", False)
        return message
