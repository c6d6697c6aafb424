"""The runtime's small parts against their definitions, and the public API."""

from __future__ import annotations


import numpy as np
import pytest
import soundfile as sf
import torch

import editgen
from editgen.cli import main
from editgen.engine.delay import DelayPattern
from editgen.engine.hooks import ForceFrames
from editgen.engine.sampling import Sampler, classifier_free_guidance
from editgen.errors import CheckpointError, InvalidRequestError
from tests.conftest import loaded_model


@pytest.mark.parametrize("spec", ["random:tiny", "random:tiny-stereo"])
@pytest.mark.parametrize("length", [7, 8, 33])
def test_delay_pattern_matches_transformers(spec, length):
    """Forced positions and values equal transformers' build_delay_pattern_mask (which
    skips the pattern below 2C - 1 positions, C the codebooks of a channel; we always
    apply it). Stereo: both channels' codebook c share delay c."""
    loaded = loaded_model(spec)
    K, pad = loaded.shapes.num_codebooks, 2048
    _, mask = loaded.model.decoder.build_delay_pattern_mask(torch.full((K, 1), pad), pad, max_length=length)
    ours = DelayPattern.for_shapes(loaded.shapes, length)
    np.testing.assert_array_equal(ours.forced, mask.numpy() != -1)
    assert (mask.numpy()[ours.forced] == pad).all()
    codes = np.random.default_rng(0).integers(0, 2048, size=(2, K, ours.frames))
    np.testing.assert_array_equal(ours.to_frames(ours.from_frames(codes)), codes)


def test_delay_pattern_round_trip():
    pattern = DelayPattern(4, 30, 2048)
    codes = np.random.default_rng(0).integers(0, 2048, size=(2, 4, pattern.frames))
    np.testing.assert_array_equal(pattern.to_frames(pattern.from_frames(codes)), codes)


@pytest.mark.parametrize("channels", [1, 2])
def test_completed_frames_are_final_as_positions_fill(channels):
    """Filling the sequence position by position (the generation loop), the first
    completed_frames(p) frames read from the partial sequence equal the final codes:
    with stereo's delays (k // 2) as well as mono's (k)."""
    pattern = DelayPattern(8, 40, 2048, audio_channels=channels)
    codes = np.random.default_rng(0).integers(0, 2048, size=(2, 8, pattern.frames))
    full = pattern.from_frames(codes)
    partial = np.full_like(full, -1)
    seen = []
    for p in range(pattern.length):
        partial[..., p] = full[..., p]
        done = pattern.completed_frames(p)
        np.testing.assert_array_equal(pattern.to_frames(partial, done), codes[..., :done])
        seen.append(done)
    assert seen[-1] == pattern.frames and seen[pattern.max_delay + 1] == 1 and seen[pattern.max_delay] == 0


def test_sampler_rows_are_independent_and_seeded():
    logits = np.random.default_rng(1).normal(size=(3, 4, 2048)).astype(np.float32)
    draw = lambda rows, seed: Sampler(rows, seed=seed, top_k=250, temperature=1.0, greedy=False)
    batched = draw(3, 7)(logits)
    for r in range(3):  # batched equals unbatched
        np.testing.assert_array_equal(draw(1, 7)(logits[r:r + 1])[0], batched[r])
    assert not np.array_equal(draw(3, 8)(logits), batched)  # the seed matters
    same = np.repeat(logits[:1], 3, axis=0)  # equal logits, equal streams -> equal tokens
    out = draw(3, 7)(same)
    assert (out == out[0]).all()


def test_sampler_top_k_support_and_greedy():
    logits = np.random.default_rng(2).normal(size=(1, 4, 2048)).astype(np.float32)
    top5 = np.argsort(-logits, axis=-1)[..., :5]
    sampler = Sampler(1, seed=0, top_k=5, temperature=1.0, greedy=False)
    for _ in range(50):
        codes = sampler(logits)
        assert all(codes[0, k] in top5[0, k] for k in range(4))
    greedy = Sampler(1, seed=0, top_k=5, temperature=1.0, greedy=True)(logits)
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


def test_classifier_free_guidance_formula():
    cond, uncond = np.full((1, 1, 3), 2.0), np.full((1, 1, 3), 1.0)
    out = classifier_free_guidance(np.concatenate([cond, uncond]), 3.0)
    np.testing.assert_array_equal(out, np.full((1, 1, 3), 4.0))  # 1 + (2 - 1) * 3


def test_force_frames_respects_the_delay():
    pattern = DelayPattern(4, 12, 2048)  # 8 frames
    source = np.arange(32).reshape(4, 8)
    force = ForceFrames(pattern, [1], np.arange(8) < 3, source_codes=source)
    codes = np.full((2, 4), -1)
    force(5, codes)  # position 5 holds frames 4, 3, 2, 1 for codebooks 0..3
    assert codes[0].tolist() == [-1] * 4
    assert codes[1].tolist() == [-1, -1, source[2, 2], source[3, 1]]


def test_python_api_generate(tiny_backend):
    song = editgen.generate(tiny_backend, "lofi piano", editgen.GenerationOptions(seconds=0.5))
    assert song.codes.shape == (4, 25) and song.sample_rate == 32000
    assert song.wav.shape == (1, 25 * 640) and np.isfinite(song.wav).all()


def test_cli_generate_writes_wav(tmp_path):
    out = tmp_path / "out.wav"
    assert main(["generate", "--model", "random:tiny", "--prompt", "lofi piano", "--seconds", "0.5",
                 "--no-progress", "-o", str(out)]) == 0
    data, rate = sf.read(out)
    assert rate == 32000 and data.shape == (16000,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temporary left


def test_seconds_beyond_positions_is_rejected(tiny):
    opts = editgen.GenerationOptions(seconds=41.0)
    with pytest.raises(InvalidRequestError, match=r"ask for at most 40\.9"):
        opts.frames(tiny.shapes)
    editgen.GenerationOptions(seconds=40.9).frames(tiny.shapes)  # 2045 frames + 3 = 2048 positions
    with pytest.raises(InvalidRequestError, match=r"at least 0\.08 s"):
        editgen.GenerationOptions(seconds=0.05).frames(tiny.shapes)


@pytest.fixture
def downloads(monkeypatch):
    """Records every hub download loading.py starts (each may retry for seconds offline)."""
    import huggingface_hub

    calls, real = [], huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


def test_hub_id_without_network_fails_fast(monkeypatch, downloads):
    """No network: one failed connect (no download retries), then one line saying what to do."""
    import socket

    from editgen.model.loading import load_musicgen

    connects = []

    def unreachable(address, timeout=None, *args, **kwargs):
        connects.append(timeout)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(CheckpointError, match=r"no network, and it is not in the local cache\): when offline, "
                                              r"pass a local checkpoint directory") as info:
        load_musicgen("editgen-tests/not-a-model")
    assert "\n" not in str(info.value)
    assert connects == [2.0]  # one connect, 2 s timeout, then nothing: no download retries
    assert downloads == []


def test_hub_id_with_hf_hub_offline_does_not_touch_the_network(monkeypatch, downloads):
    import socket

    from huggingface_hub import constants

    from editgen.model.loading import load_musicgen

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected while offline"))
    with pytest.raises(CheckpointError, match="pass a local checkpoint directory"):
        load_musicgen("editgen-tests/not-a-model")
    assert downloads == []


def test_unknown_preset():
    from editgen.model.loading import load_musicgen

    with pytest.raises(CheckpointError, match="choose one of tiny"):
        load_musicgen("random:huge")


def test_random_codec_depends_on_its_input(tiny_backend):
    """Random presets must not decode every code to the same audio (zero codebooks did)."""
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 2048, size=(1, 4, 10)) for _ in range(2))
    wav_a, wav_b = tiny_backend.decode_audio(a), tiny_backend.decode_audio(b)
    assert np.abs(wav_a - wav_b).max() > 1e-3
    codes = tiny_backend.encode_audio(wav_a[0])
    assert codes.shape == (4, 10) and codes.min() >= 0 and codes.max() < 2048
