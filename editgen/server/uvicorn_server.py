"""`editgen serve` on uvicorn: the shutdown order an operator expects, and a deadline
for request headers.

uvicorn alone, on SIGTERM, closes its listener (new clients: connection refused), waits
`timeout_graceful_shutdown` for connections, cancels the handlers still running (their
clients get a 500 or a cut stream), and only then runs the app's shutdown; it then
re-raises the signal, so the exit status is -15 even after a clean shutdown.
EditGenServer drains the app first: on the signal the app stops admitting (503
shutting_down with Retry-After, to new connections too: the listener stays open), the
running requests get the grace to finish, what is left is answered 503 (an `error`
event in an NDJSON stream), and only then does uvicorn close the listener and the
connections. `run` returns 0 after a clean drain, 1 when requests were cancelled. A
second signal ends the grace at once.

Request headers: a connection must send a request's headers within
`header_timeout_s` (from its opening, or from the first byte of its next request);
otherwise it gets 408 and is closed, so stalled clients cannot hold sockets. uvicorn
has no such timeout (its keep-alive timer stops at the first byte); the body's timeout
is the app's (middleware.Guard)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal

import uvicorn

from editgen.server.config import ServerConfig
from editgen.server.errors import HeaderTimeoutError, error_body

log = logging.getLogger("editgen.server")


class EditGenServer(uvicorn.Server):
    def __init__(self, app, config: ServerConfig, *, host: str, port: int, log_level: str = "info"):
        self.app = app  # the FastAPI app (app.state.service once started)
        super().__init__(uvicorn.Config(
            app, host=host, port=port, lifespan="on", log_level=log_level, log_config=_log_config(log_level),
            http=with_header_timeout(_auto_protocol(), config.header_timeout_s, self._count_header_timeout),
            # The app has drained before uvicorn's own shutdown: what is left is sending
            # the last answers, which needs seconds, not the grace.
            timeout_graceful_shutdown=5))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Future | None = None
        self.clean: bool | None = None  # after a drain: nothing was cancelled

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame) -> None:
        """SIGTERM / SIGINT (also called directly by tests): drain, then exit; a second
        one ends the grace now. The signal is not re-raised: the exit status is run()'s."""
        service = getattr(self.app.state, "service", None)
        if self._drain is not None:
            service.scheduler.hurry()
        elif service is None or self._loop is None:  # not started yet: nothing to drain
            self.should_exit = True
        else:
            log.info("signal %s: draining (new requests get 503)", signal.Signals(sig).name if sig else sig)
            self._drain = asyncio.run_coroutine_threadsafe(self._drain_then_exit(service), self._loop)

    async def _drain_then_exit(self, service) -> None:
        try:
            self.clean = await asyncio.to_thread(service.drain)
        finally:
            self.should_exit = True

    def _count_header_timeout(self) -> None:
        service = getattr(self.app.state, "service", None)
        if service is not None:
            service.metrics.requests.labels(endpoint="other", status="408").inc()


def run(app, config: ServerConfig, *, host: str, port: int) -> int:
    """Serve until a signal; 0 after a clean drain, 1 if requests were cancelled."""
    server = EditGenServer(app, config, host=host, port=port)
    server.run()
    return 0 if server.clean in (None, True) else 1


def _log_config(level: str) -> dict:
    """uvicorn's logging, and the server's own lines (draining, drained, a request's
    traceback) through uvicorn's handler at the same level; they still propagate (to a
    test's log capture)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["editgen"] = {"handlers": ["default"], "level": level.upper(), "propagate": True}
    return config


def _auto_protocol() -> type:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


_TIMEOUT_BODY = json.dumps(error_body(HeaderTimeoutError(
    "the request headers did not arrive within the server's header timeout"))).encode()
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)


def with_header_timeout(base: type, seconds: float, on_timeout) -> type:
    """uvicorn's HTTP protocol `base` (httptools or h11: both keep the request in flight
    as `self.cycle`) with a deadline on each request's headers."""

    class HeaderTimeoutProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self._header_timer is not None and self.cycle is not self._armed_for:
                self._disarm()  # its headers are complete: a new cycle runs the app

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._armed_for = self.cycle
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.cycle is self._armed_for and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()
                on_timeout()

    return HeaderTimeoutProtocol
