"""A Ticket: one HTTP request's job as the scheduler sees it, and the events it sends
back to the handler waiting on it (audio chunks, the result, or an error).

Events cross from the scheduler and codec threads to the event loop with
`call_soon_threadsafe`; a handler only awaits `ticket.events`."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from typing import Callable

import numpy as np

from editgen.engine.jobs import Job
from editgen.engine.requests import Request
from editgen.errors import EditGenError


@dataclasses.dataclass(frozen=True)
class Track:
    """One audio of a result ("audio"; "source", "edited") and the job output it streams."""

    name: str
    output: str  # a name in job.outputs


@dataclasses.dataclass
class Outcome:
    """A finished ticket: decoded tracks float32 [channels, samples] by name (the first is the main
    one, what `format: wav` returns), codes [K, frames] by name, and JSON-able facts."""

    tracks: dict[str, np.ndarray]
    codes: dict[str, np.ndarray]
    info: dict


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    track: str
    offset: int  # first sample
    pcm: bytes  # int16 little-endian


@dataclasses.dataclass(frozen=True)
class Done:
    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class Failed:
    error: EditGenError


class Ticket:
    """`finish(job.result())` -> Outcome runs on the codec thread once the request finished."""

    def __init__(self, kind: str, job: Job, finish: Callable[[object], Outcome], *, tracks: tuple[Track, ...] = (),
                 stream: bool = False, arrived: float | None = None, deadline_s: float = 300.0,
                 notes: tuple[str, ...] = ()):
        self.id = secrets.token_hex(8)
        self.endpoint = kind  # the route, set by the handler (metrics labels)
        self.kind, self.job, self.finish = kind, job, finish
        self.tracks, self.stream, self.notes = tracks, stream, notes
        self.arrived = time.monotonic() if arrived is None else arrived
        self.deadline = self.arrived + deadline_s
        self.events: asyncio.Queue | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Written by the scheduler / codec threads:
        self.sent_samples = 0
        self.decoding = False  # a chunk decode is queued or running
        self.plan = None  # audio_stream.ChunkPlan while streaming
        self.first_audio: float | None = None  # monotonic time of the first chunk
        self.ended = False  # Done or Failed was sent
        self.cancelled_at_step: int | None = None  # EngineCore.steps_run when its rows were freed

    @property
    def request(self) -> Request:
        return self.job.request

    @property
    def frames(self) -> int:
        return self.request.pattern.frames

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self.events = loop, asyncio.Queue()

    def post(self, event) -> None:
        """From any thread; an event to a loop that is gone is dropped (its client left)."""
        if isinstance(event, (Done, Failed)):
            if self.ended:
                return
            self.ended = True
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed
            pass
