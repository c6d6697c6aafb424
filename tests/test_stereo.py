"""Stereo MusicGen (random:tiny-stereo: 8 codebooks, left/right interleaved, the mono
EnCodec per channel) through the engine and the CLI on a checkpoint directory, and the
one-line refusal of MusicGen-Melody and other architectures.

Parity with transformers (logits, greedy codes, decoded and encoded audio) is in
tests/test_parity.py; ORT against torch on the stereo export in tests/test_onnx.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

import editgen.cli
from editgen.engine.edit import EditSpec
from editgen.engine.jobs import Region, capture_source, edit
from editgen.engine.options import GenerationOptions
from editgen.errors import CheckpointError, InvalidRequestError
from tests.conftest import loaded_model, torch_backend

STEREO = "random:tiny-stereo"
SRC = "lofi piano with warm drums"
TGT = "lofi marimba with warm drums"
# As tests/test_editing.py: sampling, guidance 3, 8 s (a batch-dependent kernel needs a long clip to show).
OPTS = GenerationOptions(seconds=8.0, seed=3)
LEFT, RIGHT = slice(0, None, 2), slice(1, None, 2)  # codebooks of each channel


@pytest.fixture(scope="module")
def stereo():
    return torch_backend(STEREO)


def run(*argv) -> int:
    return editgen.cli.main([str(a) for a in argv])


def one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("editgen: error: "), err
    return err[0]


# ---------------------------------------------------------------- engine


def test_shapes_and_delay_of_the_stereo_preset(stereo):
    s = stereo.shapes
    assert (s.num_codebooks, s.audio_channels, s.channel_codebooks) == (8, 2, 4)
    assert s.steps_for_frames(100) == 103 and s.max_frames == 2045  # the delay spans a channel's 4


@pytest.mark.parametrize("op", ["replace", "refine"])
def test_identity_edit_reproduces_source_stereo(stereo, op):
    r = edit(stereo, [EditSpec(source=SRC, target=SRC, op=op)], OPTS, progress=False)
    assert r.source_codes.shape == (8, 400)
    np.testing.assert_array_equal(r.edited_codes[0], r.source_codes)
    np.testing.assert_array_equal(r.mean_maps[:, 1], r.mean_maps[:, 0])


def test_region_edit_and_teacher_forcing_cover_both_channels(stereo):
    """Outside the region every codebook of both channels copies the source; inside, each
    changes. A teacher-forced source follows the given codes in all 8 codebooks."""
    opts = GenerationOptions(seconds=2.0, seed=3)
    region = Region(0.6, 1.4)
    r = edit(stereo, [EditSpec(source=SRC, target=TGT)], opts, region=region, progress=False)
    inside = region.frame_mask(r.source_codes.shape[1], 50)
    np.testing.assert_array_equal(r.edited_codes[0][:, ~inside], r.source_codes[:, ~inside])
    assert ((r.edited_codes[0][:, inside] != r.source_codes[:, inside]).mean(axis=1) > 0.5).all()

    codes = np.random.default_rng(0).integers(0, 2048, size=(8, 30))
    forced = edit(stereo, [EditSpec(source=SRC, target=TGT)], opts, audio_codes=codes, progress=False)
    np.testing.assert_array_equal(forced.source_codes, codes)
    assert forced.edited_codes.shape == (1, 8, 30)


def test_capture_records_stereo_shapes(stereo, tmp_path):
    cap = capture_source(stereo, SRC, GenerationOptions(seconds=0.5, seed=1), progress=False)
    cap.save(tmp_path / "src.npz")
    back = type(cap).load(tmp_path / "src.npz")
    assert back.shapes == stereo.shapes and back.codes.shape == (8, 25)
    with pytest.raises(InvalidRequestError, match="capture was made with another model"):
        back.check_compatible(torch_backend("random:tiny"), [EditSpec(source=SRC, target=TGT)])


def test_codec_channels_are_independent(stereo):
    """Codebooks 0, 2, 4, 6 decode the left channel, 1, 3, 5, 7 the right; encoding a
    stereo clip interleaves its channels' codes the same way."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(1, 8, 10))
    other = codes.copy()
    other[:, RIGHT] = rng.integers(0, 2048, size=(1, 4, 10))
    wav, wav_other = stereo.decode_audio(codes), stereo.decode_audio(other)
    assert wav.shape == (1, 2, 10 * 640)
    np.testing.assert_array_equal(wav_other[:, 0], wav[:, 0])  # left untouched
    assert np.abs(wav_other[:, 1] - wav[:, 1]).max() > 1e-3
    both_left = stereo.encode_audio(np.stack([wav[0, 0], wav[0, 0]]))
    assert both_left.shape == (8, 10)
    np.testing.assert_array_equal(both_left[LEFT], both_left[RIGHT])
    np.testing.assert_array_equal(stereo.encode_audio(wav[0])[LEFT], both_left[LEFT])


# ---------------------------------------------------------------- CLI on a checkpoint directory


@pytest.fixture(scope="module")
def stereo_dir(tmp_path_factory):
    """A checkpoint directory in the Hugging Face layout shaped like musicgen-stereo-small
    (decoder: 8 codebooks, audio_channels 2; EnCodec mono, 4 codebooks), tiny and random:
    save_pretrained plus a tokenizer.json, as a user's download looks."""
    loaded = loaded_model(STEREO)
    path = tmp_path_factory.mktemp("ckpt") / "musicgen-stereo-tiny"
    loaded.model.save_pretrained(path)
    (path / "tokenizer.json").write_text(loaded.tokenizer_json)
    config = json.loads((path / "config.json").read_text())
    assert config["decoder"]["audio_channels"] == 2 and config["decoder"]["num_codebooks"] == 8
    return path


def read_stereo(path, distinct=True):
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # [samples, channels]
    assert rate == 32000 and data.shape[1] == 2, data.shape
    if distinct:  # sampled codes: two channels, not one copied
        assert np.abs(data[:, 0] - data[:, 1]).max() > 1e-3
    return data


def test_cli_generate_edit_export_on_a_stereo_checkpoint_dir(stereo_dir, tmp_path, capsys, monkeypatch):
    """generate, edit (paired and from a stereo WAV) and export on the directory, then
    generate and edit with the exported engine: every WAV has 2 channels."""
    from editgen.engine.backends.torch_backend import TorchBackend

    fast = ["--seconds", "0.5", "--no-progress"]
    gen = tmp_path / "gen.wav"
    assert run("generate", "--model", stereo_dir, "--prompt", SRC, *fast, "-o", gen) == 0
    assert read_stereo(gen).shape == (16000, 2)

    # --audio: the stereo file's two channels reach the encoder as they are (not mixed).
    # (The random tiny EnCodec quantizes nearly every input to the same codes, so the
    # codes alone could not tell a mixdown apart.)
    encoded = []
    real_encode = TorchBackend.encode_audio
    monkeypatch.setattr(TorchBackend, "encode_audio", lambda self, wav: encoded.append(wav) or real_encode(self, wav))
    out = tmp_path / "edit_audio"
    assert run("edit", "--model", stereo_dir, "--audio", gen, "--source", SRC, "--target", TGT,
               "--no-progress", "-o", out) == 0
    assert "mixed down" not in capsys.readouterr().err
    data, _ = sf.read(gen, dtype="float32")  # [samples, 2]
    np.testing.assert_array_equal(encoded[0], data.T)
    meta = json.loads((out / "edit.json").read_text())
    assert meta["audio_channels"] == 2 and meta["mode"] == "audio"
    np.testing.assert_array_equal(np.array(meta["source_codes"]), real_encode(torch_backend(STEREO), data.T))
    assert read_stereo(out / "source.wav", distinct=False).shape == (16000, 2)
    assert read_stereo(out / "edited.wav").shape == (16000, 2)

    engine = tmp_path / "engine"
    assert run("export", "--model", stereo_dir, "-o", engine) == 0
    assert json.loads((engine / "manifest.json").read_text())["shapes"]["audio_channels"] == 2
    eng_wav = tmp_path / "engine.wav"
    assert run("generate", "--engine", engine, "--prompt", SRC, *fast, "-o", eng_wav) == 0
    read_stereo(eng_wav)
    out = tmp_path / "edit_engine"
    assert run("edit", "--engine", engine, "--source", SRC, "--target", TGT, *fast, "-o", out) == 0
    for name in ("source.wav", "edited.wav"):
        read_stereo(out / name)


def test_mono_audio_plays_on_both_channels_of_a_stereo_model(stereo, tmp_path, capsys):
    from editgen.cli.edit import audio_codes
    from editgen.engine.audio import read_clip

    wav = stereo.decode_audio(np.random.default_rng(1).integers(0, 2048, size=(1, 8, 20)))[0, 0]
    sf.write(tmp_path / "mono.wav", wav, 32000)
    codes = audio_codes(stereo, read_clip(tmp_path / "mono.wav"))
    assert "is mono: the same audio on both channels" in capsys.readouterr().err
    assert codes.shape == (8, 20)
    np.testing.assert_array_equal(codes[LEFT], codes[RIGHT])


# ---------------------------------------------------------------- other checkpoints: one line


def _melody_dir(path):
    """A random MusicGen-Melody checkpoint in the Hugging Face layout (tiny)."""
    from transformers import (
        EncodecConfig,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    from editgen.model.presets import _ENCODEC_TINY, _T5_TINY

    decoder = MusicgenMelodyDecoderConfig(vocab_size=2048, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                                          hidden_size=16, num_codebooks=4, pad_token_id=2048, bos_token_id=2048)
    config = MusicgenMelodyConfig(text_encoder=T5Config(**_T5_TINY).to_dict(),
                                  audio_encoder=EncodecConfig(**_ENCODEC_TINY).to_dict(), decoder=decoder.to_dict())
    MusicgenMelodyForConditionalGeneration(config).save_pretrained(path)
    (path / "tokenizer.json").write_text(loaded_model("random:tiny").tokenizer_json)
    return path


@pytest.mark.parametrize("command", ["generate", "export"])
def test_melody_checkpoint_is_refused_in_one_line(command, tmp_path, capsys):
    ckpt = _melody_dir(tmp_path / "musicgen-melody")
    out = tmp_path / ("out.wav" if command == "generate" else "engine")
    argv = ["--prompt", SRC, "--no-progress"] if command == "generate" else []
    assert run(command, "--model", ckpt, *argv, "-o", out) == 2
    line = one_error(capsys)
    assert "is a MusicGen-Melody checkpoint, which conditions by a prefix, not by cross-attention" in line
    assert "model_type 'musicgen', mono or stereo" in line and "musicgen-stereo-small" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["musicgen-melody"]  # no output, partial or not


def test_unknown_architecture_is_refused_in_one_line(tmp_path, capsys):
    ckpt = tmp_path / "bert"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert run("generate", "--model", ckpt, "--prompt", SRC, "-o", tmp_path / "out.wav") == 2
    line = one_error(capsys)
    assert "is not a MusicGen checkpoint (model_type 'bert', BertModel): editgen runs MusicGen" in line


def test_melody_hub_id_is_refused_before_any_weights(monkeypatch, tmp_path):
    """A hub id is judged by its config.json, fetched first: no weights are downloaded."""
    import huggingface_hub

    import editgen.model.loading as loading

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "musicgen_melody"}))
    fetched = []

    def download(repo_id, filename, **kwargs):
        fetched.append(filename)
        return str(config)

    monkeypatch.setattr(loading, "hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(CheckpointError, match=r"^facebook/musicgen-melody is a MusicGen-Melody checkpoint"):
        loading.load_musicgen("facebook/musicgen-melody")
    assert fetched == ["config.json"]


def test_bad_audio_channels_in_a_manifest_is_one_line(tmp_path):
    """Shapes read from files are checked: a manifest claiming 3 channels is an
    ExportDirError naming the file, not an assert."""
    from editgen.engine.config import ModelShapes
    from editgen.engine.manifest import FORMAT_VERSION, load_manifest
    from editgen.errors import ExportDirError
    from editgen.version import __version__

    shapes = dict(num_layers=1, hidden_size=8, num_heads=1, num_codebooks=8, audio_channels=3)
    with pytest.raises(ValueError, match="audio_channels 3 with 8 codebooks"):
        ModelShapes(**shapes)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "editgen_version": __version__, "shapes": shapes,
         "graphs": {}, "tokenizer": "tokenizer.json"}))
    with pytest.raises(ExportDirError, match=r"manifest\.json is incomplete or malformed \(ValueError: audio_channels 3"):
        load_manifest(tmp_path)
