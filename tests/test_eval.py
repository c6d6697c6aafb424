"""`editgen eval`: metrics on synthetic signals whose answers are known, the CLAP loading
path with a random-init tiny CLAP built locally, the report maths and the CLI contract
(table + JSON, exit code 2 with one line for user errors)."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest

pytest.importorskip("librosa")
pytest.importorskip("mir_eval")
import librosa  # noqa: E402
import soundfile as sf  # noqa: E402

import editgen.cli  # noqa: E402
from editgen.cli import eval as cli_eval  # noqa: E402
from editgen.eval.scoring import read_pairs_csv  # noqa: E402
from editgen.errors import AudioError, CheckpointError, InvalidRequestError  # noqa: E402
from editgen.eval import Pair, evaluate_pair, metrics, report  # noqa: E402
from editgen.eval.audio_io import load_audio  # noqa: E402

SR = 22050
NOTE_S = 0.5
MELODY = [60, 62, 64, 65, 67, 69, 71, 72]  # C4 D4 E4 F4 G4 A4 B4 C5: 8 notes, 4 s


# ---------------------------------------------------------------- signals

def tones(midis, note_s=NOTE_S, sr=SR):
    """Sine notes back to back; 5 ms fades so note changes do not click. -> float32 [n]"""
    n = int(note_s * sr)
    ramp = np.minimum(1.0, np.minimum(np.arange(n), n - 1 - np.arange(n)) / (0.005 * sr))
    t = np.arange(n) / sr
    notes = [0.5 * np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) * ramp for m in midis]
    return np.concatenate(notes).astype(np.float32)


def clicks(offset_s=0.0, seconds=8.0, period_s=0.5, sr=SR):
    """A click every period_s (120 BPM) starting at offset_s. -> float32 [n]"""
    times = np.arange(offset_s, seconds, period_s)
    return librosa.clicks(times=times, sr=sr, length=int(seconds * sr)).astype(np.float32)


def music(sr=SR):
    """Melody + click track (8 s): every metric has something to measure."""
    melody = np.tile(tones(MELODY, sr=sr), 2)
    return (0.6 * melody + 0.4 * clicks(sr=sr)[: len(melody)]).astype(np.float32)


def write(path, samples, sr=SR):
    sf.write(str(path), samples, sr)
    return path


def run_main(monkeypatch, argv):
    """editgen.cli.main with only `eval` registered, so the test does not depend on the
    other subcommand modules; the dispatcher code path (exit 2 on EditGenError) is real."""
    monkeypatch.setattr(editgen.cli, "SUBCOMMANDS", ("eval",))
    return editgen.cli.main(["eval", *map(str, argv)])


# ---------------------------------------------------------------- metrics

def test_identical_signals_score_one():
    y = music()
    assert metrics.melody_accuracy(y, y, SR) == 1.0
    assert metrics.dynamics_correlation(y, y, SR) == 1.0
    assert metrics.rhythm_f1(y, y, SR) == 1.0


def test_gain_change_keeps_melody_and_dynamics():
    # -6 dB everywhere shifts the loudness curve by a constant: Pearson r stays 1.
    y = music()
    assert metrics.melody_accuracy(y, 0.5 * y, SR) == 1.0
    assert metrics.dynamics_correlation(y, 0.5 * y, SR) == pytest.approx(1.0, abs=1e-6)


def test_transposed_second_half_gives_half_melody_accuracy():
    source = tones(MELODY)
    for semitones in (2, 3, 5):  # each changes the pitch class of every transposed note
        edited = tones(MELODY[:4] + [m + semitones for m in MELODY[4:]])
        # Expected exactly 0.5: the second half (2 s of 4 s) has other pitch classes.
        # Tolerance 0.02 = 3 of the 173 frames (hop 512 at 22.05 kHz): frames whose
        # 2048-sample window straddles the 2 s boundary mix both halves and may go
        # either way. Measured: 87/173 = 0.503.
        assert metrics.melody_accuracy(source, edited, SR) == pytest.approx(0.5, abs=0.02)


def test_octave_transposition_keeps_pitch_class():
    source = tones(MELODY)
    edited = tones(MELODY[:4] + [m + 12 for m in MELODY[4:]])
    assert metrics.melody_accuracy(source, edited, SR) == pytest.approx(1.0, abs=0.02)


def test_click_track_shifted_200ms_gives_rhythm_f1_zero():
    # 200 ms off a 500 ms grid is 200/300 ms from every beat, far outside the 70 ms window.
    assert metrics.rhythm_f1(clicks(0.0), clicks(0.2), SR) == 0.0
    assert metrics.rhythm_f1(clicks(0.0), clicks(0.0), SR) == 1.0


def test_reversed_crescendo_anticorrelates():
    # Loudness linear in dB (-40 -> 0 dB) against its mirror: r = -1 up to edge frames.
    t = np.linspace(0.0, 1.0, 4 * SR)
    noise = np.random.default_rng(0).standard_normal(t.size)
    up = (noise * 10 ** (-40 * (1 - t) / 20) * 0.3).astype(np.float32)
    down = (noise * 10 ** (-40 * t / 20) * 0.3).astype(np.float32)
    assert metrics.dynamics_correlation(up, down, SR) < -0.99


def test_loudness_floor_and_constant_curves():
    assert np.all(metrics.loudness_db(np.zeros(4096, np.float32), SR) == metrics.DB_FLOOR)
    flat = np.full(10, -20.0)
    assert metrics.loudness_correlation(flat, flat) == 1.0  # identical, even if constant
    assert math.isnan(metrics.loudness_correlation(flat, np.linspace(-30, -10, 10)))  # undefined


def test_short_audio_is_an_error_beatless_audio_is_undefined():
    with pytest.raises(AudioError, match=r"source is 0\.50 s long: rhythm F1 needs at least 1\.0 s"):
        metrics.rhythm_f1(clicks(seconds=0.5), clicks(seconds=0.5), SR)
    steady = tones([69], note_s=3.0)  # a steady sine has no onsets, hence no beats
    assert math.isnan(metrics.rhythm_f1(steady, steady, SR))


def test_beatless_pair_keeps_melody_and_dynamics(tmp_path):
    steady = tones([69], note_s=3.0)
    for name in ("a.wav", "b.wav"):
        sf.write(tmp_path / name, steady, SR)
    result = evaluate_pair(Pair(source=tmp_path / "a.wav", edited=tmp_path / "b.wav"))
    assert result.melody_accuracy == 1.0 and result.dynamics_correlation == 1.0
    assert math.isnan(result.rhythm_f1) and any("no beats" in n for n in result.notes)


# ---------------------------------------------------------------- audio files

def test_load_audio_mixes_to_mono_float32(tmp_path):
    stereo = np.stack([music(), np.zeros(len(music()), np.float32)], axis=1)
    audio = load_audio(write(tmp_path / "s.wav", stereo))
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.sample_rate == SR and audio.seconds == pytest.approx(8.0)
    np.testing.assert_allclose(audio.samples, music() / 2, atol=1e-4)  # 16-bit wav


def test_stereo_pair_is_scored_on_the_mono_mix_with_a_note(tmp_path):
    """Stereo files (stereo MusicGen's output) score as their mono mix: a stereo pair with
    the same mix as a mono pair gets the same numbers, and each stereo file a note."""
    steady = tones([69], note_s=3.0)
    stereo = np.stack([steady, 0.5 * steady], axis=1)  # mix: 0.75 * steady
    write(tmp_path / "s.wav", stereo)
    write(tmp_path / "m.wav", 0.75 * steady)
    both = evaluate_pair(Pair(source=tmp_path / "s.wav", edited=tmp_path / "s.wav"))
    mixed = evaluate_pair(Pair(source=tmp_path / "s.wav", edited=tmp_path / "m.wav"))
    assert both.melody_accuracy == mixed.melody_accuracy == 1.0
    assert both.dynamics_correlation == pytest.approx(mixed.dynamics_correlation, abs=1e-6)
    stereo_notes = [n for n in mixed.notes if "channels" in n]
    assert stereo_notes == [f"{tmp_path / 's.wav'} has 2 channels: scored on the mono mix (mean of the channels)"]


def test_load_audio_errors(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="cannot read audio .*garbage.wav"):
        load_audio(garbage)
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    quiet = write(tmp_path / "quiet.wav", np.full(SR, 1e-4, np.float32))  # -80 dBFS
    with pytest.raises(AudioError, match="quiet.wav is silent"):
        load_audio(quiet)


def test_length_mismatch_compares_shorter_span(tmp_path):
    y = music()
    src = write(tmp_path / "src.wav", y)
    edit = write(tmp_path / "edit.wav", y[: 6 * SR])
    result = evaluate_pair(Pair(source=src, edited=edit))
    assert (result.source_seconds, result.edited_seconds, result.compared_seconds) == (8.0, 6.0, 6.0)
    assert result.melody_accuracy == 1.0 and result.rhythm_f1 == 1.0
    assert any("lengths differ" in n for n in result.notes)


# ---------------------------------------------------------------- report

def test_summary_uses_student_t():
    s = report.summarize([1.0, 2.0, 3.0, None, float("nan")])  # None/NaN are skipped
    # t(0.975, df=2) = 4.302653; sd = 1; half-width = 4.302653 / sqrt(3)
    assert (s.n, s.mean) == (3, 2.0)
    assert s.ci95 == pytest.approx(2.484138, abs=1e-6)
    assert math.isnan(report.summarize([0.7]).ci95) and report.summarize([None]) is None


# ---------------------------------------------------------------- CLI

def test_cli_single_pair_without_clap(tmp_path, monkeypatch, capsys):
    y = music()
    src, edit = write(tmp_path / "a.wav", y), write(tmp_path / "b.wav", y)
    out = tmp_path / "eval.json"
    argv = ["--source", src, "--edited", edit, "--target-prompt", "jazz", "-o", out]
    assert run_main(monkeypatch, argv) == 0
    captured = capsys.readouterr()
    assert "melody acc" in captured.out and "CLAP" not in captured.out  # columns omitted
    assert captured.err.splitlines()[0].startswith("editgen: note: CLAP columns omitted")
    doc = json.loads(out.read_text())
    pair = doc["pairs"][0]
    assert (pair["melody_accuracy"], pair["dynamics_correlation"], pair["rhythm_f1"]) == (1.0, 1.0, 1.0)
    assert pair["clap_text"] is None and pair["clap_audio"] is None  # never faked
    assert doc["settings"]["hop_length"] == 512 and "summary" not in doc


def test_cli_batch_groups_by_label(tmp_path, monkeypatch, capsys):
    beat = 0.4 * clicks(seconds=4.0)  # tones alone have no beats to track
    source = 0.6 * tones(MELODY) + beat
    write(tmp_path / "src.wav", source)
    write(tmp_path / "same.wav", source)
    write(tmp_path / "half.wav", 0.6 * tones(MELODY[:4] + [m + 2 for m in MELODY[4:]]) + beat)
    (tmp_path / "pairs.csv").write_text(
        "source,edited,label\nsrc.wav,same.wav,A\nsrc.wav,half.wav,A\nsrc.wav,same.wav,B\n"
    )
    out = tmp_path / "batch.json"
    assert run_main(monkeypatch, ["--batch", tmp_path / "pairs.csv", "-o", out]) == 0
    doc = json.loads(out.read_text())
    a, b = doc["summary"]["A"], doc["summary"]["B"]
    half = doc["pairs"][1]["melody_accuracy"]
    assert half == pytest.approx(0.5, abs=0.02)
    assert a["melody_accuracy"]["n"] == 2 and a["melody_accuracy"]["mean"] == pytest.approx((1 + half) / 2)
    # n = 2: half-width = t(0.975, 1) * sd / sqrt(2) = 12.7062 * |1 - half| / 2
    half_width = 12.706205 * abs(1 - half) / 2
    mean = a["melody_accuracy"]["mean"]
    assert a["melody_accuracy"]["ci95_high"] == pytest.approx(mean + half_width, rel=1e-5)
    assert b["melody_accuracy"] == {"n": 1, "mean": 1.0, "ci95_low": None, "ci95_high": None}
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split()[:2] == ["label", "pairs"]


def test_cli_parser_from_register():
    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--source", "a.wav", "--edited", "b.wav"])
    assert args.func is cli_eval.run and str(args.output) == "eval.json"


def test_batch_csv_validation(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("source,edit\na.wav,b.wav\n")
    with pytest.raises(InvalidRequestError, match="expected source,edited"):
        read_pairs_csv(csv_path)
    csv_path.write_text("source,edited\n")
    with pytest.raises(InvalidRequestError, match="no pairs"):
        read_pairs_csv(csv_path)
    csv_path.write_text('source,edited,target_prompt\na.wav,/abs/b.wav,"jazz, with horns"\n')
    (pair,) = read_pairs_csv(csv_path)
    assert pair.source == tmp_path / "a.wav" and str(pair.edited) == "/abs/b.wav"
    assert pair.target_prompt == "jazz, with horns" and pair.label is None


@pytest.mark.parametrize(
    "case, message",
    [
        ("unreadable", "cannot read audio"),
        ("missing", "does not exist"),
        ("silent", "is silent"),
        ("rates", "source .* is 22050 Hz, edited .* is 16000 Hz; resample"),
        ("no_args", "give both --source and --edited"),
        ("clap_missing", "CLAP checkpoint directory .* does not exist"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, case, message):
    good = write(tmp_path / "good.wav", music())
    bad = tmp_path / "bad.wav"
    out = tmp_path / "eval.json"
    argv = ["--source", good, "--edited", bad, "-o", out]
    if case == "unreadable":
        bad.write_bytes(b"RIFF....garbage")
    elif case == "silent":
        write(bad, np.zeros(4 * SR, np.float32))
    elif case == "rates":
        write(bad, librosa.resample(music(), orig_sr=SR, target_sr=16000), sr=16000)
    elif case == "no_args":
        argv = ["--source", good, "-o", out]
    elif case == "clap_missing":
        argv = ["--source", good, "--edited", good, "--clap", tmp_path / "nope", "-o", out]
    assert run_main(monkeypatch, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("editgen: error: ")
    assert re.search(message, err[0]), err[0]
    assert not out.exists()  # no partial output


# ---------------------------------------------------------------- CLAP

def test_clap_scorer_end_to_end(tiny_clap_dir):
    from editgen.eval.clap import ClapScorer

    scorer = ClapScorer(tiny_clap_dir)
    assert scorer.sample_rate == 48_000
    y = music()
    assert scorer.audio_audio(y, y, SR) == pytest.approx(1.0, abs=1e-5)
    # The text score is the cosine of two unit embeddings, computed the same way each time,
    # and it depends on the text.
    text_emb, audio_emb = scorer.text_embedding("a piano tune"), scorer.audio_embedding(y, SR)
    assert np.linalg.norm(text_emb) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(audio_emb) == pytest.approx(1.0, abs=1e-6)
    text = scorer.text_audio("a piano tune", y, SR)
    assert text == pytest.approx(float(text_emb @ audio_emb), abs=1e-6)
    assert text == scorer.text_audio("a piano tune", y, SR)  # deterministic
    assert abs(scorer.text_audio("drums", y, SR) - text) > 1e-4
    # 12 s at 48 kHz = one 10 s window + a 2 s tail, dropped (under half a window).
    long = np.tile(y, 2)[: 12 * SR]
    assert [len(w) for w in scorer._windows(scorer._resample(long, SR))] == [480_000]


def test_cli_with_clap(tiny_clap_dir, tmp_path, monkeypatch, capsys):
    y = music()
    src, edit = write(tmp_path / "a.wav", y), write(tmp_path / "b.wav", 0.5 * y)
    out = tmp_path / "eval.json"
    argv = ["--source", src, "--edited", edit, "--target-prompt", "jazz piano",
            "--clap", tiny_clap_dir, "-o", out]
    assert run_main(monkeypatch, argv) == 0
    assert "CLAP text" in capsys.readouterr().out
    pair = json.loads(out.read_text())["pairs"][0]
    from editgen.eval.clap import ClapScorer

    # The report holds the scorer's cosine for the edited file as read back (16-bit WAV).
    scorer, edited = ClapScorer(tiny_clap_dir), load_audio(edit).samples
    assert pair["clap_text"] == pytest.approx(scorer.text_audio("jazz piano", edited, SR), abs=1e-6)
    assert pair["clap_audio"] == pytest.approx(1.0, abs=0.05)  # same audio at -6 dB


@pytest.mark.parametrize("broken", ["no_config", "not_clap", "no_weights"])
def test_broken_clap_dir_is_a_checkpoint_error(tiny_clap_dir, tmp_path, broken):
    import shutil

    from editgen.eval.clap import ClapScorer

    directory = tmp_path / "clap"
    shutil.copytree(tiny_clap_dir, directory)
    if broken == "no_config":
        (directory / "config.json").unlink()
        match = "has no config.json"
    elif broken == "not_clap":
        (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
        match = "holds a 'bert' model, not CLAP"
    else:
        (directory / "model.safetensors").unlink()
        match = "cannot load CLAP checkpoint"
    with pytest.raises(CheckpointError, match=match) as info:
        ClapScorer(directory)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- defects a new user hit

def test_short_clips_report_melody_and_dynamics_rhythm_not_available(tmp_path, monkeypatch, capsys):
    y = music()[: SR // 2]  # 0.5 s: too short to track beats
    src, edit = write(tmp_path / "a.wav", y), write(tmp_path / "b.wav", y)
    out = tmp_path / "eval.json"
    assert run_main(monkeypatch, ["--source", src, "--edited", edit, "-o", out]) == 0
    pair = json.loads(out.read_text())["pairs"][0]
    assert (pair["melody_accuracy"], pair["dynamics_correlation"], pair["rhythm_f1"]) == (1.0, 1.0, None)
    reason = "rhythm F1 not available: the compared span is 0.50 s, beat tracking needs at least 1.0 s"
    assert reason in pair["notes"]
    assert f"editgen: note: {reason}" in capsys.readouterr().err.splitlines()


def test_batch_checks_every_row_before_scoring(tmp_path, monkeypatch, capsys):
    write(tmp_path / "src.wav", music())
    (tmp_path / "pairs.csv").write_text("source,edited\nsrc.wav,src.wav\nsrc.wav,missing.wav\n")
    import editgen.eval

    scored, real = [], editgen.eval.evaluate_pair
    monkeypatch.setattr(editgen.eval, "evaluate_pair", lambda pair, clap=None: scored.append(pair) or real(pair, clap))
    out = tmp_path / "batch.json"
    assert run_main(monkeypatch, ["--batch", tmp_path / "pairs.csv", "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"editgen: error: pair 2: cannot read audio .*missing\.wav: the file does "
                                      r"not exist", err[0]), err
    assert scored == [] and not out.exists()  # row 1 was not scored first


def test_librosa_tuning_warning_becomes_one_note_per_pair(tmp_path, monkeypatch, capsys):
    import warnings

    low = (0.5 * np.sin(2 * np.pi * 30 * np.arange(2 * SR) / SR)).astype(np.float32)  # no pitch to tune on
    write(tmp_path / "low.wav", low)
    (tmp_path / "pairs.csv").write_text("source,edited\nlow.wav,low.wav\nlow.wav,low.wav\n")
    out = tmp_path / "batch.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning escaping to the user would fail here
        assert run_main(monkeypatch, ["--batch", tmp_path / "pairs.csv", "-o", out]) == 0
    err = capsys.readouterr().err
    assert "site-packages" not in err and "Warning" not in err
    tuning = [line for line in err.splitlines() if "tuning could not be estimated" in line]
    assert len(tuning) == 2 and all(line.startswith("editgen: note: pair ") for line in tuning), err


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_eval_output_respects_the_umask(mask, tmp_path, monkeypatch):
    import os
    import stat

    y = music()[: 2 * SR]
    src, edit = write(tmp_path / "a.wav", y), write(tmp_path / "b.wav", y)
    out = tmp_path / "eval.json"
    old = os.umask(mask)
    try:
        assert run_main(monkeypatch, ["--source", src, "--edited", edit, "-o", out]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask
