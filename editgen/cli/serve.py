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
    g.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help="longest song a request may ask for or upload (longer than its window: windows)")
    g.add_argument("--max-capture-mib", type=int, default=512, help="memory for captured sources (LRU)")
    g.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C, seconds in-flight requests get to finish before they are cancelled")
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


def server_config(args):
    from editgen.server.config import ServerConfig

    return ServerConfig(max_rows=args.max_rows, queue_size=args.queue, deadline_s=args.deadline,
                        max_body_bytes=args.max_body, max_upload_bytes=args.max_upload, max_seconds=args.max_seconds,
                        max_capture_bytes=args.max_capture_mib * 1024 * 1024, shutdown_grace_s=args.shutdown_grace,
                        api_key=os.environ.get(args.api_key_env) or None)


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
    opener = functools.partial(open_backend, model=args.model, engine=os.path.abspath(args.engine) if args.engine
                               else None, backend=args.backend, threads=args.threads)
    if args.ray:
        return _run_ray(opener, config, args)
    serve_uvicorn(create_app(opener, config), config, host=args.host, port=args.port)
    return 0


def serve_uvicorn(app, config, *, host: str, port: int) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # Stop admitting at the signal: keep-alive connections get 503, not a new job.
            service = getattr(app.state, "service", None)
            if service is not None:
                service.scheduler.accepting = False
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, host=host, port=port, lifespan="on", log_level="info",
                          timeout_graceful_shutdown=max(1, int(config.shutdown_grace_s)))).run()


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
