"""Long-form requests through the server: a multi-window streamed edit on random:tiny's
real codec gives the whole file's bytes, its later codec chunks each sent once; a client
that leaves mid-song frees its rows before the next step."""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the serve extra")

from fastapi.testclient import TestClient  # noqa: E402

from editgen.engine.backends.fake import FakeBackend  # noqa: E402
from editgen.server.app import create_app  # noqa: E402
from editgen.server.config import ServerConfig  # noqa: E402
from tests.server_util import Recording, ended_ticket, live_server  # noqa: E402

SRC, TGT = "lofi piano with soft drums", "lofi guitar with soft drums"
# 4 s with 2 s windows and 0.6 s of context: windows [0, 2), [1.4, 3.4), [2.8, 4) s
LONG = {"source": SRC, "target": TGT, "seconds": 4.0, "seed": 7, "window_seconds": 2.0, "context_seconds": 0.6,
        "region": {"start": 1.0, "end": 3.0}}


def test_multi_window_streamed_edit_equals_the_whole_file(exported):
    """Codec chunks of 1 s (50 frames, 1 s of overlap): the first in growing prefixes, the
    three after it once each, whole, on the grid the whole file is decoded on. The exported
    codec (ONNX Runtime): its prefix decodes are exact (tests/test_server_engine.py), torch's
    differ in the last bit."""
    from editgen.engine.backends.ort_backend import OrtBackend

    backend = OrtBackend(exported("random:tiny"), providers=["CPUExecutionProvider"], threads=1)
    with TestClient(create_app(lambda: backend, ServerConfig(codec_chunk_seconds=1.0))) as c:
        whole = c.post("/v1/edit", json={**LONG, "format": "json"}).json()
        events = [json.loads(line) for line in
                  c.post("/v1/edit", json={**LONG, "stream": True, "format": "json"}).text.splitlines()]
        streamed_wav = c.post("/v1/edit", json={**LONG, "stream": True}).content
    assert whole["windows"] == [[0.0, 0.0, 2.0], [1.4, 2.0, 3.4], [2.8, 3.4, 4.0]]
    assert whole["options"]["window_seconds"] == 2.0 and whole["options"]["context_seconds"] == 0.6
    assert events[-1]["event"] == "done" and events[-1]["codes"] == whole["codes"]
    hop = 640
    for track in ("edited", "source"):
        chunks = [e for e in events if e["event"] == "audio" and e["track"] == track]
        assert [c["offset"] for c in chunks] == list(np.cumsum([0] + [c["samples"] for c in chunks[:-1]]))
        pcm = b"".join(base64.b64decode(c["pcm16"]) for c in chunks)
        assert pcm == base64.b64decode(whole["audio"][track])[44:]
        later = [(c["offset"] // hop, c["samples"] // hop) for c in chunks if c["offset"] >= 50 * hop]
        assert later == [(50, 50), (100, 50), (150, 50)]  # each later chunk once, whole
    assert streamed_wav == base64.b64decode(whole["audio"]["edited"])


def test_a_client_leaving_mid_song_frees_its_rows_at_the_next_step():
    """A 60 s streamed generation in 2 s windows beside a plain one; its client hangs up in
    its third window: its slots are in no step after the cancellation."""
    import concurrent.futures as cf

    backend = Recording(FakeBackend(), delay_s=0.002)
    with TestClient(create_app(lambda: backend, ServerConfig())) as c, live_server(c.app) as url:
        scheduler = c.app.state.service.scheduler
        body = {"prompt": "lofi piano", "seconds": 60.0, "window_seconds": 2.0, "context_seconds": 0.6,
                "stream": True, "format": "json"}
        with httpx.Client(base_url=url, timeout=30) as h, cf.ThreadPoolExecutor(1) as pool:
            with h.stream("POST", "/v1/generate", json=body) as r:
                request_id = r.headers["x-request-id"]
                lines = r.iter_lines()  # kept: a dropped iterator closes the response
                assert json.loads(next(lines))["event"] == "start"
                end = time.monotonic() + 20
                song = None
                while song is None and time.monotonic() < end:  # the 60 s request, once admitted
                    song = next((q for q in list(scheduler.core.running) if q.frames == 3000), None)
                    time.sleep(0.002)
                other = pool.submit(h.post, "/v1/generate", json={"prompt": "dub", "seconds": 20.0})  # steps on
                while song.window_index < 2 and song.state.value == "running" and time.monotonic() < end:
                    time.sleep(0.005)
                assert song.window_index >= 2, song.state  # mid-song, past two window seams
            ticket = ended_ticket(scheduler, request_id)
            assert ticket is not None and ticket.cancelled_at_step is not None
            assert other.result().status_code == 200
    slots = set(ticket.request.slots.tolist())
    after = backend.steps[ticket.cancelled_at_step:]
    assert after and all(not slots & set(step) for step in after)
    assert any(slots <= set(step) for step in backend.steps[: ticket.cancelled_at_step])
    assert ticket.request.state.value == "cancelled" and ticket.request.window_index >= 2
