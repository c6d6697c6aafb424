"""The HTTP app (FastAPI): routes, the error contract, limits, and the handlers'
side of the router/batcher split: a handler validates its body into a Ticket
(JobFactory), queues it (Scheduler.submit: 429/503 right away) and awaits the
ticket's events, streaming audio chunks as they come or answering once at the end.

    POST /v1/generate          GenerateBody              -> audio/wav | JSON | stream
    POST /v1/edit              EditBody (paired, captured by capture_id, region)
    POST /v1/edit/audio        multipart: an uploaded source audio + the edit's fields
    POST /v1/captures          CaptureBody               -> {"capture_id": ...}
    POST /v1/captures/audio    multipart: capture an uploaded recording
    GET|DELETE /v1/captures/{capture_id}
    GET /healthz, /readyz, /metrics (Prometheus)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import json
import os
import time
from typing import Callable, Literal

import pydantic
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from editgen.engine.jobs import Region
from editgen.errors import EditGenError, first_line
from editgen.server.audio_stream import wav_bytes, wav_header
from editgen.server.config import ServerConfig
from editgen.server.errors import (
    BadBodyError,
    BodyTooLargeError,
    MalformedBodyError,
    MethodNotAllowedError,
    NotFoundError,
    ServerError,
    UnauthorizedError,
    error_body,
    status_of,
)
from editgen.server.scheduler import ClientGone
from editgen.server.schemas import CaptureBody, EditBody, GenerateBody, RegionBody
from editgen.server.service import Service
from editgen.server.tickets import AudioChunk, Done, Failed, Outcome, Ticket
from editgen.version import __version__

UPLOAD_PATHS = ("/v1/edit/audio", "/v1/captures/audio")
_ERROR_RESPONSES = {s: {"description": d, "content": {"application/json": {"example": {
    "error": {"code": c, "message": "one line"}}}}} for s, c, d in (
        (400, "invalid_request", "the engine refused a value (its one-line message), or the body is not JSON"),
        (401, "unauthorized", "the server has an API key and the request did not send it"),
        (413, "body_too_large", "the body or upload is over the server's limit"),
        (422, "invalid_body", "the body is not the shape of the API"),
        (429, "queue_full", "the admission queue is full: retry after Retry-After seconds"),
        (503, "deadline_exceeded", "the request passed its deadline, or the server is shutting down"))}


def create_app(open_backend: Callable[[], object], config: ServerConfig | None = None) -> FastAPI:
    """The app; `open_backend()` runs at startup (in a worker thread: loading takes time)."""
    config = config or ServerConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = await run_in_threadpool(Service.open, open_backend, config)
        try:
            yield
        finally:
            await run_in_threadpool(app.state.service.close)

    app = FastAPI(title="EditGen", version=__version__, lifespan=lifespan,
                  description="Text-to-music generation and Prompt-to-Prompt editing on MusicGen. "
                              "Errors are {\"error\": {\"code\", \"message\"}}. With an API key set, /v1 needs "
                              "`Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    app.state.config = config
    _add_error_handlers(app)
    _add_routes(app, config)
    app.add_middleware(Guard, config=config)
    return app


def service_of(request: Request) -> Service:
    return request.app.state.service


# -- limits before the app: API key, body size ------------------------------------------------


class Guard:
    """ASGI middleware: 401 without the API key on /v1, 413 for a body over the limit
    (by Content-Length up front, and by counting what arrives for chunked bodies)."""

    def __init__(self, app, config: ServerConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = Headers(scope=scope)
        if self.config.api_key is not None and path.startswith("/v1") and not self._authorized(headers):
            return await _send_error(scope, receive, send, UnauthorizedError(
                "missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"))
        limit = self.config.max_upload_bytes if path in UPLOAD_PATHS else self.config.max_body_bytes
        too_large = BodyTooLargeError(f"the body is over this endpoint's limit of {limit} bytes")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _send_error(scope, receive, send, too_large)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # an HTTPException passes through FastAPI's body reading
                    raise StarletteHTTPException(413, first_line(too_large))
            return message

        await self.app(scope, limited_receive, send)

    def _authorized(self, headers: Headers) -> bool:
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.config.api_key.encode())


async def _send_error(scope, receive, send, exc: ServerError) -> None:
    await JSONResponse(error_body(exc), exc.status, headers=_retry_headers(exc, None))(scope, receive, send)


def _retry_headers(exc: EditGenError, config: ServerConfig | None) -> dict:
    if status_of(exc) in (429, 503):
        return {"Retry-After": str(config.retry_after_s if config else 1)}
    return {}


# -- the error contract -------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, exc: EditGenError) -> JSONResponse:
        status = status_of(exc)
        service = getattr(request.app.state, "service", None)
        if service is not None:
            service.metrics.requests.labels(endpoint=_endpoint(request), status=str(status)).inc()
        return JSONResponse(error_body(exc), status, headers=_retry_headers(exc, request.app.state.config))

    @app.exception_handler(EditGenError)
    async def engine_error(request: Request, exc: EditGenError):
        return respond(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return respond(request, _validation_error(exc.errors()))

    @app.exception_handler(pydantic.ValidationError)
    async def model_error(request: Request, exc: pydantic.ValidationError):
        return respond(request, _validation_error(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        cls = {400: MalformedBodyError, 401: UnauthorizedError, 404: NotFoundError, 405: MethodNotAllowedError,
               413: BodyTooLargeError}.get(exc.status_code)
        if cls is None:
            error = ServerError(str(exc.detail))
            error.status = exc.status_code
        else:
            detail = exc.detail if exc.status_code != 400 else "the body cannot be parsed (broken JSON or multipart)"
            error = cls(str(detail))
        return respond(request, error)


def _validation_error(errors) -> EditGenError:
    """pydantic's error list -> one line: the first problem, where it is, and how many more."""
    if not errors:
        return BadBodyError("the body is not the shape this endpoint takes")
    first = errors[0]
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "not JSON")
        return MalformedBodyError(f"the body is not valid JSON: {why}")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    message = " ".join(str(first.get("msg", "invalid")).split())
    return BadBodyError(f"{where}: {message}{more}")


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "other")


# -- routes -------------------------------------------------------------------------------------


def _add_routes(app: FastAPI, config: ServerConfig) -> None:
    errors = _ERROR_RESPONSES
    audio = {200: {"content": {"audio/wav": {}, "application/json": {}, "application/x-ndjson": {}},
                   "description": "the audio (format wav), or JSON, or a stream (stream: true)"}, **errors}

    @app.post("/v1/generate", responses=audio, summary="Generate music from a prompt")
    async def generate(body: GenerateBody, request: Request):
        service = service_of(request)
        ticket = service.jobs.generate(body, time.monotonic())
        return await _respond(request, service, ticket, body.stream, body.format)

    @app.post("/v1/edit", responses=audio, summary="Edit: paired, from a capture, or in a region")
    async def edit(body: EditBody, request: Request):
        service = service_of(request)
        ticket = service.jobs.edit(body, time.monotonic())
        return await _respond(request, service, ticket, body.stream, body.format)

    @app.post("/v1/edit/audio", responses=audio, summary="Edit an uploaded recording")
    async def edit_audio(request: Request, audio: UploadFile = File(description="WAV, FLAC or OGG"),
                         source: str = Form(description="a description of the audio"),
                         target: str | None = Form(None), op: Literal["replace", "refine", "reweight"] = Form("replace"),
                         word: list[str] = Form([], description="WORD=C, repeatable"),
                         window: list[str] = Form([], description="WORD=F or WORD=START:END, repeatable"),
                         setting: Literal["editgen-code", "paper-text", "hard"] = Form("editgen-code"),
                         cross_blend: str | None = Form(None), self_blend: str | None = Form(None),
                         self_window: str | None = Form(None),
                         reweight_mode: Literal["p2p", "editgen-code"] = Form("p2p"), region: str | None = Form(None, description="START:END seconds"),
                         guidance: float = Form(3.0), top_k: int = Form(250), temperature: float = Form(1.0),
                         greedy: bool = Form(False), seed: int = Form(0), stream: bool = Form(False),
                         format: Literal["wav", "json"] = Form("wav")):
        from editgen.cli.edit import parse_assignments, parse_windows

        arrived = time.monotonic()
        service = service_of(request)
        span = Region.parse(region) if region is not None else None
        body = EditBody(source=source, target=target, op=op, setting=setting, cross_blend=cross_blend,
                        self_blend=self_blend, self_window=self_window, reweight_mode=reweight_mode, guidance=guidance, top_k=top_k,
                        temperature=temperature, greedy=greedy, seed=seed, stream=stream, format=format,
                        word_weights=parse_assignments(word, "word", "C"),
                        windows=parse_windows(window, "window"),
                        region=None if span is None else RegionBody(start=span.start, end=span.end))
        source_audio = await _upload(service, audio)
        ticket = service.jobs.edit(body, arrived, audio=source_audio)
        return await _respond(request, service, ticket, stream, format)

    @app.post("/v1/captures", responses=errors, summary="Record a source's maps for later edits")
    async def capture(body: CaptureBody, request: Request):
        service = service_of(request)
        ticket = service.jobs.capture(body, time.monotonic())
        return await _respond(request, service, ticket, False, "json")

    @app.post("/v1/captures/audio", responses=errors, summary="Capture an uploaded recording")
    async def capture_audio(request: Request, audio: UploadFile = File(description="WAV, FLAC or OGG"),
                            source: str = Form(description="a description of the audio"),
                            capture_dtype: Literal["fp16", "fp32"] = Form("fp16"),
                            guidance: float = Form(3.0), top_k: int = Form(250), temperature: float = Form(1.0),
                            greedy: bool = Form(False), seed: int = Form(0)):
        arrived = time.monotonic()
        service = service_of(request)
        body = CaptureBody(source=source, capture_dtype=capture_dtype, guidance=guidance, top_k=top_k,
                           temperature=temperature, greedy=greedy, seed=seed)
        ticket = service.jobs.capture(body, arrived, audio=await _upload(service, audio))
        return await _respond(request, service, ticket, False, "json")

    @app.get("/v1/captures/{capture_id}", responses=errors, summary="A capture's facts")
    async def capture_info(capture_id: str, request: Request):
        capture = service_of(request).captures.get(capture_id)
        return {"capture_id": capture_id, "prompt": capture.prompt, "frames": int(capture.codes.shape[-1]),
                "steps": int(capture.maps.shape[0]), "options": dataclasses.asdict(capture.options)}

    @app.delete("/v1/captures/{capture_id}", status_code=204, responses=errors, summary="Drop a capture")
    async def capture_delete(capture_id: str, request: Request):
        service_of(request).captures.delete(capture_id)
        return Response(status_code=204)

    @app.get("/healthz", summary="Alive: the scheduler thread runs")
    async def healthz(request: Request):
        alive = service_of(request).scheduler.alive  # pid: which process (Ray replica) answered
        return JSONResponse({"alive": alive, "pid": os.getpid()}, 200 if alive else 503)

    @app.get("/readyz", summary="Ready: model loaded, admitting, queue not full")
    async def readyz(request: Request):
        ready, why = service_of(request).ready
        return JSONResponse({"ready": ready, "reason": why}, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics(request: Request):
        return Response(service_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _upload(service: Service, audio: UploadFile):
    """Read, check and encode an uploaded source (decoding in a worker thread, EnCodec on
    the codec thread). The queue is checked first: a full server refuses before the work."""
    service.scheduler.check_room()
    data = await audio.read()
    name = f"upload {(audio.filename or 'audio')[:64]!r}"
    clip, wav, notes = await run_in_threadpool(service.jobs.read_upload, data, name)
    future = service.scheduler.codec.submit(service.jobs.encode_upload, clip, wav, notes)
    return await asyncio.wrap_future(future)


# -- answering ----------------------------------------------------------------------------------


async def _respond(request: Request, service: Service, ticket: Ticket, stream: bool, fmt: str):
    ticket.attach(asyncio.get_running_loop())
    ticket.endpoint = _endpoint(request)
    service.scheduler.submit(ticket)
    headers = {"X-Request-Id": ticket.id}
    if stream:
        media = "audio/wav" if fmt == "wav" else "application/x-ndjson"
        return StreamingResponse(_stream(service, ticket, fmt), media_type=media, headers=headers)
    outcome = await _wait(request, service, ticket)
    if outcome is None:  # the client left; nobody reads this
        return Response(status_code=499)
    _record(service, ticket, 200)
    if fmt == "wav" and outcome.tracks:
        main = next(iter(outcome.tracks.values()))
        return Response(wav_bytes(main, service.backend.shapes.sample_rate), media_type="audio/wav", headers=headers)
    return JSONResponse(_outcome_json(service, ticket, outcome, with_audio=True), headers=headers)


def _record(service: Service, ticket: Ticket, status: int) -> None:
    service.metrics.requests.labels(endpoint=ticket.endpoint, status=str(status)).inc()
    if status == 200:
        service.metrics.latency.labels(endpoint=ticket.endpoint).observe(time.monotonic() - ticket.arrived)


def _outcome_json(service: Service, ticket: Ticket, outcome: Outcome, *, with_audio: bool) -> dict:
    rate = service.backend.shapes.sample_rate
    out = {"request_id": ticket.id, "kind": ticket.kind, **outcome.info,
           "latency_s": time.monotonic() - ticket.arrived,
           "codes": {name: codes.tolist() for name, codes in outcome.codes.items()}}
    if ticket.first_audio is not None:
        out["time_to_first_audio_s"] = ticket.first_audio - ticket.arrived
    if with_audio:
        out["audio"] = {name: base64.b64encode(wav_bytes(wav, rate)).decode() for name, wav in outcome.tracks.items()}
    return out


async def _wait(request: Request, service: Service, ticket: Ticket) -> Outcome | None:
    """The ticket's outcome; None if the client disconnected first (its ticket is then
    cancelled: its rows are free before the next step)."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            get = asyncio.ensure_future(ticket.events.get())
            done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if get in done:
                event = get.result()
                if isinstance(event, Done):
                    return event.outcome
                if isinstance(event, Failed):
                    raise event.error
                continue
            get.cancel()
            service.scheduler.cancel(ticket, ClientGone("the client disconnected"))
            return None
    except asyncio.CancelledError:  # the server cancels handlers at shutdown
        service.scheduler.cancel(ticket, ClientGone("the handler was cancelled"))
        raise
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body is read already, so the next
    message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _stream(service: Service, ticket: Ticket, fmt: str):
    """Chunks as the codec thread decodes them: a WAV (header with the final length, then
    PCM of the main track) or NDJSON events (start, audio per track, done or error). An
    error after the first byte ends a WAV stream early (the header's length tells) and
    is an `error` event in NDJSON."""
    shapes = service.backend.shapes
    hop = shapes.sample_rate // shapes.frame_rate
    main = ticket.tracks[0].name
    try:
        if fmt == "wav":
            yield wav_header(ticket.frames * hop, shapes.sample_rate, shapes.audio_channels)
        else:
            yield _line({"event": "start", "request_id": ticket.id, "kind": ticket.kind,
                         "sample_rate": shapes.sample_rate, "frames": ticket.frames, "samples": ticket.frames * hop,
                         "tracks": [t.name for t in ticket.tracks], "notes": list(ticket.notes)})
        while True:
            event = await ticket.events.get()
            if isinstance(event, AudioChunk):
                if fmt == "wav":
                    if event.track == main and event.pcm:
                        yield event.pcm
                elif event.pcm:
                    yield _line({"event": "audio", "track": event.track, "offset": event.offset,
                                 "samples": len(event.pcm) // (2 * shapes.audio_channels), "pcm16": base64.b64encode(event.pcm).decode()})
            elif isinstance(event, Done):
                _record(service, ticket, 200)
                if fmt == "json":
                    yield _line({"event": "done", **_outcome_json(service, ticket, event.outcome, with_audio=False)})
                return
            elif isinstance(event, Failed):
                _record(service, ticket, status_of(event.error))
                if fmt == "json":
                    yield _line({"event": "error", **error_body(event.error)})
                return
    finally:
        if not ticket.ended:  # the client went away mid-stream
            service.scheduler.cancel(ticket, ClientGone("the client disconnected"))


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()
