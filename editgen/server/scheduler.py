"""The scheduler thread: the only thread that touches the EngineCore (TGI's batcher;
HTTP handlers are the router: they validate, enqueue a Ticket and await its events).

Each turn: take new tickets and cancellations from the inbox (a cancelled request's rows
are freed here, before the next step), expire deadlines, run one engine step for every
running request (continuous batching: requests join and leave between steps), then hand
audio work to the codec thread: a chunk of a streaming request whose next chunk's frames
are settled, or the decode of a finished one. The codec thread (one worker, so a
ticket's chunks and its result leave in order) keeps decoding off the step loop.

A backend error fails the requests of that step (EngineCore); the loop goes on."""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from editgen.engine.core import EngineCore
from editgen.engine.requests import State
from editgen.errors import InvalidRequestError
from editgen.server.audio_stream import HOLDBACK_FRAMES, ChunkPlan, pcm16
from editgen.server.config import ServerConfig
from editgen.server.errors import (
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
    as_client_error,
)
from editgen.server.metrics import Metrics
from editgen.server.tickets import AudioChunk, Done, Failed, Ticket

log = logging.getLogger("editgen.server")


class ClientGone(Exception):
    """The client disconnected or cancelled (nobody reads the error)."""


class Scheduler:
    def __init__(self, backend, config: ServerConfig, metrics: Metrics):
        self.backend, self.config, self.metrics = backend, config, metrics
        self.core = EngineCore(backend, max_rows=config.max_rows)
        self.hop = backend.shapes.sample_rate // backend.shapes.frame_rate
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[Ticket] = []
        self._cancels: list[tuple[Ticket, BaseException]] = []
        self._live: dict[int, Ticket] = {}  # id(request) -> ticket, while the core holds it
        self._finishing = 0  # tickets handed to the codec thread for their result
        self.accepting = True
        self._stop = False
        # Read by other threads (metrics, /readyz), written here after every turn.
        self.queue_depth = self.active_rows = self.running_requests = 0
        self.recent: collections.deque[Ticket] = collections.deque(maxlen=256)  # ended tickets
        self.codec = ThreadPoolExecutor(1, thread_name_prefix="editgen-codec")
        self.thread = threading.Thread(target=self._run, name="editgen-scheduler", daemon=True)
        metrics.watch(self)
        self.thread.start()

    # -- called from the event loop ------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Queue a ticket, or refuse it now (429 queue full, 503 shutting down)."""
        if ticket.request.rows > self.config.max_rows:
            raise InvalidRequestError(f"the request needs {ticket.request.rows} rows, this server runs at most "
                                      f"{self.config.max_rows} at once: use fewer targets")
        with self._lock:
            if not self.accepting:
                raise ShuttingDownError("the server is shutting down: retry on another replica")
            self.check_room_locked()
            self._inbox.append(ticket)
            self.queue_depth += 1
            self._wake.notify()

    def check_room(self) -> None:
        """Raise QueueFullError when a new request would be refused (before costly work)."""
        with self._lock:
            self.check_room_locked()

    def check_room_locked(self) -> None:
        if self.queue_depth >= self.config.queue_size:
            raise QueueFullError(f"the queue is full ({self.config.queue_size} requests waiting): "
                                 f"retry after {self.config.retry_after_s} s")

    def cancel(self, ticket: Ticket, why: BaseException) -> None:
        """Drop a ticket; its rows are free before the next step."""
        with self._lock:
            self._cancels.append((ticket, why))
            self._wake.notify()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def idle(self) -> bool:
        with self._lock:
            return not (self._inbox or self._live or self._finishing)

    def shutdown(self, grace_s: float) -> None:
        """Stop admitting; let in-flight work finish for up to `grace_s`, then cancel what
        is left (503 shutting_down) and stop the thread."""
        with self._lock:
            self.accepting = False
        end = time.monotonic() + grace_s
        while not self.idle and time.monotonic() < end and self.alive:
            time.sleep(0.02)
        with self._lock:
            self._stop = True
            self._wake.notify()
        self.thread.join(timeout=60)
        self.codec.shutdown(wait=True)

    # -- the scheduler thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._inbox or self._cancels or self._live or self._stop):
                    self._wake.wait()
                inbox, self._inbox = self._inbox, []
                cancels, self._cancels = self._cancels, []
                stop = self._stop
            try:
                if stop:
                    self._cancel_all(ShuttingDownError("the server shut down before this request finished"))
                    return
                self._turn(inbox, cancels)
            except Exception as exc:  # a bug here must not stop serving: fail what is live
                log.exception("scheduler turn failed")
                self._cancel_all(as_client_error(exc))
            self._publish()

    def _turn(self, inbox: list[Ticket], cancels) -> None:
        for ticket in inbox:
            self.core.submit(ticket.request)
            self._live[id(ticket.request)] = ticket
            if ticket.stream:
                c = self.config
                ticket.plan = ChunkPlan(c.stream_first_frames, c.stream_growth, c.stream_max_chunk_frames)
        for ticket, why in cancels:
            self._cancel(ticket, why)
        now = time.monotonic()
        for ticket in [t for t in self._live.values() if t.deadline < now]:
            self._cancel(ticket, DeadlineExceededError(
                f"the request did not finish within the server's deadline of {self.config.deadline_s:g} s"))
        if not self.core.has_work:
            return
        start = time.perf_counter()
        before = self.core.steps_run
        ended = self.core.step()
        if self.core.steps_run > before:
            self.metrics.step_seconds.observe(time.perf_counter() - start)
            self.metrics.steps.inc()
            self.metrics.rate.tick()
        for request in ended:
            self._ended(self._live.pop(id(request)))
        for ticket in self._live.values():
            if ticket.stream and not ticket.decoding and ticket.request.state is State.RUNNING:
                self._maybe_chunk(ticket)

    def _publish(self) -> None:
        with self._lock:
            self.queue_depth = len(self._inbox) + len(self.core.waiting)
        self.active_rows = self.core.active_rows
        self.running_requests = len(self.core.running)

    def _cancel(self, ticket: Ticket, why: BaseException) -> None:
        if self._live.pop(id(ticket.request), None) is None:
            return  # already ended (finished, failed or cancelled)
        self.core.cancel(ticket.request)
        ticket.cancelled_at_step = self.core.steps_run
        reason = getattr(why, "code", "client_gone")
        self.metrics.cancelled.labels(reason=reason).inc()
        self.recent.append(ticket)
        ticket.post(Failed(as_client_error(why)))

    def _cancel_all(self, why) -> None:
        for ticket in list(self._live.values()):
            self._cancel(ticket, why)

    def _ended(self, ticket: Ticket) -> None:
        self.recent.append(ticket)
        if ticket.request.state is State.FINISHED:
            with self._lock:
                self._finishing += 1
            self.codec.submit(self._finish, ticket)
        else:  # FAILED: a backend or hook error, or an admission error
            self.metrics.failed.inc()
            ticket.post(Failed(as_client_error(ticket.request.error)))

    def _maybe_chunk(self, ticket: Ticket) -> None:
        frames = ticket.job.settled_frames()
        settled = frames - HOLDBACK_FRAMES
        if frames < ticket.frames and ticket.plan.due(settled):
            codes = {t.name: ticket.job.codes_so_far(t.output, frames) for t in ticket.tracks}  # copies
            ticket.decoding = True
            self.codec.submit(self._chunk, ticket, codes, settled)

    # -- the codec thread ----------------------------------------------------------------

    def _chunk(self, ticket: Ticket, codes: dict, settled: int) -> None:
        try:
            if ticket.ended:
                return
            end = settled * self.hop
            for name, track_codes in codes.items():
                wav = self.backend.decode_audio(track_codes[None])[0]  # [channels, samples], prefix decode
                ticket.post(AudioChunk(name, ticket.sent_samples, pcm16(wav[:, ticket.sent_samples: end])))
            self._first_audio(ticket)
            ticket.sent_samples = end
            ticket.plan.advance(settled)
        except Exception as exc:
            log.exception("chunk decode failed")
            self.cancel(ticket, as_client_error(exc))
        finally:
            ticket.decoding = False

    def _finish(self, ticket: Ticket) -> None:
        try:
            outcome = ticket.finish(ticket.job.result())
            if ticket.stream:
                for name, wav in outcome.tracks.items():
                    ticket.post(AudioChunk(name, ticket.sent_samples, pcm16(wav[:, ticket.sent_samples:])))
                self._first_audio(ticket)
            ticket.post(Done(outcome))
        except Exception as exc:
            log.exception("finishing a request failed")
            ticket.post(Failed(as_client_error(exc)))
        finally:
            with self._lock:
                self._finishing -= 1

    def _first_audio(self, ticket: Ticket) -> None:
        if ticket.first_audio is None:
            ticket.first_audio = time.monotonic()
            self.metrics.first_audio.labels(endpoint=ticket.endpoint).observe(ticket.first_audio - ticket.arrived)
