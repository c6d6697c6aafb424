"""One serving engine: a backend, its scheduler thread, the capture store and the
metrics. The FastAPI app opens it at startup and closes it at shutdown (uvicorn and Ray
Serve both run the app's lifespan), one per process or per Ray replica."""

from __future__ import annotations

import logging
from typing import Callable

from editgen.server.captures import CaptureStore
from editgen.server.config import ServerConfig
from editgen.server.jobs import JobFactory
from editgen.server.metrics import Metrics
from editgen.server.scheduler import Scheduler

log = logging.getLogger("editgen.server")


class Service:
    def __init__(self, backend, config: ServerConfig):
        self.backend, self.config = backend, config
        self.metrics = Metrics()
        self.captures = CaptureStore(config.max_capture_bytes)
        self.jobs = JobFactory(backend, self.captures, config)
        self.scheduler = Scheduler(backend, config, self.metrics)
        self.closed = False

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
        if s.queue_depth >= self.config.queue_size:
            return False, "the queue is full"
        return True, "ready"

    def close(self, grace_s: float | None = None) -> None:
        """Graceful: stop admitting, give in-flight requests `grace_s` (the config's by
        default), cancel the rest, stop the threads, close the backend. Nothing is
        written to disk by the server, so nothing partial is left."""
        if self.closed:
            return
        self.closed = True
        self.scheduler.shutdown(self.config.shutdown_grace_s if grace_s is None else grace_s)
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        log.info("editgen server stopped")
