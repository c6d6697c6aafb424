"""Load benchmark of `editgen serve`: requests/s, p50/p99 latency and time to first audio
against concurrency, JSON + PNG. Starts the server as users do (a subprocess on
127.0.0.1), then for each concurrency c keeps c clients busy, each sending streaming
generate requests back to back (stream: true, format: wav) and timing each one:

  latency             request sent -> last byte
  time to first audio request sent -> first PCM byte (after the 44-byte WAV header)
  requests/s          requests completed / wall time of the level

    python -m benchmarks.load --engine DIR             # full: concurrency 1..64 -> ./bench-results/load/
    python -m benchmarks.load --quick --out /tmp/load  # random:tiny, exported here; checks the script works

The full run wants random:small ORT int8: `editgen export --model random:small --quantize
int8 -o DIR` (~4 min). Clients and server share the machine: on 2 cores the clients'
own CPU use is part of what is measured (the client is asyncio, one thread)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_LEVELS = (1, 2, 4, 8, 16, 32, 64)
QUICK_LEVELS = (1, 2, 4)
PROMPTS = ("lofi piano with warm drums", "80s pop track with bassy drums and synth", "calm ambient pads",
           "fast techno beat", "jazz trio with upright bass", "orchestral strings")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--engine", help="exported engine directory (random:small --quantize int8 for the full run)")
    src.add_argument("--quick", action="store_true", help="export random:tiny to a temporary directory, few levels")
    p.add_argument("--levels", help="comma-separated concurrencies (default 1,2,4,8,16,32,64; quick: 1,2,4)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level, at least 2 per client (default: max(4c, 16); quick: 2c)")
    p.add_argument("--seconds", type=float, default=None, help="audio per request (default 2.0; quick 0.5)")
    p.add_argument("--threads", type=int, default=None, help="server ONNX Runtime threads (default: one per core)")
    p.add_argument("--out", default="bench-results/load", help="output directory (load.json, load.png)")
    args = p.parse_args(argv)
    if not args.quick and not args.engine:
        p.error("give --engine DIR (an `editgen export` directory) or --quick")
    if args.engine and not (Path(args.engine) / "manifest.json").is_file():
        p.error(f"--engine {args.engine} is not an `editgen export` directory (no manifest.json)")
    try:
        args.levels = tuple(int(x) for x in args.levels.split(",")) if args.levels else \
            (QUICK_LEVELS if args.quick else FULL_LEVELS)
    except ValueError:
        p.error(f"--levels {args.levels!r} must be integers separated by commas, e.g. 1,2,4")
    if any(c < 1 for c in args.levels):
        p.error("--levels must be positive")
    args.seconds = args.seconds or (0.5 if args.quick else 2.0)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        p.error(f"--out {out} is a file")
    return args


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def start_server(engine: str, max_rows: int, threads: int | None, log_path: Path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "editgen.cli", "serve", "--engine", engine, "--port", str(port),
           "--max-rows", str(max_rows), "--queue", "256", "--deadline", "3600"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("EDITGEN_API_KEY", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


async def wait_ready(url: str, proc, timeout: float = 300) -> None:
    import httpx

    end = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError("the server exited; see its log")
            try:
                if (await client.get(f"{url}/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the server did not become ready")


async def one_request(client, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = None
    size = 0
    async with client.stream("POST", f"{url}/v1/generate", json=body) as response:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if first is None and size > 44:
                first = time.perf_counter()
        status = response.status_code
    end = time.perf_counter()
    return {"status": status, "latency": end - start, "ttfa": (first or end) - start, "bytes": size}


async def run_level(url: str, clients: int, total: int, seconds: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    results: list[dict] = []
    counter = iter(range(total))
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        async def worker():
            for i in counter:
                body = {"prompt": PROMPTS[i % len(PROMPTS)], "seconds": seconds, "seed": i, "stream": True}
                results.append(await one_request(client, url, body))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r["status"] == 200]
    lat, ttfa = [r["latency"] for r in ok], [r["ttfa"] for r in ok]
    return {"concurrency": clients, "requests": len(results), "ok": len(ok),
            "errors": {str(s): sum(1 for r in results if r["status"] == s) for s in {r["status"] for r in results}
                       if s != 200},
            "wall_s": wall, "requests_per_s": len(ok) / wall, "audio_seconds_per_s": len(ok) * seconds / wall,
            "latency_p50_s": percentile(lat, 50) if lat else None, "latency_p99_s": percentile(lat, 99) if lat else None,
            "ttfa_p50_s": percentile(ttfa, 50) if ttfa else None, "ttfa_p99_s": percentile(ttfa, 99) if ttfa else None,
            "latency_mean_s": statistics.fmean(lat) if lat else None}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [r["concurrency"] for r in results["levels"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(levels, [r["requests_per_s"] for r in results["levels"]], "o-")
    axes[0].set_title("requests / s")
    for key, label in (("latency_p50_s", "latency p50"), ("latency_p99_s", "latency p99")):
        axes[1].plot(levels, [r[key] for r in results["levels"]], "o-", label=label)
    axes[1].set_title("latency (s)")
    for key, label in (("ttfa_p50_s", "first audio p50"), ("ttfa_p99_s", "first audio p99")):
        axes[2].plot(levels, [r[key] for r in results["levels"]], "o-", label=label)
    axes[2].set_title("time to first audio (s)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.grid(alpha=0.3)
    axes[1].legend()
    axes[2].legend()
    fig.suptitle(f"editgen serve, {results['engine_name']}, {results['seconds']} s of audio per request "
                 f"(streaming generate)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="editgen-load-")
    engine = args.engine
    if args.quick:
        engine = str(Path(tmp.name) / "engine_tiny")
        done = subprocess.run([sys.executable, "-m", "editgen.cli", "export", "--model", "random:tiny", "-o", engine],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            print(done.stdout + done.stderr, file=sys.stderr)
            return 2
    max_rows = 2 * max(args.levels)
    log_path = out / "server.log"
    proc, url, log = start_server(engine, max_rows, args.threads, log_path)
    manifest = json.loads((Path(engine) / "manifest.json").read_text())
    results = {"engine": str(engine), "engine_name": manifest.get("model", Path(engine).name),
               "quantize": manifest.get("quantize"), "seconds": args.seconds, "max_rows": max_rows,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "levels": []}
    try:
        asyncio.run(wait_ready(url, proc))
        asyncio.run(run_level(url, 1, 2, args.seconds))  # warm-up: sessions, pools, first decode
        for c in args.levels:
            total = args.requests or (2 * c if args.quick else max(4 * c, 16))
            level = asyncio.run(run_level(url, c, max(total, 2 * c), args.seconds))
            results["levels"].append(level)
            print(f"c={c:3d}  {level['requests_per_s']:7.2f} req/s  latency p50 {level['latency_p50_s']:.3f} "
                  f"p99 {level['latency_p99_s']:.3f} s  first audio p50 {level['ttfa_p50_s']:.3f} "
                  f"p99 {level['ttfa_p99_s']:.3f} s  errors {level['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        tmp.cleanup()
    (out / "load.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / "load.png")
    print(f"wrote {out}/load.json, {out}/load.png")
    return 0 if all(not level["errors"] for level in results["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
