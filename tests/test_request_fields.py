"""One declaration of request fields drives the CLI, the server's JSON bodies and forms,
and the README: the same request written on each surface gives the same options and spec."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from editgen.cli.common import add_request_args, request_kwargs
from editgen.engine.edit.spec import EditSpec
from editgen.engine.options import GenerationOptions
from editgen.engine.request_fields import documented_table, option, parse_word_items, request_fields
from editgen.errors import InvalidRequestError

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--seconds", "2.5", "--guidance", "1.5", "--top-k", "7", "--greedy", "--seed", "3",
        "--target", "lofi guitar with warm drums", "--op", "replace", "--word", "guitar=1.5",
        "--window", "default=0.8", "--window", "guitar=0.1:0.6", "--setting", "hard", "--blend", "soft",
        "--self-window", "0.5", "--reweight-mode", "editgen-code"]
JSON = {"seconds": 2.5, "guidance": 1.5, "top_k": 7, "greedy": True, "seed": 3,
        "source": "lofi piano with warm drums", "target": "lofi guitar with warm drums", "op": "replace",
        "word_weights": {"guitar": 1.5}, "windows": {"default": "0.8", "guitar": "0.1:0.6"}, "setting": "hard",
        "cross_blend": "soft", "self_window": "0.5", "reweight_mode": "editgen-code"}


def _cli(argv):
    p = argparse.ArgumentParser()
    add_request_args(p, GenerationOptions)
    add_request_args(p, EditSpec)
    args = p.parse_args(argv)
    return GenerationOptions(**request_kwargs(GenerationOptions, args)), EditSpec(**request_kwargs(EditSpec, args))


def test_cli_and_json_body_give_the_same_request():
    from editgen.server.schemas import EditBody, option_fields, spec_fields

    cli_options, cli_spec = _cli(ARGV + ["--source", JSON["source"]])
    body = EditBody(**JSON)
    assert GenerationOptions(**option_fields(body)) == cli_options
    assert EditSpec(source=body.source, **spec_fields(body)) == cli_spec


def test_defaults_are_the_declared_ones_on_every_surface():
    from editgen.server.schemas import EditBody, option_fields, spec_fields

    cli_options, cli_spec = _cli(["--source", "lofi piano", "--target", "lofi guitar"])
    assert cli_options == GenerationOptions()
    body = EditBody(source="lofi piano", target="lofi guitar")
    assert GenerationOptions(**option_fields(body)) == GenerationOptions()
    assert EditSpec(source="lofi piano", **spec_fields(body)) == EditSpec(source="lofi piano", target="lofi guitar")
    assert cli_spec.op == body.op == EditSpec(source="x", target="y").op


def test_an_upload_form_is_the_json_body_with_repeated_word_items():
    from editgen.server.schemas import EditAudioForm, EditBody, body_from_form

    form = {k: v for k, v in JSON.items() if k not in ("seconds", "word_weights", "windows")}
    form.update(word=["guitar=1.5"], window=["default=0.8", "guitar=0.1:0.6"], region="0.2:0.8", audio=b"x")
    body = body_from_form(EditAudioForm.model_construct(**form), EditBody)
    assert body.word_weights == {"guitar": 1.5} and body.windows == JSON["windows"]
    assert (body.region.start, body.region.end) == (0.2, 0.8)
    with pytest.raises(InvalidRequestError, match="--word 'guitar' must look like WORD=C"):
        body_from_form(EditAudioForm.model_construct(**{**form, "word": ["guitar"]}), EditBody)


def test_a_new_field_is_one_declaration():
    """A dataclass declared with option() gets its flag, its JSON field and its form field,
    with the declared default, type and choices, and nothing else to write."""
    from editgen.server import schemas

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Probe:
        rate: float = option(0.5, kind="number", help="a rate")
        mode: str = option("a", kind="choice", choices=("a", "b"), help="a mode")
        gains: dict = option({}, kind="word_numbers", item="gain", help="per word")

    p = argparse.ArgumentParser()
    add_request_args(p, Probe)
    assert Probe(**request_kwargs(Probe, p.parse_args(["--rate", "2", "--mode", "b", "--gain", "x=1"]))) == \
        Probe(rate=2.0, mode="b", gains={"x": 1.0})
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "c"])
    body = schemas.create_model("ProbeBody", __base__=schemas._Body, **schemas._fields(Probe))
    assert body().model_dump() == {"rate": 0.5, "mode": "a", "gains": {}}
    assert body.model_json_schema()["properties"]["mode"]["enum"] == ["a", "b"]
    form = schemas.create_model("ProbeForm", __base__=schemas._Body, **schemas._fields(Probe, form=True))
    assert set(form.model_fields) == {"rate", "mode", "gain"}


def test_word_items_are_parsed_once_for_both_kinds():
    weights, windows = (next(f for f in request_fields(EditSpec) if f.attribute == a) for a in ("word_weights", "windows"))
    assert parse_word_items(["hi-hats=-1.5", " guitar = 2 "], weights) == {"hi-hats": -1.5, "guitar": 2.0}
    assert parse_word_items(["guitar=0.1:0.6"], windows) == {"guitar": "0.1:0.6"}
    for bad, message in ((["guitar"], "must look like WORD=C"), (["=1"], "must look like"),
                         (["guitar=nan"], "must look like"), (["a=1", "a=2"], "given twice")):
        with pytest.raises(InvalidRequestError, match=message):
            parse_word_items(bad, weights)


def test_readme_table_is_the_declaration():
    """README's "Request fields" table is documented_table(); regenerate it with
    python -c 'from editgen.engine.request_fields import documented_table; print(documented_table())'"""
    assert documented_table() in (ROOT / "README.md").read_text()
