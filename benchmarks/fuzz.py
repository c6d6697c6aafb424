"""Fuzz the server's OpenAPI schema with schemathesis (hypothesis underneath): every
operation, valid (positive) and invalid (negative) generated requests, sent in-process
to the app over ASGI (no network) on the fake backend. A 5xx is a failure: bad input must
get a 4xx with a code. Strings the generator makes are valid UTF-8 text; a hook also puts
what JSON can carry and text fields must refuse into them (unpaired UTF-16 surrogates,
NUL, noncharacters: HOSTILE_TEXT), in about a third of the bodies.

    python -m benchmarks.fuzz --requests 10000      # the benchmark's run
    tests/test_server_fuzz.py                       # >= 1,000 in CI

Deterministic: hypothesis is derandomized, so a run sends the same requests each time."""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time


def fuzz_app(**config):
    from editgen.engine.backends.fake import FakeBackend
    from editgen.server.app import create_app
    from editgen.server.config import ServerConfig

    # Short audio only: a valid request runs a real (fake) generation.
    defaults = dict(max_seconds=1.0, queue_size=256, max_upload_bytes=256 * 1024, deadline_s=60.0)
    return create_app(FakeBackend, ServerConfig(**{**defaults, **config}))


# Code points a JSON string can hold that no text field takes (multipart bodies are
# UTF-8, which cannot encode a lone surrogate: they get NUL and noncharacters only).
HOSTILE_TEXT = ("\ud800", "\udfff", "\x00", "\ufffe", "\U0010ffff")


def hostile_text(body, json_body: bool):
    """A strategy: `body` as it is, or with one of its strings (a value or a key, at any
    depth) carrying a HOSTILE_TEXT code point at some position."""
    from hypothesis import strategies as st

    places = list(_strings(body))
    if not places:
        return st.just(body)
    points = HOSTILE_TEXT if json_body else HOSTILE_TEXT[2:]
    changed = st.tuples(st.sampled_from(places), st.sampled_from(points), st.integers(0, 64)).map(
        lambda t: _inject(body, *t))
    return st.one_of(st.just(body), st.just(body), changed)


def _strings(value, path=()):
    """Paths to every string in a JSON-like value: (..., key) for a value, (..., (key,)) for a key."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield path + ((key,),)
            yield from _strings(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, path + (i,))


def _inject(body, path, point: str, at: int):
    """A copy of `body` with `point` put at position `at` of the string at `path`."""
    import copy

    if not path:
        return body[:at] + point + body[at:]
    body = copy.deepcopy(body)
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if isinstance(last, tuple):  # a key
        key = last[0]
        parent[key[:at] + point + key[at:]] = parent.pop(key)
    else:
        parent[last] = parent[last][:at] + point + parent[last][at:]
    return body


def fuzz(app, per_operation: int, *, on_response=None) -> collections.Counter:
    """Runs up to `per_operation` generated requests per operation and mode; returns the
    count per (method path, status). `on_response(case, response)` may assert."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def flatmap_body(context, body):
        media = next(iter(context.operation.body), None) if context.operation is not None else None
        return hostile_text(body, json_body=media is None or "json" in media.media_type)
    counts: collections.Counter = collections.Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=per_operation, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call()
                counts[(f"{operation.method.upper()} {operation.path}", response.status_code)] += 1
                if on_response is not None:
                    on_response(case, response)

            try:
                run()
            except Exception as exc:  # schemathesis refuses a mode it cannot generate for an operation
                if type(exc).__name__ not in ("Unsatisfiable", "SkipTest", "Skipped") and \
                        "Unsatisfiable" not in type(exc).__mro__.__repr__():
                    raise
    return counts


def summary(counts: collections.Counter) -> dict:
    by_status = collections.Counter()
    for (_, status), n in counts.items():
        by_status[status] += n
    return {"requests": sum(counts.values()), "by_status": {str(k): v for k, v in sorted(by_status.items())},
            "server_errors": sum(n for (_, s), n in counts.items() if s >= 500),
            "by_operation": {f"{op} -> {s}": n for (op, s), n in sorted(counts.items())}}


def main(argv=None) -> int:
    from fastapi.testclient import TestClient

    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=10_000, help="generated requests to send, at least")
    p.add_argument("--out", help="write the summary JSON here")
    args = p.parse_args(argv)
    app = fuzz_app()
    start = time.perf_counter()
    total, per = collections.Counter(), max(1, args.requests // 20)
    with TestClient(app):  # runs the app's lifespan: the engine is open while fuzzing
        while sum(total.values()) < args.requests:
            total.update(fuzz(app, per))
            per *= 2  # hypothesis stops early on small input spaces: ask for more
    result = {**summary(total), "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(result, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 1 if result["server_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
