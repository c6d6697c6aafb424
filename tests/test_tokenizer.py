"""TextTokenizer and the preset tokenizer (torch-free)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from editgen.engine.tokenizer import TextTokenizer, build_preset_tokenizer
from editgen.errors import CheckpointError, InvalidRequestError

ROOT = Path(__file__).resolve().parents[1]
PINNED_IDS = [433, 146, 63, 277, 229, 1]  # "lofi piano with warm drums" + </s>


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.preset(max_tokens=64)


def test_preset_special_tokens_and_size():
    t = build_preset_tokenizer()
    assert [t.token_to_id(s) for s in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert t.get_vocab_size() == 600
    assert build_preset_tokenizer() is t  # cached in-process


def test_shipped_preset_tokenizer_is_what_the_builder_trains():
    """The runtime loads data/preset_tokenizer.json; if a `tokenizers` upgrade trains other
    merges, this fails instead of every token id changing silently (then keep the file, or
    regenerate it on purpose with `python -m editgen.model.tokenizer_build`)."""
    import json

    from editgen.engine.tokenizer import PRESET_TOKENIZER_FILE
    from editgen.model.tokenizer_build import train_preset_tokenizer

    shipped = json.loads(PRESET_TOKENIZER_FILE.read_text(encoding="utf-8"))
    trained = json.loads(train_preset_tokenizer().to_str())
    for part in ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens"):
        assert shipped[part] == trained[part], part


def test_preset_token_ids_are_pinned(tok):
    # Pinned ids of the shipped file: any change to it shows up here first.
    assert tok.encode("lofi piano with warm drums").ids[:6].tolist() == PINNED_IDS


def test_preset_splits_are_pinned(tok):
    # Edit tests rely on these: one-piece and multi-piece words.
    for word in ("piano", "guitar", "drums", "lofi", "warm", "with"):
        assert tok.encode(word).pieces == (f"▁{word}", "</s>")
    assert tok.encode("marimba").pieces == ("▁m", "arimba", "</s>")
    assert tok.encode("sparkling").pieces == ("▁spark", "ling", "</s>")
    assert tok.encode("sitar").pieces == ("▁s", "i", "tar", "</s>")


def test_preset_is_deterministic_across_processes(tok):
    code = ("from editgen.engine.tokenizer import TextTokenizer;"
            "print(TextTokenizer.preset().encode('80s pop track with sitar and marimba')"
            ".ids.tolist())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"})
    here = tok.encode("80s pop track with sitar and marimba").ids.tolist()
    assert out.stdout.strip() == str(here)


def test_encode_fields(tok):
    p = tok.encode("Lofi  MARIMBA with warm drums")
    assert p.pieces == ("▁lofi", "▁m", "arimba", "▁with", "▁warm", "▁drums", "</s>")
    assert p.length == 7
    assert p.word_of_token == (0, 1, 1, 2, 3, 4, None)
    assert p.words == ("lofi", "marimba", "with", "warm", "drums")
    assert p.ids.dtype == np.int64 and p.ids.shape == (64,)
    assert p.ids[6] == 1 and (p.ids[7:] == 0).all()  # </s>, then pads
    assert p.mask.tolist() == [1] * 7 + [0] * 57
    assert p.word_tokens(1) == (1, 2)
    assert not p.ids.flags.writeable


def test_punctuation_stays_with_its_word(tok):
    p = tok.encode("Jazz, with guitar!")
    assert p.pieces == ("▁jazz", ",", "▁with", "▁guitar", "!", "</s>")
    assert p.word_of_token == (0, 0, 1, 2, 2, None)
    assert p.words == ("jazz,", "with", "guitar!")


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(tok, prompt):
    with pytest.raises(InvalidRequestError, match="^prompt is empty: give a text description$"):
        tok.encode(prompt)


def test_too_long(tok):
    assert tok.encode("piano " * 63).length == 64  # 63 words + </s> fits exactly
    with pytest.raises(InvalidRequestError) as err:
        tok.encode("piano " * 89)
    assert str(err.value) == "prompt is 90 tokens, the model takes at most 64: shorten it"


def test_encode_batch(tok):
    ids, mask = tok.encode_batch(["lofi piano", "80s pop track with bassy drums"])
    assert ids.shape == mask.shape == (2, 64)
    assert ids.dtype == mask.dtype == np.int64
    assert mask.sum(axis=1).tolist() == [3, 7]
    np.testing.assert_array_equal(ids[0], tok.encode("lofi piano").ids)


def test_from_file_roundtrip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    build_preset_tokenizer().save(str(path))
    loaded = TextTokenizer.from_file(path)
    a = loaded.encode("warm sitar with drums")
    b = tok.encode("warm sitar with drums")
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.word_of_token == b.word_of_token


def test_from_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        TextTokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read"):
        TextTokenizer.from_file(bad)


def test_padding_config_is_ignored_and_not_mutated():
    t = build_preset_tokenizer()
    from tokenizers import Tokenizer

    padded = Tokenizer.from_str(t.to_str())
    padded.enable_padding(length=10)
    text_tok = TextTokenizer(padded, max_tokens=64)
    assert text_tok.encode("lofi piano").length == 3
    assert padded.padding is not None  # the caller's object is left as it was
