"""`editgen serve` as a subprocess for the tests, through the real CLI (its flags, its
signal handling, its exit status), with the backend swapped or gated:

    python -m tests.serve_proc [--fake] [--gate FD] -- serve --model random:tiny ...

--fake     the numpy FakeBackend instead of the model (fast to start; --model is still
           parsed by the CLI, not loaded).
--gate FD  every step waits while the gate is closed (it starts closed). The test writes
           `open` or `close` lines to stdin; each is acknowledged with a line on file
           descriptor FD once applied, so the test knows the gate's state."""

from __future__ import annotations

import argparse
import os
import sys
import threading


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--fake", action="store_true")
    p.add_argument("--gate", type=int, metavar="FD")
    p.add_argument("cli", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    import editgen.engine.runtime as runtime
    from editgen.cli import main as cli_main

    opened = runtime.open_backend

    def open_backend(**kwargs):
        if args.fake:
            from editgen.engine.backends.fake import FakeBackend

            backend = FakeBackend()
        else:
            backend = opened(**kwargs)
        if args.gate is None:
            return backend
        from tests.server_util import Gated

        gated = Gated(backend)
        threading.Thread(target=_obey, args=(gated, os.fdopen(args.gate, "w", buffering=1)), daemon=True).start()
        return gated

    runtime.open_backend = open_backend
    return cli_main([a for a in args.cli if a != "--"])


def _obey(gated, ack) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "open":
            gated.gate.set()
        elif command == "close":
            gated.gate.clear()
        ack.write(f"{command}\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
