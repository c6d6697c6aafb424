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
def live_server(app, timeout: float = 30.0):
    """Serve `app` with uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


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
    """Holds the first step until `gate` is set, so requests sent meanwhile all share the
    steps after it."""

    def __init__(self, inner):
        super().__init__(inner)
        self.gate = threading.Event()

    def step(self, batch):
        self.gate.wait(timeout=60)
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


def wav_upload(seconds: float = 1.0, rate: int = 16000, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
