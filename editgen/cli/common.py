"""Arguments shared by subcommands, and turning them into validated options."""

from __future__ import annotations

import argparse
import sys

from editgen.engine.options import GenerationOptions


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="checkpoint directory, hub id, or random:<tiny|small|medium|large>")
    g.add_argument("--engine", help="directory written by `editgen export`")
    p.add_argument("--backend", choices=("torch", "ort"), help="default: torch for --model, ort for --engine")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=8.0, help="duration of the audio (default 8)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    p.add_argument("--top-k", type=int, default=250)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    return GenerationOptions(seconds=args.seconds, guidance_scale=args.guidance, top_k=args.top_k,
                             temperature=args.temperature, greedy=args.greedy, seed=args.seed)


def open_from_args(args: argparse.Namespace):
    from editgen.engine.runtime import open_backend

    backend = open_backend(model=args.model, engine=args.engine, backend=args.backend)
    if getattr(backend, "is_random", False) or (args.model or "").startswith("random:"):
        print("note: this model has random weights: timings are real, the audio is not music", file=sys.stderr)
    return backend
