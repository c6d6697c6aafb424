"""Captured sources by id (a request never names a file: it gets an id from a capture
request and passes it back), bounded in bytes, least recently used first out. Two
stores with one interface (put, get, delete, total_bytes, len):

- CaptureStore: this process's memory. Lost on restart; each Ray replica has its own.
- DiskCaptureStore (`--capture-dir`): one file per capture in a directory, written
  atomically with a checksum. Survives restarts (kill -9 included); replicas, or
  servers, that share the directory share the captures."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import secrets
import threading
import time
from pathlib import Path

from editgen.engine.capture import SourceCapture
from editgen.errors import InvalidRequestError
from editgen.server.errors import UnknownCaptureError

# What put() hands out (secrets.token_urlsafe(16)); anything else is no capture, and
# never reaches a file name.
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# Temporary files of a writer that died before its rename are removed after this long.
_STALE_TMP_S = 3600.0


def capture_bytes(capture: SourceCapture) -> int:
    """Its codes and maps (a long capture has none)."""
    return int(capture.codes.nbytes + (0 if capture.maps is None else capture.maps.nbytes))


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InvalidRequestError(f"this capture is {size / 2**20:.1f} MiB, the server keeps at most "
                                  f"{max_bytes / 2**20:.1f} MiB of captures: capture a shorter source")


def _quoted(capture_id: str) -> str:
    return repr(capture_id[:64])


class CaptureStore:
    """In memory; the bound counts the maps' and codes' bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[str, SourceCapture] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, capture: SourceCapture) -> str:
        size = capture_bytes(capture)
        _check_size(size, self.max_bytes)
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
            raise UnknownCaptureError(
                f"capture {_quoted(capture_id)} is not on this server: captures are kept in the server's memory, "
                "so they are lost when it restarts and each replica has its own (run it with --capture-dir to "
                "keep them on disk); it may also have been deleted or dropped to make room: capture the source again")
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


class DiskCaptureStore:
    """On disk: `<id>.npz` (SourceCapture.save's file, which `editgen edit --capture`
    reads too) and `<id>.sha256` (its SHA-256). A capture is written to temporary files,
    flushed to disk, and appears by renaming its .npz into place (atomic), after its
    checksum: a reader sees a whole capture with its checksum or none, whatever dies
    when. Reads verify the checksum. The bound counts the files' bytes; the least
    recently used (file mtime, touched on every read) are removed past it."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int):
        self.dir, self.max_bytes = Path(directory), max_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidRequestError(f"capture directory {self.dir} cannot be created: {exc.strerror}") from None
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise InvalidRequestError(f"capture directory {self.dir} is not writable: choose another --capture-dir")
        self._remove_stale_temporaries()

    def put(self, capture: SourceCapture) -> str:
        capture_id = secrets.token_urlsafe(16)
        npz, npz_tmp = self._path(capture_id), self.dir / f".{capture_id}.npz.tmp"
        sha_tmp = self.dir / f".{capture_id}.sha256.tmp"
        try:
            capture.save(npz_tmp)
            _check_size(npz_tmp.stat().st_size, self.max_bytes)
            _fsync(npz_tmp)
            _write_synced(sha_tmp, _digest(npz_tmp.read_bytes()) + "\n")
            os.replace(sha_tmp, self._sha(capture_id))
            os.replace(npz_tmp, npz)  # the capture exists from here on
            _fsync(self.dir)
        finally:
            npz_tmp.unlink(missing_ok=True)
            sha_tmp.unlink(missing_ok=True)
        self._evict()
        return capture_id

    def get(self, capture_id: str) -> SourceCapture:
        path = self._existing(capture_id)
        try:
            data, expected = path.read_bytes(), self._sha(capture_id).read_text().strip()
        except FileNotFoundError:  # deleted meanwhile (by another replica)
            raise self._unknown(capture_id) from None
        if _digest(data) != expected:
            raise UnknownCaptureError(f"capture {_quoted(capture_id)} is corrupt on disk (its checksum does not "
                                      "match): capture the source again")
        try:
            capture = SourceCapture.load(path)
        except InvalidRequestError:  # removed between the two reads
            raise self._unknown(capture_id) from None
        try:
            os.utime(path)  # recently used: evicted last
        except FileNotFoundError:
            pass
        return capture

    def delete(self, capture_id: str) -> None:
        path = self._existing(capture_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise self._unknown(capture_id) from None
        self._sha(capture_id).unlink(missing_ok=True)

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._files())

    def __len__(self) -> int:
        return len(self._files())

    # -- files --------------------------------------------------------------------------

    def _path(self, capture_id: str) -> Path:
        return self.dir / f"{capture_id}.npz"

    def _sha(self, capture_id: str) -> Path:
        return self.dir / f"{capture_id}.sha256"

    def _existing(self, capture_id: str) -> Path:
        if not _ID.fullmatch(capture_id) or not self._path(capture_id).is_file():
            raise self._unknown(capture_id)
        return self._path(capture_id)

    def _unknown(self, capture_id: str) -> UnknownCaptureError:
        return UnknownCaptureError(f"capture {_quoted(capture_id)} is not in this server's capture directory (never "
                                   "made, deleted, or dropped to make room): capture the source again")

    def _files(self) -> list[tuple[float, int, str]]:
        """(mtime, bytes, id) of every capture, oldest first."""
        out = []
        for path in self.dir.glob("*.npz"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, path.stem))
        return sorted(out)

    def _evict(self) -> None:
        files = self._files()
        total = sum(size for _, size, _ in files)
        for _, size, capture_id in files:
            if total <= self.max_bytes:
                break
            self._path(capture_id).unlink(missing_ok=True)  # another replica may have removed it
            self._sha(capture_id).unlink(missing_ok=True)
            total -= size

    def _remove_stale_temporaries(self) -> None:
        old = time.time() - _STALE_TMP_S
        for path in self.dir.glob(".*.tmp"):
            try:
                if path.stat().st_mtime < old:
                    path.unlink()
            except FileNotFoundError:
                pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (the renames), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
