"""The server against a hostile client (issue 23), on the fake backend: text that is
not text, lenient types, unknown form fields, a bug's 500, what /metrics counts, Host
checks, HTTP/1.0, stalled headers and bodies, uploads over the queue or the decode
budget, and captures on disk."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import socket

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server tests need the serve extra")

from fastapi.testclient import TestClient  # noqa: E402

from editgen.engine.audio_blocks import BlockResampler, read_upload  # noqa: E402
from editgen.engine.backends.fake import FAKE_SHAPES, FakeBackend  # noqa: E402
from editgen.server.app import create_app  # noqa: E402
from editgen.server.config import ServerConfig  # noqa: E402
from editgen.server.errors import UnknownCaptureError  # noqa: E402
from tests.server_util import (  # noqa: E402
    Gated,
    client_for,
    error_of,
    flac_upload,
    live_server,
    serving,
    wait_for,
    wav_upload,
)

SRC, TGT = "lofi piano with soft drums", "lofi guitar with soft drums"
GEN = {"prompt": "lofi piano", "seconds": 0.5}
EDIT = {"source": SRC, "target": TGT, "seconds": 0.5}
KEY = "secret-key-123"


@pytest.fixture(scope="module")
def client():
    with client_for(max_upload_bytes=400_000, max_upload_samples=8_000_000) as c:
        yield c


def raw_json(obj) -> dict:
    """Request kwargs for a JSON body whose strings may hold lone surrogates (escaped as
    \\uXXXX, which JSON allows and Python's json module decodes to a lone surrogate)."""
    return {"content": json.dumps(obj, ensure_ascii=True).encode(), "headers": {"content-type": "application/json"}}


def metric(text: str, endpoint: str, status: int) -> float:
    prefix = f'editgen_requests_total{{endpoint="{endpoint}",status="{status}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


# -- 2. text fields: unpaired surrogates, NUL, noncharacters ------------------------------------

BAD_TEXT = ["\ud800", "lofi \udfff piano", "lofi\x00piano", "lofi \ufffe", "\U0010ffff"]
TEXT_FIELDS = [  # (endpoint, body with {} where the text goes, the field the message names)
    ("/v1/generate", lambda t: {**GEN, "prompt": t}, "prompt"),
    ("/v1/edit", lambda t: {**EDIT, "source": t}, "source"),
    ("/v1/edit", lambda t: {**EDIT, "target": t}, "target"),
    ("/v1/edit", lambda t: {**EDIT, "word_weights": {t: 1.5}}, "word_weights"),
    ("/v1/edit", lambda t: {**EDIT, "windows": {"guitar": t}}, "windows"),
    ("/v1/edit", lambda t: {**EDIT, "cross_blend": t}, "cross_blend"),
    ("/v1/edit", lambda t: {"capture_id": t, "target": TGT}, "capture_id"),
    ("/v1/captures", lambda t: {"source": t, "seconds": 0.5}, "source"),
]


@pytest.mark.parametrize("text", BAD_TEXT, ids=ascii)
@pytest.mark.parametrize("endpoint,body,field", TEXT_FIELDS, ids=lambda v: v if isinstance(v, str) else "")
def test_text_that_is_not_text_is_422_naming_the_field(client, endpoint, body, field, text):
    r = client.post(endpoint, **raw_json(body(text)))
    assert error_of(r) == (422, "invalid_body"), r.text
    message = r.json()["error"]["message"]
    assert message.startswith(field) and ("surrogate" in message or "NUL" in message or "noncharacter" in message)


def test_a_surrogate_keeps_the_connection_and_is_counted():
    """Before: a TypeError in the tokenizer, `500 text/plain`, uncounted, and sometimes a
    reset of the next request on the same connection."""
    app = create_app(FakeBackend, ServerConfig())
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        for _ in range(3):  # one kept-alive connection
            assert error_of(h.post("/v1/generate", **raw_json({**GEN, "prompt": "\ud800"}))) == (422, "invalid_body")
            assert h.post("/v1/generate", json=GEN).status_code == 200
        assert metric(h.get("/metrics").text, "/v1/generate", 422) == 3


def test_form_text_with_nul_is_422(client):
    files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": "lofi\x00piano", "target": TGT})
    assert error_of(r) == (422, "invalid_body") and r.json()["error"]["message"].startswith("source")


# -- 7. strict types, bounded guidance, unknown form fields -------------------------------------

@pytest.mark.parametrize("endpoint,body", [
    ("/v1/generate", {**GEN, "seconds": True}),  # was a 1 s clip
    ("/v1/generate", {**GEN, "seconds": "1"}),
    ("/v1/generate", {**GEN, "greedy": "yes"}),
    ("/v1/generate", {**GEN, "greedy": 1}),
    ("/v1/generate", {**GEN, "top_k": 2.0}),
    ("/v1/generate", {**GEN, "stream": "true"}),
    ("/v1/edit", {**EDIT, "word_weights": {"guitar": "1.5"}}),
    ("/v1/edit", {**EDIT, "region": {"start": "0.1", "end": 0.4}}),
    ("/v1/captures", {"source": SRC, "seconds": 0.5, "seed": 1.0}),
])
def test_lenient_types_are_422(client, endpoint, body):
    assert error_of(client.post(endpoint, json=body)) == (422, "invalid_body")


def test_integers_are_numbers_and_guidance_at_its_bound_runs(client):
    assert client.post("/v1/generate", json={**GEN, "seconds": 1, "guidance": 100}).status_code == 200


@pytest.mark.parametrize("guidance", [1e308, 100.5])  # 1e308 was 200 with degenerate codes
def test_guidance_is_bounded(client, guidance):
    r = client.post("/v1/generate", json={**GEN, "guidance": guidance})
    assert error_of(r) == (400, "invalid_request") and "[0, 100]" in r.json()["error"]["message"]
    files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "guidance": str(guidance)})
    assert error_of(r) == (400, "invalid_request")


@pytest.mark.parametrize("endpoint,data", [
    ("/v1/edit/audio", {"source": SRC, "target": TGT, "guidence": "5"}),  # misspelt: was ignored
    ("/v1/edit/audio", {"source": SRC, "target": TGT, "greedy": "yes"}),
    ("/v1/edit/audio", {"source": SRC, "target": TGT, "stream": "1"}),
    ("/v1/captures/audio", {"source": SRC, "seconds": "3"}),  # not a field of an audio capture
])
def test_form_fields_are_as_strict_as_json(client, endpoint, data):
    files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
    assert error_of(client.post(endpoint, files=files, data=data)) == (422, "invalid_body")


def test_form_flags_take_true_and_false(client):
    files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT, "greedy": "true",
                                                        "format": "json"})
    assert r.status_code == 200 and r.json()["options"]["greedy"] is True


# -- 6. one middleware counts every answer; a bug is a JSON 500 with its request id -------------

class Buggy(FakeBackend):
    """A backend whose tokenizer has a bug for one prompt (the server's fault, not the input's)."""

    def __init__(self):
        super().__init__()
        encode = self.tokenizer.encode
        self.tokenizer.encode = lambda text, *a, **k: (_ for _ in ()).throw(TypeError("bug")) \
            if text == "boom" else encode(text, *a, **k)


def test_every_answer_is_counted_401_413_500_included(caplog):
    app = create_app(Buggy, ServerConfig(api_key=KEY, max_body_bytes=2048))
    auth = {"X-API-Key": KEY}
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        assert error_of(h.post("/v1/generate", json=GEN)) == (401, "unauthorized")
        assert error_of(h.post("/v1/generate", json={**GEN, "prompt": "x" * 4000}, headers=auth)) == \
            (413, "body_too_large")
        bug = h.post("/v1/generate", json={**GEN, "prompt": "boom"}, headers=auth)
        assert error_of(bug) == (500, "internal_error")
        request_id = bug.headers["x-request-id"]
        assert request_id in bug.json()["error"]["message"]
        assert h.post("/v1/generate", json=GEN, headers=auth).status_code == 200  # the server goes on
        assert error_of(h.get("/v1/nothing", headers=auth)) == (404, "not_found")
        text = h.get("/metrics").text
    assert [metric(text, "/v1/generate", s) for s in (401, 413, 500, 200)] == [1, 1, 1, 1]
    assert metric(text, "other", 404) == 1
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)  # logged with its traceback


def test_401_says_how_to_authenticate():
    with client_for(api_key=KEY) as c:
        r = c.post("/v1/generate", json=GEN)
        assert error_of(r) == (401, "unauthorized") and r.headers["www-authenticate"].startswith("Bearer")


# -- 9. Host check (DNS rebinding), HTTP/1.0 -----------------------------------------------------

def test_hosts_not_allowed_are_refused():
    with client_for(allowed_hosts=("localhost", "127.0.0.1")) as c:
        r = c.post("/v1/generate", json=GEN, headers={"host": "attacker.example:8000"})
        assert error_of(r) == (400, "host_not_allowed")
        assert c.post("/v1/generate", json=GEN, headers={"host": "localhost:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "127.0.0.1"}).status_code == 200


def test_serve_allows_the_loopback_names_by_default_on_loopback():
    from editgen.cli.serve import LOOPBACK_HOSTS, allowed_hosts

    assert allowed_hosts(None, "127.0.0.1") == LOOPBACK_HOSTS and allowed_hosts(None, "::1") == LOOPBACK_HOSTS
    assert allowed_hosts(None, "0.0.0.0") is None
    assert allowed_hosts("music.example, localhost", "127.0.0.1") == ("music.example", "localhost")


def http10(url: str, path: str, body: dict) -> bytes:
    """One HTTP/1.0 request over a raw socket: the whole answer (the server closes)."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_http10_gets_a_whole_body_not_chunks():
    app = create_app(FakeBackend, ServerConfig())
    with live_server(app) as url:
        answer = http10(url, "/v1/generate", {**GEN, "seconds": 2.0, "seed": 3, "stream": True})
        whole = httpx.post(f"{url}/v1/generate", json={**GEN, "seconds": 2.0, "seed": 3}).content
    head, _, body = answer.partition(b"\r\n\r\n")
    headers = head.decode().lower()
    assert "transfer-encoding" not in headers and f"content-length: {len(body)}" in headers
    assert body == whole


# -- 5. timeouts for headers and bodies ------------------------------------------------------------

def test_a_stalled_body_gets_408_and_the_connection_closes():
    app = create_app(FakeBackend, ServerConfig(body_timeout_s=0.2))
    with live_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\": ")  # and nothing more
            answer = b"".join(iter(lambda: s.recv(65536), b""))  # ends: the server closed
    assert answer.startswith(b"HTTP/1.1 408") and b'"body_timeout"' in answer


def test_stalled_headers_get_408_and_the_connection_closes():
    app = create_app(FakeBackend, ServerConfig(header_timeout_s=0.2))
    with serving(app) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-")  # and nothing more
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        with socket.create_connection((host, int(port)), timeout=30) as idle:  # says nothing at all
            assert b"".join(iter(lambda: idle.recv(65536), b"")).startswith(b"HTTP/1.1 408")
        assert metric(httpx.get(f"{server.url}/metrics").text, "other", 408) == 2
    assert answer.startswith(b"HTTP/1.1 408") and b'"header_timeout"' in answer


# -- 1. uploads: a queue place each, a bound on concurrent ones, a decode budget ------------------

def test_an_upload_in_progress_holds_a_queue_place_and_an_upload_slot():
    """An upload whose body is still arriving counts against the queue (and the uploads
    in progress) before anything is decoded."""
    app = create_app(FakeBackend, ServerConfig(max_uploads=1, queue_size=2, retry_after_s=4))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as h:
        scheduler = app.state.service.scheduler
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as slow:
            slow.sendall(b"POST /v1/edit/audio HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                         b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            wait_for(lambda: scheduler.uploads == 1, "the upload's slot")
            files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
            r = h.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT})
            assert error_of(r) == (429, "queue_full") and r.headers["retry-after"] == "4"
            assert "uploads" in r.json()["error"]["message"]
            assert h.get("/readyz").status_code == 200  # one place of two is taken
        wait_for(lambda: scheduler.uploads == 0, "the slot freed when the client left")
        assert h.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT}).status_code == 200
        assert scheduler.uploads == 0


def test_a_full_queue_refuses_an_upload_before_its_body():
    backend = Gated(FakeBackend(), free_steps=1)
    app = create_app(lambda: backend, ServerConfig(queue_size=1))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as h, cf.ThreadPoolExecutor(2) as pool:
        running = pool.submit(h.post, "/v1/generate", json=GEN)
        wait_for(backend.waiting.is_set, "a request held at the gate")
        queued = pool.submit(h.post, "/v1/generate", json=GEN)
        wait_for(lambda: app.state.service.scheduler.queue_depth == 1, "a request queued")
        files = {"audio": ("a.wav", wav_upload(seconds=0.6), "audio/wav")}
        assert error_of(h.post("/v1/edit/audio", files=files, data={"source": SRC})) == (429, "queue_full")
        backend.gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200


def test_an_upload_over_the_decode_budget_is_413_before_decoding(client):
    """The issue's bomb, smaller: 384 kHz x 8 channels x 10 s of FLAC is 33 KB and
    30.7 M samples (the budget is 8 M); refused by its header."""
    files = {"audio": ("bomb.flac", flac_upload(384_000, 8, 10), "audio/flac")}
    r = client.post("/v1/edit/audio", files=files, data={"source": SRC, "target": TGT})
    assert error_of(r) == (413, "audio_too_large")
    assert "30720000 samples" in r.json()["error"]["message"] and "at most 8000000" in r.json()["error"]["message"]


def test_block_decoding_equals_the_clis_whole_file_decoding(tmp_path):
    """read_upload (blocks, mixed and resampled as they come) == read_clip + prepare_source
    (the whole file at once), bit for bit, mono and stereo models, mixed channel counts."""
    import dataclasses

    import soundfile as sf

    from editgen.engine.audio import prepare_source, read_clip

    rng = np.random.default_rng(0)
    for channels, rate in ((2, 44100), (1, 48000), (3, 22050), (2, 32000)):
        path = tmp_path / f"a{channels}_{rate}.wav"
        sf.write(path, (0.3 * rng.standard_normal((int(rate * 1.3), channels))).astype(np.float32), rate)
        for model_channels in (1, 2):
            shapes = dataclasses.replace(FAKE_SHAPES, num_codebooks=4 * model_channels, audio_channels=model_channels)
            whole, notes = prepare_source(read_clip(path), shapes)
            with open(path, "rb") as f:
                blocks = read_upload(f, str(path), shapes, max_seconds=40.0, max_samples=8_000_000)
            np.testing.assert_array_equal(blocks.wav, whole)
            assert list(blocks.notes) == notes


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000, 96000, 384000])
def test_block_resampler_equals_resample_poly(rate):
    from math import gcd

    from scipy.signal import resample_poly

    x = np.random.default_rng(rate).standard_normal(rate // 2 + 123).astype(np.float32)
    g = gcd(rate, 32000)
    whole = resample_poly(x, 32000 // g, rate // g)
    for block in (1000, 32768):
        r = BlockResampler(rate, 32000)
        parts = [r.push(x[i: i + block]) for i in range(0, len(x), block)] + [r.finish()]
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_flac_that_hides_its_length_is_refused_before_decoding():
    """FLAC's header may say "length unknown" (total samples 0): libsndfile then reports
    the largest count there is, so the header check refuses it rather than decode it."""
    from editgen.errors import AudioTooLongError

    data = bytearray(flac_upload(48_000, 1, 3))
    data[21] &= 0xF0  # STREAMINFO's 36-bit total sample count: file bytes 21 (low half) to 25
    data[22:26] = bytes(4)
    with pytest.raises(AudioTooLongError, match="longer than the maximum of 40 s"):
        read_upload(io.BytesIO(bytes(data)), "upload", FAKE_SHAPES, max_seconds=40.0, max_samples=8_000_000)


# -- 8. captures: in memory (a 404 that says why) or on disk (atomic, checksummed, shared) --------

def test_an_unknown_capture_in_memory_says_captures_die_with_the_server(client):
    r = client.post("/v1/edit", json={"capture_id": "A" * 22, "target": TGT})
    assert error_of(r) == (404, "unknown_capture")
    assert "lost when it restarts" in r.json()["error"]["message"] and "--capture-dir" in r.json()["error"]["message"]


def test_servers_sharing_a_capture_dir_share_captures(tmp_path):
    """Two engines (as two Ray replicas) on one directory: a capture made by one is
    edited from by the other, and deleted for both."""
    config = ServerConfig(capture_dir=str(tmp_path / "captures"))
    with TestClient(create_app(FakeBackend, config)) as a, TestClient(create_app(FakeBackend, config)) as b:
        capture_id = a.post("/v1/captures", json={"source": SRC, "seconds": 0.5, "seed": 2}).json()["capture_id"]
        r = b.post("/v1/edit", json={"capture_id": capture_id, "target": TGT, "format": "json"})
        assert r.status_code == 200 and r.json()["mode"] == "captured"
        assert b.delete(f"/v1/captures/{capture_id}").status_code == 204
        assert error_of(a.get(f"/v1/captures/{capture_id}")) == (404, "unknown_capture")


def test_capture_files_are_whole_checksummed_and_named_by_id_only(tmp_path):
    import hashlib

    directory = tmp_path / "captures"
    with client_for(capture_dir=str(directory)) as c:
        capture_id = c.post("/v1/captures", json={"source": SRC, "seconds": 0.5}).json()["capture_id"]
        assert sorted(p.name for p in directory.iterdir()) == [f"{capture_id}.npz", f"{capture_id}.sha256"]
        npz = directory / f"{capture_id}.npz"
        assert (directory / f"{capture_id}.sha256").read_text().strip() == hashlib.sha256(npz.read_bytes()).hexdigest()
        (directory / ".other.npz.tmp").write_bytes(b"a writer that died before its rename")
        assert len(c.app.state.service.captures) == 1  # a temporary file is no capture
        store = c.app.state.service.captures
        for bad in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", capture_id + ".npz", capture_id[:-1] + "/"):
            with pytest.raises(UnknownCaptureError):  # never a path: ids are checked before any file is named
                store.get(bad)
        assert error_of(c.get("/v1/captures/..%2F..%2Fetc%2Fpasswd"))[0] == 404
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0xFF  # the disk flipped a bit
        npz.write_bytes(bytes(data))
        r = c.get(f"/v1/captures/{capture_id}")
        assert error_of(r) == (404, "unknown_capture") and "corrupt" in r.json()["error"]["message"]


def test_disk_captures_are_bounded_in_bytes(tmp_path):
    with client_for(capture_dir=str(tmp_path), max_capture_bytes=3000) as c:  # files of ~1.4 kB: two fit
        ids = [c.post("/v1/captures", json={"source": SRC, "seconds": 0.5, "seed": s}).json()["capture_id"]
               for s in range(3)]
        assert c.app.state.service.captures.total_bytes <= 3000
        assert error_of(c.get(f"/v1/captures/{ids[0]}")) == (404, "unknown_capture")
        assert c.get(f"/v1/captures/{ids[2]}").status_code == 200
