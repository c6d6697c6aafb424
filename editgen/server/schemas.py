"""The API's request bodies (pydantic: the OpenAPI schema), made from the engine's one
declaration of request fields (editgen.engine.request_fields): the generation options
and edit fields, their types, defaults, choices and descriptions come from there, so
the JSON bodies, the multipart forms and the CLI cannot drift apart.

They check shapes only (types, known fields): values are checked by the engine's own
classes (GenerationOptions, EditSpec, Region), so the server answers with the CLI's
messages. Unknown fields are refused (JSON and forms), so no field can name a server-side
file."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, create_model

from editgen.engine.capture import MAP_DTYPES
from editgen.engine.edit.spec import EditSpec
from editgen.engine.options import GenerationOptions
from editgen.engine.request_fields import RequestField, parse_word_items, request_fields

Format = Literal["wav", "json"]

_JSON_TYPES = {"number": float, "integer": int, "text": str, "window": float | str, "switch": bool,
               "word_numbers": dict[str, float], "word_windows": dict[str, float | str]}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _json_type(f: RequestField):
    kind = f.option.kind
    t = Literal[f.option.choices] if kind == "choice" else _JSON_TYPES[kind]
    return t | None if f.default is None else t


def _fields(cls, *, form: bool = False, skip: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    """pydantic field definitions of `cls`'s declared fields under their API names. form:
    word maps become their repeated item field (word=WORD=C). `optional`: required fields
    that may be left out here (None)."""
    out: dict[str, Any] = {}
    for f in request_fields(cls):
        if f.attribute in skip:
            continue
        name, t, default = f.name, _json_type(f), f.default
        if form and f.option.item:
            name, t, default = f.option.item, list[str], []
        if f.attribute in optional:
            t, default = t | None, None
        required = f.required and f.attribute not in optional
        out[name] = (t, Field(description=f.option.help) if required else Field(default, description=f.option.help))
    return out


class Output(_Body):
    stream: bool = Field(False, description="send the audio chunk by chunk as it is decoded")
    format: Format = Field("wav", description="wav: the main audio (audio/wav); json: every audio (base64 WAV), "
                                              "codes and notes. Streaming: wav is a chunked WAV of the main audio, "
                                              "json is NDJSON events with every audio")


class RegionBody(_Body):
    start: float = Field(description="seconds")
    end: float = Field(description="seconds")


Sampling = create_model("Sampling", __base__=_Body, **_fields(GenerationOptions))
# Real-audio requests take their duration from the audio.
AudioSampling = create_model("AudioSampling", __base__=_Body, **_fields(GenerationOptions, skip=("seconds",)))

_PROMPT = (str, Field(description='text description, e.g. "lofi piano"'))
_REGION_DOC = "edit only these seconds; outside, copy the source"
_CAPTURE_DTYPE = (Literal[tuple(MAP_DTYPES)], Field("fp16", description="precision of the stored maps"))
_EDIT = _fields(EditSpec, optional=("source",))

GenerateBody = create_model("GenerateBody", __base__=(Sampling, Output), prompt=_PROMPT)
EditBody = create_model(
    "EditBody", __base__=(Sampling, Output), **_EDIT,
    region=(RegionBody | None, Field(None, description=_REGION_DOC)),
    capture_id=(str | None, Field(None, description="edit from a capture made by POST /v1/captures; seconds, seed "
                                                    "and sampling then come from the capture")))
CaptureBody = create_model("CaptureBody", __base__=Sampling, source=_fields(EditSpec)["source"],
                           capture_dtype=_CAPTURE_DTYPE)

# Multipart forms of the upload endpoints: the same fields, word maps as repeated items.
_AUDIO = (UploadFile, Field(description="WAV, FLAC or OGG"))
EditAudioForm = create_model(
    "EditAudioForm", __base__=(AudioSampling, Output), audio=_AUDIO, **_fields(EditSpec, form=True),
    region=(str | None, Field(None, description="START:END seconds: " + _REGION_DOC)))
CaptureAudioForm = create_model("CaptureAudioForm", __base__=AudioSampling, audio=_AUDIO,
                                source=_fields(EditSpec)["source"], capture_dtype=_CAPTURE_DTYPE)

for _model, _example in ((GenerateBody, {"prompt": "lofi piano", "seconds": 1.0, "seed": 1}),
                         (EditBody, {"source": "lofi piano with soft drums", "target": "lofi guitar with soft drums",
                                     "seconds": 1.0, "word_weights": {"guitar": 1.5},
                                     "region": {"start": 0.2, "end": 0.8}}),
                         (CaptureBody, {"source": "lofi piano with soft drums", "seconds": 1.0})):
    _model.model_config["json_schema_extra"] = {"examples": [_example]}


def body_from_form(form: BaseModel, body: type[BaseModel]) -> BaseModel:
    """An upload's form as the JSON body of the same request: repeated word items parsed
    (WORD=C, WORD=F|START:END, with the CLI's messages), region START:END into its object."""
    from editgen.engine.jobs import Region

    values = form.model_dump(exclude={"audio"})
    for f in request_fields(EditSpec):
        if f.option.item and f.option.item in values:
            values[f.name] = parse_word_items(values.pop(f.option.item), f)
    if values.get("region") is not None:
        span = Region.parse(values["region"])
        values["region"] = RegionBody(start=span.start, end=span.end)
    return body(**values)


def spec_fields(body: BaseModel) -> dict:
    """EditSpec's keyword arguments but source, from an EditBody."""
    return {f.attribute: getattr(body, f.name) for f in request_fields(EditSpec) if f.attribute != "source"}


def option_fields(body: BaseModel, **fixed) -> dict:
    """GenerationOptions' keyword arguments from a body (`fixed` for any it must not set)."""
    return {f.attribute: fixed.get(f.attribute, getattr(body, f.name)) for f in request_fields(GenerationOptions)}
