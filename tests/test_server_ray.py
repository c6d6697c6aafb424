"""`editgen serve --ray`: the same app as a Ray Serve deployment with 2 replicas on the
exported random:tiny engine, on 127.0.0.1, sharing a capture directory. Slow (Ray starts its own processes: ~30 s on
2 cores), so marked `slow`; part of the default `python -m pytest -q` run."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray Serve test needs the ray extra (pip install 'editgen[ray]')")
pytest.importorskip("ray.serve", reason="the Ray Serve test needs ray[serve]")

import httpx  # noqa: E402

from editgen.engine.runtime import open_backend  # noqa: E402
from editgen.server.config import ServerConfig  # noqa: E402
from editgen.server.ray_serve import RaySettings, build_deployment  # noqa: E402
from tests.server_util import quiet_free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_replicas_serve_the_same_app(exported, tmp_path):
    from ray import serve

    port = quiet_free_port()
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        opener = functools.partial(open_backend, engine=str(exported("random:tiny")), threads=1)
        config = ServerConfig(max_rows=8, queue_size=8, capture_dir=str(tmp_path / "captures"))
        app = build_deployment(opener, config, RaySettings(replicas=2, cpus_per_replica=0.5))
        serve.run(app, name="editgen", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        status = serve.status().applications["editgen"].deployments["editgen"]
        assert status.replica_states.get("RUNNING") == 2, status

        pids = set()
        end = time.monotonic() + 30
        with httpx.Client(base_url=url, timeout=60) as h:
            while len(pids) < 2 and time.monotonic() < end:  # Ray spreads requests over the replicas
                pids.add(h.get("/healthz").json()["pid"])
            assert len(pids) == 2
            body = {"prompt": "lofi piano", "seconds": 0.5, "seed": 3}
            with cf.ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(lambda _: h.post("/v1/generate", json=body), range(8)))
            assert {r.status_code for r in responses} == {200}
            assert len({r.content for r in responses}) == 1  # same seed, same bytes, whichever replica
            bad = h.post("/v1/generate", json={**body, "prompt": ""})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
            assert h.get("/metrics").text.count("editgen_steps_total") >= 1
            # One capture, edited from by whichever replica answers: the replicas share --capture-dir.
            capture = h.post("/v1/captures", json={"source": "lofi piano with soft drums", "seconds": 0.5})
            edit = {"capture_id": capture.json()["capture_id"], "target": "lofi guitar with soft drums"}
            with cf.ThreadPoolExecutor(8) as pool:
                edits = list(pool.map(lambda _: h.post("/v1/edit", json=edit), range(8)))
            assert {r.status_code for r in edits} == {200}, [r.text for r in edits if r.status_code != 200]
    finally:
        serve.shutdown()
        ray.shutdown()
