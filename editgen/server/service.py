"""One serving engine: a backend, its scheduler thread, the capture store and the
metrics. The FastAPI app opens it at startup and closes it at shutdown (uvicorn and Ray
Serve both run the app's lifespan), one per process or per Ray replica. `editgen serve`
drains it before that (EditGenServer): on SIGTERM new requests get 503 while the
running ones finish."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from editgen.server.captures import CaptureStore, DiskCaptureStore
from editgen.server.config import ServerConfig
from editgen.server.jobs import JobFactory
from editgen.server.metrics import Metrics
from editgen.server.scheduler import Scheduler

log = logging.getLogger("editgen.server")


class Service:
    def __init__(self, backend, config: ServerConfig):
        self.backend, self.config = backend, config
        self.metrics = Metrics()
        self.captures = (CaptureStore(config.max_capture_bytes) if config.capture_dir is None
                         else DiskCaptureStore(config.capture_dir, config.max_capture_bytes))
        self.jobs = JobFactory(backend, self.captures, config)
        self.scheduler = Scheduler(backend, config, self.metrics)
        self.closed = False
        self._drain_lock = threading.Lock()
        self._drained: bool | None = None  # after drain(): whether it was clean

    @classmethod
    def open(cls, open_backend: Callable[[], object], config: ServerConfig) -> "Service":
        return cls(open_backend(), config)

    @property
    def ready(self) -> tuple[bool, str]:
        s = self.scheduler
        if self.closed or not s.accepting:
            return False, "shutting down"
        if not s.alive:
            return False, "the scheduler thread stopped"
        if s.queue_depth + s.uploads >= self.config.queue_size:
            return False, "the queue is full"
        return True, "ready"

    def drain(self, grace_s: float | None = None) -> bool:
        """Stop admitting (503 shutting_down), give in-flight requests `grace_s` (the
        config's by default) to finish, answer the rest 503 (an `error` event in a
        stream), stop the threads. Returns whether nothing was left to cancel. Once."""
        with self._drain_lock:
            if self._drained is None:
                self._drained = self.scheduler.shutdown(self.config.shutdown_grace_s if grace_s is None else grace_s)
                log.info("editgen server drained (%s)", "clean" if self._drained else "requests cancelled")
            return self._drained

    def close(self, grace_s: float | None = None) -> None:
        """Drain (if not yet), then close the backend. The server writes nothing to disk
        but captures in a --capture-dir, each whole or not at all."""
        if self.closed:
            return
        self.closed = True
        self.drain(grace_s)
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        log.info("editgen server stopped")
