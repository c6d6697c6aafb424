"""`editgen serve --ray`: the same FastAPI app as a Ray Serve deployment. Each replica
opens its own engine (backend, scheduler thread, captures) in the app's lifespan, so a
replica batches its own requests; Ray's proxy spreads requests over replicas.

Captures: in memory (the default) they live in the replica that made them, so with more
than one replica an edit from a capture_id may reach another replica and get 404. With
`capture_dir` (`--capture-dir`) on a directory every replica can reach (one machine, or
a shared file system), each replica opens a DiskCaptureStore on it: a capture made by
one is read by all, and survives their restarts."""

from __future__ import annotations

import dataclasses
from typing import Callable

from editgen.server.config import ServerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class RaySettings:
    """Replicas: a fixed count, or autoscaling between min and max replicas on Ray's
    ongoing-requests target. `cpus_per_replica`: Ray's num_cpus of each replica actor."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0
    cpus_per_replica: float = 1.0

    def __post_init__(self):
        from editgen.errors import InvalidRequestError

        if self.replicas < 1:
            raise InvalidRequestError(f"replicas is {self.replicas}, must be at least 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise InvalidRequestError("give both min_replicas and max_replicas for autoscaling, or neither")
        if self.min_replicas is not None and not (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1):
            raise InvalidRequestError(f"autoscaling needs 0 <= min_replicas <= max_replicas, max_replicas >= 1 "
                                      f"(got {self.min_replicas}, {self.max_replicas})")
        if not self.target_ongoing_requests > 0 or not self.cpus_per_replica > 0:
            raise InvalidRequestError("target_ongoing_requests and cpus_per_replica must be > 0")

    def deployment_options(self, config: ServerConfig) -> dict:
        # Ray's own per-replica cap must not queue in front of ours: the engine admits up
        # to max_rows of running requests plus queue_size waiting ones, and 429s the rest.
        options = {"max_ongoing_requests": config.max_rows + config.queue_size,
                   "ray_actor_options": {"num_cpus": self.cpus_per_replica}}
        if self.min_replicas is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        return options


def build_deployment(open_backend: Callable[[], object], config: ServerConfig, settings: RaySettings,
                     name: str = "editgen"):
    """A bound Ray Serve application; `open_backend` is pickled to every replica and
    called there (it must open the model from something each replica can reach)."""
    from ray import serve

    def build_app():
        from editgen.server.app import create_app

        return create_app(open_backend, config)

    ingress = serve.ingress(build_app)()
    return serve.deployment(ingress, name=name, **settings.deployment_options(config)).bind()


def run(open_backend, config: ServerConfig, settings: RaySettings, *, host: str, port: int,
        blocking: bool = True):
    """Start (or join) a local Ray cluster, serve on host:port; blocks until interrupted."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level="WARNING")
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_deployment(open_backend, config, settings), name="editgen", route_prefix="/",
                       blocking=blocking)
    return handle
