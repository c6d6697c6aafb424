"""Prometheus metrics of one server (its own registry, so several apps can live in one
process, as in the tests). Gauges that describe the scheduler are read from it when
/metrics is scraped; counters and histograms are updated where things happen."""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: a tiny model answers in tens of milliseconds, a long edit on CPU in minutes.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class StepRate:
    """Decoder steps per second over the last `window` seconds (0 when idle)."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._times.append(now)
            while self._times and self._times[0] < now - self.window:
                self._times.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._times if t >= now - self.window]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.queue_depth = Gauge("editgen_queue_depth", "Requests admitted and waiting for rows", registry=r)
        self.active_rows = Gauge("editgen_active_rows", "Decoder rows of the running requests", registry=r)
        self.running = Gauge("editgen_running_requests", "Requests whose rows are in the steps", registry=r)
        self.uploads = Gauge("editgen_uploads_in_progress", "Uploads being received, decoded or encoded "
                                                            "(each holds a queue place)", registry=r)
        self.steps_per_second = Gauge("editgen_steps_per_second", "Decoder steps per second, last 5 s", registry=r)
        self.steps = Counter("editgen_steps", "Decoder steps run", registry=r)
        self.step_seconds = Histogram("editgen_step_seconds", "Time of one engine step (all rows)", registry=r,
                                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.requests = Counter("editgen_requests", "Responses, by route (its path template; other: none) and "
                                "status, every one: refusals before the app (401, 413), 500s, and a stream that "
                                "ended with an error event counted with the error's status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("editgen_request_latency_seconds", "Arrival to the last byte of the result",
                                 ["endpoint"], registry=r, buckets=_LATENCY_BUCKETS)
        self.first_audio = Histogram("editgen_time_to_first_audio_seconds",
                                     "Streaming requests: arrival to the first audio chunk", ["endpoint"],
                                     registry=r, buckets=_LATENCY_BUCKETS)
        self.cancelled = Counter("editgen_cancelled", "Requests cancelled, by reason", ["reason"], registry=r)
        self.failed = Counter("editgen_failed", "Requests failed by the engine (backend or hook error)", registry=r)
        self.rate = StepRate()
        self.steps_per_second.set_function(self.rate.rate)

    def watch(self, scheduler) -> None:
        """Gauges read from the scheduler at scrape time."""
        self.queue_depth.set_function(lambda: scheduler.queue_depth)
        self.active_rows.set_function(lambda: scheduler.active_rows)
        self.running.set_function(lambda: scheduler.running_requests)
        self.uploads.set_function(lambda: scheduler.uploads)

    def render(self) -> bytes:
        return generate_latest(self.registry)
