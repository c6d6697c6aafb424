"""Shared fixtures: tiny random models are built once per session (a few seconds each).

One thread for torch (and OpenMP) in tests: the tiny models gain nothing from threads,
and torch's OpenMP workers busy-wait between ops, which on a shared 2-core machine made
the suite several times slower (measured 228 s -> 88 s). Set at import, before any test
module builds a model; OMP_NUM_THREADS must be in the environment before the OpenMP
runtime starts, and subprocesses started by tests inherit it."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

try:
    import torch
except ImportError:  # a runtime-only install: the torch tests skip themselves
    torch = None
else:
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(spec, **export_options) -> directory: each export once per run (the ONNX
    tests and the server tests share them). Tests read these directories; one that changes
    files copies the directory first.

    Under pytest-xdist each worker has its own session, and both workers need the common
    exports (random:tiny fp32 and int8, 5-7 s each): as tests/test_cuda_lib.py's build,
    the first worker to take an export's lock writes it into the run's shared temporary
    directory, the other waits for it and reuses it."""
    from editgen.export.onnx_export import export_engine

    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    dirs = {}

    def get(spec: str, **options) -> Path:
        key = (spec, tuple(sorted(options.items())))
        if key not in dirs:
            name = spec.replace(":", "_") + "".join(f"_{k}{v}" for k, v in key[1])
            if not shared:
                out = tmp_path_factory.mktemp(name)
                export_engine(loaded_model(spec), out, log=lambda line: None, **options)
            else:
                root = tmp_path_factory.getbasetemp().parent  # one per run, shared by the workers
                out, done = root / f"exported_{name}", root / f"exported_{name}.done"
                with open(root / f"exported_{name}.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    if not done.exists():  # written only after a complete export
                        shutil.rmtree(out, ignore_errors=True)  # what a failed export left
                        export_engine(loaded_model(spec), out, log=lambda line: None, **options)
                        done.touch()
            dirs[key] = out
        return dirs[key]

    return get


@pytest.fixture(scope="session")
def tiny_clap_dir(tmp_path_factory):
    """A random-init CLAP with a tiny config, plus a locally built tokenizer and feature
    extractor, saved in transformers' layout: the same files a real checkpoint has
    (the eval and protocol tests score with it)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # Byte-level BPE over single characters (no merges): enough to tokenize prompts.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "abcdefghijklmnopqrstuvwxyz,Ġ":
        vocab[ch] = len(vocab)
    tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=[])
    config = transformers.ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=80, projection_dim=16),
        # spec_size / num_mel_bins stay at LAION's 256 / 64: they must match the extractor.
        audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1],
                          num_attention_heads=[2, 2], num_hidden_layers=2, projection_dim=16),
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.ClapModel(config)
    # The settings of laion/clap-htsat-unfused's preprocessor_config.json.
    extractor = transformers.ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    directory = tmp_path_factory.mktemp("tiny_clap")
    model.save_pretrained(directory)
    transformers.ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(directory)
    return directory
