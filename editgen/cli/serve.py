"""editgen serve: the HTTP server (FastAPI on uvicorn; --ray: a Ray Serve deployment)."""

from __future__ import annotations

import functools
import ipaddress
import os

from editgen.cli.common import add_model_args, add_parser, note
from editgen.engine.windows import DEFAULT_MAX_SECONDS
from editgen.errors import InvalidRequestError


def register(sub) -> None:
    p = add_parser(sub, "serve", help="serve generate / edit / capture over HTTP (needs the serve extra)",
                   description="Serve the model over HTTP: POST /v1/generate, /v1/edit, /v1/edit/audio, "
                               "/v1/captures; GET /healthz, /readyz, /metrics; OpenAPI at /docs. One scheduler "
                               "thread steps every active request together (continuous batching).")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads per session (default: one per core)")
    g = p.add_argument_group("limits (see ServerConfig in editgen/server/config.py)")
    g.add_argument("--max-rows", type=int, default=64, help="decoder rows per step over all requests "
                                                            "(a request with guidance: 2, an edit: 4)")
    g.add_argument("--queue", type=int, default=64, help="requests waiting for rows; past it: 429 with Retry-After")
    g.add_argument("--deadline", type=float, default=300.0, help="seconds a request may take; past it: cancelled, 503")
    g.add_argument("--max-body", type=int, default=64 * 1024, help="largest JSON body in bytes (413)")
    g.add_argument("--max-upload", type=int, default=32 * 1024 * 1024, help="largest audio upload in bytes (413)")
    g.add_argument("--max-uploads", type=int, default=4,
                   help="uploads received and decoded at once, each holding a queue place (past it: 429)")
    g.add_argument("--max-upload-samples", type=int, default=64_000_000,
                   help="samples an upload may decode to, rate x channels x seconds, checked from its header "
                        "before decoding (413 audio_too_large)")
    g.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request body may take to arrive (408, connection closed)")
    g.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection may take to send a request's headers (408, connection closed)")
    g.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="longest song a request may ask for or upload (longer than its window: windows)")
    g.add_argument("--max-capture-mib", type=int, default=512, help="captured sources kept, MiB (LRU)")
    g.add_argument("--capture-dir", help="keep captures in this directory (atomic files with a checksum: they "
                                         "survive restarts, and replicas sharing it share them); default: memory")
    g.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds in-flight requests get to finish (new ones get 503) before "
                        "they are cancelled; exit status 0 after a clean drain, 1 if requests were cancelled")
    g.add_argument("--allowed-hosts", help="comma-separated Host names answered, * for any (400 otherwise; "
                                           "default: localhost,127.0.0.1,[::1] when bound to loopback, else any)")
    p.add_argument("--api-key-env", default="EDITGEN_API_KEY",
                   help="environment variable holding the API key; when it is set, /v1 needs it (401)")
    r = p.add_argument_group("Ray Serve (needs the ray extra)")
    r.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment, one engine per replica")
    r.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    r.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas (with --max-replicas)")
    r.add_argument("--max-replicas", type=int, help="autoscaling: most replicas (with --min-replicas)")
    r.add_argument("--target-ongoing", type=float, default=8.0, help="autoscaling: ongoing requests per replica")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, help="Ray num_cpus of each replica")
    p.set_defaults(func=run)


# The names a loopback server answers by default: a browser reaching it through DNS
# rebinding sends the attacker's name, which is none of these.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def server_config(args):
    from editgen.server.config import ServerConfig

    return ServerConfig(max_rows=args.max_rows, queue_size=args.queue, deadline_s=args.deadline,
                        max_body_bytes=args.max_body, max_upload_bytes=args.max_upload, max_uploads=args.max_uploads,
                        max_upload_samples=args.max_upload_samples, body_timeout_s=args.body_timeout,
                        header_timeout_s=args.header_timeout, max_seconds=args.max_seconds,
                        max_capture_bytes=args.max_capture_mib * 1024 * 1024,
                        capture_dir=os.path.abspath(args.capture_dir) if args.capture_dir else None,
                        shutdown_grace_s=args.shutdown_grace, api_key=os.environ.get(args.api_key_env) or None,
                        allowed_hosts=allowed_hosts(args.allowed_hosts, args.host))


def allowed_hosts(flag: str | None, host: str) -> tuple[str, ...] | None:
    """--allowed-hosts as a tuple; by default the loopback names when bound to loopback
    (None, any name, otherwise: a public server is reached by names we cannot guess)."""
    if flag is not None:
        names = tuple(h.strip() for h in flag.split(",") if h.strip())
        if not names:
            raise InvalidRequestError("--allowed-hosts is empty: give host names, or * for any")
        return names
    return LOOPBACK_HOSTS if _loopback(host) else None


def run(args) -> int:
    try:
        import uvicorn  # noqa: F401

        from editgen.server.app import create_app
    except ImportError as exc:
        raise InvalidRequestError(f"editgen serve needs the serve extra ({exc.name} is missing): "
                                  "pip install 'editgen[serve]'") from None
    from editgen.engine.runtime import open_backend

    config = server_config(args)  # checked before the model loads
    if not 0 < args.port < 65536:
        raise InvalidRequestError(f"--port {args.port} must be in 1..65535")
    if args.engine is not None and not os.path.isdir(args.engine):
        raise InvalidRequestError(f"--engine {args.engine} is not a directory: give an `editgen export` output")
    if config.api_key is None and not _loopback(args.host):
        note(f"serving on {args.host} without an API key: set {args.api_key_env} to require one")
    if args.model and args.model.startswith("random:"):
        note("this model has random weights: timings are real, the audio is not music")
    if config.capture_dir is not None:
        from editgen.server.captures import DiskCaptureStore

        DiskCaptureStore(config.capture_dir, config.max_capture_bytes)  # made and writable, before the model loads
    opener = functools.partial(open_backend, model=args.model, engine=os.path.abspath(args.engine) if args.engine
                               else None, backend=args.backend, threads=args.threads)
    if args.ray:
        return _run_ray(opener, config, args)
    from editgen.server import uvicorn_server

    return uvicorn_server.run(create_app(opener, config), config, host=args.host, port=args.port)


def _run_ray(opener, config, args) -> int:
    try:
        from editgen.server import ray_serve
        import ray  # noqa: F401
    except ImportError:
        raise InvalidRequestError("editgen serve --ray needs the ray extra: pip install 'editgen[ray]'") from None
    settings = ray_serve.RaySettings(replicas=args.replicas, min_replicas=args.min_replicas,
                                     max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing,
                                     cpus_per_replica=args.cpus_per_replica)
    ray_serve.run(opener, config, settings, host=args.host, port=args.port, blocking=True)
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
