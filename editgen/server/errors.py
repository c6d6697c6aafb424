"""The server's error contract: every error a client can get is one JSON object
`{"error": {"code": ..., "message": ...}}` with a one-line message, and its HTTP status
comes from the error's class (tests/test_server_errors.py pins the table).

- 400: the engine refused a value (the CLI's messages: EditGenError subclasses);
- 422: a long-form window out of range (`invalid_window`), a song over the configured
  maximum (`too_long`); 413: an uploaded audio over it (`audio_too_long`);
- 400 (bad host), 401, 404, 408, 413, 422 (the body is not the API's shape), 429, 503:
  the server's own.
A 500 means a fault of the server or the backend, never of the input: `internal_error`
(a bug: its message gives the request id under which the traceback is logged) or
`engine_error` (the backend failed on a step)."""

from __future__ import annotations

from editgen.engine.audio_blocks import AudioTooLargeError
from editgen.engine.tokenizer import text_problem
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


class BadHostError(ServerError):
    """The Host header is not one of --allowed-hosts (DNS rebinding: a web page that
    resolves its own name to this server's address sends its own name)."""

    status, code = 400, "host_not_allowed"


class UnauthorizedError(ServerError):
    status, code = 401, "unauthorized"


class NotFoundError(ServerError):
    status, code = 404, "not_found"


class UnknownCaptureError(NotFoundError):
    code = "unknown_capture"


class MethodNotAllowedError(ServerError):
    status, code = 405, "method_not_allowed"


class BodyTimeoutError(ServerError):
    """The body did not arrive within the server's body timeout."""

    status, code = 408, "body_timeout"


class HeaderTimeoutError(ServerError):
    """The request's headers did not arrive within the server's header timeout (sent by
    the connection's protocol, before the app: the connection is closed)."""

    status, code = 408, "header_timeout"


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


class InternalError(ServerError):
    """An unexpected exception in the server: a bug, logged with its traceback."""

    status, code = 500, "internal_error"


# Engine errors a user causes, with the engine's code, the most specific first: 400, but
# 413 for uploads over a limit and 422 for lengths and windows. CheckpointError cannot come
# from a request (the model is loaded at start) but is mapped for completeness.
_ENGINE_STATUS = {AudioTooLargeError: 413, AudioTooLongError: 413, TooLongError: 422, WindowError: 422,
                  InvalidRequestError: 400, AudioError: 400, CheckpointError: 400}


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
    return {"error": {"code": exc.code, "message": printable(first_line(exc))}}


def printable(text: str) -> str:
    """`text` with any code point text_problem refuses escaped (a message may quote a
    client's string; a lone surrogate cannot be encoded as UTF-8 JSON)."""
    if text_problem(text) is None:
        return text
    return "".join(c if text_problem(c) is None else ascii(c)[1:-1] for c in text)


def response_headers(exc: BaseException, retry_after_s: int) -> dict[str, str]:
    """Headers an error response carries: when to retry (429, 503), how to authenticate
    (401), and that the connection closes (408: the rest of the body is not read)."""
    status = status_of(exc)
    if status in (429, 503):
        return {"Retry-After": str(retry_after_s)}
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="editgen"'}
    if status == 408:
        return {"Connection": "close"}
    return {}
