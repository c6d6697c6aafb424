"""The server's error contract: every error a client can get is one JSON object
`{"error": {"code": ..., "message": ...}}` with a one-line message, and its HTTP status
comes from the error's class (tests/test_server_errors.py pins the table).

- 400: the engine refused a value (the CLI's messages: EditGenError subclasses);
- 422: a long-form window out of range (`invalid_window`), a song over the configured
  maximum (`too_long`); 413: an uploaded audio over it (`audio_too_long`);
- 401, 404, 413, 422 (the body is not the API's shape), 429, 503: the server's own.
A 500 means a fault of the server or the backend, never of the input."""

from __future__ import annotations

from editgen.errors import (AudioError, AudioTooLongError, CheckpointError, EditGenError, InvalidRequestError,
                            TooLongError, WindowError, first_line)


class ServerError(EditGenError):
    """A server-side refusal; `status` is its HTTP status."""

    status = 500
    code = "server_error"


class BadBodyError(ServerError):
    """The body is not the shape the API takes (wrong type, unknown or missing field)."""

    status, code = 422, "invalid_body"


class MalformedBodyError(ServerError):
    """The body cannot be parsed at all (not JSON, broken multipart)."""

    status, code = 400, "malformed_body"


class UnauthorizedError(ServerError):
    status, code = 401, "unauthorized"


class NotFoundError(ServerError):
    status, code = 404, "not_found"


class UnknownCaptureError(NotFoundError):
    code = "unknown_capture"


class MethodNotAllowedError(ServerError):
    status, code = 405, "method_not_allowed"


class BodyTooLargeError(ServerError):
    status, code = 413, "body_too_large"


class QueueFullError(ServerError):
    status, code = 429, "queue_full"


class ShuttingDownError(ServerError):
    status, code = 503, "shutting_down"


class DeadlineExceededError(ServerError):
    status, code = 503, "deadline_exceeded"


class EngineFailureError(ServerError):
    """The backend failed on a step this request was in (the server goes on)."""

    status, code = 500, "engine_error"


# Engine errors a user causes, with the engine's code, the most specific first: 400, but
# 413/422 for lengths and windows. CheckpointError cannot come from a request (the model
# is loaded at start) but is mapped for completeness.
_ENGINE_STATUS = {AudioTooLongError: 413, TooLongError: 422, WindowError: 422, InvalidRequestError: 400,
                  AudioError: 400, CheckpointError: 400}


def status_of(exc: BaseException) -> int:
    if isinstance(exc, ServerError):
        return exc.status
    for cls, status in _ENGINE_STATUS.items():
        if isinstance(exc, cls):
            return status
    return 400 if isinstance(exc, EditGenError) else 500


def as_client_error(exc: BaseException) -> EditGenError:
    """What a failed request's client is told: user errors as they are, anything else
    (a backend or hook exception) as an engine_error naming it in one line."""
    if isinstance(exc, EditGenError):
        return exc
    return EngineFailureError(f"the engine failed on this request: {type(exc).__name__}: {first_line(exc)}")


def error_body(exc: EditGenError) -> dict:
    return {"error": {"code": exc.code, "message": first_line(exc)}}
