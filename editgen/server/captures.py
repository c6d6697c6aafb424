"""Captured sources, kept in memory by id (a request never names a file: it gets an id
from a capture request and passes it back). Bounded in bytes; least recently used first out."""

from __future__ import annotations

import collections
import secrets
import threading

from editgen.engine.capture import SourceCapture
from editgen.errors import InvalidRequestError
from editgen.server.errors import UnknownCaptureError


def capture_bytes(capture: SourceCapture) -> int:
    """Its codes and maps (a long capture has none)."""
    return int(capture.codes.nbytes + (0 if capture.maps is None else capture.maps.nbytes))


class CaptureStore:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, SourceCapture] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, capture: SourceCapture) -> str:
        size = capture_bytes(capture)
        if size > self.max_bytes:
            raise InvalidRequestError(f"this capture is {size / 2**20:.1f} MiB, the server keeps at most "
                                      f"{self.max_bytes / 2**20:.1f} MiB of captures: capture a shorter source")
        capture_id = secrets.token_urlsafe(16)
        with self._lock:
            while self._bytes + size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= capture_bytes(old)
            self._items[capture_id] = capture
            self._bytes += size
        return capture_id

    def get(self, capture_id: str) -> SourceCapture:
        with self._lock:
            capture = self._items.get(capture_id)
            if capture is not None:
                self._items.move_to_end(capture_id)
        if capture is None:
            raise UnknownCaptureError(f"capture {capture_id[:64]!r} is not on this server (never made, deleted or "
                                      "dropped to make room): capture the source again")
        return capture

    def delete(self, capture_id: str) -> None:
        with self._lock:
            capture = self._items.pop(capture_id, None)
            if capture is not None:
                self._bytes -= capture_bytes(capture)
        if capture is None:
            self.get(capture_id)  # raises the 404

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
