"""`editgen protocol`: the shipped prompt pairs (valid for EditSpec and the preset
tokenizer, every category, ops as labelled), the loader's checks, the command on
random:tiny (4 pairs x 3 settings, 0.4 s: the tables, PNG, JSON, CSV and audio it
writes, its edits equal to `editgen edit`, its scores equal to `editgen eval --batch`),
a run from a --pairs-file with a word part, CLAP text against the source prompt and
--steps, and bad input (exit 2, one line, no output directory)."""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import importlib.util
import json
import re
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("librosa")
pytest.importorskip("mir_eval")

import editgen.cli  # noqa: E402
import editgen.model.loading  # noqa: E402
from editgen.engine.edit import compile_edit  # noqa: E402
from editgen.engine.edit.spec import WEIGHT_MAX, WEIGHT_MIN, word_key  # noqa: E402
from editgen.engine.tokenizer import TextTokenizer, split_words  # noqa: E402
from editgen.errors import EditGenError, InvalidRequestError  # noqa: E402
from editgen.eval.protocol import (CATEGORIES, CATEGORY_OPS, PAIRS_FILE, check_tokenizer,  # noqa: E402
                                   load_pairs, select_pairs)
from tests.conftest import loaded_model  # noqa: E402
from tests.test_cli_edit import assert_user_error  # noqa: E402

SETTINGS = ("editgen-code", "paper-text", "hard")
MODEL = ["--model", "random:tiny"]
FAST = ["--seconds", "0.4", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cli(monkeypatch):
    """Only the subcommands whose modules exist; random:tiny comes from the session cache."""
    present = tuple(n for n in editgen.cli.SUBCOMMANDS if importlib.util.find_spec(f"editgen.cli.{n}"))
    monkeypatch.setattr(editgen.cli, "SUBCOMMANDS", present)
    tiny = loaded_model("random:tiny")
    real = editgen.model.loading.load_musicgen
    monkeypatch.setattr(editgen.model.loading, "load_musicgen",
                        lambda spec: tiny if spec == "random:tiny" else real(spec))


def run(*argv) -> int:
    return editgen.cli.main([str(a) for a in argv])


# ---------------------------------------------------------------- the shipped pairs

def test_shipped_pairs_are_valid():
    pairs = load_pairs()
    assert len(pairs) >= 40
    assert len({p.id for p in pairs}) == len(pairs)
    assert {p.category for p in pairs} == set(CATEGORIES)
    assert all(sum(p.category == c for p in pairs) >= 5 for c in CATEGORIES)
    for p in pairs:
        assert p.op == CATEGORY_OPS[p.category], p.id
        words_src, words_tgt = split_words(p.source), split_words(p.target or p.source)
        assert len(words_tgt) <= 12 and len(split_words(p.target_prompt)) <= 12, p.id
        if p.op == "replace":
            assert len(words_src) == len(words_tgt) and words_src != words_tgt, p.id
        elif p.op == "refine":
            assert len(words_tgt) > len(words_src), p.id
        else:
            assert p.target is None and p.word_weights, p.id
        # Every pair under every setting is an EditSpec the engine compiles.
        for setting in SETTINGS:
            spec = p.spec(setting)
            assert spec.setting == setting
            compile_edit(spec, TextTokenizer.preset(), num_layers=2)
    weights = [c for p in pairs for c in p.word_weights.values()]
    assert all(WEIGHT_MIN <= c <= WEIGHT_MAX for c in weights)
    assert any(0 < c < 1 for c in weights) and any(c < 0 for c in weights) and any(c > 1 for c in weights)
    assert 0.0 not in weights  # so reweight mode editgen-code (divides by c) runs every pair
    # A weighted part of a word, as the released evaluation's ("funk" in "funk-infused").
    assert any(w not in {word_key(x) for x in split_words(p.source)} for p in pairs for w in p.word_weights)
    # The preset tokenizer knows every word and each prompt fits its 64 tokens.
    tokenizer = TextTokenizer.preset()
    check_tokenizer(pairs, tokenizer, num_layers=2)
    assert max(tokenizer.encode(t).length for p in pairs for t in (p.source, p.target or p.source)) <= 64


def test_pairs_file_is_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["editgen"]
    rel = PAIRS_FILE.relative_to(ROOT / "editgen").as_posix()
    assert any(fnmatch.fnmatch(rel, g) for g in globs), (rel, globs)


def test_select_pairs_takes_categories_in_turn():
    pairs = load_pairs()
    five = select_pairs(pairs, count=5)
    assert [p.category for p in five] == ["instrument", "refine", "reweight", "genre", "mood"]
    assert {p.op for p in select_pairs(pairs, count=3)} == {"replace", "refine", "reweight"}
    assert len(select_pairs(pairs, count=len(pairs))) == len(pairs) == len(select_pairs(pairs))
    assert [p.id for p in select_pairs(pairs, ids=["mood-02", "genre-01"])] == ["mood-02", "genre-01"]
    with pytest.raises(InvalidRequestError, match="did you mean 'mood-02'"):
        select_pairs(pairs, ids=["mood-2"])
    for bad in (0, len(pairs) + 1):
        with pytest.raises(InvalidRequestError, match=f"from 1 to {len(pairs)}"):
            select_pairs(pairs, count=bad)


GOOD = {"id": "x-1", "category": "instrument", "op": "replace", "source": "soft piano solo",
        "target": "soft guitar solo", "target_prompt": "soft guitar solo"}


@pytest.mark.parametrize("change, message", [
    ({"op": "refine"}, "instrument pairs are replace edits"),
    ({"category": "tempo", "op": "swap"}, "op 'swap' is not one of"),
    ({"category": " "}, "must be a label"),
    ({"target": "soft guitar solo tonight"}, "same number of words"),
    ({"target": "soft piano solo"}, "changed word"),
    ({"category": "refine", "op": "refine", "target": "soft piano"}, "adds words"),
    ({"category": "refine", "op": "refine", "target": "solo soft piano with drums"}, "in order"),
    ({"category": "reweight", "op": "reweight", "word_weights": {"piano": 1.5}}, "leave out target"),
    ({"category": "reweight", "op": "reweight", "target": None, "word_weights": {"piano": 2.5}}, "[-2, 2]"),
    ({"category": "reweight", "op": "reweight", "target": None, "word_weights": {"drums": 1.5}}, "not in the target"),
    ({"category": "reweight", "op": "reweight", "target": None, "word_weights": {"iano": 1.5}}, "or its start"),
    ({"target_prompt": " "}, "target_prompt"),
    ({"id": "../escape"}, "lower-case letters"),
    ({"tempo": 120}, "unknown keys tempo"),
])
def test_loader_rejects_bad_pairs(tmp_path, change, message):
    item = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"pairs": [GOOD | {"id": "ok-1"}, item]}))
    with pytest.raises(InvalidRequestError) as err:
        load_pairs(path)
    assert message in str(err.value) and "pair 2" in str(err.value)


def test_pairs_of_other_categories_and_default_target_prompts(tmp_path):
    """A user's file: its own category labels (any op), target_prompt left out (the
    target; for reweight the source); `--pairs N` takes its labels in file order."""
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"pairs": [
        {"id": "a", "category": "Genre Fusion", "op": "refine", "source": "guitar riff",
         "target": "funk-infused guitar riff"},
        {"id": "b", "category": "Genre Fusion", "op": "replace", "source": "soft piano solo",
         "target": "soft guitar solo"},
        {"id": "c", "category": "Genre Blend", "op": "reweight", "source": "funk-infused guitar riff",
         "word_weights": {"funk": 2.0}}]}))
    pairs = load_pairs(path)
    assert [p.target_prompt for p in pairs] == ["funk-infused guitar riff", "soft guitar solo",
                                                "funk-infused guitar riff"]
    assert [p.clap_text("source") for p in pairs] == ["guitar riff", "soft piano solo", "funk-infused guitar riff"]
    assert [p.id for p in select_pairs(pairs, count=3)] == ["a", "c", "b"]
    check_tokenizer(pairs, TextTokenizer.preset(), num_layers=2)


def test_loader_rejects_duplicate_ids_missing_keys_and_bad_files(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"pairs": [GOOD, GOOD]}))
    with pytest.raises(InvalidRequestError, match="used twice"):
        load_pairs(path)
    path.write_text(json.dumps({"pairs": [{k: v for k, v in GOOD.items() if k != "source"}]}))
    with pytest.raises(InvalidRequestError, match="source"):
        load_pairs(path)
    path.write_text("{not json")
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_pairs(path)
    path.write_text(json.dumps({"pairs": []}))
    with pytest.raises(InvalidRequestError, match="non-empty"):
        load_pairs(path)


def test_check_tokenizer_names_the_pair():
    pair = load_pairs()[0]
    tiny = TextTokenizer.preset(max_tokens=4)
    with pytest.raises(InvalidRequestError, match=f"protocol pair {pair.id}: prompt is \\d+ tokens"):
        check_tokenizer([pair], tiny, num_layers=2)


def test_help_shows_every_option_and_default(capsys):
    parser = editgen.cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["protocol"]
    with pytest.raises(SystemExit):
        editgen.cli.main(["protocol", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in sub._actions:
        assert action.help, action.option_strings
        if action.default not in (None, [], "==SUPPRESS==") and action.option_strings:
            assert f"(default: {action.default})" in text, action.option_strings
    assert "(default: editgen-code,paper-text,hard)" in text and "(default: source)" in text
    for option in ("--pairs-file FILE", "--steps N", "--clap-text {source,target}", "--mapper {p2p,editgen-code}"):
        assert option in text, option
    assert "default without --seconds: 512" in text


# ---------------------------------------------------------------- the command on random:tiny

def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def first_table(text: str) -> list[list[str]]:
    """Rows (header first) of the first table in table.txt, cells split on 2+ spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("setting "))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        if not set(line) <= {"-", " "}:
            rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    """`editgen protocol` on random:tiny: 4 pairs, the three settings, 0.4 s."""
    out = tmp_path_factory.mktemp("protocol") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(editgen.cli, "SUBCOMMANDS", tuple(
            n for n in editgen.cli.SUBCOMMANDS if importlib.util.find_spec(f"editgen.cli.{n}")))
        tiny = loaded_model("random:tiny")
        mp.setattr(editgen.model.loading, "load_musicgen", lambda spec: tiny)
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run("protocol", *MODEL, "--pairs", 4, *FAST, "-o", out)
    return out, code, stdout.getvalue(), stderr.getvalue()


@pytest.mark.slow
def test_protocol_writes_the_table(protocol_run):
    out, code, stdout, stderr = protocol_run
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["audio", "eval.json", "pairs.csv", "protocol.json",
                                                      "table.png", "table.txt"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    note = "random weights: these numbers mean nothing about the method"
    assert note in stderr and note in stdout
    text = (out / "table.txt").read_text()
    assert text in stdout  # the printed table is the file
    rows = first_table(text)
    # The paper's Table 1 layout: one row per setting, in the order given; no CLAP without --clap.
    assert rows[0] == ["setting", "n", "melody acc", "dynamics r", "rhythm F1"]
    assert [r[0] for r in rows[1:]] == list(SETTINGS) and all(r[1] == "4" for r in rows[1:])
    for r in rows[1:]:
        assert re.fullmatch(r"-?\d\.\d{3} ± \d\.\d{3}", r[2]), r  # mean ± 95% CI half-width
        assert r[4] == "n/a"  # 0.4 s clips: beat tracking needs 1 s, so rhythm is undefined
    assert "CLAP columns omitted" in text and "rhythm F1 not available" in text
    assert "By edit op:" in text and "hard / reweight" in text
    width, height = png_size(out / "table.png")
    assert 700 <= width <= 2400 and 300 <= height <= 1600

    with open(out / "pairs.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 12 and [r["label"] for r in csv_rows] == list(SETTINGS) * 4
    meta = json.loads((out / "protocol.json").read_text())
    assert meta["pair_ids"] == ["instrument-01", "refine-01", "reweight-01", "genre-01"]
    assert [s["name"] for s in meta["settings"]] == list(SETTINGS)
    assert meta["seeds"] == [0] and meta["seconds"] == 0.4 and meta["frames"] == 20 and meta["steps"] is None
    assert meta["clap_text"] == "source" and Path(meta["pairs_file"]) == PAIRS_FILE
    assert [s["mapper"] for s in meta["settings"]] == ["editgen-code", "p2p", "p2p"]
    assert text.splitlines()[1] == "CLAP text: the edited audio vs the source prompt (as the released evaluation)"
    # pairs.csv's target_prompt column is the CLAP text: the source prompts by default.
    assert [r["target_prompt"] for r in csv_rows] == [p["source"] for p in meta["pairs"] for _ in SETTINGS]
    assert meta["notes"][0].startswith("random weights") and meta["clap"] is None
    report = json.loads((out / "eval.json").read_text())
    assert list(report["summary"]) == list(SETTINGS) and len(report["pairs"]) == 12
    assert meta["summary"] == report["summary"]
    # Paths are relative to OUTDIR (the temporary directory's name must not leak).
    assert all(not Path(p["edited"]).is_absolute() and (out / p["edited"]).is_file() for p in report["pairs"])
    assert {r["edited"] for r in csv_rows} == {p["edited"] for p in report["pairs"]}


@pytest.mark.slow
def test_protocol_edits_are_the_settings_edits(protocol_run, tmp_path):
    """Each setting's edit is `editgen edit --setting S` of that pair and seed, the source
    row one generation shared by all settings; settings that inject differently differ."""
    out, code, _, _ = protocol_run
    assert code == 0
    meta = json.loads((out / "protocol.json").read_text())
    wav = {}
    for pair in meta["pairs"]:
        files = pair["audio"]["seed-0"]
        wav[pair["id"]] = {k: sf.read(out / v, dtype="float32")[0] for k, v in files.items()}
        assert set(files) == {"source", *SETTINGS}
    # Self-injection is live: editgen-code is not hard, and paper-text's soft blend is not
    # hard either (measured on these 4 pairs at seed 0: 3 and 2 of them differ).
    assert any(not np.array_equal(w["editgen-code"], w["hard"]) for w in wav.values())
    assert any(not np.array_equal(w["paper-text"], w["hard"]) for w in wav.values())
    refine = next(p for p in meta["pairs"] if p["id"] == "refine-01")
    alone = tmp_path / "alone"
    assert run("edit", *MODEL, "--source", refine["source"], "--target", refine["target"], "--op", "refine",
               "--setting", "editgen-code", *FAST, "-o", alone) == 0
    np.testing.assert_array_equal(sf.read(alone / "edited.wav", dtype="float32")[0], wav["refine-01"]["editgen-code"])
    np.testing.assert_array_equal(sf.read(alone / "source.wav", dtype="float32")[0], wav["refine-01"]["source"])


@pytest.mark.slow
def test_protocol_scores_are_eval_batch(protocol_run, tmp_path, capsys):
    """eval.json is what `editgen eval --batch OUTDIR/pairs.csv` writes (paths aside)."""
    out, code, _, _ = protocol_run
    assert code == 0
    again = tmp_path / "again.json"
    assert run("eval", "--batch", out / "pairs.csv", "-o", again) == 0
    ours, theirs = json.loads((out / "eval.json").read_text()), json.loads(again.read_text())
    assert ours["summary"] == theirs["summary"] and ours["settings"] == theirs["settings"]
    fields = ("melody_accuracy", "dynamics_correlation", "rhythm_f1", "label", "target_prompt")
    assert [[p[f] for f in fields] for p in ours["pairs"]] == [[p[f] for f in fields] for p in theirs["pairs"]]


PAIRS_WITH_A_WORD_PART = {"about": "a user's pairs file", "pairs": [
    {"id": "funk-part", "category": "Genre Blend", "op": "reweight", "source": "funk-infused guitar riff",
     "word_weights": {"funk": 2.0}},  # "funk": a hyphen part, as the released evaluation reweights
    {"id": "swap", "category": "instrument", "op": "replace", "source": "soft piano solo", "target": "soft guitar solo",
     "target_prompt": "a soft guitar solo"}]}


@pytest.mark.slow
def test_protocol_from_a_pairs_file_with_a_word_part(tmp_path, tiny_clap_dir, capsys):
    """The released protocol's knobs in one run: a user's --pairs-file (a word part),
    --steps (23 steps on random:tiny = 20 frames, 0.4 s), CLAP text against the source
    prompt (tiny random CLAP); the word-part edit is `editgen edit --word funk=2`'s."""
    from editgen.eval.audio_io import load_audio
    from editgen.eval.clap import ClapScorer

    pairs_file, out = tmp_path / "pairs.json", tmp_path / "out"
    pairs_file.write_text(json.dumps(PAIRS_WITH_A_WORD_PART))
    assert run("protocol", *MODEL, "--pairs-file", pairs_file, "--clap-text", "source", "--clap", tiny_clap_dir,
               "--settings", "editgen-code,hard", "--steps", 23, "--no-progress", "-o", out) == 0
    meta = json.loads((out / "protocol.json").read_text())
    assert meta["pair_ids"] == ["funk-part", "swap"] and meta["pairs_file"] == str(pairs_file)
    assert (meta["steps"], meta["frames"], meta["seconds"], meta["clap_text"]) == (23, 20, 0.4, "source")
    text = (out / "table.txt").read_text()
    assert text.splitlines()[:2] == ["EditGen protocol: 2 pairs x 1 seed, 23 steps, 0.4 s clips, random:tiny",
                                     "CLAP text: the edited audio vs the source prompt (as the released evaluation)"]
    assert first_table(text)[0] == ["setting", "n", "CLAP text (source)", "CLAP audio", "melody acc", "dynamics r",
                                    "rhythm F1"]
    scorer = ClapScorer(tiny_clap_dir)
    report = json.loads((out / "eval.json").read_text())
    sources = {p["id"]: p["source"] for p in meta["pairs"]}
    for entry, (pair_id, setting) in zip(report["pairs"], [(i, s) for i in sources for s in ("editgen-code", "hard")]):
        assert entry["target_prompt"] == sources[pair_id]  # not "a soft guitar solo"
        edited = load_audio(out / entry["edited"])
        assert entry["clap_text"] == pytest.approx(scorer.text_audio(sources[pair_id], edited.samples,
                                                                     edited.sample_rate), abs=1e-6)
    alone = tmp_path / "alone"
    assert run("edit", *MODEL, "--source", sources["funk-part"], "--op", "reweight", "--word", "funk=2",
               "--seconds", 0.4, "--no-progress", "-o", alone) == 0
    np.testing.assert_array_equal(sf.read(alone / "edited.wav", dtype="float32")[0],
                                  sf.read(out / "audio/funk-part/seed-0/editgen-code.wav", dtype="float32")[0])
    plan = json.loads((alone / "edit.json").read_text())["plan"]
    assert plan["weights"][:2] == [2.0, 1.0]  # ▁funk only, not "-infused"


# ---------------------------------------------------------------- bad input: exit 2, one line, no output

@pytest.mark.parametrize("extra, expect", [
    (["--settings", "editgen-code,fancy"], "setting 'fancy' is not one of"),
    (["--settings", "hard,hard"], "names a setting twice"),
    (["--settings", "hard,"], "separated by commas"),
    (["--pairs", "0"], "from 1 to"),
    (["--pairs", "1000"], "from 1 to"),
    (["--pair-ids", "instrument-01", "nope-99"], "pair id 'nope-99' is not in the protocol set"),
    (["--pair-ids", "mood-01,mood-01"], "twice"),
    (["--pair-ids", ","], "--pair-ids names no pair"),
    (["--seeds", "0"], "--seeds 0"),
    (["--steps", "0"], "--steps 0: give a positive number"),
    (["--steps", "30"], "give --steps or --seconds, not both"),  # FAST has --seconds
    (["--pairs-file", "/nonexistent/pairs.json"], "cannot read protocol pairs"),
    (["--seconds", "-1"], "seconds must be a positive number"),
    (["--clap", "/nonexistent/clap"], "does not exist"),
])
def test_bad_input_exits_2_before_the_model_loads(tmp_path, capsys, monkeypatch, extra, expect):
    def no_model(spec):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(editgen.model.loading, "load_musicgen", no_model)
    out = tmp_path / "out"
    assert_user_error(capsys, ["protocol", *MODEL, *FAST, *extra, "-o", out], out, expect)


def test_unwritable_output_and_too_long_clips_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "missing" / "out"
    assert_user_error(capsys, ["protocol", *MODEL, *FAST, "-o", out], out, "does not exist")
    assert_user_error(capsys, ["protocol", *MODEL, *FAST, "-o", tmp_path / "afile"], tmp_path / "nothing",
                      "is a file")
    out = tmp_path / "long"
    assert_user_error(capsys, ["protocol", *MODEL, "--seconds", "100000", "--no-progress", "-o", out], out,
                      "ask for at most")
    assert_user_error(capsys, ["protocol", *MODEL, "--steps", "5", "--no-progress", "-o", out], out,
                      "--steps 5 gives 2 audio frames on this model, the codec needs 4: ask for at least 7 steps")
    assert_user_error(capsys, ["protocol", *MODEL, "--steps", "5000", "--no-progress", "-o", out], out,
                      "--steps 5000 is more than")


def test_failure_while_scoring_leaves_no_output(tmp_path, capsys, monkeypatch):
    import editgen.eval.scoring as scoring

    def broken(*args, **kwargs):
        raise EditGenError("scoring broke")

    monkeypatch.setattr(scoring, "score_pairs", broken)
    out = tmp_path / "out"
    assert_user_error(capsys, ["protocol", *MODEL, "--pairs", 1, "--settings", "hard", *FAST, "-o", out], out,
                      "scoring broke")
