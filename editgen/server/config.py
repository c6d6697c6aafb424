"""ServerConfig: every limit of `editgen serve`, one documented field each (frozen,
keyword-only, validated on creation). Engine build options (which model, threads) stay
outside: they are the backend's."""

from __future__ import annotations

import dataclasses
import math

from editgen.engine.contract import MIN_ROWS
from editgen.engine.windows import DEFAULT_MAX_SECONDS
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
    # Largest multipart body with an uploaded audio file (bytes); larger: 413. Past 1 MiB
    # an upload is spooled to a temporary file while it arrives.
    max_upload_bytes: int = 32 * MIB
    # Uploads received, decoded and encoded at once; each also holds a place in the queue
    # until its request is queued. Past it: 429. Bounds the uploads' temporary files
    # (max_uploads x max_upload_bytes) and the memory of concurrent decodes.
    max_uploads: int = 4
    # Samples an upload may decode to, over all its channels (rate x channels x seconds,
    # read from its header before decoding, and counted while decoding); more: 413
    # `audio_too_large`. 64 M: a 10-minute song (the default max_seconds) in 48 kHz stereo.
    max_upload_samples: int = 64_000_000
    # Seconds a request's body may take to arrive, from the end of its headers; past it:
    # 408 `body_timeout` and the connection is closed. Raise it for big uploads over slow links.
    body_timeout_s: float = 60.0
    # Seconds a connection may take to send a request's headers (from its first byte, or
    # from the connection's opening); past it: 408 and closed (a stalled client holds no socket).
    header_timeout_s: float = 10.0
    # Longest song a request may ask for or upload (seconds): longer than a request's window
    # it runs as windows. Past it: 422 `too_long` (seconds asked for), 413 `audio_too_long`.
    max_seconds: float = DEFAULT_MAX_SECONDS
    # Captured sources kept for later edits, bytes (in memory: maps and codes; on disk: the
    # files); the least recently used are dropped past it (a later edit from them gets 404).
    max_capture_bytes: int = 512 * MIB
    # Where captures are kept: None, in this process's memory (lost on restart, one store
    # per Ray replica); a directory, on disk (atomic writes with a checksum; survives
    # restarts; replicas that share the directory share the captures).
    capture_dir: str | None = None
    # If set, every /v1 request needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (401).
    api_key: str | None = None
    # Host header values answered (the name without the port; "*": any). None: any. Others
    # get 400 `host_not_allowed`: a web page cannot reach a keyless server on loopback
    # through DNS rebinding. `editgen serve` sets the loopback names when bound to loopback.
    allowed_hosts: tuple[str, ...] | None = None
    # Streaming: first chunk of audio after this many frames (50 frames = 1 s), each next
    # chunk `stream_growth` times longer, at most `stream_max_chunk_frames`.
    stream_first_frames: int = 10
    stream_growth: float = 2.0
    stream_max_chunk_frames: int = 100
    # EnCodec decodes audio longer than this in chunks of this length with 1 s of overlap
    # (editgen.engine.codec_chunks): decode memory is bounded by it; a stream sends a long
    # song's chunks after the first once each.
    codec_chunk_seconds: float = 30.0
    # Graceful shutdown: in-flight requests get this long to finish, then are cancelled.
    shutdown_grace_s: float = 30.0

    def __post_init__(self):
        _int(self, "max_rows", MIN_ROWS)
        _int(self, "queue_size", 1)
        _int(self, "retry_after_s", 0)
        _int(self, "max_body_bytes", 1024)
        _int(self, "max_upload_bytes", 1024)
        _int(self, "max_uploads", 1)
        _int(self, "max_upload_samples", 1)
        _int(self, "max_capture_bytes", 0)
        _int(self, "stream_first_frames", 1)
        _int(self, "stream_max_chunk_frames", 1)
        _positive(self, "deadline_s")
        _positive(self, "body_timeout_s")
        _positive(self, "header_timeout_s")
        _positive(self, "shutdown_grace_s", allow_zero=True)
        _positive(self, "max_seconds")
        _positive(self, "codec_chunk_seconds")
        if not isinstance(self.stream_growth, (int, float)) or not (1.0 <= self.stream_growth <= 16.0):
            raise InvalidRequestError(f"stream_growth is {self.stream_growth}, must be in [1, 16]")
        if self.api_key is not None and (not isinstance(self.api_key, str) or len(self.api_key) < 8):
            raise InvalidRequestError("api_key must be at least 8 characters (or unset for no key)")
        hosts = self.allowed_hosts
        if hosts is not None and (not isinstance(hosts, tuple) or not hosts
                                  or not all(isinstance(h, str) and h.strip() for h in hosts)):
            raise InvalidRequestError(f"allowed_hosts is {self.allowed_hosts!r}: give a tuple of host names "
                                      "(\"*\" for any), or None")
        if self.capture_dir is not None and (not isinstance(self.capture_dir, str) or not self.capture_dir):
            raise InvalidRequestError(f"capture_dir is {self.capture_dir!r}: give a directory path, or None")


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
