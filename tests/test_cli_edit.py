"""`editgen edit` / `editgen capture` (and `generate` bad input) through editgen.cli.main,
in process, on random:tiny. The model is built once (conftest) and reused by every call."""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
import soundfile as sf

import editgen.cli
import editgen.model.loading
from tests.conftest import loaded_model

SOURCE = "lofi piano with soft drums"
TARGET = "lofi guitar with soft drums"
FAST = ["--seconds", "0.4", "--no-progress"]
MODEL = ["--model", "random:tiny"]


@pytest.fixture(autouse=True)
def cli(monkeypatch):
    """Only the subcommands whose modules exist; random:tiny comes from the session cache."""
    present = tuple(n for n in editgen.cli.SUBCOMMANDS if importlib.util.find_spec(f"editgen.cli.{n}"))
    monkeypatch.setattr(editgen.cli, "SUBCOMMANDS", present)
    tiny = loaded_model("random:tiny")  # built (once) before load_musicgen is patched
    real = editgen.model.loading.load_musicgen
    monkeypatch.setattr(editgen.model.loading, "load_musicgen",
                        lambda spec: tiny if spec == "random:tiny" else real(spec))


def run(*argv) -> int:
    return editgen.cli.main([str(a) for a in argv])


def edit_args(out, *extra, source=SOURCE, target=TARGET):
    return ["edit", *MODEL, "--source", source, "--target", target, *FAST, "-o", out, *extra]


def read_outputs(out):
    meta = json.loads((out / "edit.json").read_text())
    edited, rate = sf.read(out / "edited.wav", dtype="float32")
    source, _ = sf.read(out / "source.wav", dtype="float32")
    return meta, source, edited, rate


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def made_wav(tmp_path_factory):
    """A WAV written by `editgen generate` (0.6 s)."""
    path = tmp_path_factory.mktemp("gen") / "gen.wav"
    with pytest.MonkeyPatch.context() as mp:
        present = tuple(n for n in editgen.cli.SUBCOMMANDS if importlib.util.find_spec(f"editgen.cli.{n}"))
        mp.setattr(editgen.cli, "SUBCOMMANDS", present)
        tiny = loaded_model("random:tiny")
        mp.setattr(editgen.model.loading, "load_musicgen", lambda spec: tiny)
        assert run("generate", *MODEL, "--prompt", SOURCE, "--seconds", "0.6", "--no-progress", "-o", path) == 0
    return path


# ---------------------------------------------------------------- edit: good paths

def test_edit_writes_four_files(tmp_path):
    out = tmp_path / "out"
    assert run(*edit_args(out, "--word", "guitar=1.5", "--window", "default=1.0", "--window", "guitar=0.4")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["attention.png", "edit.json", "edited.wav", "source.wav"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left
    meta, source, edited, rate = read_outputs(out)
    assert meta["op"] == "replace" and meta["mode"] == "paired"
    assert meta["options"]["seconds"] == 0.4 and meta["options"]["seed"] == 0
    assert meta["word_weights"] == {"guitar": 1.5}
    assert meta["windows"] == {"default": [0.0, 1.0], "guitar": [0.0, 0.4]}
    assert (meta["setting"], meta["cross_blend"], meta["self_blend"]) == ("editgen-code", "hard", "editgen")
    assert meta["mapper"] == meta["plan"]["mapper_kind"] == "editgen-code"  # the setting's
    plan = meta["plan"]
    assert plan["op"] == "replace" and plan["target"]["text"] == TARGET
    assert len(plan["mapper"]) == 64 and 1.5 in plan["weights"]
    assert rate == 32000 and len(source) == len(edited) == round(0.4 * rate)
    width, height = png_size(out / "attention.png")
    assert 600 <= width <= 2400 and 200 <= height <= 2400


def _codes(out):
    return np.array(json.loads((out / "edit.json").read_text())["edited_codes"])


def test_self_injection_through_the_cli(tmp_path):
    """b = 1 at every layer with hard cross: an identity-prompt target is the source exactly;
    b = 0 at every layer equals no self-injection."""
    full = tmp_path / "full"
    assert run(*edit_args(full, "--cross-blend", "hard", "--self-blend", "full", target=SOURCE)) == 0
    meta, source, edited, _ = read_outputs(full)
    assert meta["plan"]["self_blend"] == [1.0] * len(meta["plan"]["cross_blend"])
    np.testing.assert_array_equal(edited, source)
    np.testing.assert_array_equal(meta["edited_codes"], meta["source_codes"])
    zero, none = tmp_path / "zero", tmp_path / "none"
    longer = ["--seed", 5, "--seconds", 2]
    assert run(*edit_args(zero, "--self-blend", "constant:0", *longer)) == 0
    assert run(*edit_args(none, "--setting", "hard", "--mapper", "editgen-code", *longer)) == 0
    np.testing.assert_array_equal(_codes(zero), _codes(none))
    assert run(*edit_args(tmp_path / "code", *longer)) == 0  # editgen-code injects: another edit
    assert (_codes(tmp_path / "code") != _codes(none)).any()


def test_edit_without_guidance(tmp_path):
    assert run(*edit_args(tmp_path / "g1", "--guidance", 1)) == 0
    assert json.loads((tmp_path / "g1" / "edit.json").read_text())["options"]["guidance_scale"] == 1.0


def test_refine_and_reweight_ops(tmp_path):
    assert run(*edit_args(tmp_path / "refine", "--op", "refine", target="lofi piano with soft jazzy drums")) == 0
    assert json.loads((tmp_path / "refine" / "edit.json").read_text())["plan"]["op"] == "refine"
    assert run("edit", *MODEL, "--source", SOURCE, "--op", "reweight", "--word", "piano=-1", *FAST,
               "-o", tmp_path / "rw") == 0
    meta = json.loads((tmp_path / "rw" / "edit.json").read_text())
    assert meta["target"] == SOURCE and -1.0 in meta["plan"]["weights"]


def test_mapper_flag_and_word_parts(tmp_path):
    """--mapper overrides the setting's operators; --word and --window name parts of words."""
    assert run(*edit_args(tmp_path / "p2p", "--mapper", "p2p")) == 0
    meta = json.loads((tmp_path / "p2p" / "edit.json").read_text())
    assert (meta["setting"], meta["mapper"], meta["plan"]["mapper_kind"]) == ("editgen-code", "p2p", "p2p")
    assert meta["plan"]["alphas"][:6] == [1.0] * 6  # P2P: every real column from the source
    source = "funk-infused guitar riff"  # ▁funk - in f u s ed ▁guitar ▁r i ff </s>
    assert run("edit", *MODEL, "--source", source, "--op", "reweight", "--word", "funk=2", "--window", "infused=0.5",
               *FAST, "-o", tmp_path / "part") == 0
    plan = json.loads((tmp_path / "part" / "edit.json").read_text())["plan"]
    assert plan["weights"][:12] == [2.0] + [1.0] * 11
    assert [b[1] for b in plan["window_bounds"][:12]] == [1.0] * 2 + [0.5] * 5 + [1.0] * 5


def test_capture_then_edit_from_capture_matches_paired(tmp_path, capsys):
    cap = tmp_path / "src.npz"
    assert run("capture", *MODEL, "--source", SOURCE, "--capture-dtype", "fp32", "--seed", 3, *FAST, "-o", cap) == 0
    assert cap.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    capsys.readouterr()
    assert run("edit", *MODEL, "--capture", cap, "--target", TARGET, "--no-progress", "-o", tmp_path / "cap") == 0
    err = capsys.readouterr().err
    assert "come from the capture" in err
    assert "the source row runs again, teacher-forced on the captured codes" in err  # default: self-injection
    assert run("edit", *MODEL, "--capture", cap, "--target", TARGET, "--setting", "hard", "--no-progress",
               "-o", tmp_path / "cap_hard") == 0
    assert "runs again" not in capsys.readouterr().err  # no self-injection: the source is not run
    assert run(*edit_args(tmp_path / "paired", "--seed", 3)) == 0
    cap_meta, cap_src, cap_edit, _ = read_outputs(tmp_path / "cap")
    par_meta, par_src, par_edit, _ = read_outputs(tmp_path / "paired")
    assert cap_meta["mode"] == "captured" and cap_meta["source"] == SOURCE  # --source defaulted
    assert cap_meta["options"] == par_meta["options"]
    assert cap_meta["edited_codes"] == par_meta["edited_codes"]
    assert cap_meta["source_codes"] == par_meta["source_codes"]
    np.testing.assert_array_equal(cap_src, par_src)
    np.testing.assert_array_equal(cap_edit, par_edit)


def test_edit_real_audio_round_trip(tmp_path, made_wav, capsys):
    out = tmp_path / "audio"
    assert run("edit", *MODEL, "--audio", made_wav, "--source", SOURCE, "--target", TARGET,
               "--no-progress", "-o", out) == 0
    assert "duration comes from the audio" in capsys.readouterr().err
    meta, source, edited, rate = read_outputs(out)
    assert meta["mode"] == "audio" and meta["frames"] == 30
    assert meta["options"]["seconds"] == pytest.approx(0.6)
    assert len(source) == len(edited) == len(sf.read(made_wav)[0])
    cap = tmp_path / "audio.npz"
    assert run("capture", *MODEL, "--audio", made_wav, "--source", SOURCE, "--no-progress", "-o", cap) == 0
    assert run("edit", *MODEL, "--capture", cap, "--target", TARGET, "--no-progress", "-o", tmp_path / "c") == 0
    assert json.loads((tmp_path / "c" / "edit.json").read_text())["frames"] == 30


def test_region_edit_both_modes(tmp_path):
    out = tmp_path / "region"
    assert run(*edit_args(out, "--region", "0.1:0.3")) == 0
    meta, source, edited, rate = read_outputs(out)
    assert meta["region"] == [0.1, 0.3]
    src, edt = np.array(meta["source_codes"]), np.array(meta["edited_codes"])  # [K, frames]
    inside = (np.arange(src.shape[1]) >= 5) & (np.arange(src.shape[1]) < 15)  # 50 frames/s
    np.testing.assert_array_equal(edt[:, ~inside], src[:, ~inside])
    # Inside the region the edit changes every codebook's codes (measured: most frames).
    assert (edt[:, inside] != src[:, inside]).any(axis=1).all()
    assert (edt[:, inside] != src[:, inside]).mean() > 0.5
    cap = tmp_path / "src.npz"
    assert run("capture", *MODEL, "--source", SOURCE, *FAST, "-o", cap) == 0
    assert run("edit", *MODEL, "--capture", cap, "--target", TARGET, "--region", "0.1:0.3", "--no-progress",
               "-o", tmp_path / "capregion") == 0
    meta = json.loads((tmp_path / "capregion" / "edit.json").read_text())
    src, edt = np.array(meta["source_codes"]), np.array(meta["edited_codes"])
    np.testing.assert_array_equal(edt[:, ~inside], src[:, ~inside])


# ---------------------------------------------------------------- bad input: exit 2, one line, no output

def assert_user_error(capsys, argv, out, expect: str):
    """Exit code 2; stderr is one `editgen: error:` line (plus any `editgen: note:` lines
    printed before the failure, never a traceback); no output file or temporary left."""
    capsys.readouterr()
    assert run(*argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not line.startswith("editgen: note: ")]
    assert len(err) == 1 and err[0].startswith("editgen: error: "), lines
    assert expect.lower() in err[0].lower(), err[0]
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    (d / "bad.wav").write_bytes(b"RIFF not really a wav file")
    (d / "bad.npz").write_bytes(b"PK garbage")
    ckpt = d / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    (ckpt / "tokenizer.json").write_text("garbage")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    (d / "afile").write_text("x")
    return d


LONG = " ".join(["piano"] * 70)
EDIT_BAD = {
    "empty source": (dict(source=" "), [], "empty"),
    "empty target": (dict(target=""), [], "needs a target"),
    "long prompt": (dict(source=LONG, target=LONG.replace("piano", "guitar")), [], "at most 64"),
    "word not in prompt": ((), ["--word", "violin=1.5"], "not in the target"),
    "word part inside a word": ((), ["--word", "itar=1.5"], "a hyphen part or its start"),
    "word part the tokenizer does not split": ((), ["--window", "guit=0.5"], "splits as ▁guitar"),
    "window word not in prompt": ((), ["--window", "violin=0.5"], "not in the target"),
    "unequal replace": (dict(target="lofi guitar with very soft drums"), [], "replace"),
    "weight too big": ((), ["--word", "guitar=3"], "[-2, 2]"),
    "weight syntax": ((), ["--word", "guitar"], "WORD=C"),
    "window syntax": ((), ["--window", "guitar=abc"], "START:END"),
    "window form": ((), ["--window", "guitar"], "WORD=F or WORD=START:END"),
    "window order": ((), ["--window", "guitar=0.6:0.2"], "start <= end"),
    "window range": ((), ["--window", "guitar=1.5"], "[0, 1]"),
    "seconds zero": ((), ["--seconds", "0"], "seconds"),
    "seconds too long": ((), ["--seconds", "100"], "at most"),
    "bad blend": ((), ["--blend", "wobbly"], "blend"),
    "bad self blend": ((), ["--self-blend", "soft"], "self blend 'soft' is not understood"),
    "self blend per layer": ((), ["--self-blend", "0,1,0"], "one value per layer"),
    "bad self window": ((), ["--self-window", "0.9:0.1"], "self window"),
    "reweight by zero": ((), ["--reweight-mode", "editgen-code", "--word", "guitar=0"], "c = 0 is undefined"),
    "region syntax": ((), ["--region", "2-5"], "START:END"),
    "region order": ((), ["--region", "0.3:0.1"], "start < end"),
    "region after end": ((), ["--region", "5:6"], "after the audio ends"),
}


@pytest.mark.parametrize("case", list(EDIT_BAD))
def test_edit_bad_input(case, tmp_path, capsys):
    prompts, extra, expect = EDIT_BAD[case]
    out = tmp_path / "out"
    argv = edit_args(out, *extra, **(prompts or {}))
    assert_user_error(capsys, argv, out, expect)


@pytest.mark.parametrize("case", ["missing ckpt", "corrupt ckpt", "bad audio", "bad capture", "no source",
                                  "unwritable", "under a file", "audio too long"])
def test_edit_bad_files(case, tmp_path, capsys, broken_files, made_wav):
    out = tmp_path / "out"
    argv = edit_args(out)
    expect = ""
    if case == "missing ckpt":
        argv[argv.index("random:tiny")], expect = tmp_path / "nope", "not found"
    elif case == "corrupt ckpt":
        argv[argv.index("random:tiny")], expect = broken_files / "ckpt", "corrupt"
    elif case == "bad audio":
        argv, expect = argv + ["--audio", broken_files / "bad.wav"], "cannot read audio"
    elif case == "bad capture":
        argv = ["edit", *MODEL, "--capture", broken_files / "bad.npz", "--target", TARGET, "-o", out]
        expect = "bad.npz is not an editgen capture (not an .npz archive)"
    elif case == "no source":
        argv, expect = ["edit", *MODEL, "--target", TARGET, "-o", out], "--source is required"
    elif case == "unwritable":
        out = tmp_path / "missing" / "out"
        argv, expect = edit_args(out), "does not exist"
    elif case == "under a file":
        out = broken_files / "afile" / "out"
        argv, expect = edit_args(out), "cannot write"
    elif case == "audio too long":
        long_wav = tmp_path / "long.wav"
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(32000 * 42) / 32000)
        sf.write(long_wav, tone.astype(np.float32), 32000)  # 42 s > 40.9 s the model takes
        argv, expect = argv + ["--audio", long_wav], "at most"
    assert_user_error(capsys, argv, out, expect)


def test_edit_capture_source_mismatch(tmp_path, capsys):
    cap = tmp_path / "src.npz"
    assert run("capture", *MODEL, "--source", SOURCE, *FAST, "-o", cap) == 0
    out = tmp_path / "out"
    assert_user_error(capsys, ["edit", *MODEL, "--capture", cap, "--source", "jazz piano", "--target", "jazz guitar",
                               "-o", out], out, "differs from the captured")


@pytest.mark.parametrize("case", ["empty", "long", "seconds", "bad audio", "not npz", "unwritable"])
def test_capture_bad_input(case, tmp_path, capsys, broken_files):
    out = tmp_path / "src.npz"
    argv = ["capture", *MODEL, "--source", SOURCE, *FAST, "-o", out]
    expect = {"empty": "empty", "long": "at most 64", "seconds": "seconds", "bad audio": "cannot read audio",
              "not npz": ".npz", "unwritable": "does not exist"}[case]
    if case == "empty":
        argv[argv.index(SOURCE)] = ""
    elif case == "long":
        argv[argv.index(SOURCE)] = LONG
    elif case == "seconds":
        argv += ["--seconds", "-1"]
    elif case == "bad audio":
        argv += ["--audio", broken_files / "bad.wav"]
    elif case == "not npz":
        out = tmp_path / "src.txt"
        argv[-1] = out
    elif case == "unwritable":
        out = tmp_path / "missing" / "src.npz"
        argv[-1] = out
    assert_user_error(capsys, argv, out, expect)


# ---------------------------------------------------------------- generate: bad input

@pytest.mark.parametrize("case", ["empty", "seconds 0", "seconds 100", "missing ckpt", "corrupt ckpt",
                                  "unwritable"])
def test_generate_bad_input(case, tmp_path, capsys, broken_files):
    out = tmp_path / "x.wav"
    model, prompt, seconds = "random:tiny", SOURCE, "0.4"
    expect = {"empty": "empty", "seconds 0": "seconds", "seconds 100": "at most", "missing ckpt": "not found",
              "corrupt ckpt": "corrupt", "unwritable": "does not exist"}[case]
    if case == "empty":
        prompt = "  "
    elif case == "seconds 0":
        seconds = "0"
    elif case == "seconds 100":
        seconds = "100"
    elif case == "missing ckpt":
        model = tmp_path / "nope"
    elif case == "corrupt ckpt":
        model = broken_files / "ckpt"
    elif case == "unwritable":
        out = tmp_path / "nonexistent" / "x.wav"
    argv = ["generate", "--model", model, "--prompt", prompt, "--seconds", seconds, "--no-progress", "-o", out]
    assert_user_error(capsys, argv, out, expect)


def test_edit_stereo_44k_audio_is_resampled(tmp_path):
    wav = tmp_path / "stereo.wav"
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (44100 // 2, 2)).astype(np.float32)
    sf.write(wav, noise, 44100)
    out = tmp_path / "out"
    assert run("edit", *MODEL, "--audio", wav, "--source", SOURCE, "--target", TARGET, "--no-progress", "-o", out) == 0
    assert json.loads((out / "edit.json").read_text())["frames"] == 25


def test_attention_panels_project_source_onto_target_tokens():
    from types import SimpleNamespace

    from editgen.cli.plots import attention_panels

    steps, T = 3, 6
    maps = np.zeros((steps, 2, T), np.float32)
    maps[:, 0, :3] = [0.5, 0.3, 0.2]  # source tokens 0..2
    maps[:, 1, :4] = [0.1, 0.2, 0.3, 0.4]
    mapper = np.zeros((T, T), np.float32)
    mapper[0, 0] = mapper[1, 1] = mapper[2, 3] = 1.0  # target token 2 is new (refine)
    plan = SimpleNamespace(mapper=mapper, target=SimpleNamespace(length=4))
    source, edited = attention_panels(maps, plan)
    assert source.shape == edited.shape == (4, steps)  # [target tokens, steps]
    np.testing.assert_allclose(source[:, 0], [0.5, 0.3, 0.0, 0.2])
    np.testing.assert_allclose(edited[:, 0], [0.1, 0.2, 0.3, 0.4])
