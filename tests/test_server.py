"""The HTTP server on the fake backend: the error contract (status and code for each bad
input), limits, streaming, cancellation of a disconnected client, a backend failure,
graceful shutdown. Fast: the fake backend steps in microseconds."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import json
import signal
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the serve extra")


from editgen.engine.backends.fake import FAKE_SHAPES, FakeBackend  # noqa: E402
from editgen.errors import InvalidRequestError  # noqa: E402
from editgen.server.app import create_app  # noqa: E402
from editgen.server.audio_stream import ChunkPlan, wav_bytes  # noqa: E402
from editgen.server.config import ServerConfig  # noqa: E402
from tests.server_util import (  # noqa: E402
    Gated,
    Recording,
    client_for,
    ended_ticket,
    error_of,
    live_server,
    serving,
    wait_for,
    wav_upload,
)

SRC, TGT = "lofi piano with soft drums", "lofi guitar with soft drums"
KEY = "secret-key-123"


@pytest.fixture(scope="module")
def client():
    with client_for(max_rows=16, queue_size=8, max_body_bytes=4096, max_upload_bytes=200_000, max_seconds=10.0) as c:
        yield c


# -- the error contract -------------------------------------------------------------------------

GEN = {"prompt": "lofi piano", "seconds": 0.5}
EDIT = {"source": SRC, "target": TGT, "seconds": 0.5}
BAD_JSON = [  # (endpoint, body, status, code)
    ("/v1/generate", {**GEN, "prompt": ""}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "prompt": "piano " * 80}, 400, "invalid_request"),  # over 64 tokens
    ("/v1/generate", {**GEN, "seconds": 0.01}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "seconds": 601.0}, 422, "too_long"),  # over the configured maximum
    ("/v1/generate", {**GEN, "seconds": -1}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "seconds": 1e308}, 422, "too_long"),  # found by the fuzz: was an OverflowError
    ("/v1/generate", {**GEN, "window_seconds": 41.0}, 422, "invalid_window"),  # over the model's 40.9 s
    ("/v1/generate", {**GEN, "context_seconds": -1.0}, 422, "invalid_window"),
    ("/v1/edit", {**EDIT, "window_seconds": 5.0, "context_seconds": 4.5}, 422, "invalid_window"),
    ("/v1/generate", {**GEN, "temperature": 0}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "top_k": 0}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "seed": -3}, 400, "invalid_request"),
    ("/v1/generate", {**GEN, "seconds": "long"}, 422, "invalid_body"),
    ("/v1/generate", {**GEN, "top_k": 2.5}, 422, "invalid_body"),
    ("/v1/generate", {**GEN, "format": "mp3"}, 422, "invalid_body"),
    ("/v1/generate", {"seconds": 1.0}, 422, "invalid_body"),  # no prompt
    ("/v1/generate", {**GEN, "output": "/tmp/x.wav"}, 422, "invalid_body"),  # no field names a path
    ("/v1/generate", [1, 2], 422, "invalid_body"),
    ("/v1/edit", {**EDIT, "op": "swap"}, 422, "invalid_body"),
    ("/v1/edit", {**EDIT, "capture": "/etc/passwd"}, 422, "invalid_body"),
    ("/v1/edit", {**EDIT, "target": "lofi guitar with soft"}, 400, "invalid_request"),  # word counts differ
    ("/v1/edit", {**EDIT, "word_weights": {"banjo": 1.0}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "word_weights": {"guit": 1.0}}, 400, "invalid_request"),  # not where ▁guitar splits
    ("/v1/edit", {**EDIT, "mapper": "seq-aligner"}, 422, "invalid_body"),
    ("/v1/edit", {**EDIT, "word_weights": {"guitar": 3.0}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "windows": {"guitar": 1.5}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "blend": "sideways"}, 422, "invalid_body"),  # renamed cross_blend: unknown field
    ("/v1/edit", {**EDIT, "cross_blend": "sideways"}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "self_blend": "soft"}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "self_window": "0.9:0.1"}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "windows": {"guitar": "0.6:0.2"}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "setting": "paper"}, 422, "invalid_body"),
    ("/v1/edit", {**EDIT, "reweight_mode": "editgen-code", "word_weights": {"guitar": 0.0}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "region": {"start": 3.0, "end": 1.0}}, 400, "invalid_request"),
    ("/v1/edit", {**EDIT, "region": {"start": 5.0, "end": 6.0}}, 400, "invalid_request"),  # after the end
    ("/v1/edit", {"target": TGT}, 400, "invalid_request"),  # no source, no capture
    ("/v1/edit", {"capture_id": "no-such-capture", "target": TGT}, 404, "unknown_capture"),
    ("/v1/captures", {"source": "", "seconds": 0.5}, 400, "invalid_request"),
    ("/v1/captures", {"source": SRC, "capture_dtype": "fp8"}, 422, "invalid_body"),
]


@pytest.mark.parametrize("endpoint,body,status,code", BAD_JSON)
def test_bad_json_bodies_get_their_status_and_code(client, endpoint, body, status, code):
    assert error_of(client.post(endpoint, json=body)) == (status, code)


def test_engine_messages_are_the_clis(client):
    r = client.post("/v1/generate", json={**GEN, "seconds": 69.0})
    assert r.json()["error"]["message"] == "69 s is longer than the maximum of 10 s: ask for at most 10 s"
    r = client.post("/v1/edit", json={**EDIT, "word_weights": {"guitar": 3.0}})
    assert r.json()["error"]["message"] == "word_weights['guitar'] is 3.0, must be in [-2, 2]: pick a value in that range"


@pytest.mark.parametrize("content,status,code", [
    (b"{not json", 400, "malformed_body"),
    (b"", 422, "invalid_body"),
    (b'{"prompt": "x", "seconds": NaN}', 400, "invalid_request"),  # parsed, then refused by the engine
])
def test_unparsable_bodies(client, content, status, code):
    r = client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
    assert error_of(r) == (status, code)


def test_routes_and_methods(client):
    assert error_of(client.get("/v1/nothing")) == (404, "not_found")
    assert error_of(client.get("/v1/generate")) == (405, "method_not_allowed")


def test_body_over_the_limit_is_413_by_length_and_by_stream(client):
    big = {**GEN, "prompt": "x" * 5000}
    assert error_of(client.post("/v1/generate", json=big)) == (413, "body_too_large")

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(r) == (413, "body_too_large")
    files = {"audio": ("a.wav", b"\0" * 300_000, "audio/wav")}
    assert error_of(client.post("/v1/edit/audio", files=files, data={"source": SRC})) == (413, "body_too_large")


@pytest.mark.parametrize("audio,status,code", [
    (b"garbage", 400, "bad_audio"),
    (b"", 400, "bad_audio"),
    (wav_upload(amplitude=0.0), 400, "bad_audio"),  # silent
    (wav_upload(seconds=0.05), 400, "invalid_request"),  # shorter than the codec's 4 frames
    (wav_upload(seconds=10.5, rate=8000), 413, "audio_too_long"),  # over this server's 10 s
])
def test_bad_uploads(client, audio, status, code):
    r = client.post("/v1/edit/audio", files={"audio": ("a.wav", audio, "audio/wav")},
                    data={"source": SRC, "target": TGT})
    assert error_of(r) == (status, code)


def test_upload_form_errors(client):
    files = {"audio": ("a.wav", wav_upload(), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "word": "guitar"})
    assert error_of(r) == (400, "invalid_request")
    assert "must look like WORD=C" in r.json()["error"]["message"]
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "region": "2-5"})
    assert error_of(r) == (400, "invalid_request")
    assert error_of(client.post("/v1/edit/audio", data={"source": SRC})) == (422, "invalid_body")  # no audio


def test_api_key():
    with client_for(api_key=KEY) as c:
        assert error_of(c.post("/v1/generate", json=GEN)) == (401, "unauthorized")
        assert error_of(c.post("/v1/generate", json=GEN, headers={"X-API-Key": "wrong-key-000"})) == \
            (401, "unauthorized")
        assert c.post("/v1/generate", json=GEN, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.post("/v1/generate", json=GEN, headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes need no key


def test_no_field_of_the_api_names_a_path(client):
    schema = client.get("/openapi.json").json()
    names = set()
    for component in schema["components"]["schemas"].values():
        names |= set(component.get("properties", {}))
    for path in schema["paths"].values():
        for op in path.values():
            names |= {p["name"] for p in op.get("parameters", [])}
    assert not {n for n in names if any(w in n.lower() for w in ("path", "file", "dir", "output"))}, names
    for name, component in schema["components"]["schemas"].items():
        if name.endswith("Body"):
            assert component.get("additionalProperties") is False, name


@pytest.mark.parametrize("field,value", [
    ("max_rows", 1), ("queue_size", 0), ("deadline_s", 0), ("deadline_s", float("nan")),
    ("max_body_bytes", 10), ("stream_growth", 0.5), ("api_key", "short"), ("max_seconds", -1.0),
    ("max_uploads", 0), ("max_upload_samples", 0), ("body_timeout_s", 0), ("header_timeout_s", float("inf")),
    ("allowed_hosts", ()), ("allowed_hosts", ["localhost"]), ("capture_dir", ""),
])
def test_server_config_is_validated(field, value):
    with pytest.raises(InvalidRequestError, match=field):
        ServerConfig(**{field: value})


# -- results, streaming, captures -----------------------------------------------------------


def test_generate_wav_and_json_agree(client):
    wav = client.post("/v1/generate", json={**GEN, "seed": 5})
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/wav"
    js = client.post("/v1/generate", json={**GEN, "seed": 5, "format": "json"}).json()
    assert base64.b64decode(js["audio"]["audio"]) == wav.content
    assert js["frames"] == 25 and js["sample_rate"] == 32000 and len(js["codes"]["audio"]) == 4
    assert any("top_k 250 is above" in n for n in js["notes"])  # the CLI's note, named for the API


@pytest.mark.parametrize("mode", ["paired", "captured-rerun", "captured"])
def test_stream_events_reassemble_to_the_whole_result(client, mode):
    """Paired, and captured with (default setting: the source row re-runs, the target is row 1)
    and without self-injection (the target is row 0)."""
    body = {**EDIT, "seconds": 2.0, "seed": 7}
    if mode != "paired":
        cap = client.post("/v1/captures", json={"source": EDIT["source"], "seconds": 2.0, "seed": 7})
        body = {"capture_id": cap.json()["capture_id"], "target": EDIT["target"],
                "setting": "editgen-code" if mode == "captured-rerun" else "hard"}
    whole = client.post("/v1/edit", json={**body, "format": "json"}).json()
    events = [json.loads(line) for line in
              client.post("/v1/edit", json={**body, "stream": True, "format": "json"}).text.splitlines()]
    assert events[0]["event"] == "start" and events[0]["tracks"] == ["edited", "source"]
    assert events[-1]["event"] == "done" and events[-1]["codes"] == whole["codes"]
    audio = [e for e in events if e["event"] == "audio"]
    assert len(audio) >= 4  # chunks of 10, 20, 40 frames, then the rest
    for track in ("edited", "source"):
        chunks = [e for e in audio if e["track"] == track]
        assert [c["offset"] for c in chunks] == list(np.cumsum([0] + [c["samples"] for c in chunks[:-1]]))
        pcm = b"".join(base64.b64decode(c["pcm16"]) for c in chunks)
        assert pcm == base64.b64decode(whole["audio"][track])[44:]
    # the streamed WAV of the main track equals the whole WAV
    streamed = client.post("/v1/edit", json={**body, "stream": True}).content
    assert streamed == base64.b64decode(whole["audio"]["edited"])


STEREO_FAKE = dataclasses.replace(FAKE_SHAPES, num_codebooks=8, audio_channels=2)


@pytest.mark.parametrize("endpoint, body", [("/v1/generate", {**GEN, "seconds": 2.0, "seed": 3}),
                                            ("/v1/edit", {**EDIT, "seconds": 2.0, "seed": 3})])
def test_stereo_stream_equals_the_whole_file(endpoint, body):
    """Stereo delays codebook k by k // 2 + 1 (not mono's k + 1): every streamed chunk,
    both channels, is the whole file's (the fake codec decodes frame by frame, so a chunk
    with the wrong codes shows)."""
    with client_for(lambda: FakeBackend(STEREO_FAKE)) as c:
        whole = c.post(endpoint, json=body)
        streamed = c.post(endpoint, json={**body, "stream": True})
    assert whole.status_code == streamed.status_code == 200
    assert whole.content[22] == 2  # channels in the WAV header
    assert streamed.content == whole.content


def test_chunk_plan_grows_to_its_cap():
    plan, ends = ChunkPlan(10, 2.0, 50), []
    sent = 0
    for _ in range(6):
        ends.append(plan.next_end)
        sent = plan.next_end
        plan.advance(sent)
    assert ends == [10, 30, 70, 120, 170, 220]
    fixed = ChunkPlan(25, 1.0, 100)
    fixed.advance(25)
    assert fixed.next_end == 50


def test_capture_then_edit_from_it_and_delete(client):
    cap = client.post("/v1/captures", json={"source": SRC, "seconds": 0.5, "seed": 2})
    assert cap.status_code == 200
    capture_id = cap.json()["capture_id"]
    info = client.get(f"/v1/captures/{capture_id}").json()
    assert info["prompt"] == SRC and info["frames"] == 25
    r = client.post("/v1/edit", json={"capture_id": capture_id, "target": TGT, "seed": 9, "format": "json"})
    assert r.status_code == 200 and r.json()["mode"] == "captured"
    assert any("come from the capture" in n and "seed ignored" in n for n in r.json()["notes"])
    assert any("the source row runs again" in n for n in r.json()["notes"])  # default: self-injection
    hard = client.post("/v1/edit", json={"capture_id": capture_id, "target": TGT, "setting": "hard", "format": "json"})
    assert hard.status_code == 200 and not any("runs again" in n for n in hard.json()["notes"])
    assert client.delete(f"/v1/captures/{capture_id}").status_code == 204
    assert error_of(client.get(f"/v1/captures/{capture_id}")) == (404, "unknown_capture")


def test_mapper_and_word_parts_in_json_and_form(client):
    source = "funk-infused guitar riff"
    r = client.post("/v1/edit", json={"source": source, "op": "reweight", "word_weights": {"funk": 1.5},
                                      "mapper": "p2p", "seconds": 0.5, "format": "json"})
    assert r.status_code == 200, r.text
    files = {"audio": ("song.wav", wav_upload(seconds=0.6), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": source, "op": "reweight", "word": ["funk=1.5"],
                                                        "mapper": "editgen-code", "format": "json"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/edit/audio", files=files, data={"source": source, "op": "reweight", "word": ["fun=1.5"]})
    assert error_of(r) == (400, "invalid_request") and "splits as ▁funk" in r.json()["error"]["message"]
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "mapper": "other"})
    assert error_of(r) == (422, "invalid_body")


def test_audio_upload_edit_and_capture(client):
    files = {"audio": ("song.wav", wav_upload(seconds=0.6), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "word": ["guitar=1.5"],
                                                        "format": "json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "audio" and body["frames"] == 30
    assert any("resampled to the model's 32000 Hz" in n for n in body["notes"])
    r = client.post("/v1/captures/audio", files=files, data={"source": SRC})
    assert r.status_code == 200 and r.json()["frames"] == 30


def test_captures_are_bounded_in_bytes():
    with client_for(max_capture_bytes=40_000) as c:
        ids = [c.post("/v1/captures", json={"source": SRC, "seconds": 0.5, "seed": s}).json()["capture_id"]
               for s in range(3)]  # ~15 kB each: the oldest is dropped
        assert error_of(c.get(f"/v1/captures/{ids[0]}")) == (404, "unknown_capture")
        assert c.get(f"/v1/captures/{ids[2]}").status_code == 200


# -- limits under load, failures, cancellation, shutdown --------------------------------------------


def test_full_queue_is_429_with_retry_after():
    """One request runs (held at the gate after its first step), one waits in the queue
    of 1: the next is refused, whatever the timing; the held two finish once it opens."""
    backend = Gated(FakeBackend(), free_steps=1)
    app = create_app(lambda: backend, ServerConfig(max_rows=2, queue_size=1, retry_after_s=3))
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as h, \
            cf.ThreadPoolExecutor(2) as pool:
        scheduler = app.state.service.scheduler
        running = pool.submit(h.post, "/v1/generate", json=GEN)
        wait_for(backend.waiting.is_set, "the first request held at the gate")
        queued = pool.submit(h.post, "/v1/generate", json=GEN)
        wait_for(lambda: scheduler.queue_depth == 1, "the second request queued")
        refused = h.post("/v1/generate", json=GEN)
        assert error_of(refused) == (429, "queue_full") and refused.headers["retry-after"] == "3"
        backend.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200


def test_deadline_cancels_and_frees_rows():
    """A request held at the gate past its deadline is cancelled at the next step (503),
    long before its last step, and its rows are free for the next request."""
    backend = Gated(FakeBackend(), free_steps=1)
    app = create_app(lambda: backend, ServerConfig(deadline_s=0.2))
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as h, \
            cf.ThreadPoolExecutor(1) as pool:
        late = pool.submit(h.post, "/v1/generate", json={**GEN, "seconds": 4.0})  # 203 steps
        wait_for(backend.waiting.is_set, "the request held at the gate")
        held = time.monotonic()  # after its arrival: its deadline is before held + 0.2 s
        wait_for(lambda: time.monotonic() > held + 0.2, "the deadline to pass")
        backend.gate.set()
        r = late.result()
        assert error_of(r) == (503, "deadline_exceeded") and r.headers["retry-after"] == "1"
        assert len(backend.steps) <= 3  # cancelled at the first step after the gate
        assert app.state.service.scheduler.core.active_rows == 0
        assert h.post("/v1/generate", json={**GEN, "seconds": 0.1}).status_code == 200


def test_backend_error_fails_only_that_step_and_the_server_stays_up():
    backend = FakeBackend()
    with client_for(lambda: backend) as c:
        backend.fail_at_step = backend.steps + 3
        assert error_of(c.post("/v1/generate", json=GEN)) == (500, "engine_error")
        assert c.get("/healthz").json()["alive"] is True
        assert c.post("/v1/generate", json=GEN).status_code == 200
        assert 'editgen_failed_total 1.0' in c.get("/metrics").text


def test_disconnected_client_rows_are_gone_from_the_next_step():
    """A streaming client that hangs up: its request is cancelled and its slots appear in
    no step after the cancellation (read from the steps the backend ran and /metrics)."""
    backend = Recording(FakeBackend(), delay_s=0.004)
    with client_for(lambda: backend) as c, live_server(c.app) as url:
        scheduler = c.app.state.service.scheduler
        with httpx.Client(base_url=url, timeout=30) as h:
            import concurrent.futures as cf

            with cf.ThreadPoolExecutor(1) as pool:  # A: a long request that keeps stepping
                a = pool.submit(h.post, "/v1/generate", json={**GEN, "seconds": 6.0})
                while scheduler.running_requests < 1:
                    time.sleep(0.005)
                with h.stream("POST", "/v1/generate", json={**GEN, "seconds": 6.0, "stream": True,
                                                             "format": "json"}) as b:
                    b_id = b.headers["x-request-id"]
                    lines = b.iter_lines()
                    assert json.loads(next(lines))["event"] == "start"
                    assert json.loads(next(lines))["event"] == "audio"  # it runs: audio arrives
                # B hung up
                ticket = ended_ticket(scheduler, b_id)
                assert ticket is not None and ticket.cancelled_at_step is not None
                while len(backend.steps) <= ticket.cancelled_at_step + 1:  # a step after it
                    time.sleep(0.005)
                metrics = h.get("/metrics").text
                assert a.result().status_code == 200
        b_slots = set(ticket.request.slots.tolist())
        after = backend.steps[ticket.cancelled_at_step:]
        assert after and all(not b_slots & set(step) for step in after)
        assert any(b_slots <= set(step) for step in backend.steps[: ticket.cancelled_at_step])
        assert "editgen_active_rows 2.0" in metrics  # A's rows only
        assert 'editgen_cancelled_total{reason="client_gone"} 1.0' in metrics


def test_drain_on_sigterm_finishes_in_flight_work_and_answers_new_requests_503():
    """SIGTERM: the app stops admitting while the listener stays open (a new connection
    gets 503 shutting_down with Retry-After, not a refusal), the running request finishes,
    then the server exits, clean."""
    backend = Gated(FakeBackend(), free_steps=1)
    app = create_app(lambda: backend, ServerConfig(shutdown_grace_s=30, retry_after_s=2))
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as h, \
            cf.ThreadPoolExecutor(1) as pool:
        scheduler = app.state.service.scheduler
        inflight = pool.submit(h.post, "/v1/generate", json={**GEN, "seconds": 1.0})
        wait_for(backend.waiting.is_set, "the request held at the gate")
        server.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: not scheduler.accepting, "the drain to start")
        for client in (h, httpx.Client(base_url=server.url, timeout=30)):  # kept-alive and new connections
            late = client.post("/v1/generate", json=GEN)
            assert error_of(late) == (503, "shutting_down")
            assert late.headers["retry-after"] == "2" and late.headers["connection"] == "close"
        assert h.get("/readyz").status_code == 503
        backend.gate.set()
        assert inflight.result().status_code == 200  # finished within the grace
        server.thread.join(timeout=30)
    assert not server.thread.is_alive() and server.clean is True
    assert not scheduler.alive


def test_drain_past_the_grace_answers_503_and_an_ndjson_error_event():
    """A second signal ends the grace: a running request gets 503 shutting_down, a
    running NDJSON stream ends with an `error` event, a queued one gets 503 too; the
    drain is not clean (`editgen serve` exits 1)."""
    backend = Gated(FakeBackend(), free_steps=1)
    app = create_app(lambda: backend, ServerConfig(shutdown_grace_s=30))
    with serving(app) as server, httpx.Client(base_url=server.url, timeout=30) as h, \
            cf.ThreadPoolExecutor(3) as pool:
        scheduler = app.state.service.scheduler
        plain = pool.submit(h.post, "/v1/generate", json={**GEN, "seconds": 2.0})
        wait_for(backend.waiting.is_set, "the first request held at the gate")
        streamed = pool.submit(lambda: h.post("/v1/generate", json={**GEN, "seconds": 2.0, "stream": True,
                                                                    "format": "json"}))
        wait_for(lambda: scheduler.queue_depth == 1, "the stream queued")
        server.handle_exit(signal.SIGTERM, None)
        server.handle_exit(signal.SIGTERM, None)  # the second: no grace
        wait_for(lambda: scheduler.stopping, "the grace to end")
        backend.gate.set()
        assert error_of(plain.result()) == (503, "shutting_down")
        stream = streamed.result()
        assert stream.status_code == 200
        events = [json.loads(line) for line in stream.text.splitlines()]
        assert events[0]["event"] == "start" and events[-1] == {
            "event": "error", "error": {"code": "shutting_down",
                                        "message": "the server shut down before this request finished"}}
        server.thread.join(timeout=30)
    assert not server.thread.is_alive() and server.clean is False
    metrics = app.state.service.metrics.render().decode()
    assert 'editgen_requests_total{endpoint="/v1/generate",status="503"} 2.0' in metrics


def test_health_ready_metrics(client):
    assert client.get("/healthz").json()["alive"] is True
    assert client.get("/readyz").json()["ready"] is True
    client.post("/v1/generate", json={**GEN, "stream": True})
    text = client.get("/metrics").text
    for name in ("editgen_queue_depth", "editgen_active_rows", "editgen_steps_per_second", "editgen_steps_total",
                 "editgen_request_latency_seconds_bucket", "editgen_time_to_first_audio_seconds_bucket"):
        assert name in text, name


def test_wav_bytes_header():
    import io

    import soundfile as sf

    mono, rate = sf.read(io.BytesIO(wav_bytes(np.zeros((1, 100), np.float32), 32000)))
    assert rate == 32000 and mono.shape == (100,)
    stereo = np.stack([np.linspace(-0.5, 0.5, 100), np.linspace(0.5, -0.5, 100)]).astype(np.float32)
    back, rate = sf.read(io.BytesIO(wav_bytes(stereo, 32000)))  # [samples, channels], interleaved in the file
    assert rate == 32000 and back.shape == (100, 2)
    np.testing.assert_allclose(back.T, stereo, atol=1 / 32767)
