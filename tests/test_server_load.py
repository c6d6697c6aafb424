"""`editgen serve` as users run it (a subprocess on 127.0.0.1, through the CLI): on the
exported random:tiny engine, gated by the test (tests/serve_proc.py), 64 concurrent
clients get exactly the queue's worth of 200s and 429s for the rest (none lost, none
5xx), memory is flat after the burst, SIGTERM drains (503 to new requests, the running
one finishes, exit status 0); captures in --capture-dir survive kill -9; and on the
fake backend, an upload bomb costs the server no more than a stated bound of memory."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server tests need the serve extra")

import httpx  # noqa: E402

from tests.server_util import flac_upload, free_port, reset_rss_peak, rss_bytes, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIENTS, QUEUE = 64, 16


class Served:
    """An `editgen serve` subprocess: its url, and (gated) the gate's controls."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, ack=None):
        self.proc, self.url, self.log_path, self._ack = proc, url, log_path, ack

    def gate(self, command: str) -> None:
        """`open` or `close` the backend's gate; returns once the server applied it."""
        self.proc.stdin.write(f"{command}\n")
        self.proc.stdin.flush()
        assert self._ack.readline().strip() == command

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text


@contextlib.contextmanager
def serve(args: list[str], log_path: Path, *, fake: bool = False, gated: bool = False):
    """`python -m tests.serve_proc [--fake] [--gate FD] -- serve ARGS --port P`, ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("EDITGEN_API_KEY", None)
    launcher = [sys.executable, "-m", "tests.serve_proc"] + (["--fake"] if fake else [])
    ack_read = ack_write = None
    if gated:
        ack_read, ack_write = os.pipe()
        launcher += ["--gate", str(ack_write)]
    log = open(log_path, "w")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(launcher + ["--", "serve", *args, "--port", str(port)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE if gated else subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, text=True, pass_fds=(ack_write,) if gated else ())
    if gated:
        os.close(ack_write)
    served = Served(proc, f"http://127.0.0.1:{port}", log_path, os.fdopen(ack_read) if gated else None)
    try:
        end = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{served.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail(f"editgen serve did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--engine", str(exported("random:tiny")), "--threads", "1", "--max-rows", "16", "--queue", str(QUEUE),
            "--shutdown-grace", "30"]
    with serve(args, log, gated=True) as served:
        yield served


def burst(served: Served, n: int) -> list[int]:
    """n concurrent clients while the engine is held: the queue fills (the first request
    is taken and held at its first step, its place counted until that step ends), the
    rest are refused at once; then the gate opens and the queued ones finish."""
    body = {"prompt": "lofi piano", "seconds": 0.5}

    def one(i):
        with httpx.Client(timeout=120) as h:
            r = h.post(f"{served.url}/v1/generate", json={**body, "seed": i})
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 0 and r.json()["error"]["code"] == "queue_full"
            elif r.status_code == 200:
                assert r.headers["content-type"] == "audio/wav" and len(r.content) == 44 + 2 * 25 * 640
            return r.status_code

    served.gate("close")
    with cf.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        refused = []
        for future in cf.as_completed(futures):  # only refusals can end while the gate is closed
            refused.append(future.result())
            if len(refused) == n - QUEUE:
                break
        assert set(refused) == {429}, refused
        served.gate("open")
        return [f.result() for f in futures]


def test_64_concurrent_clients_are_all_answered_and_memory_stays_flat(server):
    pid = server.proc.pid
    before = rss_bytes(pid)
    first = burst(server, CLIENTS)  # warms the pools to their largest shapes
    after_first = rss_bytes(pid)
    second = burst(server, CLIENTS)
    after_second = rss_bytes(pid)
    for statuses in (first, second):
        assert len(statuses) == CLIENTS and statuses.count(200) == QUEUE and statuses.count(429) == CLIENTS - QUEUE
    metrics = server.metrics()
    assert "editgen_queue_depth 0.0" in metrics and "editgen_active_rows 0.0" in metrics
    served = sum(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('editgen_requests_total{endpoint="/v1/generate"'))
    assert served == 2 * CLIENTS  # every request counted: none lost
    growth = after_second - after_first
    print(f"server RSS: {before / 2**20:.1f} MiB before, {after_first / 2**20:.1f} after burst 1, "
          f"{after_second / 2**20:.1f} after burst 2")
    assert growth < 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over the second burst"


def test_sigterm_drains_answers_503_and_exits_0(server):
    """While a request runs (held at the gate), SIGTERM: /readyz and new requests get
    503 shutting_down with Retry-After (the listener is open: not a refused connection);
    the held request finishes once released; the process exits 0 (a clean drain)."""
    proc = server.proc
    server.gate("close")
    with cf.ThreadPoolExecutor(1) as pool:
        inflight = pool.submit(httpx.post, f"{server.url}/v1/generate",
                               json={"prompt": "lofi piano", "seconds": 2.0}, timeout=120)
        wait_for(lambda: "editgen_queue_depth 1.0" in server.metrics(), "the request held by the engine")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503, "the drain to start")
        late = httpx.post(f"{server.url}/v1/generate", json={"prompt": "lofi piano", "seconds": 0.5}, timeout=30)
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        assert late.headers["retry-after"] == "1"
        server.gate("open")
        assert inflight.result().status_code == 200
    assert proc.wait(timeout=60) == 0
    log = server.log_path.read_text()
    assert "Traceback" not in log and "drained (clean)" in log, log


def test_a_capture_survives_kill_9_with_a_capture_dir(exported, tmp_path):
    """Capture, kill -9 the server, start another on the same --capture-dir: an edit by
    that capture id succeeds (in memory it would be 404)."""
    args = ["--engine", str(exported("random:tiny")), "--threads", "1", "--capture-dir", str(tmp_path / "captures")]
    with serve(args, tmp_path / "first.log") as first:
        r = httpx.post(f"{first.url}/v1/captures", json={"source": "lofi piano with soft drums", "seconds": 0.5,
                                                        "seed": 3}, timeout=120)
        assert r.status_code == 200, r.text
        capture_id = r.json()["capture_id"]
        first.proc.send_signal(signal.SIGKILL)
        assert first.proc.wait(timeout=30) == -signal.SIGKILL
    with serve(args, tmp_path / "second.log") as second:
        r = httpx.post(f"{second.url}/v1/edit", json={"capture_id": capture_id, "target": "lofi guitar with soft drums",
                                                     "format": "json"}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["mode"] == "captured" and r.json()["frames"] == 25


# An upload at a budget of 8 M samples (the default is 64 M: a 10-minute song) decodes in 32768-frame blocks into a result of
# at most the model's longest clip: the server's peak RSS grows by less than this.
UPLOAD_RSS_BOUND = 64 * 2**20


def test_an_upload_bomb_costs_bounded_memory(tmp_path):
    """Issue 23's bomb, at 10 s (384 kHz x 8 channels: 33 KB of FLAC, 30.7 M samples)
    raised the server's RSS by ~1 GB per upload; now it is refused by its header (413).
    An upload just under the budget (384 kHz mono, 20 s: 7.7 M samples) is decoded and
    edited. Each raises the server's peak RSS by less than UPLOAD_RSS_BOUND."""
    bomb, under = flac_upload(384_000, 8, 10), flac_upload(384_000, 1, 20)
    with serve(["--model", "random:tiny", "--max-upload-samples", "8000000"], tmp_path / "fake.log",
               fake=True) as served, \
            httpx.Client(base_url=served.url, timeout=120) as h:
        pid = served.proc.pid
        for name, data, status in (("bomb.flac", bomb, 413), ("under.flac", under, 200)):
            reset_rss_peak(pid)
            before = rss_bytes(pid)
            r = h.post("/v1/edit/audio", files={"audio": (name, data, "audio/flac")},
                       data={"source": "lofi piano with soft drums", "target": "lofi guitar with soft drums"})
            growth = rss_bytes(pid, "VmHWM") - before
            print(f"{name}: {r.status_code}, peak RSS +{growth / 2**20:.1f} MiB")
            assert r.status_code == status, r.text
            assert growth < UPLOAD_RSS_BOUND, f"{name}: peak RSS grew {growth / 2**20:.1f} MiB"
