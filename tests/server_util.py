"""Helpers for the server tests: a uvicorn server on 127.0.0.1 in a thread, backends
that record, gate or slow the steps, and WAV/audio helpers. All traffic stays on the
loopback interface."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
import soundfile as sf


def client_for(backend_factory=None, **config):
    """A TestClient (use it as a context manager: it runs the lifespan) of the app on
    `backend_factory()` (the fake backend by default) with ServerConfig(**config)."""
    from fastapi.testclient import TestClient

    from editgen.engine.backends.fake import FakeBackend
    from editgen.server.app import create_app
    from editgen.server.config import ServerConfig

    return TestClient(create_app(backend_factory or FakeBackend, ServerConfig(**config)))


def error_of(response) -> tuple[int, str]:
    """(status, code) of an error answer, which must be the error contract's one-line body."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert "\n" not in body["error"]["message"]
    return response.status_code, body["error"]["code"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_free_port(low: int = 20000, high: int = 32000) -> int:
    """A free port between Ray's worker ports (10002-19999) and Linux's ephemeral range
    (32768+): a server that binds it a while later does not race the many outgoing
    connections Ray opens meanwhile (free_port's pick, from the ephemeral range, did once)."""
    import random

    for port in random.Random().sample(range(low, high), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


@contextlib.contextmanager
def serving(app, timeout: float = 30.0):
    """Serve `app` as `editgen serve` does (EditGenServer: drain on handle_exit, header
    timeout) on 127.0.0.1:<free port> in a thread; yields the server, its base URL as
    `server.url`, its thread as `server.thread`."""
    from editgen.server.uvicorn_server import EditGenServer

    port = free_port()
    server = EditGenServer(app, app.state.config, host="127.0.0.1", port=port, log_level="warning")
    server.url, server.thread = f"http://127.0.0.1:{port}", threading.Thread(target=server.run, daemon=True)
    server.thread.start()
    end = time.monotonic() + timeout
    while not server.started:
        if not server.thread.is_alive() or time.monotonic() > end:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        server.thread.join(timeout=30)


@contextlib.contextmanager
def live_server(app, timeout: float = 30.0):
    """serving(app), yielding only the base URL."""
    with serving(app, timeout) as server:
        yield server.url


class Wrapped:
    """A backend that forwards everything to `inner`; subclasses override `step`."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Recording(Wrapped):
    """Records the slots of every step (a list per step) and can slow steps down so that
    a request stays running while a test acts on it."""

    def __init__(self, inner, delay_s: float = 0.0):
        super().__init__(inner)
        self.delay_s = delay_s
        self.steps: list[list[int]] = []

    def step(self, batch):
        self.steps.append(sorted(int(s) for s in batch.slots))
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.step(batch)


class Gated(Recording):
    """Every step (after the first `free_steps`) waits while `gate` is closed (clear), so a
    test decides when the engine moves: requests sent meanwhile are queued, or share the
    steps after it. `waiting` is set while a step waits at the gate. (The wait gives up
    after a minute, so that a failing test ends.)"""

    def __init__(self, inner, *, open: bool = False, free_steps: int = 0):
        super().__init__(inner)
        self.gate, self.waiting = threading.Event(), threading.Event()
        self.free_steps = free_steps  # steps that pass before the gate applies (a request is then running)
        if open:
            self.gate.set()

    def step(self, batch):
        if len(self.steps) >= self.free_steps and not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(timeout=60)
            self.waiting.clear()
        return super().step(batch)


def ended_ticket(scheduler, request_id: str, timeout: float = 10.0):
    """The ticket of `request_id` once the scheduler lists it as ended, or None after `timeout` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ticket = next((t for t in list(scheduler.recent) if t.id == request_id), None)
        if ticket is not None:
            return ticket
        time.sleep(0.005)
    return None


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition()` until it holds (a state the test waits for, not a timing it
    asserts); fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def wav_upload(seconds: float = 1.0, rate: int = 16000, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def flac_upload(rate: int, channels: int, seconds: int, value: float = 0.5) -> bytes:
    """A constant signal as FLAC: a few kilobytes that decode to rate x channels x seconds
    samples (the decompression bomb of issue 23 is 384 kHz x 8 x 40 s in 133 KB)."""
    buf = io.BytesIO()
    block = np.full((rate, channels), value, np.float32)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(seconds):
            f.write(block)
    return buf.getvalue()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (VmRSS) or its peak since the last reset (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def reset_rss_peak(pid: int) -> None:
    """Set a process's VmHWM to its current RSS (Linux: clear_refs 5)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
