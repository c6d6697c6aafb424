"""Shared fixtures: tiny random models are built once per session (a few seconds each)."""

from __future__ import annotations

import functools

import pytest


@functools.lru_cache(maxsize=None)
def loaded_model(spec: str):
    from editgen.model.loading import load_musicgen

    loaded = load_musicgen(spec)
    loaded.model.config.decoder._attn_implementation = "eager"  # explicit attention, as our step
    return loaded


@functools.lru_cache(maxsize=None)
def torch_backend(spec: str):
    from editgen.engine.backends.torch_backend import TorchBackend

    return TorchBackend(loaded_model(spec))


@pytest.fixture(scope="session")
def tiny():
    return loaded_model("random:tiny")


@pytest.fixture(scope="session")
def tiny_backend():
    return torch_backend("random:tiny")
