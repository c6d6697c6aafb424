"""The `editgen` command line as a new user meets it: --help/--version, messages that
name the real problem, one `editgen: note:` line for each silent conversion, output
file modes. In process on random:tiny (built once, conftest)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat

import numpy as np
import pytest
import soundfile as sf

import editgen
import editgen.cli
import editgen.model.loading
from editgen.model.presets import PRESETS
from tests.conftest import loaded_model

SOURCE = "lofi piano with soft drums"
TARGET = "lofi guitar with soft drums"
MODEL = ["--model", "random:tiny"]
FAST = ["--seconds", "0.2", "--no-progress"]


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    tiny = loaded_model("random:tiny")
    real = editgen.model.loading.load_musicgen
    monkeypatch.setattr(editgen.model.loading, "load_musicgen",
                        lambda spec: tiny if spec == "random:tiny" else real(spec))


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = editgen.cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def notes(err: str) -> list[str]:
    return [line[len("editgen: note: "):] for line in err.splitlines() if line.startswith("editgen: note: ")]


def assert_one_error(code: int, err: str, pattern: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("editgen: note: ")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("editgen: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    y = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


# ---------------------------------------------------------------- help and version

def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        editgen.cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"editgen {editgen.__version__}"


def test_help_is_a_sentence_for_users(capsys):
    with pytest.raises(SystemExit):
        editgen.cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Generate music from a text prompt with MusicGen, and edit it by editing the prompt" in text
    for command in editgen.cli.SUBCOMMANDS:
        assert command in text
    assert "bench" not in editgen.cli.SUBCOMMANDS  # benchmarks run from a checkout: python -m benchmarks.run


@pytest.mark.parametrize("command", editgen.cli.SUBCOMMANDS)
def test_every_request_option_shows_its_help_and_default(command, capsys):
    """The --help of each command lists the declared request fields it takes with their
    help and declared default (tests/test_request_fields.py: the same declaration drives
    the server)."""
    from editgen.engine.edit.spec import EditSpec
    from editgen.engine.options import GenerationOptions
    from editgen.engine.request_fields import request_fields

    with pytest.raises(SystemExit):
        editgen.cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    takes = {"generate": [GenerationOptions], "capture": [GenerationOptions],
             "edit": [GenerationOptions, EditSpec]}.get(command, [])
    for cls in takes:
        for f in request_fields(cls):
            assert f.flag in text and " ".join(f.option.help.split()[:4]) in text, (command, f.flag)
            if f.default not in (None, {}, False) and not f.required:
                assert f"(default: {f.default})" in text, (command, f.flag)
    if command != "eval":
        for name in PRESETS:  # tiny2 included
            assert f" {name}" in text.split("--model MODEL")[-1].split("--engine")[0]


# ---------------------------------------------------------------- messages that name the problem

def test_edit_missing_audio_says_it_does_not_exist(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "edit", *MODEL, "--audio", tmp_path / "missing.wav", "--source", SOURCE,
                       "--target", TARGET, "-o", out)
    assert_one_error(code, err, r"cannot read audio .*missing\.wav: the file does not exist")
    assert "System error" not in err and not out.exists()


def test_engine_given_a_file_says_it_is_a_file(tmp_path, capsys):
    wav = tmp_path / "song.wav"
    sf.write(wav, tone(0.5, 32000), 32000)
    code, _, err = run(capsys, "generate", "--engine", wav, "--prompt", SOURCE, "-o", tmp_path / "x.wav")
    assert_one_error(code, err, r"--engine .*song\.wav is a file, not an engine directory")
    assert "does not exist" not in err


def test_npz_that_is_not_a_capture_is_named(tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    objects = tmp_path / "objects.npz"
    np.savez(objects, codes=np.array([{"a": 1}], dtype=object), maps=np.zeros(2), meta=np.array("{}"))
    for path in (other, objects):
        out = tmp_path / "out"
        code, _, err = run(capsys, "edit", *MODEL, "--capture", path, "--target", TARGET, "-o", out)
        assert_one_error(code, err, rf"{path.name} is not an editgen capture")
        assert "allow_pickle" not in err and not out.exists()


def test_weight_just_outside_range_prints_the_value_given(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run(capsys, "edit", *MODEL, "--source", SOURCE, "--target", TARGET, "--word", "guitar=2.0000001",
                       "-o", out)
    assert_one_error(code, err, r"is 2\.0000001, must be in \[-2, 2\]")


@pytest.mark.parametrize("name", ["out.mp3", "out.flac", "out"])
def test_generate_refuses_a_non_wav_output_name(name, tmp_path, capsys):
    out = tmp_path / name
    code, _, err = run(capsys, "generate", *MODEL, "--prompt", SOURCE, *FAST, "-o", out)
    assert_one_error(code, err, r"must end in \.wav")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- silent audio

@pytest.mark.parametrize("command", ["edit", "capture"])
def test_silent_audio_is_refused(command, tmp_path, capsys):
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(32000, np.float32), 32000)
    out = tmp_path / ("out" if command == "edit" else "src.npz")
    argv = [command, *MODEL, "--audio", silence, "--source", SOURCE, "--no-progress", "-o", out]
    if command == "edit":
        argv[-2:-2] = ["--target", TARGET]
    code, _, err = run(capsys, *argv)
    assert_one_error(code, err, r"silence\.wav is silent")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silence.wav"]  # nothing else written


# ---------------------------------------------------------------- notes for silent conversions

def test_stereo_44k_audio_notes_the_downmix_and_the_resampling(tmp_path, capsys):
    wav = tmp_path / "stereo.wav"
    sf.write(wav, tone(0.3, 44100, channels=2), 44100)
    code, _, err = run(capsys, "edit", *MODEL, "--audio", wav, "--source", SOURCE, "--target", TARGET,
                       "--no-progress", "-o", tmp_path / "out")
    assert code == 0, err
    said = notes(err)
    assert sum("2 channels: mixed down to mono" in n for n in said) == 1, said
    assert sum("is 44100 Hz: resampled to the model's 32000 Hz" in n for n in said) == 1, said


def test_mono_audio_at_the_model_rate_gets_no_conversion_note(tmp_path, capsys):
    wav = tmp_path / "mono.wav"
    sf.write(wav, tone(0.3, 32000), 32000)
    code, _, err = run(capsys, "capture", *MODEL, "--audio", wav, "--source", SOURCE, "--no-progress",
                       "-o", tmp_path / "src.npz")
    assert code == 0, err
    assert not [n for n in notes(err) if "mixed down" in n or "resampled" in n]


def test_region_past_the_end_is_noted(tmp_path, capsys):
    code, _, err = run(capsys, "edit", *MODEL, "--source", SOURCE, "--target", TARGET, *FAST,
                       "--region", "0.1:5", "-o", tmp_path / "out")
    assert code == 0, err
    assert [n for n in notes(err) if n.startswith("region 0.1:5 ends after the audio (0.20 s)")], err


@pytest.mark.parametrize("prompt", ["🎹🎸🥁", "钢琴 音乐"])
def test_all_unknown_prompt_is_noted(prompt, tmp_path, capsys):
    code, _, err = run(capsys, "generate", *MODEL, "--prompt", prompt, *FAST, "-o", tmp_path / "x.wav")
    assert code == 0, err
    assert [n for n in notes(err) if "does not know every word" in n and "<unk>" in n], err


def test_known_prompt_gets_no_unknown_note(tmp_path, capsys):
    code, _, err = run(capsys, "generate", *MODEL, "--prompt", SOURCE, *FAST, "-o", tmp_path / "x.wav")
    assert code == 0, err
    assert notes(err) == ["this model has random weights: timings are real, the audio is not music"]


def test_top_k_above_the_vocabulary_is_noted(tmp_path, capsys):
    code, _, err = run(capsys, "generate", *MODEL, "--prompt", SOURCE, *FAST, "--top-k", 5000,
                       "-o", tmp_path / "x.wav")
    assert code == 0, err
    assert "--top-k 5000 is above the 2048 codes of each codebook: sampling from all 2048" in notes(err)


# ---------------------------------------------------------------- one rule for --seconds

@pytest.mark.parametrize("seconds", ["0.01", "0.07", "0.079"])
def test_seconds_below_the_minimum_are_refused(seconds, tmp_path, capsys):
    out = tmp_path / "x.wav"
    code, _, err = run(capsys, "generate", *MODEL, "--prompt", SOURCE, "--seconds", seconds, "--no-progress",
                       "-o", out)
    assert_one_error(code, err, r"ask for at least 0\.08 s")
    assert not out.exists()


def test_seconds_round_to_the_nearest_frame(tiny_backend):
    shapes = tiny_backend.shapes
    assert editgen.GenerationOptions(seconds=0.08).frames(shapes) == 4
    assert editgen.GenerationOptions(seconds=0.089).frames(shapes) == 4
    assert editgen.GenerationOptions(seconds=0.091).frames(shapes) == 5
    assert editgen.GenerationOptions(seconds=40.9).frames(shapes) == shapes.max_frames


# ---------------------------------------------------------------- output file modes

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_outputs_respect_the_umask(mask, tmp_path, capsys):
    wav, npz = tmp_path / "x.wav", tmp_path / "src.npz"
    with umask(mask):
        assert run(capsys, "generate", *MODEL, "--prompt", SOURCE, *FAST, "-o", wav)[0] == 0
        assert run(capsys, "capture", *MODEL, "--source", SOURCE, *FAST, "-o", npz)[0] == 0
    for path in (wav, npz):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, (path, oct(path.stat().st_mode))


# ---------------------------------------------------------------- optional extras missing

def test_without_matplotlib_and_tqdm_edit_skips_the_png_with_notes(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "tqdm", "tqdm.auto"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # import raises ImportError
    out = tmp_path / "out"
    code, printed, err = run(capsys, "edit", *MODEL, "--source", SOURCE, "--target", TARGET, "--seconds", "0.2",
                             "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["edit.json", "edited.wav", "source.wav"]
    said = notes(err)
    assert "no attention.png: matplotlib is not installed (pip install 'editgen[cli]')" in said
    assert "no progress bar: tqdm is not installed (pip install 'editgen[cli]')" in said
    assert "attention.png" not in printed
    assert json.loads((out / "edit.json").read_text())["frames"] == 10


def test_core_imports_without_the_optional_extras():
    """`import editgen` and the CLI's parser need only the core dependencies."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\n"
            "for m in ('onnxruntime', 'tqdm', 'matplotlib', 'torch', 'transformers', 'librosa'):\n"
            "    sys.modules[m] = None  # importing it raises ImportError\n"
            "import editgen, editgen.cli\n"
            "editgen.cli.build_parser()\n"
            "print(editgen.__version__)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == editgen.__version__
