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
import json
import os
import time
from typing import Annotated, Callable

import pydantic
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from editgen.engine.tokenizer import text_problem
from editgen.errors import EditGenError
from editgen.server.audio_stream import wav_bytes, wav_header
from editgen.server.config import ServerConfig
from editgen.server.errors import (
    BadBodyError,
    BodyTimeoutError,
    BodyTooLargeError,
    MalformedBodyError,
    MethodNotAllowedError,
    NotFoundError,
    ServerError,
    UnauthorizedError,
    error_body,
    response_headers,
    status_of,
)
from editgen.server.middleware import OUTCOME_STATUS, REQUEST_ID, UPLOAD_SLOT, Front, Guard, internal_error
from editgen.server.scheduler import ClientGone
from editgen.server.schemas import (CaptureAudioForm, CaptureBody, EditAudioForm, EditBody, GenerateBody,
                                    body_from_form)
from editgen.server.service import Service
from editgen.server.tickets import AudioChunk, Done, Failed, Outcome, Ticket
from editgen.version import __version__

_ERROR_RESPONSES = {s: {"description": d, "content": {"application/json": {"example": {
    "error": {"code": c, "message": "one line"}}}}} for s, c, d in (
        (400, "invalid_request", "the engine refused a value (its one-line message), the body is not JSON, "
                                 "or the Host is not allowed (host_not_allowed)"),
        (401, "unauthorized", "the server has an API key and the request did not send it"),
        (404, "unknown_capture", "no capture has this id (see the message: in memory, captures die with the server)"),
        (408, "body_timeout", "the body did not arrive within the server's body timeout"),
        (413, "body_too_large", "the body or upload is over the server's limit (audio_too_large: it would "
                                "decode to more samples than the server's limit)"),
        (422, "invalid_body", "the body is not the shape of the API (a wrong type, an unknown field, text with "
                              "a NUL, a noncharacter or an unpaired surrogate)"),
        (429, "queue_full", "the admission queue (or the uploads in progress) is full: retry after Retry-After "
                            "seconds"),
        (500, "internal_error", "a fault of the server (its message names the request id it is logged under) "
                                "or of the engine (engine_error)"),
        (503, "shutting_down", "the server is draining (retry elsewhere after Retry-After seconds), or the "
                               "request passed its deadline (deadline_exceeded)"))}


class EditGenApi(FastAPI):
    """FastAPI with the Front layer outside its own error middleware (which answers an
    unexpected exception, then re-raises it for the server to log: Front logs and
    counts it)."""

    def build_middleware_stack(self):
        return Front(super().build_middleware_stack(), self)


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

    app = EditGenApi(title="EditGen", version=__version__, lifespan=lifespan,
                     description="Text-to-music generation and Prompt-to-Prompt editing on MusicGen. "
                                 "Errors are {\"error\": {\"code\", \"message\"}}. With an API key set, /v1 "
                                 "needs `Authorization: Bearer KEY` or `X-API-Key: KEY`.")
    app.state.config = config
    _add_error_handlers(app)
    _add_routes(app, config)
    app.add_middleware(Guard, config=config)
    return app


def service_of(request: Request) -> Service:
    return request.app.state.service


# -- the error contract -------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, exc: EditGenError) -> JSONResponse:
        headers = response_headers(exc, request.app.state.config.retry_after_s)
        return JSONResponse(error_body(exc), status_of(exc), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # Front logs it with the traceback
        return respond(request, internal_error(getattr(request.state, REQUEST_ID)))

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
               408: BodyTimeoutError, 413: BodyTooLargeError}.get(exc.status_code)
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
    # Of a union's per-member errors, ours say what is wrong (text that is not text).
    first = next((e for e in errors if e.get("type") in ("invalid_text", "invalid_flag")), errors[0])
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "not JSON")
        return MalformedBodyError(f"the body is not valid JSON: {why}")
    where = ".".join(_loc(p) for p in first.get("loc", ()) if p != "body" and not _member_tag(p)) or "body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    message = " ".join(str(first.get("msg", "invalid")).split())
    return BadBodyError(f"{where}: {message}{more}")


def _member_tag(part) -> bool:
    """pydantic's name for the union member a validator belongs to (not a place)."""
    return isinstance(part, str) and part.startswith("function-after[")


def _loc(part) -> str:
    """One step of an error's location: a field name, an index, or a client's dict key
    (quoted when it is not plain: it may hold anything)."""
    text = str(part)
    if isinstance(part, str) and (text_problem(text) is not None or not text.isprintable() or len(text) > 64):
        return ascii(text[:64])
    return text


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

    @app.post("/v1/edit/audio", responses=audio, summary="Edit an uploaded recording",
              openapi_extra=_multipart(EditAudioForm))
    async def edit_audio(form: Annotated[EditAudioForm, Form()], request: Request):
        arrived = time.monotonic()
        service = service_of(request)
        body = body_from_form(form, EditBody)
        source_audio = await _upload(service, form.audio)
        ticket = service.jobs.edit(body, arrived, audio=source_audio)
        return await _respond(request, service, ticket, body.stream, body.format)

    @app.post("/v1/captures", responses=errors, summary="Record a source's maps for later edits")
    async def capture(body: CaptureBody, request: Request):
        service = service_of(request)
        ticket = service.jobs.capture(body, time.monotonic())
        return await _respond(request, service, ticket, False, "json")

    @app.post("/v1/captures/audio", responses=errors, summary="Capture an uploaded recording",
              openapi_extra=_multipart(CaptureAudioForm))
    async def capture_audio(form: Annotated[CaptureAudioForm, Form()], request: Request):
        arrived = time.monotonic()
        service = service_of(request)
        body = body_from_form(form, CaptureBody)
        ticket = service.jobs.capture(body, arrived, audio=await _upload(service, form.audio))
        return await _respond(request, service, ticket, False, "json")

    @app.get("/v1/captures/{capture_id}", responses=errors, summary="A capture's facts")
    async def capture_info(capture_id: str, request: Request):
        capture = service_of(request).captures.get(capture_id)
        return {"capture_id": capture_id, "prompt": capture.prompt, "frames": int(capture.codes.shape[-1]),
                "steps": None if capture.maps is None else int(capture.maps.shape[0]),  # long: codes only
                "options": dataclasses.asdict(capture.options)}

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


def _multipart(form) -> dict:
    """The upload endpoints take multipart/form-data (FastAPI would say urlencoded for a form
    model): their schema is the form model's, the file included."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"$ref": f"#/components/schemas/{form.__name__}"}}}}}


async def _upload(service: Service, audio: UploadFile):
    """Check, decode and encode an uploaded source: decoded block by block from the
    spooled upload in a worker thread, EnCodec on the codec thread. Its queue place was
    taken before the body was read (Guard); at most max_uploads run at once."""
    name = f"upload {(audio.filename or 'audio')[:64]!r}"
    await audio.seek(0)
    decoded = await run_in_threadpool(service.jobs.read_upload, audio.file, name)
    return await asyncio.wrap_future(service.scheduler.codec.submit(service.jobs.encode_upload, decoded))


# -- answering ----------------------------------------------------------------------------------


async def _respond(request: Request, service: Service, ticket: Ticket, stream: bool, fmt: str):
    ticket.attach(asyncio.get_running_loop())
    ticket.endpoint = _endpoint(request)
    ticket.id = getattr(request.state, REQUEST_ID)  # one id in the logs, the header and the JSON
    slot = getattr(request.state, UPLOAD_SLOT, None)
    if slot is not None:  # the upload's queue place passes to its ticket (no await between)
        slot.release()
    service.scheduler.submit(ticket)
    headers = {"X-Request-Id": ticket.id}
    if stream:
        media = "audio/wav" if fmt == "wav" else "application/x-ndjson"
        return StreamingResponse(_stream(request, service, ticket, fmt), media_type=media, headers=headers)
    outcome = await _wait(request, service, ticket)
    if outcome is None:  # the client left; nobody reads this
        return Response(status_code=499)
    _observe_latency(service, ticket)
    if fmt == "wav" and outcome.tracks:
        main = next(iter(outcome.tracks.values()))
        return Response(wav_bytes(main, service.backend.shapes.sample_rate), media_type="audio/wav", headers=headers)
    return JSONResponse(_outcome_json(service, ticket, outcome, with_audio=True), headers=headers)


def _observe_latency(service: Service, ticket: Ticket) -> None:
    """A successful request's latency (Front counts every response, errors included)."""
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


async def _stream(request: Request, service: Service, ticket: Ticket, fmt: str):
    """Chunks as the codec thread decodes them: a WAV (header with the final length, then
    PCM of the main track) or NDJSON events (start, audio per track, done or error). An
    error after the first byte ends a WAV stream early (the header's length tells) and
    is an `error` event in NDJSON; the metrics count the stream with the error's status."""
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
                _observe_latency(service, ticket)
                if fmt == "json":
                    yield _line({"event": "done", **_outcome_json(service, ticket, event.outcome, with_audio=False)})
                return
            elif isinstance(event, Failed):
                setattr(request.state, OUTCOME_STATUS, status_of(event.error))
                if fmt == "json":
                    yield _line({"event": "error", **error_body(event.error)})
                return
    finally:
        if not ticket.ended:  # the client went away mid-stream
            service.scheduler.cancel(ticket, ClientGone("the client disconnected"))


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()
