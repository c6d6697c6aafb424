"""ServerConfig: every limit of `editgen serve`, one documented field each (frozen,
keyword-only, validated on creation). Engine build options (which model, threads) stay
outside: they are the backend's."""

from __future__ import annotations

import dataclasses
import math

from editgen.engine.contract import MIN_ROWS
from editgen.errors import InvalidRequestError

MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    # Rows one decoder step runs, over all requests (a plain request with guidance is 2
    # rows, an edit 4): the engine core's max_rows.
    max_rows: int = 64
    # Requests admitted but not yet running; past it a request gets 429 with Retry-After.
    queue_size: int = 64
    # Seconds a request may take from arrival to its last byte of audio; past it it is
    # cancelled (its rows freed) and answered 503 `deadline_exceeded`.
    deadline_s: float = 300.0
    # Retry-After (seconds) sent with 429 and 503.
    retry_after_s: int = 1
    # Largest JSON body (bytes); larger: 413.
    max_body_bytes: int = 64 * 1024
    # Largest multipart body with an uploaded audio file (bytes); larger: 413.
    max_upload_bytes: int = 32 * MIB
    # Longest audio a request may ask for or upload (seconds); None: the model's maximum.
    max_seconds: float | None = None
    # Captured sources kept in memory for later edits (bytes of maps and codes); the least
    # recently used are dropped past it (a later edit from them gets 404).
    max_capture_bytes: int = 512 * MIB
    # If set, every /v1 request needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (401).
    api_key: str | None = None
    # Streaming: first chunk of audio after this many frames (50 frames = 1 s), each next
    # chunk `stream_growth` times longer, at most `stream_max_chunk_frames`.
    stream_first_frames: int = 10
    stream_growth: float = 2.0
    stream_max_chunk_frames: int = 100
    # Graceful shutdown: in-flight requests get this long to finish, then are cancelled.
    shutdown_grace_s: float = 30.0

    def __post_init__(self):
        _int(self, "max_rows", MIN_ROWS)
        _int(self, "queue_size", 1)
        _int(self, "retry_after_s", 0)
        _int(self, "max_body_bytes", 1024)
        _int(self, "max_upload_bytes", 1024)
        _int(self, "max_capture_bytes", 0)
        _int(self, "stream_first_frames", 1)
        _int(self, "stream_max_chunk_frames", 1)
        _positive(self, "deadline_s")
        _positive(self, "shutdown_grace_s", allow_zero=True)
        if self.max_seconds is not None:
            _positive(self, "max_seconds")
        if not isinstance(self.stream_growth, (int, float)) or not (1.0 <= self.stream_growth <= 16.0):
            raise InvalidRequestError(f"stream_growth is {self.stream_growth}, must be in [1, 16]")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise InvalidRequestError("api_key must be at least 8 characters (or unset for no key)")


def _int(config, name: str, lo: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InvalidRequestError(f"{name} is {value!r}, must be an integer >= {lo}")


def _positive(config, name: str, allow_zero: bool = False) -> None:
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequestError(f"{name} is {value!r}, must be a {'non-negative' if allow_zero else 'positive'} "
                                  "number of seconds")
