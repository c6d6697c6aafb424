"""The scheduler thread: the only thread that touches the EngineCore (TGI's batcher;
HTTP handlers are the router: they validate, enqueue a Ticket and await its events).

Each turn: take new tickets and cancellations from the inbox (a cancelled request's rows
are freed here, before the next step), expire deadlines, run one engine step for every
running request (continuous batching: requests join and leave between steps), then hand
audio work to the codec thread: a piece of a streaming request whose frames are settled
(audio_stream.StreamPlan), or the decode of a finished one, chunk by chunk on the same
grid (editgen.engine.codec_chunks). The codec thread (one worker, so a ticket's chunks
and its result leave in order) keeps decoding off the step loop. A long request's windows
are the engine core's: it stays one request here, streamed chunk by chunk.

A backend error fails the requests of that step (EngineCore); the loop goes on."""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from editgen.engine import codec_chunks
from editgen.engine.codec_chunks import CodecChunks, Span
from editgen.engine.core import EngineCore
from editgen.engine.requests import State
from editgen.errors import InvalidRequestError
from editgen.server.audio_stream import ChunkPlan, StreamPlan, decode_piece, pcm16
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


class UploadSlot:
    """An upload's queue place (Scheduler.reserve_upload); `release` is idempotent."""

    def __init__(self, scheduler: "Scheduler"):
        self._scheduler = scheduler

    def release(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler._release_upload()


class Scheduler:
    def __init__(self, backend, config: ServerConfig, metrics: Metrics):
        self.backend, self.config, self.metrics = backend, config, metrics
        self.core = EngineCore(backend, max_rows=config.max_rows)
        self.hop = backend.shapes.sample_rate // backend.shapes.frame_rate
        self.chunks = CodecChunks.of_seconds(config.codec_chunk_seconds, backend.shapes.frame_rate)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[Ticket] = []
        self._cancels: list[tuple[Ticket, BaseException]] = []
        self._live: dict[int, Ticket] = {}  # id(request) -> ticket, while the core holds it
        self._finishing = 0  # tickets handed to the codec thread for their result
        self.uploads = 0  # uploads being received, decoded or encoded (each holds a queue place)
        self.accepting = True
        self._stop = False
        self._hurry = threading.Event()  # end the shutdown's grace now (a second signal)
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

    def check_room_locked(self) -> None:
        if self.queue_depth + self.uploads >= self.config.queue_size:
            raise QueueFullError(f"the queue is full ({self.config.queue_size} requests waiting): "
                                 f"retry after {self.config.retry_after_s} s")

    def reserve_upload(self) -> "UploadSlot":
        """A queue place for an upload, taken before its body is read: at most
        `max_uploads` are received and decoded at once, and each counts against the queue
        until its ticket is submitted (429 queue_full, 503 shutting_down)."""
        with self._lock:
            if not self.accepting:
                raise ShuttingDownError("the server is shutting down: retry on another replica")
            if self.uploads >= self.config.max_uploads:
                raise QueueFullError(f"{self.uploads} uploads are being received and decoded, this server's "
                                     f"limit: retry after {self.config.retry_after_s} s")
            self.check_room_locked()
            self.uploads += 1
        return UploadSlot(self)

    def _release_upload(self) -> None:
        with self._lock:
            self.uploads -= 1

    def cancel(self, ticket: Ticket, why: BaseException) -> None:
        """Drop a ticket; its rows are free before the next step."""
        with self._lock:
            self._cancels.append((ticket, why))
            self._wake.notify()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def stopping(self) -> bool:
        """The shutdown's grace is over: what is left is being cancelled."""
        return self._stop

    @property
    def idle(self) -> bool:
        with self._lock:
            return not (self._inbox or self._live or self._finishing)

    def shutdown(self, grace_s: float) -> bool:
        """Stop admitting; let in-flight work finish for up to `grace_s` (or until
        `hurry()`), then cancel what is left (503 shutting_down) and stop the threads.
        Returns whether the drain was clean: nothing was left to cancel."""
        with self._lock:
            self.accepting = False
        end = time.monotonic() + grace_s
        while not self.idle and self.alive:
            left = end - time.monotonic()
            if left <= 0 or self._hurry.wait(min(0.02, left)):
                break
        clean = self.idle
        with self._lock:
            self._stop = True
            self._wake.notify()
        self.thread.join(timeout=60)
        self.codec.shutdown(wait=True)
        return clean

    def hurry(self) -> None:
        """End a running shutdown's grace now."""
        self._hurry.set()

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
                    gone = ShuttingDownError("the server shut down before this request finished")
                    for ticket in inbox:  # submitted, never admitted: answered too
                        ticket.post(Failed(gone))
                    self._cancel_all(gone)
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
                growing = ChunkPlan(c.stream_first_frames, c.stream_growth, c.stream_max_chunk_frames)
                ticket.plan = StreamPlan(ticket.frames, self.chunks, growing)
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
        piece = ticket.plan.next(ticket.job.settled_frames())
        if piece is not None:  # copies of its codes, taken here: the request changes with the next step
            codes = {t.name: ticket.job.codes_so_far(t.output, piece.end, piece.start) for t in ticket.tracks}
            ticket.decoding = True
            self.codec.submit(self._chunk, ticket, codes, piece)

    # -- the codec thread ----------------------------------------------------------------

    def _chunk(self, ticket: Ticket, codes: dict, piece: Span) -> None:
        try:
            if not ticket.ended:
                self._send(ticket, codes, piece)
        except Exception as exc:
            log.exception("chunk decode failed")
            self.cancel(ticket, as_client_error(exc))
        finally:
            ticket.decoding = False

    def _send(self, ticket: Ticket, codes: dict, piece: Span) -> None:
        """Decodes `piece` of every track (codes [K, piece.end - piece.start] by name) and posts it."""
        for name, track_codes in codes.items():
            wav = decode_piece(self.backend, track_codes, piece, ticket.plan.chunk_end(piece))  # [channels, samples]
            ticket.post(AudioChunk(name, piece.keep_start * self.hop, pcm16(wav)))
        self._first_audio(ticket)
        ticket.plan.sent_to(piece.keep_end)

    def _finish(self, ticket: Ticket) -> None:
        try:
            outcome = ticket.finish(ticket.job)
            if ticket.stream:  # the rest of the stream, on the whole file's grid
                while (piece := ticket.plan.next(ticket.frames)) is not None:
                    self._send(ticket, {name: codes[:, piece.start: piece.end] for name, codes in
                                        outcome.codes.items()}, piece)
            else:
                outcome.tracks = {t.name: codec_chunks.decode(self.backend, outcome.codes[t.name], self.chunks)
                                  for t in ticket.tracks}
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
