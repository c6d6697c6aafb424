"""EnCodec decode with an int8 LSTM (editgen.export.int8_codec): the kernel against its
numpy reference; a row's output alone, in a crowd, as a prefix and on 1 or 2 threads;
the cut around the LSTM exact in fp32; the export's agreement, and the CPU engine's decode
(batch invariance, the streaming prefix property)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from editgen.export.int8_codec import CodecHead, CodecTail, codec_lstm, lstm_arrays
from editgen.export.int8_rowwise import quantize_weight
from editgen.kernels.cpu_lstm import Int8Lstm, lstm_ref
from tests.conftest import loaded_model

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                reason="no C++ compiler: the CPU kernels cannot be built here")


def random_lstm(rng, layers: int, dim: int) -> dict[str, np.ndarray]:
    arrays = {}
    for l in range(layers):
        for name in ("w_ih", "w_hh"):
            w = (rng.standard_normal((dim, 4 * dim)) / np.sqrt(dim)).astype(np.float32)
            arrays[f"lstm.{l}.{name}.w"], arrays[f"lstm.{l}.{name}.scale"] = quantize_weight(w)
        arrays[f"lstm.{l}.bias"] = (0.1 * rng.standard_normal(4 * dim)).astype(np.float32)
    return arrays


def test_lstm_equals_its_reference():
    rng = np.random.default_rng(0)
    arrays = random_lstm(rng, 2, 64)
    x = rng.standard_normal((3, 64, 30)).astype(np.float32)
    np.testing.assert_allclose(Int8Lstm(arrays, threads=1)(x), lstm_ref(arrays, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim", [64, 512])  # 512 x 2 layers: over 4 MB, split between the threads
def test_a_rows_output_is_its_own_alone_in_a_crowd_as_a_prefix_and_on_any_threads(dim):
    rng = np.random.default_rng(1)
    arrays = random_lstm(rng, 2, dim)
    x = rng.standard_normal((3, dim, 24)).astype(np.float32)
    crowd = Int8Lstm(arrays, threads=2)(x)
    np.testing.assert_array_equal(Int8Lstm(arrays, threads=1)(x[1:2]), crowd[1:2])
    np.testing.assert_array_equal(Int8Lstm(arrays, threads=2)(x[:, :, :10]), crowd[:, :, :10])  # causal


def test_the_cut_around_the_lstm_is_exact():
    """Head, torch's own LSTM (+ skip), tail: the whole EnCodec decode, mono and stereo."""
    from editgen.export.graphs import EncodecDecode

    for spec in ("random:tiny", "random:tiny-stereo"):
        model = loaded_model(spec).model
        codes = torch.randint(0, 2048, (2, model.config.decoder.num_codebooks, 9), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            x = CodecHead(model)(codes)  # [clips, channels, dim, frames]
            lstm = model.audio_encoder.decoder.layers[1]
            y = torch.stack([lstm(x[:, c]) for c in range(x.shape[1])], dim=1)
            torch.testing.assert_close(CodecTail(model)(y), EncodecDecode(model)(codes), rtol=0, atol=0)


def test_exported_weights_are_torchs_lstm_in_int8():
    model = loaded_model("random:tiny").model
    lstm = codec_lstm(model)
    arrays = lstm_arrays(model)
    x = torch.randn(2, lstm.hidden_size, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = (lstm(x.permute(2, 0, 1))[0].permute(1, 2, 0) + x).numpy()
    got = Int8Lstm(arrays, threads=1)(x.numpy())
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()


def test_the_cpu_engine_decodes_with_it_batch_invariant_and_prefix_stable(exported):
    from editgen.engine.backends.int8_step_backend import Int8StepBackend
    from editgen.engine.manifest import load_manifest
    from editgen.server.audio_stream import HOLDBACK_FRAMES

    engine = exported("random:tiny", quantize="int8")
    agreement = load_manifest(engine).int8_codec["agreement"]
    assert agreement["snr_db"] > 60 and agreement["max_abs_error"] < 1e-3  # measured 90 dB on random:tiny
    with Int8StepBackend(engine, threads=2) as backend:
        assert backend.decode_audio.__self__.__class__.__name__ == "Int8Codec"
        s = backend.shapes
        codes = np.random.default_rng(4).integers(0, s.vocab_size, (3, s.num_codebooks, 40))
        together = backend.decode_audio(codes)
        np.testing.assert_array_equal(backend.decode_audio(codes[1:2]), together[1:2])
        hop = s.sample_rate // s.frame_rate
        prefix = backend.decode_audio(codes[:, :, :20])
        settled = (20 - HOLDBACK_FRAMES) * hop
        np.testing.assert_array_equal(prefix[..., :settled], together[..., :settled])
