"""The app's two ASGI layers around the routes.

Front, the outermost (outside FastAPI's own error middleware, so it sees every answer
and every exception): gives each request an id (X-Request-Id), refuses a Host not in
--allowed-hosts (400) and, while the server drains, every /v1 request (503
shutting_down, Retry-After, Connection: close); counts every response in
editgen_requests_total by route and status (401 and 413 sent by Guard, 500s, and a
stream that ended with an error counted as that error's status); logs an unexpected
exception with its traceback and the request id (the client got a JSON 500 naming the
id); sends an HTTP/1.0 client the body whole with a Content-Length (its protocol has no
chunked transfer, which a stream would otherwise use).

Guard, inside FastAPI's error handling (so the exceptions it raises mid-body become
coded JSON answers): the API key (401 with WWW-Authenticate), the body's size (413, up
front by Content-Length and counted as it arrives) and its arrival time (408
body_timeout), and an upload's queue place (Scheduler.reserve_upload: 429 before the
body is read)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from editgen.errors import EditGenError, first_line
from editgen.server.config import ServerConfig
from editgen.server.errors import (
    BadHostError,
    BodyTooLargeError,
    InternalError,
    ServerError,
    ShuttingDownError,
    UnauthorizedError,
    error_body,
    response_headers,
    status_of,
)

log = logging.getLogger("editgen.server")

UPLOAD_PATHS = ("/v1/edit/audio", "/v1/captures/audio")
# request.state keys the layers and handlers share
REQUEST_ID, OUTCOME_STATUS, UPLOAD_SLOT = "request_id", "outcome_status", "upload_slot"


async def send_error(send, exc: EditGenError, config: ServerConfig) -> None:
    """Answer `exc` as the error contract says, from an ASGI layer (outside the routes)."""
    response = JSONResponse(error_body(exc), status_of(exc), headers=response_headers(exc, config.retry_after_s))
    await response({"type": "http"}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}


class Front:
    def __init__(self, app, api):
        self.app, self.api = app, api  # api: the FastAPI app (its routes, config, service)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        config: ServerConfig = self.api.state.config
        service = getattr(self.api.state, "service", None)
        state = scope.setdefault("state", {})
        state[REQUEST_ID] = request_id = secrets.token_hex(8)
        draining = service is not None and not service.scheduler.accepting
        answer = Answer(send, request_id, whole=scope.get("http_version") == "1.0", close=draining)
        try:
            refusal = self._refusal(scope, config, draining)
            if refusal is not None:
                await send_error(answer.send, refusal, config)
            else:
                await self.app(scope, receive, answer.send)
        except Exception as exc:  # FastAPI answered it already (JSON 500) and re-raised it
            log.error("request %s failed: %s", request_id, first_line(exc), exc_info=exc)
            if not answer.started:
                await send_error(answer.send, internal_error(request_id), config)
            answer.status = 500  # a stream cut short by it counts as a 500
        finally:
            if service is not None:
                status = state.get(OUTCOME_STATUS, answer.status)
                service.metrics.requests.labels(endpoint=self._endpoint(scope), status=str(status)).inc()

    def _refusal(self, scope, config: ServerConfig, draining: bool) -> ServerError | None:
        if config.allowed_hosts is not None and "*" not in config.allowed_hosts:
            host = Headers(scope=scope).get("host")
            if host is not None and host_name(host) not in {h.lower() for h in config.allowed_hosts}:
                return BadHostError(f"host {host[:100]!r} is not served here (allowed: "
                                    f"{', '.join(config.allowed_hosts)}): use one of those names or --allowed-hosts")
        if draining and scope.get("path", "").startswith("/v1"):
            return ShuttingDownError("the server is shutting down: retry on another replica")
        return None

    def _endpoint(self, scope) -> str:
        """The route's path template (bounded label values): "other" for none."""
        for route in self.api.router.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return route.path
        return "other"


def host_name(host: str) -> str:
    """A Host header's name, lower-case, without the port ("[::1]:8000" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


def internal_error(request_id: str) -> InternalError:
    return InternalError(f"the server failed on this request (a bug, logged under request id {request_id}): "
                         "retry, and report it if it persists")


class Answer:
    """An ASGI `send` that records the status, adds X-Request-Id (and Connection: close
    while draining), and with `whole` holds the body until its end to send it with a
    Content-Length."""

    def __init__(self, send, request_id: str, *, whole: bool, close: bool):
        self._send, self.request_id, self.whole, self.close = send, request_id, whole, close
        self.started, self.status = False, 500  # no answer at all counts as a failure
        self._start: dict | None = None  # the held response start (whole)
        self._body: list[bytes] = []

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started, self.status = True, message["status"]
            headers = MutableHeaders(raw=list(message.get("headers", [])))
            headers.setdefault("x-request-id", self.request_id)
            if self.close:
                headers["connection"] = "close"
            message = {**message, "headers": headers.raw}
            if self.whole and "content-length" not in headers:
                self._start = message
                return
        elif message["type"] == "http.response.body" and self._start is not None:
            self._body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(self._body)
            headers = MutableHeaders(raw=self._start["headers"])
            if "transfer-encoding" in headers:
                del headers["transfer-encoding"]
            headers["content-length"] = str(len(body))
            await self._send({**self._start, "headers": headers.raw})
            message = {"type": "http.response.body", "body": body}
        await self._send(message)


class Guard:
    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        config, path = self.config, scope.get("path", "")
        headers = Headers(scope=scope)
        if config.api_key is not None and path.startswith("/v1") and not self._authorized(headers):
            return await send_error(send, UnauthorizedError(
                "missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"), config)
        upload = path in UPLOAD_PATHS
        limit = config.max_upload_bytes if upload else config.max_body_bytes
        too_large = BodyTooLargeError(f"the body is over this endpoint's limit of {limit} bytes")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await send_error(send, too_large, config)
        slot = None
        if upload and scope.get("method") == "POST":
            try:
                slot = scope["app"].state.service.scheduler.reserve_upload()
            except ServerError as exc:
                return await send_error(send, exc, config)
            scope["state"][UPLOAD_SLOT] = slot
        try:
            await self.app(scope, _BodyReader(receive, limit, too_large, config.body_timeout_s), send)
        finally:
            if slot is not None:
                slot.release()

    def _authorized(self, headers: Headers) -> bool:
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.config.api_key.encode())


class _BodyReader:
    """An ASGI `receive` that counts the body (413 past `limit`) and bounds the time it
    takes to arrive (408); after the body, waiting for the disconnect is not bounded.
    The HTTPExceptions pass through FastAPI's body reading to its handlers."""

    def __init__(self, receive, limit: int, too_large: BodyTooLargeError, timeout_s: float):
        self._receive, self.limit, self.too_large, self.timeout_s = receive, limit, too_large, timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._received, self._done = 0, False

    async def __call__(self):
        if self._done:
            return await self._receive()
        left = self._deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(left, 0.0))
        except asyncio.TimeoutError:
            raise StarletteHTTPException(408, f"the body did not arrive within the server's body timeout of "
                                              f"{self.timeout_s:g} s") from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self.limit:
                raise StarletteHTTPException(413, first_line(self.too_large))
            self._done = not message.get("more_body", False)
        else:
            self._done = True
        return message
